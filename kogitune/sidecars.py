"""Writing and checking compressed sidecars (`kogitune compress`): `shards/<name>.tokens.zst` beside each shard.

A sidecar is a transfer encoding of a shard's tokens, one zstd frame per piece (kogitune.protocol.compression,
docs/format.md#compressed-sidecars): it is not part of the tensor, changes no ID or hash, and a fetcher that finds
one on a source moves about half the bytes (docs/benchmarks.md). `compress` writes the sidecars of a tensor:

- each piece is checked against the shard's `.pieces` file as it is compressed, so a sidecar never encodes a
  damaged shard;
- a sidecar is written to `<sidecar>.partial` and renamed into place when complete (after an fsync), so one in
  place is whole; an interrupted run, run again, skips the shards whose sidecar is in place and starts the others
  over;
- pieces are compressed on `workers` threads (zstandard releases the GIL), a bounded window of them at a time.

`sidecar_problems` checks a sidecar in full (every frame decodes to its piece, whose hash matches), as `kogitune
verify` does for every sidecar present.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import TensorError
from .files import file_mode_in
from .layout import partial_path
from .protocol.compression import (
    SidecarIndex,
    decode_piece,
    encode_header,
    encode_piece,
    header_size,
    parse_header,
    piece_compressor,
    sidecar_path,
)
from .protocol.errors import IntegrityError
from .protocol.ids import DIGEST_SIZE
from .protocol.manifest import Manifest, ShardInfo, piece_count
from .protocol.pieces import check_pieces_file

MIN_LEVEL, MAX_LEVEL = 1, 22
"""The zstd levels `compress` takes (the default is the setting compression_level)."""


@dataclass
class CompressReport:
    """What `compress` did: shards compressed now and skipped (their sidecar was in place), and the bytes of the
    tokens files and of the sidecars of every shard (compressed now or before)."""

    compressed: int = 0
    skipped: int = 0
    tokens_bytes: int = 0
    sidecar_bytes: int = 0

    @property
    def ratio(self) -> float:
        """Tokens bytes per sidecar byte (2.0: the sidecars are half the size)."""
        return self.tokens_bytes / self.sidecar_bytes if self.sidecar_bytes else 0.0


def compress(
    directory: str | os.PathLike,
    level: int | None = None,
    workers: int = 0,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> CompressReport:
    """Write the sidecar of every shard of the data tensor in `directory` (see the module docstring); `level` is
    zstd's (default: the setting compression_level), `workers` the threads (0: one per core); with `overwrite`, a
    sidecar in place is written again. `progress(n)` is told of each n bytes of tokens done. Raises TensorError if a
    shard is missing or damaged (the sidecars of the shards before it stay)."""
    from .settings import settings
    from .tensor import DataTensor

    level = settings().compression_level if level is None else level
    if not MIN_LEVEL <= level <= MAX_LEVEL:
        raise TensorError(f"zstd level {level} is not from {MIN_LEVEL} to {MAX_LEVEL}")
    tensor = DataTensor(directory)
    report = CompressReport()
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(workers, thread_name_prefix="kogitune-compress") as pool:
        for shard in tensor.shards:
            target = tensor.path / sidecar_path(shard)
            if not overwrite and _whole_sidecar(target, shard, tensor.manifest.piece_size):
                report.skipped += 1
                if progress is not None:
                    progress(shard.size)
            else:
                _write_sidecar(tensor.path, tensor.manifest, shard, level, pool, 2 * workers, progress)
                report.compressed += 1
            report.tokens_bytes += shard.size
            report.sidecar_bytes += target.stat().st_size
    return report


def _whole_sidecar(path: Path, shard: ShardInfo, piece_size: int) -> bool:
    """Whether `path` holds a sidecar whose header fits the shard and whose size is what the header says (cheap: the
    header only; `sidecar_problems` checks the frames)."""
    try:
        with open(path, "rb") as f:
            index = parse_header(f.read(header_size(piece_count(shard.size, piece_size))), shard, piece_size)
            return os.fstat(f.fileno()).st_size == index.size
    except (OSError, IntegrityError):
        return False


def _write_sidecar(
    directory: Path,
    manifest: Manifest,
    shard: ShardInfo,
    level: int,
    pool: ThreadPoolExecutor,
    window: int,
    progress: Callable[[int], None] | None,
) -> None:
    """Compress the shard's pieces on the pool's threads, `window` pieces in flight at a time (memory: a few pieces
    per thread), frames written after the room left for the header, the header last."""
    piece_size = manifest.piece_size
    pieces = manifest.pieces_in(shard)
    tokens = directory / shard.tokens_path
    digests = _checked_digests(directory, shard, piece_size)
    target = directory / sidecar_path(shard)
    partial = partial_path(target)
    local = threading.local()

    def frame_of(index: int) -> bytes:
        compressor = getattr(local, "compressor", None)
        if compressor is None:
            compressor = local.compressor = piece_compressor(level)
        length = min(piece_size, shard.size - index * piece_size)
        piece = os.pread(source, length, index * piece_size)
        if (
            len(piece) != length
            or hashlib.sha256(piece).digest() != digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
        ):
            raise TensorError(
                f"shard {shard.name}: piece {index} of {shard.tokens_path} does not match its hash "
                "(run `kogitune verify`); its sidecar is not written"
            )
        return encode_piece(compressor, piece)

    source = os.open(tokens, os.O_RDONLY)
    try:
        if os.fstat(source).st_size != shard.size:
            raise TensorError(
                f"shard {shard.name}: {shard.tokens_path} does not have the manifest's {shard.size} bytes"
            )
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode_in(partial.parent))
        try:
            lengths: list[int] = []
            at = header_size(pieces)
            for first in range(0, pieces, window):
                for index, frame in enumerate(pool.map(frame_of, range(first, min(first + window, pieces))), first):
                    _write_all(fd, frame, at)
                    at += len(frame)
                    lengths.append(len(frame))
                    if progress is not None:
                        progress(min(piece_size, shard.size - index * piece_size))
            _write_all(fd, encode_header(piece_size, lengths), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        os.close(source)


def _checked_digests(directory: Path, shard: ShardInfo, piece_size: int) -> bytes:
    path = directory / shard.pieces_path
    try:
        digests = path.read_bytes()
        check_pieces_file(shard, digests, piece_size)
    except (OSError, IntegrityError) as exc:
        raise TensorError(f"shard {shard.name}: {exc} (run `kogitune verify`); its sidecar is not written") from None
    return digests


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def sidecar_problems(directory: Path, manifest: Manifest, shard: ShardInfo) -> list[str]:
    """What is wrong with the shard's sidecar, if it has one (empty: none, or a sidecar whose every frame decodes to
    its piece). Needs an intact `.pieces` file (checked by the caller's verification)."""
    path = Path(directory) / sidecar_path(shard)
    if not path.is_file():
        return []
    try:
        digests = (Path(directory) / shard.pieces_path).read_bytes()
        check_pieces_file(shard, digests, manifest.piece_size)
    except (OSError, IntegrityError):
        return []  # the shard's own check reports it; the sidecar cannot be checked without it
    with open(path, "rb") as f:
        problem = sidecar_problem(f.fileno(), shard, manifest.piece_size, digests)
    return [] if problem is None else [problem]


def sidecar_problem(fd: int, shard: ShardInfo, piece_size: int, digests: bytes) -> str | None:
    """What is wrong with the sidecar open on `fd`, or None when every frame decodes to its piece, whose hash is in
    `digests` (the shard's checked `.pieces` bytes). Reads one frame at a time."""
    pieces = len(digests) // DIGEST_SIZE
    try:
        index: SidecarIndex = parse_header(os.pread(fd, header_size(pieces), 0), shard, piece_size)
        if os.fstat(fd).st_size != index.size:
            return f"has {os.fstat(fd).st_size} bytes, its header says {index.size}"
        for i in range(pieces):
            at, length = index.frame(i)
            piece = decode_piece(os.pread(fd, length, at), min(piece_size, shard.size - i * piece_size))
            if hashlib.sha256(piece).digest() != digests[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]:
                return f"frame {i} decodes to bytes that do not match piece {i}'s hash"
    except IntegrityError as exc:
        return str(exc)
    return None
