"""A small HTTP/1.1 GET client for mirrors: trio streams, h11 for the framing, big reads, one request per connection.

Mirrors serve large static files, so a fetch needs no connection pool, no cookies and no content decoding. What it
needs is little CPU per byte: httpx reads 64 KiB at a time and cost 4 times the CPU of this client on loopback
(scripts/bench_fetch.py), which made hashing plus receiving CPU-bound. Every read is bounded by `timeout`.
"""

from __future__ import annotations

import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import h11
import trio

from .errors import SourceError

READ_BYTES = 1 << 20
MAX_HEAD_BYTES = 64 << 10
MAX_REDIRECTS = 5
USER_AGENT = "kogitune"


@dataclass
class Response:
    """A response whose body is still on the wire: iterate `body` inside the `get` block."""

    url: str
    status: int
    headers: dict[str, str]
    body: _Body


class HttpClient:
    """GET requests with a timeout on every network operation, following up to MAX_REDIRECTS redirects."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tls: ssl.SSLContext | None = None

    @asynccontextmanager
    async def get(self, url: str, headers: dict[str, str] | None = None):
        """Yields the `Response` of the first non-redirect answer; the connection closes when the block ends."""
        for _ in range(MAX_REDIRECTS + 1):
            stream = await self._connect(url)
            try:
                connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
                await self._send(stream, connection, url, headers or {})
                head = await _next_event(stream, connection, url, self.timeout)
                while isinstance(head, h11.InformationalResponse):
                    head = await _next_event(stream, connection, url, self.timeout)
                if not isinstance(head, h11.Response):
                    raise SourceError(f"{url}: connection closed before the response")
                fields = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in head.headers}
                if head.status_code in (301, 302, 303, 307, 308) and "location" in fields:
                    url = urljoin(url, fields["location"])
                    continue
                yield Response(url, head.status_code, fields, _Body(stream, connection, url, self.timeout))
                return
            finally:
                await trio.aclose_forcefully(stream)
        raise SourceError(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def _connect(self, url: str) -> trio.abc.Stream:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(f"{url}: not an http:// or https:// URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            with trio.fail_after(self.timeout):
                if parts.scheme == "https":
                    if self._tls is None:
                        self._tls = ssl.create_default_context()
                    return await trio.open_ssl_over_tcp_stream(parts.hostname, port, ssl_context=self._tls,
                                                               https_compatible=True)
                return await trio.open_tcp_stream(parts.hostname, port)
        except (OSError, ValueError, trio.TooSlowError) as exc:
            raise SourceError(f"{url}: cannot connect: {type(exc).__name__} {exc}".rstrip()) from None

    async def _send(self, stream: trio.abc.Stream, connection: h11.Connection, url: str,
                    headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fields = [("Host", parts.netloc.rpartition("@")[2]), ("User-Agent", USER_AGENT), ("Connection", "close"),
                  *headers.items()]
        data = connection.send(h11.Request(method="GET", target=target, headers=fields))
        data += connection.send(h11.EndOfMessage())
        try:
            with trio.fail_after(self.timeout):
                await stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            raise SourceError(f"{url}: sending the request failed: {type(exc).__name__} {exc}".rstrip()) from None


class _Body:
    """The body's chunks as they arrive (a class, not an async generator, so that leaving early needs no cleanup)."""

    def __init__(self, stream: trio.abc.Stream, connection: h11.Connection, url: str, timeout: float) -> None:
        self._stream, self._connection, self._url, self._timeout = stream, connection, url, timeout
        self._ended = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if not self._ended:
            event = await _next_event(self._stream, self._connection, self._url, self._timeout)
            if isinstance(event, h11.Data):
                return event.data
            self._ended = True
        raise StopAsyncIteration


async def _next_event(stream: trio.abc.Stream, connection: h11.Connection, url: str, timeout: float):
    """The next h11 event, reading as needed; any failure becomes a SourceError naming the URL."""
    while True:
        try:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.fail_after(timeout):
                data = await stream.receive_some(READ_BYTES)
            connection.receive_data(data)
        except h11.RemoteProtocolError as exc:
            raise SourceError(f"{url}: not valid HTTP/1.1: {exc}") from None
        except trio.TooSlowError:
            raise SourceError(f"{url}: no data for {timeout:g} s") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise SourceError(f"{url}: {type(exc).__name__} while reading {exc}".rstrip()) from None
