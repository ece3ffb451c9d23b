"""Kept-alive connections of node/http.py's HttpClient (node/keepalive.py), against trio servers written here that
answer several requests per connection: a connection is reused only after a response read whole, never when the
server closes it, says `Connection: close` or sent bytes past the body, and a reused one that turns out closed is
replaced by a new one without a failure. Each test runs under trio.fail_after(BOUND); nothing sleeps."""

from __future__ import annotations

from contextlib import asynccontextmanager, suppress
from functools import partial

import trio

from kogitune.node.http import HttpClient

BOUND = 5.0
TIMEOUT = 0.5
BODY = b"0123456789" * 100


def run(main) -> None:
    async def bounded():
        with trio.fail_after(BOUND):
            await main()

    trio.run(bounded)


def answer(body: bytes = BODY, extra: bytes = b"", fields: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s%s" % (len(body), fields, body, extra)


@asynccontextmanager
async def serving(script):
    """A server whose n-th connection answers its requests with `script(n)`: a list of the bytes to send for each
    request in turn (None: close without an answer); after the list, it closes. Yields (URL, connections seen)."""
    connections: list[int] = []

    async def handle(stream: trio.SocketStream) -> None:
        connections.append(len(connections))
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
            for reply in script(len(connections) - 1):
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(1 << 16)
                    if not chunk:
                        return
                    data += chunk
                data = data.partition(b"\r\n\r\n")[2]
                if reply is None:
                    break
                await stream.send_all(reply)
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}", connections
        nursery.cancel_scope.cancel()


async def read(client: HttpClient, url: str, limit: int | None = None) -> bytes:
    """The body of a GET of `url`, or its first `limit` bytes (the rest left unread)."""
    async with client.get(url) as response:
        if limit is None:
            return await response.body.read_all(1 << 20, url)
        buffer = bytearray(limit)
        count = await response.body.receive_into(memoryview(buffer))
        return bytes(buffer[:count])


def test_responses_read_whole_reuse_one_connection():
    async def main():
        async with serving(lambda n: [answer()] * 3) as (url, connections):
            client = HttpClient(TIMEOUT)
            assert [await read(client, f"{url}/f{i}") for i in range(3)] == [BODY] * 3
        assert len(connections) == 1

    run(main)


def test_a_response_read_in_part_closes_its_connection():
    async def main():
        async with serving(lambda n: [answer()] * 2) as (url, connections):
            client = HttpClient(TIMEOUT)
            assert await read(client, url, limit=10) == BODY[:10]
            assert await read(client, url) == BODY
        assert len(connections) == 2

    run(main)


def test_connection_close_and_bytes_past_the_body_are_not_reused():
    """A server that says it closes, or sends more than its Content-Length, never has its connection reused: the
    bytes past one body are never read as the start of the next response."""

    async def main():
        replies = [answer(fields=b"Connection: close\r\n"), answer(extra=b"HTTP/1.1 200 OK\r\n"), answer()]
        async with serving(lambda n: [replies[n]] * 2) as (url, connections):
            client = HttpClient(TIMEOUT)
            assert [await read(client, url) for _ in range(3)] == [BODY] * 3
        assert len(connections) == 3

    run(main)


def test_a_kept_connection_the_server_closed_is_replaced():
    """The server closes its first connection on the second request without an answer (as a server whose idle
    timeout ends just then): the request goes again on a new connection, and succeeds."""

    async def main():
        async with serving(lambda n: [answer(), None] if n == 0 else [answer()]) as (url, connections):
            client = HttpClient(TIMEOUT)
            assert await read(client, url) == BODY
            assert await read(client, url) == BODY
        assert len(connections) == 2

    run(main)
