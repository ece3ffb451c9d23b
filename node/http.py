"""A small HTTP/1.1 GET client for mirrors and data ports: trio streams, h11 for the framing.

Mirrors serve large static files, so a fetch needs no cookies and no content decoding. What it needs is little CPU
per byte: httpx reads 64 KiB at a time through several layers and cost 3 to 4 times the CPU of this client on
loopback (docs/benchmarks.md), which made hashing plus receiving CPU-bound. So h11 reads the head, and a body framed
by Content-Length goes from the socket straight into the caller's buffer. Every read is bounded by `timeout`.

A connection whose response was read to its framed end (Content-Length) is kept for the client's next request to
the same host and port, if the server keeps it open (node/keepalive.py): a fetcher asks a source for one run of
pieces after another, and a new connection per run cost the data port twice the CPU per request (0.50 against
0.23 ms, docs/benchmarks.md) and, over TLS, a handshake. A kept-alive connection that breaks before the response
head is replaced once by a new one (the server may have closed it while it was idle). A response read only in part
(a run cut short), and anything through a proxy, closes its connection as before.

Like httpx, it goes through the proxies that http_proxy / https_proxy name (as urllib reads them), except to the
hosts no_proxy lists: an http:// request goes to the proxy with its absolute URL, an https:// one through a CONNECT
tunnel so that TLS stays end to end. Only http:// proxies, with Basic credentials from the proxy URL if any.
"""

from __future__ import annotations

import base64
import os
import ssl
import urllib.request
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urljoin, urlsplit

import h11
import trio

from kogitune.errors import ConnectionLost, SourceError

from .body import Body
from .keepalive import IdleConnections, keeps_open
from .tlsclient import ClientTls

if TYPE_CHECKING:
    from .tlsdata import PeerTls

READ_BYTES = 1 << 20
HEAD_READ_BYTES = 16 << 10
"""A response head is read this many bytes at a time: what comes past it (the body's start) is copied out of h11's
buffer, so a read of READ_BYTES there would copy up to a piece's worth for every request."""
MAX_HEAD_BYTES = 64 << 10
YIELD_BYTES = 1 << 20
"""A body read from a plain socket yields to the other tasks at least once per this many bytes (_Body)."""
MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_INFORMATIONAL = 4
"""1xx heads read before a response (a server sends one or two: 100 Continue, 103 Early Hints)."""
USER_AGENT = "kogitune"
# Everything printable in ASCII but space stays as it is in a request target; the rest is percent-encoded (UTF-8).
TARGET_SAFE = "".join(map(chr, range(0x21, 0x7F)))


@dataclass
class Response:
    """A response whose body is still on the wire: read `body` inside the `get` block."""

    url: str
    status: int
    headers: dict[str, str]
    body: _Body


@dataclass
class _Proxy:
    """An http:// proxy from the environment; `name` (host:port) leaves its credentials out of error messages."""

    name: str
    host: str
    port: int
    fields: list[tuple[str, str]]


