"""The data port (node/dataport.py): every node is also a web seed for its public datasets, over plain HTTP/1.1 on
127.0.0.1 between real node processes. The layout is a web mirror's, ranges work, a private dataset and every odd
path are the same 404, a `get` by ID reads from the peers' data ports (and a node without one, and a web mirror,
in the same swarm), a peer whose data port serves wrong bytes is banned on both its transports while the dataset
completes, and the per-IP cap and the head deadline hold while an honest fetch goes on."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from pathlib import Path

import pytest
import trio
from mirrors import mirrors
from netnodes import ENV
from test_network_hostile import CONNECT_TIMEOUT, STREAM_TIMEOUT, running

from kogitune.corpora import write_kjv_chapters
from kogitune.layout import read_signature
from kogitune.node.host import new_kogitune_host
from kogitune.node.providers import provide
from kogitune.protocol import wire
from kogitune.protocol.signing import peer_id_from_public_key, public_key_from_seed
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

TIMEOUT = 20.0
HEAD_TIMEOUT = 2.0
LIMITED = {**ENV, "KOGITUNE_SERVER_STREAMS_PER_IP": "6", "KOGITUNE_SERVER_REQUEST_TIMEOUT": str(HEAD_TIMEOUT)}
"""A node whose data port holds at most 6 connections from one IP and waits 2 s for a request head."""


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    root = tmp_path_factory.mktemp("published")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=200)
    options = StoreOptions(block_size=64, piece_size=64 << 10, shard_size=256 << 10, workers=1)
    store([corpus], "gpt2", root / "kjv", options, progress=False)
    return DataTensor(root / "kjv")


def request(port: int, path: str, method: str = "GET", headers: dict | None = None):
    """(status, headers, body) of one request to 127.0.0.1:port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def test_the_layout_and_ranges_of_a_web_mirror(tensor, nodes):
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    port = a.data_port()
    status, _, body = request(port, f"/{dataset_id}/manifest.json")
    assert (status, body) == (200, (tensor.path / "manifest.json").read_bytes())
    status, _, body = request(port, f"/{dataset_id}/signature")
    public_key, signature = read_signature(a.home / "datasets" / dataset_id)
    assert (status, body) == (200, public_key + signature)
    shard = tensor.shards[1]
    data = (tensor.path / shard.tokens_path).read_bytes()
    for path in (shard.pieces_path, shard.docs_path, shard.tokens_path):
        status, headers, body = request(port, f"/{dataset_id}/{path}")
        assert (status, body) == (200, (tensor.path / path).read_bytes())
        assert headers["Accept-Ranges"] == "bytes"
    status, headers, body = request(port, f"/{dataset_id}/{shard.tokens_path}", headers={"Range": "bytes=1000-"})
    assert (status, body, headers["Content-Range"]) == (206, data[1000:], f"bytes 1000-{len(data) - 1}/{len(data)}")
    status, headers, body = request(port, f"/{dataset_id}/{shard.tokens_path}", headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    status, headers, body = request(port, f"/{dataset_id}/{shard.tokens_path}", "HEAD", {"Range": "bytes=5-"})
    assert (status, body, headers["Content-Length"]) == (206, b"", str(len(data) - 5))
    status, headers, _ = request(port, f"/{dataset_id}/{shard.tokens_path}", headers={"Range": f"bytes={len(data)}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(data)}")

    # keep-alive: several requests on one connection
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    for start in (0, 100, 200):
        connection.request("GET", f"/{dataset_id}/{shard.tokens_path}", headers={"Range": f"bytes={start}-{start + 9}"})
        assert connection.getresponse().read() == data[start : start + 10]
    connection.close()

    # the fetcher's mirror code reads the node's port as a mirror base URL
    b = nodes("b", flags=["--data-listen", "off"])
    b.cli("get", "--mirror", f"http://127.0.0.1:{port}/{dataset_id}", dataset_id, "--quiet")
    assert DataTensor(b.home / "datasets" / dataset_id).verify() == []
    assert "data port" not in b.cli("node", "status").stdout  # --data-listen off


NOT_FOUND = (404, b"not found\n")


def test_a_private_dataset_and_odd_paths_are_404(tensor, nodes):
    """A private dataset answers exactly as one not held, whatever path is guessed; traversal, encoded slashes,
    queries and listings are 404 too."""
    a = nodes("a")
    private_id = a.cli("publish", str(tensor.path), "--allow", a.peer_id).stdout.strip()
    public_id = a.cli("publish", str(tensor.path)).stdout.strip()  # second: its files' links are the newest
    missing_id = "kg1-" + "a" * 52
    port = a.data_port()
    shard = tensor.shards[0]
    for dataset_id in (private_id, missing_id):
        for path in ("manifest.json", "signature", shard.tokens_path, shard.pieces_path, shard.docs_path, "allow"):
            status, _, body = request(port, f"/{dataset_id}/{path}")
            assert (status, body) == NOT_FOUND, (dataset_id, path)
    assert request(port, f"/{public_id}/{shard.tokens_path}")[0] == 200
    for path in (
        "/",
        f"/{public_id}",
        f"/{public_id}/",
        f"/{public_id}/shards/",
        f"/{public_id}/shards/../manifest.json",
        f"/{public_id}/./manifest.json",
        f"/{public_id}//manifest.json",
        f"/{public_id}%2Fmanifest.json",
        f"/{public_id}/manifest.json?x=1",
        f"/{public_id}/%6Danifest.json",
        f"/{public_id}/shards/{shard.name}",
        f"/{public_id}/../{private_id}/manifest.json",
        "/../../../../etc/passwd",
        f"/{public_id}/.kogitune-verified",
        f"/{public_id.upper()}/manifest.json",
        f"/{private_id}/../{public_id}/manifest.json",
    ):
        assert request(port, path)[:3:2] == NOT_FOUND, path
    status, _, _ = request(port, f"/{public_id}/manifest.json", "POST")
    assert status == 405


def test_get_by_id_reads_the_data_ports_in_a_mixed_swarm(tensor, nodes):
    """A (data port) publishes; C (no data port) fetches it from A, over A's data port; D fetches by ID from A, C
    and a web mirror (that hangs on the tokens files) at once: the mirror joins the peers' pool, A's data port
    serves, and A's metrics count what left over HTTP. D opens the dataset by ID first (it waits for its bootstrap
    peers' have answers), so A's data port is in D's pool before the get's first shard, whose small files are asked
    of a data port first (SourcePool.in_order_of_health): a data port that joined in the background while a get
    named a mirror could find the get over, all its pieces taken by the libp2p streams of A and C."""
    from test_metrics import scrape

    from kogitune.client import DaemonClient

    a = nodes("a", flags=["--metrics", "127.0.0.1:0"])
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    a_port = f"http://127.0.0.1:{a.data_port()}/{dataset_id}"
    c = nodes("c", [a.address], flags=["--data-listen", "off"])
    got = c.cli("get", dataset_id, "--quiet").stdout
    assert f"{a_port}: ok" in got, got
    assert DataTensor(c.home / "datasets" / dataset_id).verify() == []
    d = nodes("d", [a.address, c.address])
    DaemonClient(d.home).call("open", 30, id=dataset_id)
    with mirrors(tensor.path, "hang") as (mirror,):  # it serves the manifest, then hangs on every tokens file
        got = d.cli("get", dataset_id, "--mirror", mirror, "--quiet").stdout
    assert DataTensor(d.home / "datasets" / dataset_id).verify() == []
    assert f"{a_port}: ok" in got and f"peer {c.peer_id}: " in got and f"{mirror}: " in got, got
    assert "dropped" not in got, got
    metrics_url = next(x for x in a.cli("node", "status").stdout.splitlines() if x.startswith("metrics")).split()[-1]
    served = scrape(metrics_url)
    assert served["kogitune_served_bytes_total", frozenset({("dataset", dataset_id), ("transport", "http")})] > 0


class LyingPeer:
    """A peer that announces the honest signed manifest and a full have-map, and serves honest bytes over libp2p,
    but names a data port (on its own IP, 127.0.0.1) where a web server flips a byte of every tokens file."""

    def __init__(self, store_copy: Path, lying_port: int) -> None:
        self.directory = store_copy
        self.manifest = DataTensor(store_copy).manifest
        self.lying_port = lying_port
        self.seed = bytes(range(32))
        self.peer_id = peer_id_from_public_key(public_key_from_seed(self.seed))

    def answer(self, request) -> bytes:
        if isinstance(request, wire.ManifestRequest):
            public_key, signature = read_signature(self.directory)
            manifest = (self.directory / "manifest.json").read_bytes()
            return wire.encode_response(wire.ManifestResponse(manifest, signature, public_key))
        if isinstance(request, wire.HaveRequest):
            have = wire.have_bitmap([True] * len(self.manifest.shards))
            return wire.encode_response(wire.HaveResponse(have, self.lying_port))
        shard = next(s for s in self.manifest.shards if s.name == request.shard)
        path = {"tokens": shard.tokens_path, "pieces": shard.pieces_path, "docs": shard.docs_path}[request.file]
        with open(self.directory / path, "rb") as f:
            f.seek(request.offset)
            data = f.read(request.length)
        return wire.encode_response(wire.ReadResponse(request.length)) + data

    async def handle(self, stream) -> None:
        try:
            decoder = wire.FrameDecoder(wire.MAX_REQUEST_BYTES)
            with trio.fail_after(STREAM_TIMEOUT):
                while (frame := decoder.next_frame()) is None:
                    decoder.feed(await stream.read(4096))
                await stream.write(self.answer(wire.parse_request(frame)))
            await stream.close()
        except Exception:
            await stream.reset()


def test_a_peer_whose_data_port_lies_is_banned_on_both_transports(tensor, nodes, tmp_path):
    """L serves honest bytes over libp2p but names a data port that serves wrong ones: B bans L's data port and
    its libp2p source with it, and completes the dataset from an honest mirror of A's files. B knows L alone and
    opens the dataset by ID first, so L's data port is in B's pool before the get (one that joins later may find
    the fetch over: it no longer waits for libp2p pieces)."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    from kogitune.client import DaemonClient

    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    web_root = tmp_path / "web"
    web_root.mkdir()
    (web_root / dataset_id).symlink_to(a.home / "datasets" / dataset_id)
    outcome = {}

    async def main(lying_port: int) -> None:
        liar = LyingPeer(a.home / "datasets" / dataset_id, lying_port)
        async with running(new_kogitune_host(liar.seed)) as host:
            host.set_stream_handler(TProtocol(wire.PROTOCOL_ID), liar.handle)
            dht = KadDHT(host, DHTMode.SERVER)
            async with background_trio_service(dht):
                with trio.fail_after(CONNECT_TIMEOUT):
                    await provide(dht, dataset_id)
                address = f"{host.get_addrs()[0]}/p2p/{host.get_id()}"
                b = await trio.to_thread.run_sync(lambda: nodes("b", [address]))
                with trio.fail_after(60):
                    await trio.to_thread.run_sync(lambda: DaemonClient(b.home).call("open", 30, id=dataset_id))
                    get = ("get", dataset_id, "--mirror", f"{honest}/{dataset_id}", "--quiet")
                    got = await trio.to_thread.run_sync(lambda: b.cli(*get))
                outcome.update(b=b, got=got.stdout, liar=liar)

    with mirrors(web_root, "corrupt", "ok") as (url, honest):
        trio.run(main, int(url.rsplit(":", 1)[1]))
    got, liar, b = outcome["got"], outcome["liar"], outcome["b"]
    assert DataTensor(b.home / "datasets" / dataset_id).verify() == []
    lying_url = f"http://127.0.0.1:{url.rsplit(':', 1)[1]}/{dataset_id}"
    assert f"{lying_url}: dropped, sent shard" in got, got
    assert f"peer {liar.peer_id}: dropped, sent shard" in got, got


def slow_head(port: int) -> socket.socket:
    """A connection that starts a request head and never finishes it."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    return connection


def closed_by_server(connection: socket.socket) -> bool:
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def test_the_per_ip_cap_and_the_head_deadline_hold_while_an_honest_fetch_completes(tensor, nodes):
    """A's data port keeps at most 6 connections from one IP and waits 2 s for a request head (LIMITED): a 7th
    connection takes the place of the oldest one still waiting for its head, a head that trickles in is cut at
    the deadline, and B's fetch over the data port completes while a slowloris keeps opening connections."""

    a = nodes("a", env=LIMITED)
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    port = a.data_port()

    held = [slow_head(port) for _ in range(6)]
    started = time.monotonic()
    newcomer = slow_head(port)
    assert closed_by_server(held[0])  # evicted for the newcomer, well before its head deadline
    assert time.monotonic() - started < HEAD_TIMEOUT / 2
    assert closed_by_server(newcomer)  # its head never came: cut at the deadline
    assert HEAD_TIMEOUT / 2 < time.monotonic() - started < HEAD_TIMEOUT + 3
    for connection in [*held, newcomer]:
        connection.close()

    trickle = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for byte in b"GET /" + b"x" * 100:
            trickle.sendall(bytes([byte]))
            time.sleep(0.1)  # the attack's pace, not a wait for the node
    assert time.monotonic() - started < HEAD_TIMEOUT + 3
    trickle.close()

    stop = threading.Event()

    def slowloris() -> None:
        opened = []
        while not stop.is_set():
            try:
                opened.append(slow_head(port))
            except OSError:
                pass
            del opened[:-50]  # closed when collected
            time.sleep(0.01)  # the attack's pace
        for connection in opened:
            connection.close()

    attacker = threading.Thread(target=slowloris)
    attacker.start()
    try:
        b = nodes("b", [a.address])
        got = b.cli("get", dataset_id, "--quiet").stdout
    finally:
        stop.set()
        attacker.join(timeout=10)
    assert DataTensor(b.home / "datasets" / dataset_id).verify() == []
    assert f"http://127.0.0.1:{port}/{dataset_id}: ok" in got, got


def test_the_have_answer_names_a_data_port_optionally_and_bounded():
    have = wire.have_bitmap([True, False, True])
    for port in (0, 1, 4012, 65535):
        frame = wire.encode_response(wire.HaveResponse(have, port))
        decoder = wire.FrameDecoder(wire.MAX_BITMAP_BYTES + 4096)
        decoder.feed(frame)
        assert wire.parse_response(decoder.next_frame(), wire.HaveResponse) == wire.HaveResponse(have, port)
    for bad in (0, 65536, -1, "4012", 1.0):
        obj = {"v": 2, "op": "have", "shards": have, "data_port": bad}
        with pytest.raises(wire.WireError, match="data_port"):
            wire.parse_response(obj, wire.HaveResponse)
    assert b"data_port" not in wire.encode_response(wire.HaveResponse(have))  # 0: not sent
    with pytest.raises(wire.WireError, match='unknown keys: "data_port"'):  # a manifest answer has no such key
        wire.parse_response(
            {
                "v": 2,
                "op": "manifest",
                "manifest": b"{}",
                "signature": bytes(64),
                "public_key": bytes(32),
                "allow": "",
                "allow_signature": b"",
                "data_port": 1,
            },
            wire.ManifestResponse,
        )


def test_where_the_data_port_listens():
    from kogitune.errors import NodeError
    from kogitune.node.dataport import data_listen_address

    listen = ["/ip4/127.0.0.1/tcp/0"]
    assert data_listen_address(None, listen) == ("127.0.0.1", 0)
    assert data_listen_address(None, ["/ip6/::1/tcp/4011"]) == ("::1", 0)
    assert data_listen_address("off", listen) is None
    assert data_listen_address("4012", listen) == ("127.0.0.1", 4012)
    assert data_listen_address("0.0.0.0:4012", listen) == ("0.0.0.0", 4012)
    assert data_listen_address("[::]:4012", listen) == ("::", 4012)
    for bad in ("x", "1.2.3.4:99999", "1.2.3.4:", ""):
        with pytest.raises(NodeError, match="--data-listen"):
            data_listen_address(bad, listen)


def test_a_data_port_that_never_answers_holds_nothing_up(tensor, nodes, tmp_path):
    """P serves honest bytes over libp2p and names a data port that accepts connections and never answers (as
    behind a firewall that drops them, but faster to see): B, with P as its only provider, completes from P's
    libp2p streams without waiting for the data port to fail out (its libp2p source waits for an untried data port
    DATA_PORT_PATIENCE_SECONDS at most, and stands by only for a data port that has delivered)."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    silent = socket.create_server(("127.0.0.1", 0))  # never accepts: the kernel completes handshakes, nobody answers
    outcome = {}

    async def main() -> None:
        peer = LyingPeer(a.home / "datasets" / dataset_id, silent.getsockname()[1])
        async with running(new_kogitune_host(peer.seed)) as host:
            host.set_stream_handler(TProtocol(wire.PROTOCOL_ID), peer.handle)
            dht = KadDHT(host, DHTMode.SERVER)
            async with background_trio_service(dht):
                with trio.fail_after(CONNECT_TIMEOUT):
                    await provide(dht, dataset_id)
                address = f"{host.get_addrs()[0]}/p2p/{host.get_id()}"
                b = await trio.to_thread.run_sync(lambda: nodes("b", [address]))
                started = time.monotonic()
                with trio.fail_after(60):
                    got = await trio.to_thread.run_sync(lambda: b.cli("get", dataset_id, "--quiet"))
                outcome.update(b=b, got=got.stdout, peer=peer, seconds=time.monotonic() - started)

    try:
        trio.run(main)
    finally:
        silent.close()
    assert DataTensor(outcome["b"].home / "datasets" / dataset_id).verify() == []
    assert f"peer {outcome['peer'].peer_id}: ok" in outcome["got"], outcome["got"]
    assert outcome["seconds"] < 2 * float(ENV["KOGITUNE_READ_TIMEOUT"])  # the data port fails out in 4 at least
