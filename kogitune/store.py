"""`kogitune store`: tokenize JSONL text into a data tensor (docs/format.md).

Input is streamed in batches of lines, parsed and tokenized in this process (on the Rust tokenizer's threads) or
in worker processes, and written in input order, so the output (and its dataset ID) does not depend on how it ran.
Everything is written into `<output>.partial` and renamed to `<output>` only once complete: an interrupted store
leaves no tensor that looks complete. Every CHECKPOINT_SECONDS it records in `<output>.partial/checkpoint.json`
how far it got; run again after an interruption (Ctrl-C, kill, crash), it goes on from there when the inputs
(path, size, mtime), the tokenizer, the options and the Kogitune version are unchanged, and the result is the same
tensor, byte for byte, as an uninterrupted store would make.
"""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from kogitune.protocol.jsonlimits import loads
from kogitune.protocol.manifest import (
    DTYPES,
    MAX_BLOCK_SIZE,
    MAX_PIECE_SIZE,
    MAX_SHARD_TOKENS,
    MIN_PIECE_SIZE,
    Manifest,
    ShardInfo,
    TokenizerInfo,
    dtype_for_vocab,
)
from kogitune.protocol.pieces import PieceHasher, root_of

from . import __version__
from .errors import BadInputError, DiskFullError, KogituneError, TensorError
from .files import exclusive_lock, write_atomic
from .layout import DOCS, MANIFEST_FILE, PIECES, SHARDS_DIR, TOKENS, partial_path, shard_file, store_lock_path
from .parallel import in_order, ordered_map
from .perturb import Perturber, PerturbSpec
from .tensor import DataTensor, record_verified
from .tokenizer import DEFAULT_TOKENIZER, Tokenizer, load_tokenizer, tokenizer_from_json

if TYPE_CHECKING:
    from zstandard import ZstdDecompressionObj

log = logging.getLogger("kogitune.store")
BATCH_BYTES = 1 << 20
MAX_DOCUMENT_BYTES = 16 << 20
"""Default limit on one input line (a JSON document, its newline not counted). A whole book is 1 to 5 MB of text,
up to twice that as JSON with escaped non-ASCII characters; a longer line is a bad line, and no more than this of it
is ever held in memory. Tokenizing a document takes about 120 bytes of memory per byte of text (16 MiB: 2 GB), so
the limit also bounds a store's memory. Change it with StoreOptions.max_document_bytes / --max-document-size."""
SKIP_CHUNK = 1 << 20
"""Bytes read at a time while skipping the rest of an over-long line."""
ZSTD_INPUT_SLICE = 256
"""Compressed bytes given to the zstd decompressor at a time. A zstd block inflates to at most 128 KiB from as few
as 4 bytes (an RLE block), so one slice inflates to at most 8 MiB: a small file that inflates to gigabytes never
needs more memory than that. Slicing this fine costs about 10% of decompression speed (900 instead of 1,000 MB/s),
far more than tokenizing consumes."""
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""The errors of a full file system (or of a user over quota)."""
CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_SECONDS = 30.0
"""How often a store records how far it got (an fsync of the shard being written and a small JSON file)."""
ENCODER_THREADS = 2
"""Threads that call the Rust encoder in the in-process pipeline; Rust shares all cores between their batches."""
IN_FLIGHT = 6
"""Batches in flight in the in-process pipeline: being encoded, or parsed and waiting for an encoder."""
DTYPES_NP = {name: np.dtype(f"<u{size}") for name, size in DTYPES.items()}
_STRUCT_CODES = {2: "H", 4: "I"}
_INPUT_SUFFIXES = (".gz", ".zst", ".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class StoreOptions:
    block_size: int = 2048
    text_key: str = "text"
    shard_size: int = 32 << 20
    piece_size: int = 1 << 20
    workers: int = 0
    """0: all cores (see `worker_processes`); 1: this process, on the Rust tokenizer's threads; N: N processes."""
    skip_bad_lines: bool = False
    overwrite: bool = False
    perturb: PerturbSpec | None = None
    filters: dict | None = None
    """A stateless filter pipeline config (kogitune/filters) run on each text before it is tokenized."""
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    """A longer input line is a bad line (an error, or skipped and counted with skip_bad_lines)."""

    def __post_init__(self) -> None:
        """Refuse options that would make a tensor its readers refuse (limits of protocol/manifest.py)."""
        if not 1 <= self.block_size <= MAX_BLOCK_SIZE:
            raise KogituneError(f"block size must be 1 to {MAX_BLOCK_SIZE} tokens, got {self.block_size}")
        if not MIN_PIECE_SIZE <= self.piece_size <= MAX_PIECE_SIZE or self.piece_size & (self.piece_size - 1):
            raise KogituneError(
                f"piece size must be a power of two from {MIN_PIECE_SIZE >> 10} to "
                f"{MAX_PIECE_SIZE >> 10} KiB, got {self.piece_size / 1024:g} KiB"
            )
        if not 0 < self.shard_size <= MAX_SHARD_TOKENS:
            raise KogituneError(
                f"shard size must be positive and at most {MAX_SHARD_TOKENS} bytes "
                f"(document offsets are 32-bit), got {self.shard_size}"
            )
        if self.workers < 0:
            raise KogituneError(f"workers must be 0 (all cores) or more, got {self.workers}")
        check_max_document_bytes(self.max_document_bytes)

    def provenance(self) -> dict:
        return {
            "block_size": self.block_size,
            "text_key": self.text_key,
            "shard_size": self.shard_size,
            "piece_size": self.piece_size,
            "skip_bad_lines": self.skip_bad_lines,
        }


