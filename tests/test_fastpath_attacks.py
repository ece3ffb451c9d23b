"""Attacks on the data plane's fast paths: the one-round-trip opening of a data-protocol stream (node/peers.py), a
body received straight from the socket (node/http.py `_Body`), the data port's writes straight to the socket
(node/tlsdata.py `_Prefixed.send_all`) and pieces checked on check threads or between receives (node/fetch.py).

Hostile peers are scripted streams (what the fetcher reads and when is the thing under test; trio's mock clock for
time), hostile web servers and readers are threads with plain sockets on 127.0.0.1, and the fetch is a real
embedded node against mirror server processes. What was tried and held is listed in docs/security.md ("The fast
paths")."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import h11
import pytest
import trio
import trio.testing
from mirrors import mirrors
from test_dataport import request, tensor  # noqa: F401  (the published tensor fixture)
from test_dataport_attacks import PACED, TIMEOUT_SECONDS
from test_peer_streams import REQUEST, ScriptedHost, ScriptedStream

from kogitune.client import open_mirrors
from kogitune.content_store import ContentStore
from kogitune.errors import FetchError, SourceError
from kogitune.node.http import YIELD_BYTES, HttpClient, _Body
from kogitune.node.peers import PROPOSAL, READ_CHUNK, _open, _PeerBody
from kogitune.node.tlsdata import _Prefixed
from kogitune.protocol import wire
from kogitune.write import StoreOptions, store

# ---- the opening of a data-protocol stream: hostile echoes ---------------------------------------------------------


class PacedStream(ScriptedStream):
    """A scripted stream whose every read waits `pause` seconds first, and that stays silent (rather than ending)
    once its replies are spent if `silent`; `reset_after` replies, it raises a reset instead."""

    def __init__(self, replies: list[bytes], pause: float = 0, silent: bool = False, reset_after: int = -1) -> None:
        super().__init__(replies)
        self.pause, self.silent, self.reset_after, self.reads = pause, silent, reset_after, 0

    async def read(self, size: int) -> bytes:
        from libp2p.network.stream.exceptions import StreamReset

        if self.reads == self.reset_after:
            raise StreamReset("reset by the peer")
        self.reads += 1
        if not self.replies and self.silent:
            await trio.sleep_forever()
        await trio.sleep(self.pause)
        return await super().read(size)


class CountingHost(ScriptedHost):
    """Counts the negotiating streams the older-protocol check opens (it finds no older protocol)."""

    older_checks = 0

    async def new_stream(self, peer_id, protocols=None):
        if protocols is not None:
            self.older_checks += 1
        return await super().new_stream(peer_id, protocols)


def open_paced(stream: ScriptedStream, request: wire.Request = REQUEST, timeout: float = 5):
    """_open against `stream` on trio's mock clock: (the result or the exception, the seconds it took, the host)."""
    host = CountingHost(stream)

    async def main():
        started = trio.current_time()
        try:
            result = await _open(host, "peer", request, timeout)
        except SourceError as exc:
            result = exc
        return result, trio.current_time() - started

    result, seconds = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result, seconds, host


@pytest.mark.parametrize(
    "replies, pause",
    [
        ([PROPOSAL], 0),  # the echo, then silence
        ([PROPOSAL[:7]], 0),  # part of the echo, then silence
        ([bytes([byte]) for byte in PROPOSAL], 1.0),  # the echo dripped a byte a second, each read "in time"
    ],
    ids=["echo-then-silence", "part-then-silence", "dripped"],
)
def test_an_echo_that_stalls_or_drips_costs_one_timeout_for_the_whole_open(replies, pause):
    """The echo and the response share the open's one deadline: a peer that echoes and falls silent, or drips its
    echo a byte at a time, each read well within the timeout, is a failure after `timeout` seconds, not one timeout
    per read (40 for a dripped echo)."""
    stream = PacedStream(replies, pause=pause, silent=True)
    result, seconds, _ = open_paced(stream, timeout=5)
    assert isinstance(result, SourceError) and "no response within 5 s" in str(result)
    assert seconds == pytest.approx(5) and ("reset",) in stream.log