class HttpClient:
    """GET requests with a timeout on every network operation, following up to MAX_REDIRECTS redirects."""

    def __init__(self, timeout: float, redirects: int = MAX_REDIRECTS, peer: PeerTls | None = None) -> None:
        self.timeout = timeout
        self.redirects = redirects
        """Redirects followed (0 for a peer's data port: a peer must not send a fetcher to another host)."""
        self._tls: ssl.SSLContext | None = None
        self._idle = IdleConnections()
        self._peer = peer
        """A node's TLS data port: every connection must prove to be this peer and carries its authorization."""

    @asynccontextmanager
    async def get(self, url: str, headers: dict[str, str] | None = None):
        """Yields the `Response` of the first non-redirect answer; the connection closes when the block ends, or
        is kept for the next request if the block read the whole body (see the module docstring)."""
        for _ in range(self.redirects + 1):
            if self._peer is not None and not url.startswith("https://"):
                raise SourceError(f"{url}: a node's TLS data port is reached by https:// only")
            stream: trio.abc.Stream | None
            stream, connection, head, key = await self._exchange(url, headers)
            try:
                fields = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in head.headers}
                if head.status_code in REDIRECT_STATUSES and "location" in fields:
                    url = _join(url, fields["location"].encode("latin-1"))
                    continue
                length = _content_length(head.status_code, fields)
                body = _Body(stream, connection, url, self.timeout, length)
                yield Response(url, head.status_code, fields, body)
                if key is not None and body.complete and keeps_open(head, fields, connection, length):
                    self._idle.park(key, stream)
                    stream = None
                return
            finally:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
        raise SourceError(f"{url}: more than {self.redirects} redirects")

    async def _exchange(self, url: str, headers: dict[str, str] | None):
        """Send the GET of `url` and read its response head: on a kept-alive connection to the same host if there
        is one (once more on a new one if that one turns out closed), else on a new one. Returns (stream, h11
        connection, head, key: the (scheme, host, port) the connection may be kept for, None through a proxy)."""
        parts = urlsplit(url)
        try:
            key = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        except ValueError as exc:
            raise SourceError(f"{url}: not a valid URL: {exc}") from None
        reused = await self._idle.take(key)
        while True:
            if reused is not None:
                stream, target, proxy = reused, _target(parts), None
            else:
                stream, target, proxy = await self._open(url)
            try:
                connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
                request_fields = [
                    ("Host", parts.netloc.rpartition("@")[2]),
                    ("User-Agent", USER_AGENT),
                    *([("Connection", "close"), *proxy.fields] if proxy else []),
                    *(headers or {}).items(),
                    *(self._peer.request_fields(stream) if self._peer is not None else []),
                ]
                await _send(stream, connection, "GET", target, request_fields, url, self.timeout)
                head = await _response_head(stream, connection, url, self.timeout)
                if proxy and head.status_code == 407:
                    raise SourceError(f"{url}: proxy {proxy.name} wants credentials: HTTP 407")
                return stream, connection, head, None if proxy else key
            except ConnectionLost:
                await trio.aclose_forcefully(stream)
                if reused is None:
                    raise
                reused = None  # the server closed it while it was idle: once more, on a new connection
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise

    async def _open(self, url: str) -> tuple[trio.abc.Stream, str, _Proxy | None]:
        """A stream ready for the GET of `url`, the request target, and the proxy when the request goes to one."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise SourceError(f"{url}: not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(f"{url}: not an http:// or https:// URL")
        target = _target(parts)
        proxy = _proxy_for(url, parts.scheme, parts.hostname)
        if proxy is None:
            stream = await self._tcp(url, parts.hostname, port)
        else:
            stream = await self._tcp(url, proxy.host, proxy.port, f" to proxy {proxy.name}")
        if parts.scheme == "http":
            if proxy is not None:
                target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
            return stream, target, proxy
        try:
            if proxy is not None:
                await self._tunnel(stream, proxy, _authority(parts.hostname, port), url)
            return await self._handshake(stream, parts.hostname, url), target, None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    async def _tcp(self, url: str, host: str, port: int, to: str = "") -> trio.abc.Stream:
        try:
            with trio.fail_after(self.timeout):
                return await trio.open_tcp_stream(host, port)
        except (OSError, ValueError, trio.TooSlowError) as exc:
            raise SourceError(f"{url}: cannot connect{to}: {_why(exc)}") from None

    async def _tunnel(self, stream: trio.abc.Stream, proxy: _Proxy, authority: str, url: str) -> None:
        """Ask the proxy for a TCP connection to `authority` (CONNECT), over which TLS then runs end to end."""
        connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        await _send(stream, connection, "CONNECT", authority, [("Host", authority), *proxy.fields], url, self.timeout)
        head = await _response_head(stream, connection, url, self.timeout)
        if not 200 <= head.status_code < 300:
            raise SourceError(f"{url}: proxy {proxy.name} refused CONNECT {authority}: HTTP {head.status_code}")
        if connection.trailing_data[0]:
            raise SourceError(f"{url}: proxy {proxy.name} sent bytes of its own into the tunnel")

    async def _handshake(self, stream: trio.abc.Stream, host: str, url: str) -> ClientTls:
        """TLS over `stream`, checked against the system's CAs (or SSL_CERT_FILE / SSL_CERT_DIR) and `host`, or for a
        node's data port (`peer`) against the peer ID its certificate must be bound to."""
        if self._tls is None:
            self._tls = ssl.create_default_context() if self._peer is None else self._peer.context
        tls = ClientTls(stream, self._tls, server_hostname=None if self._peer else host)
        try:
            with trio.fail_after(self.timeout):
                await tls.do_handshake()
            if self._peer is not None:
                self._peer.check(tls, url)  # before a byte of the request is sent
        except trio.TooSlowError:
            raise SourceError(f"{url}: no TLS handshake within {self.timeout:g} s") from None
        except trio.BrokenResourceError as exc:
            raise SourceError(f"{url}: TLS handshake failed: {_why(exc)}") from None
        return tls


