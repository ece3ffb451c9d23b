"""The data port: a node is also a web seed for its datasets, over HTTP/1.1 (trio + h11): public ones in plain HTTP
(or TLS), private ones over TLS only, to the peers of their allow-lists.

The port serves each dataset in the very layout of a web mirror (docs/protocol.md#the-data-port), so that a
dataset's mirror base URL on a node is `http://<node IP>:<data port>/<dataset ID>`:

    GET|HEAD /<ID>/manifest.json        the manifest, only if it hashes to the ID
    GET|HEAD /<ID>/signature            the publisher's public key and signature (96 bytes)
    GET|HEAD /<ID>/shards/<name>.tokens|.pieces|.docs   with `Range: bytes=A-` or `A-B` (206) or whole (200)
    GET|HEAD /<ID>/shards/<name>.tokens.zst             the compressed sidecar, when the node has one that checks

It sends exactly what the libp2p data server (node/server.py) would send to an anonymous peer, and through the
same checks (node/integrity.py's StoreGuard and the server's manifest cache): a public dataset's files that passed
their check and have not changed since, each 1 MiB read compared with its check before it leaves. A private
dataset is served the same way, but only over TLS and only to a request signed by a peer of its allow-list
(node/tlsdata.py: a connection that opens with a TLS record is TLS, on the same port; docs/protocol.md#private-
datasets-on-the-data-port-tlsid). A private dataset to anyone else, a collection, an ID not held, a withheld file,
any path not spelled exactly as above (no decoding of `%`, no `..`, no query) all get the same 404. There are no
directory listings. Which file a target names, and whether this requester may have it, is node/dataport_files.py;
this module holds the connections: admission, limits, reading heads, sending answers.

File bodies are read with `pread` into one reused buffer and sent from it (no other copy). `sendfile` would save
the copy, but it sends bytes before they can be compared with their check (integrity.py's rule: a chunk leaves only
after the file is seen unchanged since it was read), and its pages stay in the socket's queue, open to a write,
after the call; the copy costs 0.04 CPU s per GiB, about 1% of what a `get` costs both ends (docs/benchmarks.md).

Limits, the data server's values (ServerLimits and kogitune.settings): at most `connections_per_ip` connections
from one IP (host.ip_key) and `connections_total` in all, shared fairly between IPs when full (host.FairSlots); a
connection from an IP at its cap takes the place of that IP's oldest connection that is waiting for a request
head, if any, else it is closed at once; a request head must arrive whole within `head_timeout` (from the accept,
or from the end of the previous answer on a kept-alive connection; from the accept, telling TLS from plain HTTP
and the TLS handshake count too) and fit `max_head_bytes`; the answers must leave at 1 MiB per `write_timeout`
(32 KiB/s) over the connection's life, with `write_timeout` of slack (`_Connection.send`: a reader slower than
that is cut, whether it stalls one large answer or drains many small pipelined ones a byte at a time); a
connection serves at most `requests_per_connection` requests. So a slowloris holds a slot for one head timeout
and never an honest fetcher's place.

`serve_requests` serves the requests of one trio Stream, so a TLS-wrapped stream can be served by the same code.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus

import h11
import trio

from kogitune.errors import NodeError
from kogitune.settings import DEFAULT_LISTEN, settings

from .dataport_files import ServedFile, ServedFiles, requested_range
from .host import FairSlots, ip_key
from .server import CHUNK, WRITE_TIMEOUT_SECONDS, DataServer
from .tlsdata import ServerTls, requester

log = logging.getLogger(__name__)
NOT_FOUND_BODY = b"not found\n"
"""The body of every 404: a private dataset, a dataset not held and a path that means nothing look the same."""


def data_listen_address(flag: str | None, listen: list[str]) -> tuple[str, int] | None:
    """Where the data port listens: `--data-listen HOST:PORT` (or `PORT`) when given, None for `off`; by default
    the host of the first libp2p listen address and the setting data_port (0: any free port); None when the
    setting data_port_on is 0."""
    if flag is not None:
        if flag.strip().lower() == "off":
            return None
        host, _, port = flag.rpartition(":")
        number = int(port) if port.isdigit() else -1
        if not 0 <= number < 65536:
            raise NodeError(f"--data-listen {flag!r} is not HOST:PORT, PORT or off (port 0: any free port)")
        return host.strip("[]") or _listen_host(listen), number
    if not settings().data_port_on:
        return None
    setting = settings().data_port
    if setting >= 65536:
        raise NodeError(f"the setting data_port is {setting}; a port is below 65536")
    return _listen_host(listen), setting


def _listen_host(listen: list[str]) -> str:
    """The IP of the first libp2p listen multiaddr (/ip4/HOST/tcp/... or /ip6/HOST/tcp/...)."""
    parts = (listen or [DEFAULT_LISTEN])[0].split("/")
    return parts[2] if len(parts) > 2 and parts[1] in ("ip4", "ip6") else "0.0.0.0"


@dataclass(frozen=True)
class DataPortLimits:
    """What one client of the data port may hold; the values are the libp2p data server's (ServerLimits)."""

    head_timeout: float = settings().server_request_timeout
    """Seconds a connection has to deliver a whole request head, from its accept or from the end of the previous
    answer."""
    write_timeout: float = WRITE_TIMEOUT_SECONDS
    """Seconds one write of CHUNK (1 MiB) may take to leave, and the most a connection's sends may wait for its
    reader beyond the time the bytes they sent earn back (`_Connection.send`)."""
    max_head_bytes: int = 8192
    """Bytes of a request head; a longer one is answered 431 and the connection closed."""
    connections_per_ip: int = settings().server_streams_per_ip
    """Connections from one IP served at once."""
    connections_total: int = settings().server_streams_total
    """Connections served at once, shared fairly between IPs when full."""
    requests_per_connection: int = settings().data_port_requests_per_connection
    """Requests one connection may make; the last answer says `Connection: close`."""