def test_a_stream_reset_mid_echo_is_a_failure_at_once_without_an_older_protocol_check():
    """A reset is the peer's failure (back-off), not a refusal of the protocol: no second stream is opened to ask
    for an older one, and nothing waits for a timeout."""
    stream = PacedStream([PROPOSAL[:9]], reset_after=1)
    result, seconds, host = open_paced(stream)
    assert isinstance(result, SourceError) and str(result).startswith("peer: stream failed: ")  # named
    assert seconds == 0 and host.older_checks == 0 and ("reset",) in stream.log


def test_a_huge_wrong_echo_is_refused_after_one_bounded_read():
    """A peer that answers the proposal with a flood of garbage is refused on the first read, which asks for at
    most READ_CHUNK bytes: nothing is kept beyond that read."""
    stream = PacedStream([b"\xff" * (4 * READ_CHUNK)])
    result, seconds, host = open_paced(stream)
    assert isinstance(result, SourceError) and f"does not speak {wire.PROTOCOL_ID}" in str(result)
    assert [event for event in stream.log if event[0] == "read"] == [("read", READ_CHUNK)]
    assert host.older_checks == 1 and seconds == 0


def test_a_response_glued_to_the_echo_yields_no_byte_beyond_what_was_asked():
    """The echo, the read response and its data in one burst, with more data than the request asked for: the body
    gives exactly the asked length, then ends (the rest is never handed on)."""
    request = wire.ReadRequest(bytes(32), "00000", "tokens", 0, 4)
    glued = PROPOSAL + wire.encode_response(wire.ReadResponse(4)) + b"abcd" + b"X" * 100_000
    stream = PacedStream([glued], silent=True)

    async def main():
        _, response, first = await _open(CountingHost(stream), "peer", request, 5)
        source = SimpleNamespace(read_timeout=5, name="peer")
        return response, await _PeerBody(source, stream, first, response.length).read_all(1 << 20, "tokens")

    response, data = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert response == wire.ReadResponse(4) and data == b"abcd"


def test_a_huge_frame_length_after_the_echo_is_refused_at_once():
    """A response header that claims more than the request's response limit is malformed as soon as its length is
    read: nothing waits for (or keeps) the claimed bytes."""
    claim = bytes([0x80, 0x80, 0x80, 0x80, 0x04])  # a varint of 1 GiB
    result, seconds, _ = open_paced(PacedStream([PROPOSAL + claim], silent=True))
    assert isinstance(result, SourceError) and "malformed response" in str(result) and seconds == 0


# ---- a body received straight from the socket: hostile web servers ------------------------------------------------