@dataclass
class StoreReport:
    path: Path
    dataset_id: str
    documents: int = 0
    tokens: int = 0
    blocks: int = 0
    shards: int = 0
    padding: int = 0
    bad_lines: int = 0
    empty_documents: int = 0
    filtered_documents: int = 0
    empty_files: int = 0
    text_bytes: int = 0
    seconds: float = 0.0
    already_stored: bool = False

    def summary(self) -> str:
        if self.already_stored:
            return f"already stored: {self.path} ({self.dataset_id}); pass --overwrite to store again"
        rate = self.text_bytes / 1e6 / max(self.seconds, 1e-9)
        skipped = f", skipped {self.bad_lines} bad lines" if self.bad_lines else ""
        empty = f", {self.empty_documents} empty documents" if self.empty_documents else ""
        empty += f", {self.filtered_documents:,} dropped by filters" if self.filtered_documents else ""
        return (
            f"stored {self.path}\n  {self.documents:,} documents, {self.tokens:,} tokens, {self.blocks:,} blocks "
            f"in {self.shards} shards ({self.padding:,} padding tokens in the last block){skipped}{empty}\n"
            f"  {self.text_bytes / 1e6:.1f} MB of text in {self.seconds:.1f} s ({rate:.1f} MB/s, "
            f"{self.tokens / max(self.seconds, 1e-9) / 1e6:.2f} M tokens/s)\n  dataset id {self.dataset_id}"
        )


def check_max_document_bytes(limit: int) -> None:
    if not isinstance(limit, int) or limit < 1:
        raise KogituneError(f"the maximum document size must be a positive number of bytes, got {limit!r}")


def default_output(tokenizer: Tokenizer, first_input: Path) -> Path:
    name = first_input.name
    while name.endswith(_INPUT_SUFFIXES):
        name = name[: name.rfind(".")]
    return Path(tokenizer.short_id) / (name or "data")


def store(
    files: Iterable[str | os.PathLike],
    tokenizer: str | Tokenizer = DEFAULT_TOKENIZER,
    output: str | os.PathLike | None = None,
    options: StoreOptions | None = None,
    progress: bool = True,
) -> StoreReport:
    """Tokenize `files` (JSONL, optionally .gz or .zst) into a data tensor directory and return a report."""
    options = options or StoreOptions()
    paths = [Path(f) for f in files]
    if not paths:
        raise BadInputError("no input files given")
    for path in paths:
        if path.is_dir():
            raise BadInputError(f"{path} is a directory; give the JSONL files in it (e.g. {path}/*.jsonl)")
        if not path.is_file():
            raise BadInputError(f"{path}: no such file")
    if options.filters is not None:
        _stateless_pipeline(options.filters)
    tok = load_tokenizer(tokenizer)
    out = Path(output) if output is not None else default_output(tok, paths[0])
    with exclusive_lock(store_lock_path(out), f"storing into {out}"):
        _settle_replace(out)
        if (out / MANIFEST_FILE).exists() and not options.overwrite:
            return StoreReport(out, DataTensor(out).dataset_id, already_stored=True)
        if out.exists() and not (out / MANIFEST_FILE).exists() and (not out.is_dir() or any(out.iterdir())):
            raise TensorError(
                f"{out} exists and is not a data tensor (it has no {MANIFEST_FILE}); choose another output or remove it"
            )
        partial = partial_path(out)
        checkpoint = _usable_checkpoint(partial, paths, tok, options)
        if checkpoint is None:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        else:
            for leftover in [*partial.glob(".*.tmp"), *partial.glob("shards/.*.tmp")]:
                leftover.unlink()  # an atomic write the interruption cut short
        try:
            report = _write_tensor(paths, tok, partial, options, progress, checkpoint)
            _replace_dir(partial, out)
        except KogituneError:
            shutil.rmtree(partial, ignore_errors=True)  # bad input: only other inputs can go on from here
            raise
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            raise _disk_full(exc, partial) from None
    report.path = out
    return report


