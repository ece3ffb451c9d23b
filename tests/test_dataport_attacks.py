"""Attacks on the data plane over HTTP (node/dataport.py, node/peer_http.py, node/http.py), against real node
processes and hostile HTTP servers on 127.0.0.1: a data port that answers with response heads that never end (1xx
heads without end, a head dripped a byte at a time) is a failure of that source within twice the read timeout, and the
peer's libp2p source takes over again, instead of a fetch worker (and, with the 1xx, the fetcher's CPU) held for as
long as the liar likes while the peer's libp2p source stands by.

The serving side, against a node process: a request head is due one head timeout after the accept, however the
client splits it between its first byte, a TLS handshake and the head; a connection's answers keep the slow-reader
floor over its whole life (a client draining pipelined small answers is cut as one that stalls a large one); an
`Authorization` costs a signature check only for a private dataset; and, held with no change, links and `.partial`
files in the store, request floods, big heads, bodies and odd ranges meet the port's rules.

What was tried and needed no change is listed in docs/security.md ("The data port")."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from netnodes import ENV
from test_dataport import LyingPeer, tensor  # noqa: F401  (the module's published tensor fixture)
from test_network_hostile import CONNECT_TIMEOUT, running

from kogitune.errors import SourceError
from kogitune.layout import IDENTITY_FILE
from kogitune.node.pool import SourcePool
from kogitune.node.sources import HttpSource, Source
from kogitune.node.tlsdata import ServerTls
from kogitune.protocol import wire
from kogitune.protocol.tlsid import check_auth as tlsid_check_auth
from kogitune.tensor import DataTensor

READ_TIMEOUT = 3.0
TIMEOUT_SECONDS = 20.0
STALL_TIMEOUT = 20
"""B's stall timeout: without the head bound, the shard would fail after this long (the liar's data port holding
its worker while its libp2p source stands by)."""
SMALL_FILE_DELAY = 1.5
ONE_XX = b"HTTP/1.1 100 Continue\r\n\r\n" * 64


@contextmanager
def hostile_http(answer):
    """A web server on 127.0.0.1 that calls `answer(connection, path, data)` for each request (a thread per
    connection); yields its port."""
    server = socket.create_server(("127.0.0.1", 0))

    def one(connection: socket.socket) -> None:
        with connection:
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = connection.recv(4096)
                    if not data:
                        return
                    request += data
                answer(connection, request.split(b" ", 2)[1].decode())
            except OSError:
                pass

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def flood_1xx(connection: socket.socket, _path: str) -> None:
    while True:
        connection.sendall(ONE_XX)


def drip_head(connection: socket.socket, _path: str) -> None:
    for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Drip: 1\r\n" * 1000:
        connection.sendall(bytes([byte]))
        time.sleep(READ_TIMEOUT / 4)  # the attack's pace: each read well within the read timeout


@pytest.mark.parametrize("answer", [flood_1xx, drip_head])
def test_a_response_head_that_never_ends_is_a_failure_within_twice_the_read_timeout(answer):
    async def fetch(port: int) -> None:
        source = HttpSource(f"http://127.0.0.1:{port}/x", READ_TIMEOUT, redirects=0)
        with trio.fail_after(READ_TIMEOUT + 5):  # the test's bound: without the head bound, it reads for ever
            async with source.stream("shards/00000.tokens", 0):
                pass

    with hostile_http(answer) as port:
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"informational|no whole response head"):
            trio.run(fetch, port)
        assert time.monotonic() - started < 2 * READ_TIMEOUT + 2


class SlowSmallFilesPeer(LyingPeer):
    """Serves honest bytes over libp2p, the .pieces and .docs files SMALL_FILE_DELAY late (so that its data port,
    asked a hedge step later, delivers them and its libp2p source stands by for the data port), and names a data
    port."""

    async def handle(self, stream) -> None:
        decoder = wire.FrameDecoder(wire.MAX_REQUEST_BYTES)
        try:
            with trio.fail_after(10):
                while (frame := decoder.next_frame()) is None:
                    decoder.feed(await stream.read(4096))
                request = wire.parse_request(frame)
                if isinstance(request, wire.ReadRequest) and request.file != "tokens":
                    await trio.sleep(SMALL_FILE_DELAY)
                await stream.write(self.answer(request))
            await stream.close()
        except Exception:
            await stream.reset()


def test_a_data_port_that_floods_1xx_heads_after_delivering_gives_way_to_the_peers_libp2p(tensor, nodes):  # noqa: F811
    """P, the only provider, serves honest bytes over libp2p; its data port serves the small files, then answers
    every tokens request with 1xx heads without end. B's fetch drops the data port within seconds and completes
    from P's libp2p streams (before the fix: the worker read 1xx heads for ever, P's libp2p source stood by for
    the data port, and the shard failed at the stall timeout)."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    from kogitune.node.host import new_kogitune_host
    from kogitune.node.providers import provide

    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    directory = a.home / "datasets" / dataset_id

    def answer(connection: socket.socket, path: str) -> None:
        name = path.split("/", 2)[2]
        if ".tokens" in name:  # .tokens, or .tokens.zst when the fetcher asks for the compressed form
            flood_1xx(connection, path)
        data = (directory / name).read_bytes()
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data)

    env = {**ENV, "KOGITUNE_READ_TIMEOUT": str(READ_TIMEOUT), "KOGITUNE_STALL_TIMEOUT": str(STALL_TIMEOUT)}
    outcome = {}

    async def main(port: int) -> None:
        peer = SlowSmallFilesPeer(directory, port)
        async with running(new_kogitune_host(peer.seed)) as host:
            host.set_stream_handler(TProtocol(wire.PROTOCOL_ID), peer.handle)
            dht = KadDHT(host, DHTMode.SERVER)
            async with background_trio_service(dht):
                with trio.fail_after(CONNECT_TIMEOUT):
                    await provide(dht, dataset_id)
                address = f"{host.get_addrs()[0]}/p2p/{host.get_id()}"
                b = await trio.to_thread.run_sync(lambda: nodes("b", [address], env=env))
                started = time.monotonic()
                got = await trio.to_thread.run_sync(lambda: b.cli("get", dataset_id, "--quiet", check=False))
                outcome.update(b=b, got=got, seconds=time.monotonic() - started, peer=peer)

    with hostile_http(answer) as port:
        trio.run(main, port)
    got, b = outcome["got"], outcome["b"]
    assert got.returncode == 0, got.stderr
    assert DataTensor(b.home / "datasets" / dataset_id).verify() == []
    data_port = f"http://127.0.0.1:{port}/{dataset_id}"
    # Dropped after 4 failures; a request already in flight may still fail after that and be counted.
    assert re.search(rf"{re.escape(data_port)}: [45] failure\(s\), last: {re.escape(data_port)}/shards/", got.stdout), (
        got.stdout
    )
    assert "informational" in got.stdout and f"peer {outcome['peer'].peer_id}: ok" in got.stdout, got.stdout
    assert outcome["seconds"] < STALL_TIMEOUT * 0.6