@contextmanager
def hostile_server(answer):
    """One-connection-at-a-time web server on 127.0.0.1 that reads a request head and calls `answer(connection)`;
    yields its URL. Threads, so the server never shares the client's trio run."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                try:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        data = connection.recv(4096)
                        if not data:
                            break
                        request += data
                    answer(connection)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/x"
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=10)


def flood(connection: socket.socket) -> None:
    """A body that claims 1 TiB and comes as fast as loopback carries it, until the client goes."""
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
    chunk = bytes(1 << 20)
    while True:
        connection.sendall(chunk)


def test_a_flooding_body_lets_other_tasks_run_and_its_deadline_cut_it():
    """A source that keeps the socket full (the body is received without waiting): other tasks still run (at
    least once per YIELD_BYTES received) and a deadline around the read (the fetch's stall timeout is one) ends it
    on time, although no receive ever has to wait."""

    async def main():
        ticks, received = 0, 0

        async def ticker():
            nonlocal ticks
            while True:
                await trio.sleep(0)
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            started = time.monotonic()
            with trio.move_on_after(1.0) as deadline:
                async with HttpClient(timeout=5).get(url) as response:
                    buffer = memoryview(bytearray(1 << 20))
                    while True:
                        received += await response.body.receive_into(buffer)
            elapsed = time.monotonic() - started
            nursery.cancel_scope.cancel()
        return deadline.cancelled_caught, elapsed, ticks, received

    with hostile_server(flood) as url:
        cut, elapsed, ticks, received = trio.run(main)
    assert cut and elapsed < 3, f"the deadline cut the flood after {elapsed:.1f} s"
    assert received > 8 * YIELD_BYTES and ticks >= received // (2 * YIELD_BYTES), (ticks, received)


class AlwaysQueued:
    """A stream whose socket always has bytes queued (its fd reads /dev/zero): a source faster than any reader."""

    def __init__(self) -> None:
        self.socket = open("/dev/zero", "rb", buffering=0)  # (a file object has fileno(), as a socket does)


def test_a_body_that_never_has_to_wait_still_yields_and_can_be_cut():
    """Bytes always queued, so no receive ever waits: the reader still lets other tasks run once per YIELD_BYTES,
    and one of them can cut it (as the fetch's stall timeout and a board's cut do). Without the yield, the loop
    here would read its 64 MiB with no other task running, and the cut would come too late."""
    stream = AlwaysQueued()

    async def main():
        body = _Body(stream, h11.Connection(h11.CLIENT), "http://flood/x", 5, 1 << 40)
        buffer, received, ticks = memoryview(bytearray(256 << 10)), 0, 0
        async with trio.open_nursery() as nursery:
            reading = trio.CancelScope()

            async def ticker():
                nonlocal ticks
                while True:
                    await trio.sleep(0)
                    ticks += 1
                    if ticks == 8:
                        reading.cancel()  # the cut

            nursery.start_soon(ticker)
            await trio.sleep(0)
            with reading:
                while received < 64 * YIELD_BYTES:
                    received += await body.receive_into(buffer)
            nursery.cancel_scope.cancel()
        return reading.cancelled_caught, received, ticks

    try:
        cut, received, ticks = trio.run(main)
    finally:
        stream.socket.close()
    assert cut and received <= 10 * YIELD_BYTES, (received, ticks)


BODY = os.urandom((1 << 20) + 7)


def more_than_content_length(connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY + b"EXTRA" * 200_000)
    connection.recv(1)  # until the client goes


def reset_mid_body(connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:300_000])
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends a reset


def close_mid_body(connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:300_000])


async def read_body(url: str) -> tuple[bytes, bool]:
    """The body (64 KiB reads, past the head's read) and whether it was complete."""
    received = bytearray()
    async with HttpClient(timeout=5).get(url) as response:
        buffer = memoryview(bytearray(64 << 10))
        while count := await response.body.receive_into(buffer):
            received += buffer[:count]
        return bytes(received), response.body.complete


def test_a_body_is_exactly_its_content_length_whatever_follows_it():
    """Bytes a server sends past Content-Length never reach the caller (received straight into its buffer, which
    each read cuts to what is left of the body)."""
    with hostile_server(more_than_content_length) as url:
        data, complete = trio.run(read_body, url)
    assert data == BODY and complete


@pytest.mark.parametrize("answer", [reset_mid_body, close_mid_body])
def test_a_body_cut_mid_way_is_a_source_error_at_once(answer):
    """A reset (ECONNRESET from readv) or a close mid-body is the source's failure, named, without a wait."""
    started = time.monotonic()
    with hostile_server(answer) as url, pytest.raises(SourceError, match="reading failed|connection closed after"):
        trio.run(read_body, url)
    assert time.monotonic() - started < 3


# ---- the data port's writes straight to the socket: a closed or evicted connection --------------------------------


@pytest.mark.parametrize("how", ["closed", "evicted"])
def test_a_send_waiting_on_a_full_socket_never_writes_after_its_connection_ends(how):
    """A send blocked on a reader that reads nothing, when its connection is closed (another task closes it) or
    evicted (its cancel scope ends): the send ends, and a new connection that gets the same fd number receives
    nothing from it."""

    async def main():
        server_side, reader = trio.socket.socketpair()
        fd = server_side.fileno()
        stream = _Prefixed(trio.SocketStream(server_side), b"")
        outcome = []

        async def sender(scope: trio.CancelScope):
            with scope:
                try:
                    await stream.send_all(bytes(32 << 20))  # far beyond the socket buffers
                except trio.ClosedResourceError:
                    outcome.append("closed")
                return
            outcome.append("evicted")

        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()
            nursery.start_soon(sender, scope)
            await trio.testing.wait_all_tasks_blocked()
            if how == "closed":
                await stream.aclose()
            else:
                scope.cancel()
        if how == "evicted":
            await stream.aclose()
        pairs = []  # new connections until one gets the old fd number (the lowest free one: at once, as a rule)
        while len(pairs) < 16 and fd not in (number for pair in pairs for number in map(socket.socket.fileno, pair)):
            pairs.append(socket.socketpair())
            pairs[-1][1].setblocking(False)
        await trio.testing.wait_all_tasks_blocked()
        for _, other_end in pairs:
            with pytest.raises(BlockingIOError):
                other_end.recv(1)  # nothing came through a new connection
        assert outcome == [how] and fd in (number for pair in pairs for number in map(socket.socket.fileno, pair))
        reader.close()
        for pair in pairs:
            pair[0].close(), pair[1].close()

    trio.run(main)


def test_a_connection_cut_before_its_send_sends_nothing():
    """A send that starts when its connection's scope is already cancelled (evicted, or its allowance spent: the
    data port's slow-reader floor) writes nothing, as trio's own send_all does, even with room in the socket.
    Before the fix, it wrote the whole chunk first and noticed the cut only at its last checkpoint."""

    async def main():
        server_side, reader = trio.socket.socketpair()
        stream = _Prefixed(trio.SocketStream(server_side), b"")
        with trio.move_on_after(0) as cut:
            await stream.send_all(b"x" * 1000)
        assert cut.cancelled_caught
        with pytest.raises(BlockingIOError):
            reader._sock.recv(1)
        await stream.aclose()
        reader.close()

    trio.run(main)


def test_readers_that_reset_mid_answer_or_never_read_leave_the_node_serving(tensor, nodes):  # noqa: F811
    """Against a node process (its data port writes straight to the socket): 24 connections that pipeline 40
    requests for a shard each and reset after the first bytes, and 8 that never read, all at once. The node goes on:
    an honest request gets the exact file and `kogitune node status` answers."""
    a = nodes("a", env=PACED)
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    port = a.data_port()
    shard = tensor.shards[0]
    path = f"/{dataset_id}/{shard.tokens_path}"
    requests = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode() * 40
    hostile = []
    for _ in range(32):
        connection = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS)
        connection.sendall(requests)
        hostile.append(connection)
    for connection in hostile[:24]:
        connection.recv(1)  # the answer has begun
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()  # a reset, with the server mid-answer
    status, _, body = request(port, path)
    assert status == 200 and body == (tensor.path / shard.tokens_path).read_bytes()
    assert "data port" in a.cli("node", "status").stdout
    for connection in hostile[24:]:
        connection.close()


# ---- pieces checked on check threads or between receives ----------------------------------------------------------


@pytest.fixture(scope="module")
def small_tensor(tmp_path_factory, small_corpus):
    """Two shards of 64 KiB pieces."""
    path = tmp_path_factory.mktemp("fastpath") / "tensor"
    options = StoreOptions(block_size=64, piece_size=64 << 10, shard_size=128 << 10, workers=1)
    store([small_corpus], "gpt2", path, options, progress=False)
    return path


@pytest.mark.parametrize("check_threads", ["0", "2"])
def test_a_lying_mirror_is_banned_and_writes_nothing_in_both_check_modes(
    small_tensor, tmp_path, monkeypatch, check_threads
):
    """A mirror that corrupts every response is banned for a wrong hash whether pieces are checked on check threads
    or between receives, and what its fetch left on disk holds no byte it sent wrong (the corrupting mirror flips the
    first byte of each response: its other pieces are right, and may be kept)."""
    monkeypatch.setenv("KOGITUNE_CHECK_THREADS", check_threads)
    monkeypatch.setenv("KOGITUNE_READ_TIMEOUT", "2")
    content = ContentStore(tmp_path / "store")
    with mirrors(small_tensor, "ok") as good:
        open_mirrors(good, content)  # the manifest, from an honest mirror
    with mirrors(small_tensor, "corrupt") as bad:
        tensor = open_mirrors(bad, content)
        with pytest.raises(FetchError, match="wrong hash"):
            tensor.shard_tokens(0)
    shard = tensor.manifest.shards[0]
    true = (small_tensor / shard.tokens_path).read_bytes()
    (partial,) = (tmp_path / "store").rglob(f"{shard.name}.tokens*")
    kept = partial.read_bytes()
    piece = 64 << 10
    for start in range(0, len(kept), piece):  # each piece not written (zeros) or the right bytes
        assert kept[start : start + piece] in (true[start : start + piece], bytes(len(kept[start : start + piece])))