def _disk_full(exc: OSError, partial: Path) -> DiskFullError:
    """The error for a store that ran out of space: what was kept and what to do. A partial directory with a
    checkpoint is kept, since the same command goes on from it; one without is removed, to give the space back."""
    where = exc.filename or partial
    try:
        writer = loads((partial / CHECKPOINT_FILE).read_bytes())["writer"]
        shards, tokens = len(writer["shards"]), int(writer["tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(partial, ignore_errors=True)
        return DiskFullError(
            f"{where}: {exc.strerror}. Nothing was kept: the store "
            f"had not written its first checkpoint (every {CHECKPOINT_SECONDS:g} s), so {partial} "
            "is removed. Free space there (or choose another --output) and run the same command "
            "again"
        )
    held = sum(f.stat().st_size for f in partial.rglob("*") if f.is_file())
    return DiskFullError(
        f"{where}: {exc.strerror}. Kept {partial} ({held / 1e6:,.1f} MB: "
        f"{shards} finished shards and a checkpoint at {tokens:,} tokens). Free space "
        "there and run the same command again: it goes on from the checkpoint"
    )


def _job(paths: list[Path], tok: Tokenizer, options: StoreOptions) -> dict:
    """What a checkpoint is valid for: going on from it must give the tensor that starting afresh would."""
    inputs = []
    for path in paths:
        st = path.stat()
        inputs.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    return {
        "kogitune": __version__,
        "tokenizer": tok.fingerprint,
        "options": options.provenance(),
        "filters": options.filters,
        "perturb": repr(options.perturb),
        "batch_bytes": BATCH_BYTES,
        "max_document_bytes": options.max_document_bytes,
        "inputs": inputs,
    }


def _usable_checkpoint(partial: Path, paths: list[Path], tok: Tokenizer, options: StoreOptions) -> dict | None:
    """The checkpoint an interrupted store of the same job left in `partial`, if any."""
    try:
        checkpoint = loads((partial / CHECKPOINT_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get("job") != json.loads(json.dumps(_job(paths, tok, options))):
        log.info("%s: the inputs, tokenizer or options changed since the checkpoint; starting afresh", partial)
        return None
    if not _same_bytes_read(checkpoint.get("read")):
        log.info("%s: an input was rewritten since the checkpoint; starting afresh", partial)
        return None
    itemsize = DTYPES_NP[dtype_for_vocab(tok.vocab_size)].itemsize
    if not _checkpoint_fits(checkpoint, partial, itemsize):
        log.warning("%s: the checkpoint does not match the files beside it; starting afresh", partial)
        return None
    return checkpoint


def _same_bytes_read(read) -> bool:
    """Whether each input still starts with the bytes the checkpoint read from it ([path, count, SHA-256])."""
    try:
        for path, count, digest in read:
            sha = hashlib.sha256()
            with open(path, "rb") as f:
                left = count
                while left and (chunk := f.read(min(left, 1 << 20))):
                    sha.update(chunk)
                    left -= len(chunk)
            if left or sha.hexdigest() != digest:
                return False
        return True
    except (OSError, TypeError, ValueError):
        return False


def _checkpoint_fits(checkpoint: dict, partial: Path, itemsize: int) -> bool:
    """Whether the checkpoint is well formed and the shard files it counts on are there."""
    try:
        writer = checkpoint["writer"]
        shards = [ShardInfo(**shard) for shard in writer["shards"]]
        numbers = [
            checkpoint["batches"],
            writer["tokens"],
            writer["documents"],
            writer["in_shard"],
            *(checkpoint["report"][name] for name in _COUNTERS),
        ]
        base64.b64decode(writer["doc_starts"], validate=True)
        if not all(type(n) is int and n >= 0 for n in numbers) or not isinstance(
            checkpoint["perturber"], (dict, type(None))
        ):
            return False
        files = [partial / name for shard in shards for name in (shard.tokens_path, shard.pieces_path, shard.docs_path)]
        current = shard_file(partial, f"{len(shards):05d}", TOKENS)
        return (
            all(f.is_file() for f in files)
            and all((partial / shard.tokens_path).stat().st_size == shard.size for shard in shards)
            and (not writer["in_shard"] or current.stat().st_size >= writer["in_shard"] * itemsize)
        )
    except (KeyError, TypeError, ValueError, OSError):
        return False


def _stateless_pipeline(config: dict):
    """The filter pipeline of `config`, refused if it remembers documents (dedup), which store cannot run."""
    from .filters import FilterError, Pipeline

    pipeline = Pipeline.from_config(config)
    stateful = [f.name for f in pipeline.filters if f.stateful]
    if stateful:
        raise FilterError(
            f"store --filters cannot run {', '.join(stateful)}: store filters independent batches in "
            f"parallel, and dedup compares each document with all earlier ones. Run `kogitune filter "
            f"IN... -o OUT.jsonl --config CONFIG` first and store its output"
        )
    return pipeline


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        os.rename(new, target)
        return
    old = _old_dir(target)
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _old_dir(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def _settle_replace(target: Path) -> None:
    """After an interruption inside `_replace_dir`: the old tensor goes back in place if the new one never got
    there, and is removed if it did."""
    old = _old_dir(target)
    if old.exists():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, target)


def _write_tensor(
    paths: list[Path],
    tok: Tokenizer,
    directory: Path,
    options: StoreOptions,
    progress: bool,
    checkpoint: dict | None = None,
) -> StoreReport:
    from tqdm import tqdm

    started = time.perf_counter()
    dtype = dtype_for_vocab(tok.vocab_size)
    writer = TensorWriter(directory, dtype, options.block_size, options.shard_size, options.piece_size, tok.eos_id)
    reader = InputReader(paths, options.skip_bad_lines, max_line_bytes=options.max_document_bytes)
    perturber = Perturber(options.perturb, tok.vocab_size) if options.perturb else None
    report = StoreReport(directory, "")
    done = 0
    if checkpoint is not None:
        done = _restore(checkpoint, writer, perturber, report)
        if progress:
            print(
                f"store: going on from the checkpoint in {directory} ({done} batches, {len(writer.shards)} "
                "shards already stored)",
                file=sys.stderr,
            )
    next_checkpoint, job = time.monotonic() + CHECKPOINT_SECONDS, None
    batches = itertools.islice(reader.batches(), done, None)
    with (
        tqdm(
            total=sum(p.stat().st_size for p in paths),
            unit="B",
            unit_scale=True,
            desc="store",
            disable=None if progress else True,
        ) as bar,
        ThreadPoolExecutor(1) as aside,
        writer.closed_on_error(),
    ):
        for number, (batch, result) in enumerate(_tokenize_in_order(batches, tok, dtype, options), done):
            if number == done:  # the manifest's fingerprint, hashed while Rust encodes rather than after the last batch
                aside.submit(getattr, tok, "fingerprint")
            tokens, lengths, bad, empty, text_bytes, filtered = result
            bad = batch.bad_lines(bad, options.skip_bad_lines)
            report.bad_lines += len(bad)
            report.empty_documents += empty
            report.filtered_documents += filtered
            report.text_bytes += text_bytes
            tokens, lengths = np.frombuffer(tokens, dtype=dtype), np.frombuffer(lengths, dtype=np.int64)
            if perturber:
                tokens, lengths = perturber.apply(tokens, lengths)
            writer.add(tokens, lengths)
            bar.update(reader.bytes_read - bar.n)
            if time.monotonic() >= next_checkpoint:
                job = job or _job(paths, tok, options)  # not before: it needs the fingerprint, hashed meanwhile
                _save_checkpoint(directory, job, number + 1, writer, perturber, report, reader)
                next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
    shards = writer.finish()
    provenance: dict[str, Any] = {
        "inputs": reader.inputs,
        "options": options.provenance(),
        "kogitune": __version__,
        "skipped": {
            "bad_lines": report.bad_lines,
            "empty_documents": report.empty_documents,
            "empty_files": reader.empty_files,
        },
    }
    if perturber:
        provenance["perturb"] = perturber.provenance()
    if options.filters is not None:
        provenance["filters"] = _stateless_pipeline(options.filters).to_provenance()
        provenance["skipped"]["filtered_documents"] = report.filtered_documents
    manifest = Manifest(
        tokenizer=TokenizerInfo(tok.name, tok.short_id, tok.fingerprint, tok.vocab_size, tok.eos_id),
        dtype=dtype,
        block_size=options.block_size,
        piece_size=options.piece_size,
        documents=writer.documents,
        tokens=writer.tokens,
        blocks=sum(s.blocks for s in shards),
        shards=shards,
        provenance=provenance,
    )
    manifest_bytes = json.dumps(manifest.to_dict(), indent=1, sort_keys=True, ensure_ascii=False).encode()
    write_atomic(directory / MANIFEST_FILE, manifest_bytes + b"\n")
    record_verified(directory, manifest, shards)
    (directory / CHECKPOINT_FILE).unlink(missing_ok=True)
    report.dataset_id = manifest.dataset_id
    report.documents, report.tokens, report.blocks = manifest.documents, manifest.tokens, manifest.blocks
    report.shards, report.padding = len(shards), manifest.blocks * manifest.block_size - manifest.tokens
    report.empty_files = reader.empty_files
    report.seconds = time.perf_counter() - started
    return report


_COUNTERS = ("bad_lines", "empty_documents", "filtered_documents", "text_bytes")


def _save_checkpoint(
    directory: Path,
    job: dict,
    batches: int,
    writer: TensorWriter,
    perturber: Perturber | None,
    report: StoreReport,
    reader: InputReader,
) -> None:
    """Record that the first `batches` input batches are stored: the shard being written is synced first, so the
    checkpoint never claims bytes that a crash could lose. The SHA-256 of the input bytes read so far lets a
    resume notice an input rewritten in place with its size and mtime kept."""
    checkpoint = {
        "job": job,
        "batches": batches,
        "read": reader.read_so_far(),
        "writer": writer.state(),
        "report": {name: getattr(report, name) for name in _COUNTERS},
        "perturber": perturber.state() if perturber else None,
    }
    write_atomic(directory / CHECKPOINT_FILE, json.dumps(checkpoint).encode())


def _restore(checkpoint: dict, writer: TensorWriter, perturber: Perturber | None, report: StoreReport) -> int:
    """Put the writer, the perturber's generator and the report where the checkpoint says; the batches done."""
    writer.restore(checkpoint["writer"])
    if perturber:
        perturber.restore(checkpoint["perturber"])
    for name in _COUNTERS:
        setattr(report, name, int(checkpoint["report"][name]))
    return int(checkpoint["batches"])


@dataclass
class Batch:
    path: Path
    first_line: int
    lines: list[bytes]
    too_long: list[tuple[int, str]] = field(default_factory=list)
    """(line number, reason) of the lines longer than the limit; `lines` holds b"" in their place."""

    def bad_lines(self, parsed: list[tuple[int, str]], skip: bool) -> list[tuple[int, str]]:
        """All bad lines of the batch, in order: those found `parsed` and those too long to read. Raises
        BadInputError for the first one unless `skip`."""
        bad = sorted(self.too_long + parsed) if self.too_long else parsed
        if bad and not skip:
            line, reason = bad[0]
            raise BadInputError(
                f"{self.path}, line {line}: {reason}. Fix the line, or pass --skip-bad-lines "
                "to skip such lines and count them."
            )
        return bad


class _HashingReader(io.RawIOBase):
    """Counts and hashes the raw bytes of a file as a decompressor reads them."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.sha256.update(memoryview(buffer)[:n])
            self.size += n
        return n


class InputReader:
    """Streams input files as batches of raw lines and records their size and SHA-256 for the provenance.

    Memory stays bounded whatever the input: a line is read up to `max_line_bytes` and the rest of a longer one is
    skipped without being kept (the batch records it as too long); compressed input inflates a bounded amount at
    a time (see ZSTD_INPUT_SLICE; gzip reads are bounded by the gzip module).
    """

    def __init__(
        self,
        paths: list[Path],
        skip_bad_lines: bool,
        batch_bytes: int | None = None,
        max_line_bytes: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        self.paths = paths
        self.skip_bad_lines = skip_bad_lines
        self.batch_bytes = batch_bytes or BATCH_BYTES
        self.max_line_bytes = max_line_bytes
        self.inputs: list[dict] = []
        self.empty_files = 0
        self._done_bytes = 0
        self._current: _HashingReader | None = None

    @property
    def bytes_read(self) -> int:
        return self._done_bytes + (self._current.size if self._current else 0)

    def read_so_far(self) -> list[list]:
        """[path, bytes read, SHA-256 of those bytes] for each input read from so far."""
        read = [[str(path.resolve()), done["size"], done["sha256"]] for path, done in zip(self.paths, self.inputs)]
        if self._current is not None:
            read.append(
                [
                    str(self.paths[len(self.inputs)].resolve()),
                    self._current.size,
                    self._current.sha256.copy().hexdigest(),
                ]
            )
        return read

    def batches(self) -> Iterator[Batch]:
        for path in self.paths:
            with open(path, "rb", buffering=0) as raw:
                self._current = hashing = _HashingReader(raw)
                lines_seen = 0
                for batch in self._line_batches(path, _decompressed(path, hashing)):
                    lines_seen += len(batch.lines)
                    yield batch
                if not lines_seen:
                    if not self.skip_bad_lines:
                        raise BadInputError(
                            f"{path}: the file is empty; remove it from the inputs, or pass --skip-bad-lines to skip it"
                        )
                    self.empty_files += 1
                self.inputs.append({"name": path.name, "size": hashing.size, "sha256": hashing.sha256.hexdigest()})
                self._done_bytes += hashing.size
                self._current = None

    def _line_batches(self, path: Path, stream) -> Iterator[Batch]:
        limit = self.max_line_bytes
        batch, size, number = Batch(path, 1, []), 0, 0
        try:
            while line := stream.readline(limit + 1):
                number += 1
                if len(line) > limit and not line.endswith(b"\n"):
                    length = len(line) + _skip_rest_of_line(stream)
                    batch.too_long.append(
                        (
                            number,
                            f"{length:,} bytes, longer than the maximum document size "
                            f"({limit:,} bytes; change it with --max-document-size)",
                        )
                    )
                    line = b""
                batch.lines.append(line)
                size += len(line)
                if size >= self.batch_bytes:
                    yield batch
                    batch, size = Batch(path, number + 1, []), 0
        except (OSError, EOFError, ValueError) as exc:
            raise BadInputError(f"{path}: cannot decompress ({exc})") from None
        if batch.lines:
            yield batch


def _skip_rest_of_line(stream) -> int:
    """Read past the end of the current line without keeping it; the bytes skipped, its newline not counted."""
    skipped = 0
    while chunk := stream.readline(SKIP_CHUNK):
        if chunk.endswith(b"\n"):
            return skipped + len(chunk.rstrip(b"\r\n"))
        skipped += len(chunk)
    return skipped


def _decompressed(path: Path, raw: io.RawIOBase):
    buffered = io.BufferedReader(raw, 1 << 20)
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=buffered)
    if path.name.endswith(".zst"):
        return io.BufferedReader(_ZstdReader(buffered), 1 << 20)
    return buffered


class _ZstdReader(io.RawIOBase):
    """Decompresses zstd frame after frame, ZSTD_INPUT_SLICE compressed bytes at a time (bounded memory: zstandard's
    decompressobj inflates all it is given at once), and fails on a truncated file (zstandard's stream_reader ends
    quietly in the middle of a frame, so part of a damaged file would be stored as if it were whole)."""

    def __init__(self, source) -> None:
        import zstandard

        self._source = source
        self._new_frame = zstandard.ZstdDecompressor().decompressobj
        self._zstd_error = zstandard.ZstdError
        self._frame: ZstdDecompressionObj | None = None
        self._input = memoryview(b"")
        self._output = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        filled = 0
        while filled < len(buffer) and (self._output or self._inflate_slice()):
            size = min(len(buffer) - filled, len(self._output))
            buffer[filled : filled + size] = self._output[:size]
            self._output = self._output[size:]
            filled += size
        return filled

    def _inflate_slice(self) -> bool:
        """Decompress the next slice of input into `_output`; False at the end of the file."""
        while not self._output:
            if not self._input:
                self._input = memoryview(self._source.read(64 << 10))
                if not self._input:
                    if self._frame is not None:
                        raise EOFError("the file ends in the middle of a zstd frame (truncated?)")
                    return False
            if self._frame is None:
                self._frame = self._new_frame()
            data, self._input = self._input[:ZSTD_INPUT_SLICE], self._input[ZSTD_INPUT_SLICE:]
            try:
                self._output = memoryview(self._frame.decompress(data))
            except self._zstd_error as exc:
                raise ValueError(f"not valid zstd data: {exc}") from None
            if self._frame.eof:  # the next frame starts with what this one left over
                self._input = memoryview(self._frame.unused_data + self._input)
                self._frame = None
        return True


def worker_processes(options: StoreOptions) -> int:
    """How many processes tokenize; 0 means this process, on the Rust tokenizer's own threads (all cores).

    The default (workers=0) uses all cores either way: in this process, unless filters run (Python, which holds the
    GIL for every text) or Rust parallelism is off (TOKENIZERS_PARALLELISM=false, which loading a transformers
    tokenizer sets); then in one process per core. With no filters, this process is the faster: no spawn, no
    per-worker imports, no pickled batches (on 2 cores, docs/benchmarks.md).
    """
    if options.workers == 0 and options.filters is None and _rust_parallelism():
        return 0
    workers = options.workers or os.cpu_count() or 1
    return 0 if workers == 1 else workers


def _rust_parallelism() -> bool:
    """Whether `tokenizers` encodes a batch on all cores: as it reads TOKENIZERS_PARALLELISM (utils/parallelism.rs)."""
    value = os.environ.get("TOKENIZERS_PARALLELISM")
    return value is None or value.lower() not in ("", "off", "false", "f", "no", "n", "0")


def _tokenize_in_order(batches: Iterator[Batch], tok: Tokenizer, dtype: str, options: StoreOptions):
    """Yield (batch, result of `tokenize_lines`) in input order, with a bounded number of batches in flight."""
    processes = worker_processes(options)
    if not processes:
        pipeline = _stateless_pipeline(options.filters) if options.filters is not None else None
        yield from _tokenize_here(batches, tok, dtype, options.text_key, pipeline)
        return
    jobs = ((batch, (batch.lines, batch.first_line, options.text_key, dtype)) for batch in batches)
    with tempfile.TemporaryDirectory(prefix="kogitune-store-") as scratch:
        tokenizer_file = Path(scratch) / "tokenizer.json"  # workers read it: initargs must stay small (parallel.py)
        tokenizer_file.write_text(tok.to_json(), encoding="utf-8")
        yield from ordered_map(
            _tokenize_in_worker,
            jobs,
            processes,
            _init_worker,
            (tok.name, str(tokenizer_file), tok.eos_id, options.filters),
        )


def _tokenize_here(batches: Iterator[Batch], tok: Tokenizer, dtype: str, text_key: str, pipeline):
    """`tokenize_lines` in this process, as a pipeline that keeps the Rust encoder busy: two threads only call the
    encoder, which shares all cores between their batches; this thread reads, parses JSON (and runs filters) ahead
    of them, turns the encodings into packed ids, and writes.

    Rust releases the GIL while it encodes; Python work on an encoder's thread leaves the cores idle. Before, two
    threads each parsed, encoded and packed a batch: their encoder calls shared the cores, ended together, and then
    both threads ran Python, one at a time. One encoder thread leaves a core idle at the end of each call, while the
    batch's last documents are encoded; a separate parsing thread only added GIL hand-offs (docs/benchmarks.md).
    """
    encoder = ThreadPoolExecutor(ENCODER_THREADS, thread_name_prefix="kogitune-encode")

    def parsed():
        for batch in batches:
            texts, *counts = parse_lines(batch.lines, batch.first_line, text_key, pipeline)
            yield batch, (texts, counts)

    def encode(texts: list[str], counts: list):
        return tok.encodings(texts), counts

    try:
        for batch, (encodings, counts) in in_order(encoder, encode, parsed(), IN_FLIGHT):
            yield batch, (*pack_documents(encodings, tok.eos_id, dtype), *counts)
    finally:
        encoder.shutdown(cancel_futures=True)


_worker_tokenizer: Tokenizer | None = None
_worker_pipeline = None


def _init_worker(name: str, tokenizer_file: str, eos_id: int, filters: dict | None) -> None:
    global _worker_tokenizer, _worker_pipeline
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = tokenizer_from_json(name, Path(tokenizer_file).read_text(encoding="utf-8"), eos_id)
    _worker_pipeline = _stateless_pipeline(filters) if filters is not None else None


def _tokenize_in_worker(lines: list[bytes], first_line: int, text_key: str, dtype: str):
    assert _worker_tokenizer is not None, "the pool runs _init_worker first"
    return tokenize_lines(_worker_tokenizer, lines, first_line, text_key, dtype, _worker_pipeline)


def tokenize_lines(tok: Tokenizer, lines: list[bytes], first_line: int, text_key: str, dtype: str, pipeline=None):
    """Parse JSONL lines, run the filter `pipeline` (if any) and tokenize the kept texts, each followed by EOS.

    Returns (token bytes, document lengths as int64 bytes, [(line, reason) of bad lines], empty documents,
    UTF-8 bytes of text, documents dropped by filters); plain bytes, so that results cross process boundaries
    cheaply.
    """
    texts, *counts = parse_lines(lines, first_line, text_key, pipeline)
    return (*pack_documents(tok.encodings(texts), tok.eos_id, dtype), *counts)


def parse_lines(lines: list[bytes], first_line: int, text_key: str, pipeline=None):
    """(texts to tokenize, [(line, reason) of bad lines], empty documents, UTF-8 bytes of text, documents dropped
    by the filter `pipeline`) of JSONL lines."""
    texts, bad, empty, text_bytes, filtered = [], [], 0, 0, 0
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        text, reason = _text_of(line, text_key)
        if reason:
            bad.append((number, reason))
        elif not text:
            empty += 1
        else:
            text_bytes += len(text.encode("utf-8"))
            if pipeline is not None:
                text = pipeline.apply(text).text
                if not text:
                    filtered += 1
                    continue
            texts.append(text)
    return texts, bad, empty, text_bytes, filtered


def pack_documents(encodings: list, eos_id: int, dtype: str) -> tuple[bytes, bytes]:
    """(the token ids of `encodings`, each followed by EOS, as `dtype` bytes; their lengths with EOS as int64 bytes).

    `struct` turns each document's ids (a Python list) straight into little-endian bytes: the fastest way tried,
    25% less CPU than filling a numpy array; and only one document's ids are Python ints at a time, whereas holding
    a whole batch's took fresh pages from the OS for every batch (docs/benchmarks.md).
    """
    code = _STRUCT_CODES[DTYPES[dtype]]
    lengths = [len(encoding) + 1 for encoding in encodings]
    tokens = b"".join([struct.pack(f"<{n}{code}", *encoding.ids, eos_id) for encoding, n in zip(encodings, lengths)])
    return tokens, np.array(lengths, np.int64).tobytes()


def _text_of(line: bytes, key: str) -> tuple[str, str]:
    _, text, reason = document_of(line, key)
    return text, reason


def document_of(line: bytes, key: str) -> tuple[dict | None, str, str]:
    """(the JSON object of a JSONL line, its text under `key`, "") or (None, "", why the line is malformed)."""
    try:
        decoded = line.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        return None, "", f"not UTF-8 (byte {exc.start} is {line[exc.start]:#04x})"
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return None, "", f"not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return (
            None,
            "",
            (
                "arrays or objects nested too deeply for Python's JSON parser (the limit is about "
                f"{sys.getrecursionlimit():,} levels)"
            ),
        )
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        return None, "", f"cannot be read ({str(exc).split(';')[0]})"
    if not isinstance(obj, dict):
        return None, "", f"not a JSON object (found {type(obj).__name__})"
    if key not in obj:
        keys = ", ".join(name if len(name) <= 40 else name[:40] + "..." for name in list(obj)[:5])
        return None, "", f"has no key {key!r} (keys: {keys or 'none'}); choose the key with --text-key"
    text = obj[key]
    if not isinstance(text, str):
        return None, "", f"{key!r} is {type(text).__name__}, not a string"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return None, "", f"{key!r} contains an unpaired surrogate at character {exc.start}"
    return obj, text, ""


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
