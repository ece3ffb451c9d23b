"""The fetcher's TLS stream (node/tlsclient.py) against trio.SSLStream as the data port runs it (node/tlsdata.py).

A body of many TLS records must land in the caller's buffer in a few receives (trio.SSLStream takes one per 16 KiB
record), and a server that stops in the middle of a record must fail the fetch, never end it early as if whole.
The first tests run over an in-memory stream pair, so that what has arrived is exact; the last over 127.0.0.1.
Each test runs under trio.fail_after(BOUND); nothing sleeps.
"""

from __future__ import annotations

import os
from contextlib import suppress
from functools import partial

import h11
import pytest
import trio
import trio.testing

from kogitune.errors import SourceError
from kogitune.node.http import HttpClient
from kogitune.node.tlsclient import ClientTls
from kogitune.node.tlsdata import PeerTls, ServerTls

BOUND = 10.0
TIMEOUT = 2.0
SERVER_SEED, FETCHER_SEED = bytes(range(32)), bytes([7] * 32)
PIECE = 1 << 20
RECORD = 16 << 10


def run(test) -> None:
    async def bounded():
        with trio.fail_after(BOUND):
            await test()

    trio.run(bounded)


async def connected(identity: ServerTls) -> tuple[trio.SSLStream, ClientTls]:
    """A data port's TLS end and a fetcher's, handshaken over an in-memory stream pair."""
    server_side, client_side = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_side, identity.context, server_side=True, https_compatible=True)
    client = ClientTls(client_side, PeerTls(identity.peer_id, FETCHER_SEED).context, None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


def test_a_piece_of_many_records_fills_one_buffer_in_few_receives():
    identity = ServerTls(SERVER_SEED)
    data = os.urandom(PIECE)

    async def main():
        server, client = await connected(identity)
        assert client.getpeercert(binary_form=True) == identity.certificate  # what PeerTls pins the peer ID by
        await server.send_all(data)  # 64 records, all arrived before the fetcher reads
        buffer, filled, receives = bytearray(PIECE), 0, 0
        while filled < PIECE:
            filled += await client.receive_into(memoryview(buffer)[filled:])
            receives += 1
        assert bytes(buffer) == data
        assert receives <= 2, f"{receives} receives for {PIECE // RECORD} records"

    run(main)


def test_the_end_of_the_stream_reads_as_0_after_the_data():
    identity = ServerTls(SERVER_SEED)

    async def main():
        server, client = await connected(identity)
        await server.send_all(b"the whole body")
        await server.aclose()
        buffer = memoryview(bytearray(64))
        assert buffer[: await client.receive_into(buffer)] == b"the whole body"
        assert await client.receive_into(buffer) == 0
        assert await client.receive_some() == b""

    run(main)


class _Cut(trio.abc.Stream):
    """A server's transport that, once `cut_after` is set, passes on that many more bytes and then closes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream, self.cut_after = stream, None

    async def receive_some(self, max_bytes=None):
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data) -> None:
        if self.cut_after is None:
            return await self.stream.send_all(data)
        await self.stream.send_all(bytes(data)[: self.cut_after])
        await self.stream.aclose()
        raise trio.BrokenResourceError("cut")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.mark.parametrize("cut", [RECORD * 2 + 1000, 5])
def test_a_server_that_closes_mid_record_fails_the_fetch(cut):
    """The body's bytes stop inside a TLS record (or inside the first record's header): a SourceError, not a body
    that ends early."""
    identity = ServerTls(SERVER_SEED)
    data = os.urandom(PIECE)

    async def handle(stream: trio.abc.Stream) -> None:
        cutter = _Cut(stream)
        tls = trio.SSLStream(cutter, identity.context, server_side=True, https_compatible=True)
        connection = h11.Connection(h11.SERVER)
        while connection.next_event() is h11.NEED_DATA:
            connection.receive_data(await tls.receive_some(1 << 16))
        await tls.send_all(connection.send(h11.Response(status_code=200, headers=[("Content-Length", str(PIECE))])))
        cutter.cut_after = cut
        with pytest.raises(trio.BrokenResourceError):
            await tls.send_all(data)

    async def main():
        async with trio.open_nursery() as nursery:
            listener = (await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1")))[0]
            url = f"https://127.0.0.1:{listener.socket.getsockname()[1]}/piece"
            client = HttpClient(TIMEOUT, redirects=0, peer=PeerTls(identity.peer_id, FETCHER_SEED))
            with pytest.raises(SourceError, match=f"connection closed after [0-9]+ of {PIECE} body bytes"):
                async with client.get(url) as response:
                    assert response.status == 200
                    await response.body.read_all(PIECE, url)
            nursery.cancel_scope.cancel()

    run(main)


def test_bytes_past_a_body_over_tls_are_not_read_as_the_next_response():
    """A server sends more than its Content-Length after a body larger than one receive of the head: those bytes
    wait in the TLS stream, not on the socket, and the connection must not be reused for the next request."""
    identity = ServerTls(SERVER_SEED)
    body = os.urandom(200 << 10)
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%sHTTP/1.1 200 OK\r\n" % (len(body), body)
    connections = []

    async def handle(stream: trio.abc.Stream) -> None:
        connections.append(stream)
        tls = trio.SSLStream(stream, identity.context, server_side=True, https_compatible=True)
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                connection = h11.Connection(h11.SERVER)
                while connection.next_event() is h11.NEED_DATA:
                    connection.receive_data(data := await tls.receive_some(1 << 16))
                    if not data:
                        return
                await tls.send_all(reply)

    async def main():
        async with trio.open_nursery() as nursery:
            listener = (await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1")))[0]
            url = f"https://127.0.0.1:{listener.socket.getsockname()[1]}/piece"
            client = HttpClient(TIMEOUT, redirects=0, peer=PeerTls(identity.peer_id, FETCHER_SEED))
            for _ in range(2):
                async with client.get(url) as response:
                    assert await response.body.read_all(len(body), url) == body
            assert len(connections) == 2
            nursery.cancel_scope.cancel()

    run(main)
