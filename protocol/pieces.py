"""Pieces: the unit that is hashed, fetched and verified on its own.

A shard's `.tokens` file is cut into pieces of `piece_size` bytes (the last may be shorter). Its `.pieces` file is
the concatenation of the pieces' SHA-256 digests, and the shard's `root` in the manifest is the SHA-256 of that
`.pieces` file. So the manifest commits to every piece, and one piece from an untrusted source can be checked
without the rest of the shard.
"""

from __future__ import annotations

import hashlib

from .errors import IntegrityError
from .ids import DIGEST_SIZE
from .manifest import ShardInfo, piece_count


def piece_digests(data: bytes | memoryview, piece_size: int) -> bytes:
    view = memoryview(data)
    return b"".join(hashlib.sha256(view[at : at + piece_size]).digest() for at in range(0, len(view), piece_size))


def root_of(pieces: bytes) -> str:
    return hashlib.sha256(pieces).hexdigest()


def check_pieces_file(shard: ShardInfo, pieces: bytes, piece_size: int) -> None:
    """Raise IntegrityError unless `pieces` is the piece-digest list that the shard's root commits to."""
    expected = piece_count(shard.size, piece_size) * DIGEST_SIZE
    if len(pieces) != expected or root_of(pieces) != shard.root:
        raise IntegrityError(f"shard {shard.name}: {shard.pieces_path} does not match the root in the manifest")


def piece_span(shard: ShardInfo, index: int, piece_size: int) -> tuple[int, int]:
    """Byte offset and length of piece `index` in the shard's tokens file."""
    start = index * piece_size
    if not 0 <= start < shard.size:
        raise IndexError(f"shard {shard.name} has no piece {index}")
    return start, min(piece_size, shard.size - start)


class PieceHasher:
    """Hashes a stream into piece digests as it is written, whatever the sizes of the chunks fed to it."""

    def __init__(self, piece_size: int) -> None:
        self.piece_size = piece_size
        self._digests: list[bytes] = []
        self._current = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            take = min(len(view), self.piece_size - self._filled)
            self._current.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.piece_size:
                self._digests.append(self._current.digest())
                self._current, self._filled = hashlib.sha256(), 0

    def finish(self) -> bytes:
        """The `.pieces` bytes: all piece digests, the last (short) piece included."""
        if self._filled:
            self._digests.append(self._current.digest())
            self._current, self._filled = hashlib.sha256(), 0
        return b"".join(self._digests)