class PeerTransport(Source):
    """One of a peer's two sources as the pool sees it (the pool's rules only, no transfer)."""

    def __init__(self, name: str, preferred: bool) -> None:
        self.name, self.identity, self.preferred = name, "peer P", preferred


def test_a_data_port_that_failed_out_stays_out_when_a_request_in_flight_succeeds():
    """P's data port delivered, so P's libp2p source stood by; then the data port failed out (4 failures: its tokens
    requests fail at once) and P's libp2p source took over. A small file the data port was still sending succeeds
    after that: the data port must stay out, else P's libp2p workers stand by again while the data port, failed
    out, has no worker left, and the shard ends with "could not be fetched from any source"."""

    async def main() -> None:
        data_port, libp2p = PeerTransport("data port", True), PeerTransport("libp2p", False)
        pool = SourcePool([libp2p, data_port])
        port_health, libp2p_health = pool.health[1], pool.health[0]
        port_health.files_verified = 1
        assert pool.usable() == [port_health]  # the libp2p source stands by for the data port that delivered
        for _ in range(pool.max_failures):
            pool.failed(port_health, "more than 4 informational (1xx) responses")
        assert pool.usable() == [libp2p_health]
        pool.succeeded(port_health)  # a .docs file that was in flight arrives whole and checks
        assert pool.usable() == [libp2p_health]

    trio.run(main)


