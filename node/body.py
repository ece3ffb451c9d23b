"""The bytes of one file as they arrive from a source, received into the caller's buffers.

The fetcher reads a shard straight into the buffer of the piece it is filling: a source that can receive into it
(plain TCP, `socket.recv_into`) costs no copy on the way, and one that produces chunks (h11 events, libp2p reads)
costs one.
"""

from __future__ import annotations

from kogitune.errors import SourceError

READ_ALL_CHUNK = 1 << 20


class Body:
    """`receive_into` fills the start of a non-empty buffer and says how much it filled, 0 at the end of the body
    (an empty buffer is a ValueError: 0 would read as the end). This base class serves chunks from `_next_chunk`
    (b"" at the end); subclasses that can do better override `receive_into`."""

    def __init__(self) -> None:
        self._pending = memoryview(b"")

    async def receive_into(self, buffer: memoryview) -> int:
        if not len(buffer):
            raise ValueError("receive_into needs a non-empty buffer")
        while not self._pending:
            chunk = await self._next_chunk()
            if not chunk:
                return 0
            self._pending = memoryview(chunk)
        return self._take_pending(buffer)

    def _take_pending(self, buffer: memoryview) -> int:
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    async def _next_chunk(self) -> bytes:
        return b""

    async def read_all(self, limit: int, name: str) -> bytes:
        """The rest of the body; a SourceError naming `name` once it is longer than `limit` bytes."""
        data, chunk = bytearray(), bytearray(min(limit + 1, READ_ALL_CHUNK))
        view = memoryview(chunk)
        while count := await self.receive_into(view):
            data += view[:count]
            if len(data) > limit:
                raise SourceError(f"{name} is larger than the allowed {limit} bytes")
        return bytes(data)