class _Body(Body):
    """The response body. One framed by Content-Length (every static file) skips h11: it goes from the socket (or,
    over TLS, from the decryption of node/tlsclient.py) straight into the caller's buffer. Chunked and close-delimited
    bodies go through h11."""

    def __init__(
        self, stream: trio.abc.Stream, connection: h11.Connection, url: str, timeout: float, length: int | None
    ) -> None:
        super().__init__()
        self._stream, self._connection, self._url, self._timeout = stream, connection, url, timeout
        self._tls = stream if isinstance(stream, ClientTls) else None
        self._fd = -1 if self._tls else stream.socket.fileno()  # type: ignore[attr-defined]
        self._unyielded = 0
        self._length = self._left = length
        self._ended = False
        if length is not None:
            self._pending = memoryview(connection.trailing_data[0])[:length]
            self._left = length - len(self._pending)

    @property
    def complete(self) -> bool:
        """Whether the whole body framed by Content-Length has been read (so the connection may serve another)."""
        return self._left == 0 and not self._pending

    async def receive_into(self, buffer: memoryview) -> int:
        if self._left is None or self._pending or not len(buffer):
            return await super().receive_into(buffer)
        if not self._left:
            return 0
        buffer = buffer[: self._left]
        try:
            if self._tls is not None:
                with trio.fail_after(self._timeout):
                    count = await self._tls.receive_into(buffer)
            else:
                count = await self._receive_now_into(buffer)
        except trio.TooSlowError:
            raise SourceError(f"{self._url}: no data for {self._timeout:g} s") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise SourceError(f"{self._url}: reading failed: {_why(exc)}") from None
        if not count:
            assert self._length is not None  # _left is an int only when _length is
            raise SourceError(
                f"{self._url}: connection closed after {self._length - self._left} of {self._length} body bytes"
            )
        self._left -= count
        return count

    async def _receive_now_into(self, buffer: memoryview) -> int:
        """Receive from the socket what is queued, at once, or wait (within the timeout) until something is. trio's
        own recv_into passes through the scheduler after every call that succeeds, a round of the run loop per
        ~200 KiB received (~5 per piece); this yields once per YIELD_BYTES, so that other tasks still run while a
        fast source keeps the socket full."""
        while True:
            try:
                count = os.readv(self._fd, [buffer])
                break
            except BlockingIOError:
                with trio.fail_after(self._timeout):
                    await trio.lowlevel.wait_readable(self._fd)
                self._unyielded = 0
        self._unyielded += count
        if self._unyielded >= YIELD_BYTES:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()
        return count

    async def _next_chunk(self) -> bytes:
        while not self._ended:
            event = await _next_event(self._stream, self._connection, self._url, self._timeout)
            if not isinstance(event, h11.Data):
                self._ended = True
            elif event.data:
                return event.data
        return b""