PACED = {**ENV, "KOGITUNE_SERVER_REQUEST_TIMEOUT": "3", "KOGITUNE_SERVER_WRITE_TIMEOUT": "2"}
"""A node whose data port waits 3 s for a request head and 2 s for each 1 MiB write (a reader below 512 KiB/s)."""
HEAD_TIMEOUT = 3.0


def seconds_until_closed(connection: socket.socket, started: float, bound: float) -> float:
    """Seconds from `started` until the server closed `connection` (reading and dropping what it sends); `bound`
    if it is still open then (the test's bound)."""
    connection.settimeout(0.2)
    while time.monotonic() - started < bound:
        try:
            if not connection.recv(65536):
                break
        except TimeoutError:
            continue
        except OSError:
            break
    return time.monotonic() - started


def tls_client_hello() -> tuple[bytes, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A TLS 1.3 ClientHello (no certificate checked: the server's binding is not what is tried here)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read(), tls, incoming, outgoing


def test_a_request_head_is_due_within_one_head_timeout_of_the_accept_whatever_comes_first(tensor, nodes):  # noqa: F811
    """The head deadline counts from the accept, also when the first byte comes late and when that byte opens TLS.
    Before the fix, telling TLS from plain HTTP waited up to a head timeout for the first byte and the head then had
    a whole timeout of its own (and over TLS the handshake a third): a slowloris held its slot 2x (3x) as long."""
    a = nodes("a", env=PACED)
    port = a.data_port()

    late = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS)
    started = time.monotonic()
    time.sleep(HEAD_TIMEOUT * 0.7)  # the attack's pace: one byte just within the deadline, then nothing
    late.sendall(b"G")
    assert seconds_until_closed(late, started, 3 * HEAD_TIMEOUT) < HEAD_TIMEOUT + 1.3
    late.close()

    tls_late = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS)
    started = time.monotonic()
    hello, tls, incoming, outgoing = tls_client_hello()
    time.sleep(HEAD_TIMEOUT * 0.5)  # the attack's pace
    tls_late.sendall(hello)
    tls_late.settimeout(TIMEOUT_SECONDS)
    while True:  # finish the handshake at once, then send no request
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            incoming.write(tls_late.recv(65536))
    tls_late.sendall(outgoing.read())
    assert seconds_until_closed(tls_late, started, 3 * HEAD_TIMEOUT) < HEAD_TIMEOUT + 1.3
    tls_late.close()


