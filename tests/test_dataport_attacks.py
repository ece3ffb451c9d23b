"""Attacks on the data plane over HTTP (node/dataport.py, node/peer_http.py, node/http.py), against real node
processes and hostile HTTP servers on 127.0.0.1: a data port that answers with response heads that never end (1xx
heads without end, a head dripped a byte at a time) is a failure of that source within twice the read timeout, and the
peer's libp2p source takes over again, instead of a fetch worker (and, with the 1xx, the fetcher's CPU) held for as
long as the liar likes while the peer's libp2p source stands by.

What was tried and needed no change is listed in docs/security.md ("The data port")."""

from __future__ import annotations

import re
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import trio
from netnodes import ENV
from test_dataport import LyingPeer, tensor  # noqa: F401  (the module's published tensor fixture)
from test_network_hostile import CONNECT_TIMEOUT, running

from kogitune.errors import SourceError
from kogitune.node.pool import SourcePool
from kogitune.node.sources import HttpSource, Source
from kogitune.protocol import wire
from kogitune.tensor import DataTensor

READ_TIMEOUT = 3.0
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
