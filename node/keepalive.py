"""Kept-alive HTTP/1.1 connections of one client (node/http.py's HttpClient), waiting for its next request.

A connection is kept only when its response was read to its framed end (Content-Length) with no byte past it, and
the server keeps it open (HTTP/1.1, no `Connection: close`); it is reused for the same (scheme, host, port) within
IDLE_SECONDS, if nothing waits to be read on it then (a close, or bytes the server sent unasked: either way it is
dropped, never read from). So a byte of one response can never be taken for one of the next.
"""

from __future__ import annotations

import select
from dataclasses import dataclass

import h11
import trio

from .tlsclient import ClientTls

IDLE_SECONDS = 2.0
"""A kept-alive connection unused this long is closed, not reused (a data port closes one idle for its head timeout,
server_request_timeout: 5 s by default)."""
MAX_IDLE = 8
"""Kept-alive connections one client holds, idle, at most (a fetcher streams a source over a few at once)."""


@dataclass
class _Idle:
    key: tuple[str, str, int]
    stream: trio.abc.Stream
    since: float


class IdleConnections:
    """The idle connections of one client, oldest first."""

    def __init__(self) -> None:
        self._idle: list[_Idle] = []

    def __len__(self) -> int:
        return len(self._idle)

    async def take(self, key: tuple[str, str, int]) -> trio.abc.Stream | None:
        """A kept-alive connection to `key` (scheme, host, port) that is still open with nothing waiting to be read;
        the ones idle longer than IDLE_SECONDS, and those of `key` found closed, are closed."""
        now, found, kept, dropped = trio.current_time(), None, [], []
        for idle in self._idle:
            fresh = now - idle.since < IDLE_SECONDS
            if found is None and fresh and idle.key == key and _quiet(idle.stream):
                found = idle.stream
            elif fresh and (idle.key != key or found is not None):  # another host's, or one not needed now
                kept.append(idle)
            else:
                dropped.append(idle.stream)
        self._idle = kept  # before any checkpoint: another task may take or park meanwhile
        for stream in dropped:
            await trio.aclose_forcefully(stream)
        return found

    def park(self, key: tuple[str, str, int], stream: trio.abc.Stream) -> None:
        """Keep `stream` for the next request to `key` (no checkpoint: a cancelled caller cannot leave it half kept);
        beyond MAX_IDLE, the oldest is closed."""
        self._idle.append(_Idle(key, stream, trio.current_time()))
        if len(self._idle) > MAX_IDLE:
            _close_now(self._idle.pop(0).stream)


def keeps_open(head: h11.Response, fields: dict[str, str], connection: h11.Connection, length: int | None) -> bool:
    """Whether the server keeps the connection open after this response (`fields`: its head's, lower-case names),
    with no byte past its body (`length` bytes framed by Content-Length) read yet."""
    return (
        head.http_version == b"1.1"
        and "close" not in fields.get("connection", "").lower()
        and length is not None
        and len(connection.trailing_data[0]) <= length
    )


def _close_now(stream: trio.abc.Stream) -> None:
    """Close the socket under `stream` (over TLS, without a close_notify), with no checkpoint."""
    while isinstance(stream, ClientTls):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()


def _quiet(stream: trio.abc.Stream) -> bool:
    """Whether nothing waits to be read on the connection: on its socket, nor over TLS in the TLS stream's buffers."""
    while isinstance(stream, ClientTls):
        if stream.holds_unread:
            return False
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return False
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLIN)
    return not poller.poll(0)