def test_a_reader_that_drains_pipelined_answers_slowly_is_cut_like_a_slow_reader_of_one(tensor, nodes):  # noqa: F811
    """A client pipelines hundreds of 16 KiB range requests on one connection and reads 16 KiB/s, far below the
    data port's floor (PACED: 512 KiB/s): each small answer leaves within the write timeout, but the connection as
    a whole must keep to the floor, so it is cut within seconds of the server's first wait. Before the fix, a write
    timeout per write let it hold its slot (never idle, so never evicted for its IP's newcomers) for 1000 answers,
    here ~15 minutes."""
    a = nodes("a", env=PACED)
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    port = a.data_port()
    shard = tensor.shards[0]
    span = 16 << 10
    requests = b"".join(
        b"GET /%s/%s HTTP/1.1\r\nHost: x\r\nRange: bytes=%d-%d\r\n\r\n"
        % (dataset_id.encode(), shard.tokens_path.encode(), start, start + span - 1)
        for start in (span * (i % (shard.size // span)) for i in range(900))
    )
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", port))
    reader.sendall(requests)
    started, received, closed = time.monotonic(), 0, False
    while time.monotonic() - started < 20:  # the test's bound; at 16 KiB/s the 900 answers take 15 minutes
        try:
            data = reader.recv(span)
        except ConnectionResetError:  # closed with pipelined requests unread
            data = b""
        if not data:
            closed = True
            break
        received += len(data)
        time.sleep(len(data) / span)  # the attack's pace: 16 KiB/s
    reader.close()
    assert closed, f"still served after {time.monotonic() - started:.0f} s and {received} bytes"
    assert received < 300 * span  # cut long before its 900 answers (the first ones fill the socket buffers)


def test_the_first_byte_and_the_tls_handshake_share_one_deadline():
    """ServerTls.accept: a ClientHello whose first byte comes at 0.6 of the timeout and the rest at 1.2 is refused
    at the timeout (before the fix, each had a whole timeout: the handshake finished, and the head had one more)."""
    timeout = 5.0
    hello, tls, incoming, outgoing = tls_client_hello()

    async def client(stream: trio.abc.Stream) -> None:
        await trio.sleep(0.6 * timeout)  # the attack's pace (trio's mock clock: no real wait)
        await stream.send_all(hello[:1])
        await trio.sleep(0.6 * timeout)
        try:
            await stream.send_all(hello[1:])
            while True:
                try:
                    tls.do_handshake()
                    await stream.send_all(outgoing.read())
                    return
                except ssl.SSLWantReadError:
                    incoming.write(await stream.receive_some(65536))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass

    async def main() -> None:
        server_side, client_side = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client, client_side)
            started = trio.current_time()
            accepted = await ServerTls(bytes(range(32))).accept(server_side, timeout)
            assert accepted is None and trio.current_time() - started == pytest.approx(timeout)
            await client_side.aclose()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_links_and_partial_files_in_the_store_serve_nothing(tensor, nodes, tmp_path):  # noqa: F811
    """Store files swapped for a symbolic or a hard link to a secret (the node's identity key), and the `.partial`
    file of a fetch, are the one 404 on the data port (held, with no change: StoreGuard's checks)."""
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    port = a.data_port()
    shards = a.home / "datasets" / dataset_id / "shards"
    shard = tensor.shards[0]
    secret = a.home / IDENTITY_FILE
    base = f"http://127.0.0.1:{port}/{dataset_id}"
    assert http_get(f"{base}/{shard.docs_path}")[0] == 200
    (shards / f"{shard.name}.tokens.partial").write_bytes(b"bytes of an unfinished fetch")
    for name, link in [
        (f"{shard.name}.docs", Path.symlink_to),
        (f"{shard.name}.pieces", Path.hardlink_to),
        (f"{shard.name}.tokens", Path.hardlink_to),
        (f"{shard.name}.tokens", Path.symlink_to),
    ]:
        (shards / name).replace(tmp_path / name)
        link(shards / name, secret)
        for path in (f"shards/{name}", f"shards/{shard.name}.tokens.partial"):
            assert http_get(f"{base}/{path}") == (404, b"not found\n"), (name, link, path)
        (shards / name).unlink()
        (tmp_path / name).replace(shards / name)


def http_get(url: str) -> tuple[int, bytes]:
    """(status, body) of a GET (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def answers(connection: socket.socket, bound: float = TIMEOUT_SECONDS) -> list[tuple[int, dict, bytes]]:
    """The responses read from `connection` until the server closes it, each (status, headers, body)."""
    connection.settimeout(bound)
    data = b""
    while True:
        try:
            chunk = connection.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        data += chunk
    found = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(fields["content-length"])
        found.append((int(lines[0].split()[1]), fields, data[:length]))
        data = data[length:]
    return found


def test_request_floods_heads_bodies_and_odd_ranges_meet_the_data_ports_rules(tensor, nodes):  # noqa: F811
    """Held with no change, checked on a node process: a connection answers requests_per_connection pipelined
    requests (the last with `Connection: close`) and no more; a head over 8 KiB is 431 and a request with a body
    400, each closing the connection; Range forms other than one span are the whole file, a span past the end 416;
    a reader that stops reading is cut by the write timeout."""
    env = {**PACED, "KOGITUNE_DATA_PORT_REQUESTS_PER_CONNECTION": "60"}
    a = nodes("a", env=env)
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    port = a.data_port()
    shard = tensor.shards[0]
    data = (tensor.path / shard.tokens_path).read_bytes()
    target = f"/{dataset_id}/{shard.tokens_path}".encode()

    def exchange(raw: bytes) -> list[tuple[int, dict, bytes]]:
        connection = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS)
        with connection:
            connection.sendall(raw)
            return answers(connection)

    flood = exchange(b"GET %s HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\r\n" % target * 65)
    assert [status for status, _, _ in flood] == [206] * 60
    assert flood[-1][1].get("connection") == "close" and "connection" not in flood[-2][1]
    assert [status for status, _, _ in exchange(b"GET / HTTP/1.1\r\nHost: x\r\nX: %s\r\n\r\n" % (b"y" * 9000))] == [431]
    with_body = b"GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" % target
    assert [status for status, _, _ in exchange(with_body * 2)] == [400]
    ranges = {
        b"bytes=0-1,5-6": (200, data),
        b"bytes=-5": (200, data),
        b"bytes=99999999999999999999-": (200, data),
        b"bytes=%d-" % len(data): (416, None),
        b"bytes=10-19": (206, data[10:20]),
    }
    for spec, (status, body) in ranges.items():
        ((got, _, got_body),) = exchange(
            b"GET %s HTTP/1.1\r\nHost: x\r\nRange: %s\r\nConnection: close\r\n\r\n" % (target, spec)
        )
        assert got == status and (body is None or got_body == body), spec

    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target * 59)  # ~15 MiB in all, far past the buffers
    time.sleep(3 * 2)  # the attack: read nothing for 3 write timeouts
    with stalled:
        assert len(answers(stalled)) < 59  # cut: the answers stopped, and the connection was closed


def test_a_signature_is_checked_only_for_a_private_datasets_request(tensor, nodes, monkeypatch):  # noqa: F811
    """Over TLS, a request's `Authorization` costs the port an Ed25519 verification: only a private dataset's
    request needs one. Before, every request that carried the header was verified, so anyone could make each cheap
    request to a public dataset cost that too. A's store served by a DataPort in this process (spying on the
    checks)."""
    from kogitune.content_store import ContentStore
    from kogitune.node import tlsdata
    from kogitune.node.dataport import DataPort
    from kogitune.node.http import HttpClient
    from kogitune.node.server import DataServer
    from kogitune.protocol.signing import peer_id_from_public_key, public_key_from_seed

    fetcher_seed = bytes(range(1, 33))
    a = nodes("a")
    public_id = a.cli("publish", str(tensor.path)).stdout.strip()
    fetcher = peer_id_from_public_key(public_key_from_seed(fetcher_seed))
    private_id = a.cli("publish", str(tensor.path), "--allow", fetcher).stdout.strip()
    checked = []
    monkeypatch.setattr(tlsdata, "check_auth", lambda *args: checked.append(args) or tlsid_check_auth(*args))

    async def main() -> list[int]:
        port = DataPort(DataServer(ContentStore(a.home)))
        port.tls = tlsdata.ServerTls(bytes(range(32)))
        async with trio.open_nursery() as nursery:
            host, number = await nursery.start(port.serve, "127.0.0.1", 0)
            client = HttpClient(TIMEOUT_SECONDS, peer=tlsdata.PeerTls(port.tls.peer_id, fetcher_seed))
            statuses = []
            for dataset_id in (public_id, public_id, private_id):
                with trio.fail_after(TIMEOUT_SECONDS):
                    async with client.get(f"https://{host}:{number}/{dataset_id}/manifest.json") as response:
                        await response.body.read_all(1 << 20, "manifest")
                        statuses.append(response.status)
            nursery.cancel_scope.cancel()
        return statuses

    assert trio.run(main) == [200, 200, 200]
    assert len(checked) == 1  # the private dataset's request only
