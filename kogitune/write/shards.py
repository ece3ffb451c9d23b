"""Writing shards: packed tokens cut into shard files of whole blocks, with their pieces and document starts."""

from __future__ import annotations

import base64
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kogitune.protocol.manifest import DTYPES, ShardInfo
from kogitune.protocol.pieces import PieceHasher, root_of

from ..errors import BadInputError, KogituneError
from ..files import write_atomic
from ..layout import DOCS, PIECES, SHARDS_DIR, TOKENS, shard_file

DTYPES_NP = {name: np.dtype(f"<u{size}") for name, size in DTYPES.items()}


class TensorWriter:
    """Appends packed tokens to shard files, hashing pieces as it writes and recording where documents start."""

    def __init__(
        self, directory: Path, dtype: str, block_size: int, shard_size: int, piece_size: int, eos_id: int
    ) -> None:
        if block_size < 1:
            raise KogituneError(f"block size must be positive, got {block_size}")
        self.directory = directory
        self.dtype = DTYPES_NP[dtype]
        self.block_size = block_size
        self.piece_size = piece_size
        self.eos_id = eos_id
        self.shard_tokens = max(1, shard_size // (block_size * self.dtype.itemsize)) * block_size
        self.shards: list[ShardInfo] = []
        self.tokens = 0
        self.documents = 0
        self._file: BinaryIO | None = None
        self._hasher: PieceHasher | None = None
        self._doc_starts: list[np.ndarray] = []
        self._in_shard = 0
        (directory / SHARDS_DIR).mkdir(exist_ok=True)

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        if not len(lengths):
            return
        starts = self.tokens + np.concatenate(([0], np.cumsum(lengths[:-1])))
        self.documents += len(lengths)
        at = 0
        while at < len(tokens):
            if self._file is None:
                self._open_shard()
            take = min(len(tokens) - at, self.shard_tokens - self._in_shard)
            shard_start = self.tokens - self._in_shard
            here = starts[(starts >= self.tokens) & (starts < self.tokens + take)]
            self._doc_starts.append((here - shard_start).astype("<u4"))
            self._write(tokens[at : at + take])
            self.tokens += take
            at += take
            if self._in_shard == self.shard_tokens:
                self._close_shard()

    @contextmanager
    def closed_on_error(self):
        """Close the shard being written if the block fails, so that its space is given back once it is removed
        (its buffered tail is dropped: a resume cuts the shard back to the checkpoint anyway)."""
        try:
            yield
        except BaseException:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:  # the buffered tail did not fit either
                    pass
                self._file = None
            raise

    def finish(self) -> tuple[ShardInfo, ...]:
        if self._file is not None:
            padding = -self._in_shard % self.block_size
            self._write(np.full(padding, self.eos_id, dtype=self.dtype))
            self._close_shard()
        if not self.shards:
            raise BadInputError("the inputs hold no text to store (every line was blank, empty or skipped)")
        return tuple(self.shards)

    def state(self) -> dict:
        """What `restore` needs to go on writing after a crash: the shard being written is synced to disk."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        starts = np.concatenate(self._doc_starts).astype("<u4").tobytes() if self._doc_starts else b""
        return {
            "shards": [vars(shard) for shard in self.shards],
            "tokens": self.tokens,
            "documents": self.documents,
            "in_shard": self._in_shard if self._file is not None else 0,
            "doc_starts": base64.b64encode(starts).decode("ascii"),
        }

    def restore(self, state: dict) -> None:
        """Go on from `state`: the shard being written is cut back to what the state recorded and hashed again."""
        self.shards = [ShardInfo(**shard) for shard in state["shards"]]
        self.tokens, self.documents = int(state["tokens"]), int(state["documents"])
        in_shard = int(state["in_shard"])
        if in_shard:
            name = f"{len(self.shards):05d}"
            self._file = open(shard_file(self.directory, name, TOKENS), "r+b")
            self._file.truncate(in_shard * self.dtype.itemsize)
            self._hasher = PieceHasher(self.piece_size)
            while chunk := self._file.read(1 << 20):
                self._hasher.update(chunk)
            self._doc_starts = [np.frombuffer(base64.b64decode(state["doc_starts"]), dtype="<u4").copy()]
            self._in_shard = in_shard

    def _open_shard(self) -> None:
        name = f"{len(self.shards):05d}"
        self._file = open(shard_file(self.directory, name, TOKENS), "wb")
        self._hasher = PieceHasher(self.piece_size)
        self._doc_starts, self._in_shard = [], 0

    def _write(self, tokens: np.ndarray) -> None:
        assert self._file is not None and self._hasher is not None  # a shard is open
        data = tokens.astype(self.dtype, copy=False).tobytes()
        self._file.write(data)
        self._hasher.update(data)
        self._in_shard += len(tokens)

    def _close_shard(self) -> None:
        assert self._file is not None and self._hasher is not None  # a shard is open
        name = f"{len(self.shards):05d}"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        pieces = self._hasher.finish()
        docs = np.concatenate(self._doc_starts).astype("<u4").tobytes() if self._doc_starts else b""
        write_atomic(shard_file(self.directory, name, PIECES), pieces)
        write_atomic(shard_file(self.directory, name, DOCS), docs)
        self.shards.append(
            ShardInfo(
                name=name,
                blocks=self._in_shard // self.block_size,
                size=self._in_shard * self.dtype.itemsize,
                root=root_of(pieces),
                documents=len(docs) // 4,
                docs_sha256=hashlib.sha256(docs).hexdigest(),
            )
        )