def _proxy_for(url: str, scheme: str, host: str) -> _Proxy | None:
    """The proxy the environment names for `scheme`, unless no_proxy lists `host`."""
    address = urllib.request.getproxies().get(scheme)
    if not address or urllib.request.proxy_bypass(host):
        return None
    proxy = urlsplit(address if "://" in address else f"http://{address}")
    try:
        port = proxy.port or 80
    except ValueError:
        port = 0
    if proxy.scheme != "http" or not proxy.hostname or not port:
        raise SourceError(f"{url}: the {scheme}_proxy setting is not an http://host:port proxy URL")
    fields = []
    if proxy.username is not None:
        credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
        fields.append(("Proxy-Authorization", f"Basic {base64.b64encode(credentials).decode()}"))
    return _Proxy(_authority(proxy.hostname, port), proxy.hostname, port, fields)


def _target(parts) -> str:
    """The request target of a split URL (no proxy): its path and query, percent-encoded beyond printable ASCII."""
    return quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=TARGET_SAFE)


def _content_length(status: int, fields: dict[str, str]) -> int | None:
    """The body's length when Content-Length frames it (h11 has checked the header), else None."""
    if status in (204, 304) or "transfer-encoding" in fields or "content-length" not in fields:
        return None
    return int(fields["content-length"])


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _join(url: str, location: bytes) -> str:
    """Where a redirect from `url` leads, bytes beyond printable ASCII percent-encoded as they came; a Location
    that does not parse is the server's fault."""
    try:
        return urljoin(url, quote(location, safe=TARGET_SAFE))
    except ValueError:
        raise SourceError(f"{url}: redirect to an invalid URL {location!r}") from None


def _why(exc: BaseException) -> str:
    """The exception's class and message; for a broken trio stream, those of the OSError or SSLError behind it."""
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__:
        exc = exc.__cause__
    return f"{type(exc).__name__} {exc}".rstrip()


async def _send(
    stream: trio.abc.Stream,
    connection: h11.Connection,
    method: str,
    target: str,
    fields: list[tuple[str, str]],
    url: str,
    timeout: float,
) -> None:
    """Send a request without a body; one that h11 refuses to write (say, a non-ASCII host) is the URL's fault."""
    try:
        data = connection.send(h11.Request(method=method, target=target, headers=fields))
        data += connection.send(h11.EndOfMessage())
    except (h11.LocalProtocolError, ValueError) as exc:
        raise SourceError(f"{url}: cannot be requested: {exc}") from None
    try:
        with trio.fail_after(timeout):
            await stream.send_all(data)
    except trio.TooSlowError as exc:
        raise SourceError(f"{url}: sending the request failed: {_why(exc)}") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise ConnectionLost(f"{url}: sending the request failed: {_why(exc)}") from None


async def _response_head(stream: trio.abc.Stream, connection: h11.Connection, url: str, timeout: float) -> h11.Response:
    """The final response head, after at most MAX_INFORMATIONAL 1xx ones, all within twice `timeout` (each read
    within `timeout`): a server that sends 1xx heads without end, or drips its head a byte at a time, is a failure
    of that source, not a fetch worker held for ever (and, with the 1xx, the fetcher's CPU)."""
    with trio.move_on_after(2 * timeout):
        for _ in range(MAX_INFORMATIONAL + 1):
            head = await _next_event(stream, connection, url, timeout, HEAD_READ_BYTES)
            if not isinstance(head, h11.InformationalResponse):
                return head
        raise SourceError(f"{url}: more than {MAX_INFORMATIONAL} informational (1xx) responses")
    raise SourceError(f"{url}: no whole response head within {2 * timeout:g} s")


async def _next_event(
    stream: trio.abc.Stream, connection: h11.Connection, url: str, timeout: float, size: int = READ_BYTES
):
    """The next h11 event, reading `size` bytes at a time as needed; any failure becomes a SourceError naming the
    URL."""
    while True:
        try:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.fail_after(timeout):
                data = await stream.receive_some(size)
            if not data and connection.their_state is h11.SEND_RESPONSE:
                raise ConnectionLost(f"{url}: connection closed before the response")
            connection.receive_data(data)
        except h11.RemoteProtocolError as exc:
            raise SourceError(f"{url}: not valid HTTP/1.1: {exc}") from None
        except trio.TooSlowError:
            raise SourceError(f"{url}: no data for {timeout:g} s") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise ConnectionLost(f"{url}: reading failed: {_why(exc)}") from None