@dataclass(eq=False)
class _Connection:
    """One connection being served: its cancel scope (ended if its slot goes to another), whether it is waiting
    for a request head (such a connection is the first to give its slot up) and since when, and the seconds its
    sends may still wait for the reader (`send`)."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    idle: bool = True
    since: float = field(default_factory=trio.current_time)
    """When it began to wait for its head: the accept (so sniffing TLS and its handshake count), then the end of
    each answer."""
    write_timeout: float = WRITE_TIMEOUT_SECONDS
    """Seconds its sends may wait for the reader in all, beyond what the bytes they sent earn back (`send`)."""
    stream: trio.abc.Stream | None = None
    """What it is served on (TCP, or TLS over it), once accepted."""
    allowance: float = field(init=False)

    def __post_init__(self) -> None:
        self.allowance = self.write_timeout

    async def send(self, data) -> None:
        """Send `data` (at most CHUNK and its framing) within the allowance: `write_timeout`, less the time earlier
        sends waited, plus write_timeout back for each CHUNK sent (never above write_timeout). So a connection keeps
        the floor of a slow reader (CHUNK per write_timeout) over all its answers, not only within each write: a
        reader that drains small pipelined answers one at a time, each within the timeout, is cut all the same."""
        if not data:
            return
        started = trio.current_time()
        try:
            with trio.fail_after(self.allowance):
                await self.stream.send_all(data)  # type: ignore[union-attr]  # set before any answer
        finally:
            waited = trio.current_time() - started
            self.allowance = min(self.write_timeout, self.allowance - waited + len(data) * self.write_timeout / CHUNK)


@dataclass
class DataPortStats:
    """What the data port has done since the node started (node/metrics.py: transport="http")."""

    served: Counter = field(default_factory=Counter)
    """dataset ID -> bytes of its files sent (each chunk checked before it left)."""
    requests: Counter = field(default_factory=Counter)
    """Answers by status code."""
    refused: Counter = field(default_factory=Counter)
    """Connections closed by a limit or a broken request, by reason (busy, evicted, tls_handshake: silent, or opened
    TLS and did not finish it in head_timeout, slow_head, bad_head, slow_reader, aborted)."""

    @property
    def bytes_served(self) -> int:
        return sum(self.served.values())


class DataPort:
    """Serves the public datasets of `server`'s store over HTTP, through `server`'s checks."""

    def __init__(self, server: DataServer, limits: DataPortLimits | None = None) -> None:
        self.server = server
        self.tls: ServerTls | None = None
        """The node's TLS identity (set before `serve`): without it, plain HTTP only, and no private dataset."""
        self.limits = limits or DataPortLimits()
        self.stats = DataPortStats()
        self.port = 0
        """The port listened on, once `serve` has started (what the node announces)."""
        self._slots: FairSlots[_Connection] = FairSlots(self.limits.connections_total, self.limits.connections_per_ip)
        self.files = ServedFiles(server)

    @property
    def connections(self) -> int:
        return len(self._slots)

    async def serve(self, host: str, port: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen on host:port and serve until cancelled; started() with the (host, port) bound."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        self.port = bound[1]
        log.info("data port on %s:%d", bound[0], bound[1])
        async with trio.open_nursery() as nursery:
            task_status.started((bound[0], bound[1]))
            await trio.serve_listeners(self.handle_connection, listeners, handler_nursery=nursery)

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        """Admit a TCP connection by its remote IP (the slots above), serve its requests, close it."""
        try:
            ip = ip_key(stream.socket.getpeername())
        except OSError:  # gone already
            await trio.aclose_forcefully(stream)
            return
        connection = _Connection(write_timeout=self.limits.write_timeout)
        if not self._admit(ip, connection):
            self.stats.refused["busy"] += 1
            await trio.aclose_forcefully(stream)
            return
        try:
            with connection.scope:
                accepted = stream if self.tls is None else await self.tls.accept(stream, self.limits.head_timeout)
                if accepted is None:
                    self.stats.refused["tls_handshake"] += 1
                    return
                await self.serve_requests(accepted, connection)
            if connection.scope.cancelled_caught:
                self.stats.refused["evicted"] += 1
        finally:
            self._slots.release(ip, connection)
            await trio.aclose_forcefully(stream)

    def _admit(self, ip: str, connection: _Connection) -> bool:
        """Take a slot for `connection`; at the IP's cap, in place of its oldest connection waiting for a head."""
        if self._slots.count(ip) >= self.limits.connections_per_ip:
            waiting = [held for held in self._slots.held.get(ip, []) if held.idle]
            if not waiting:
                return False
            oldest = min(waiting, key=lambda held: held.since)
            self._slots.release(ip, oldest)
            oldest.scope.cancel()
        admitted, evicted = self._slots.take(ip, connection, rank=lambda held: (not held.idle, held.since))
        if evicted is not None:
            evicted.scope.cancel()
        return admitted

    async def serve_requests(self, stream: trio.abc.Stream, connection: _Connection | None = None) -> None:
        """Serve the requests of one connection (any trio Stream: TCP, or TLS over it) until it closes, breaks a
        rule or has made requests_per_connection requests. Its first head is due head_timeout after `connection`
        was made (the accept), each next one head_timeout after the previous answer."""
        connection = connection or _Connection(write_timeout=self.limits.write_timeout)
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        connection.stream = stream
        for served in range(1, self.limits.requests_per_connection + 1):
            if served > 1:
                connection.idle, connection.since = True, trio.current_time()
            try:
                with trio.fail_at(connection.since + self.limits.head_timeout):
                    request = await self._read_request(stream, http)
            except trio.TooSlowError:
                if served == 1:  # after an answer, a kept-alive connection that stays idle is closed, not refused
                    self.stats.refused["slow_head"] += 1
                return
            except h11.RemoteProtocolError as exc:
                self.stats.refused["bad_head"] += 1
                status = exc.error_status_hint
                await self._answer_error(connection, http, 431 if status == 431 else 400)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if request is None:
                return
            connection.idle = False
            last = served == self.limits.requests_per_connection
            try:
                await self._answer(connection, http, request, last)
            except trio.TooSlowError:
                self.stats.refused["slow_reader"] += 1
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
                return
            except Exception as exc:  # a file that changed or shrank while it was sent: cut, never a short answer
                self.stats.refused["aborted"] += 1
                log.debug("data port answer cut: %r", exc)
                return
            if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                return
            http.start_next_cycle()

    async def _read_request(self, stream: trio.abc.Stream, http: h11.Connection) -> h11.Request | None:
        """The next request, with no body (a GET or HEAD has none); None if the client closed first. A malformed
        head, one longer than max_head_bytes, or a request with a body is an h11.RemoteProtocolError."""
        received, request = 0, None
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(4096)
                received += len(data)
                if received > self.limits.max_head_bytes:  # h11's own bound lets a head that arrives whole through
                    raise h11.RemoteProtocolError("request head too long", error_status_hint=431)
                http.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.Data):
                raise h11.RemoteProtocolError("a request with a body", error_status_hint=400)
            else:  # ConnectionClosed
                return None

    async def _answer(self, connection: _Connection, http: h11.Connection, request: h11.Request, last: bool) -> None:
        head = request.method == b"HEAD"
        if request.method not in (b"GET", b"HEAD"):
            await self._send_small(connection, http, 405, b"only GET and HEAD\n", head, last, [("allow", "GET, HEAD")])
            return
        tls, stream = self.tls, connection.stream
        found = await self.files.open(
            request.target, lambda: None if tls is None else requester(request.headers, stream, tls)
        )
        if found is None:
            await self._send_small(connection, http, 404, NOT_FOUND_BODY, head, last)
            return
        size = found.size
        try:
            span = requested_range(request, size)
            if span is None:
                unsatisfiable = [("content-range", f"bytes */{size}")]
                await self._send_small(connection, http, 416, b"range not satisfiable\n", head, last, unsatisfiable)
                return
            start, end, partial = span
            fields = [("content-type", "application/octet-stream"), ("accept-ranges", "bytes")]
            fields.append(("cache-control", "public, max-age=31536000, immutable"))  # content-addressed
            if partial:
                fields.append(("content-range", f"bytes {start}-{end - 1}/{size}"))
            await self._send_head(connection, http, 206 if partial else 200, end - start, fields, last)
            if head:
                pass
            elif found.content is not None:
                await self._send_body(connection, http, memoryview(found.content)[start:end])
                self.stats.served[found.dataset_id] += end - start
            else:
                await self._send_file(connection, http, found, start, end)
            await connection.send(http.send(h11.EndOfMessage()))
        finally:
            if found.opened is not None:
                os.close(found.opened[0])

    async def _send_file(
        self, connection: _Connection, http: h11.Connection, found: ServedFile, start: int, end: int
    ) -> None:
        """Bytes start..end of an open served file, CHUNK at a time, each checked unchanged before it leaves."""
        fd, signature = found.opened  # type: ignore[misc]  # a shard file: opened, not content
        path = found.path
        buffer = bytearray(min(CHUNK, end - start))
        while start < end:
            view = memoryview(buffer)[: min(CHUNK, end - start)]
            count = os.preadv(fd, [view], start)
            self.server.guard.check_unchanged(fd, signature, found.directory, path)
            if not count:
                raise OSError(f"{path} is shorter than the manifest says")
            await self._send_body(connection, http, view[:count])
            start += count
            self.stats.served[found.dataset_id] += count

    async def _send_body(self, connection: _Connection, http: h11.Connection, data: memoryview) -> None:
        framed = http.send_with_data_passthrough(h11.Data(data=data))  # type: ignore[arg-type]  # any buffer
        for piece in framed or ():  # the body's bytes themselves, never copied (Content-Length framing)
            await connection.send(piece)

    async def _send_head(
        self, connection: _Connection, http: h11.Connection, status: int, length: int, fields: list, last: bool
    ):
        self.stats.requests[status] += 1
        headers = [*fields, ("content-length", str(length)), *([("connection", "close")] if last else [])]
        response = h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)
        await connection.send(http.send(response))

    async def _send_small(
        self, connection: _Connection, http, status: int, body: bytes, head: bool, last: bool, fields=()
    ) -> None:
        await self._send_head(connection, http, status, len(body), [("content-type", "text/plain"), *fields], last)
        await connection.send(b"".join(http.send(event) or b"" for event in _body_events(body, head)))

    async def _answer_error(self, connection: _Connection, http: h11.Connection, status: int) -> None:
        """Answer a broken request and close (the rest of what the client sends is not read)."""
        try:  # within the connection's send allowance (write_timeout at most)
            await self._send_small(connection, http, status, f"{HTTPStatus(status).phrase}\n".encode(), False, True)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass


def _body_events(body: bytes, head: bool) -> list:
    return [*([h11.Data(data=body)] if body and not head else []), h11.EndOfMessage()]
