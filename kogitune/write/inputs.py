"""Reading store and filter inputs: JSONL files, plain or compressed (.gz, .zst), streamed as batches of raw lines;
and a text column of Parquet and Arrow (HF `datasets`) files, each row as the JSON line of its text (tables.py).

Memory stays bounded whatever the input: a line longer than the maximum document size is skipped without being
kept, and compressed input is inflated a bounded amount at a time. The reader hashes the raw bytes as it goes, for
the manifest's provenance and for a resumed store to check that an input was not rewritten.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInputError, KogituneError
from .tables import ARROW_SUFFIXES, PARQUET_SUFFIXES, hf_dataset_files, is_table, rows_as_lines, table_rows

if TYPE_CHECKING:
    from zstandard import ZstdDecompressionObj

BATCH_BYTES = 1 << 20
"""Input bytes read into one batch (a batch is parsed and tokenized as one unit of work)."""
MAX_DOCUMENT_BYTES = 16 << 20
"""Default limit on one input line (a JSON document, its newline not counted). A whole book is 1 to 5 MB of text,
up to twice that as JSON with escaped non-ASCII characters; a longer line is a bad line, and no more than this of it
is ever held in memory. Tokenizing a document takes about 120 bytes of memory per byte of text (16 MiB: 2 GB), so
the limit also bounds a store's memory. Change it with StoreOptions.max_document_bytes / --max-document-size."""
TOO_LONG = (
    "{length:,} bytes, longer than the maximum document size ({limit:,} bytes; change it with --max-document-size)"
)
"""Why a row (as its JSON line) or a line is too long: the one wording for both."""
SKIP_CHUNK = 1 << 20
"""Bytes read at a time while skipping the rest of an over-long line."""
ZSTD_INPUT_SLICE = 256
"""Compressed bytes given to the zstd decompressor at a time. A zstd block inflates to at most 128 KiB from as few
as 4 bytes (an RLE block), so one slice inflates to at most 8 MiB: a small file that inflates to gigabytes never
needs more memory than that. Slicing this fine costs about 10% of decompression speed (900 instead of 1,000 MB/s),
far more than tokenizing consumes."""
INPUT_SUFFIXES = (".gz", ".zst", ".jsonl", ".json", ".ndjson", *PARQUET_SUFFIXES, *ARROW_SUFFIXES)
"""Suffixes of input files: dropped from an input's name to name the tensor stored from it, and the files taken
from a directory given as input."""


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[Path]:
    """The input files that `items` name, in order: a file as such; a glob pattern (`*`, `?`, `[`) as the files it
    matches, sorted; a `datasets.Dataset.save_to_disk` directory as its Arrow files, in the dataset's order; another
    directory as the input files (by INPUT_SUFFIXES) under it, sorted by path."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if not path.exists() and glob.has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            if not matches:
                raise BadInputError(f"{item}: no file matches this pattern")
            paths.extend(expand_inputs(matches))
        elif path.is_dir():
            files = hf_dataset_files(path)
            if files is None:
                files = sorted(p for p in path.rglob("*") if p.name.endswith(INPUT_SUFFIXES) and p.is_file())
                if not files:
                    raise BadInputError(f"{path}: a directory with no input files ({', '.join(INPUT_SUFFIXES)})")
            paths.extend(files)
        elif path.is_file():
            paths.append(path)
        else:
            raise BadInputError(f"{path}: no such file")
    if not paths:
        raise BadInputError("no input files given")
    return paths


@dataclass(frozen=True)
class Span:
    """What one input of a store reads: a whole file, or part of one (kogitune.write.parts splits inputs so).

    `start` and `stop` count bytes in a plain JSONL file (a line-aligned range: `start` and `stop` are line starts
    or the file's end) and row groups in a Parquet file; `stop` None is the end of the file. Compressed JSONL and
    Arrow files are read whole."""

    path: Path
    start: int = 0
    stop: int | None = None

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop is None

    def bytes(self) -> int:
        """The bytes of the file that the span covers (of the whole file for a table): for progress bars."""
        if is_table(self.path) or self.whole:
            return self.path.stat().st_size
        return (self.path.stat().st_size if self.stop is None else self.stop) - self.start

    @property
    def origin(self) -> str:
        """Where line (row) numbers count from, in messages: "" for a whole file."""
        if self.whole:
            return ""
        return f" (from row group {self.start})" if is_table(self.path) else f" (from byte {self.start})"


def splits_by_bytes(path: Path) -> bool:
    """Whether a file can be read from any line start: plain JSONL, neither compressed nor a table."""
    return not path.name.endswith((".gz", ".zst")) and not is_table(path)


def check_max_document_bytes(limit: int) -> None:
    if not isinstance(limit, int) or limit < 1:
        raise KogituneError(f"the maximum document size must be a positive number of bytes, got {limit!r}")


@dataclass
class Batch:
    path: Path
    first_line: int
    lines: list[bytes]
    too_long: list[tuple[int, str]] = field(default_factory=list)
    """(line number, reason) of the lines longer than the limit; `lines` holds b"" in their place."""
    unit: str = "line"
    """What a line is in the input: a "line" of JSONL, a "row" of a table."""
    origin: str = ""
    """Where line numbers count from when the input is part of a file (Span.origin)."""
    dropped: int = 0
    """Lines that a staged filter's keep list does not keep, blanked in `lines` (kogitune.filters.keep)."""

    def bad_lines(self, parsed: list[tuple[int, str]], skip: bool) -> list[tuple[int, str]]:
        """All bad lines of the batch, in order: those found `parsed` and those too long to read. Raises
        BadInputError for the first one unless `skip`."""
        bad = sorted(self.too_long + parsed) if self.too_long else parsed
        if bad and not skip:
            line, reason = bad[0]
            raise BadInputError(
                f"{self.path}{self.origin}, {self.unit} {line}: {reason}. Fix the {self.unit}, or pass --skip-bad-lines "
                f"to skip such {self.unit}s and count them."
            )
        return bad


class _HashingReader(io.RawIOBase):
    """Counts and hashes the raw bytes of a file as a decompressor reads them, up to `limit` bytes if given."""

    def __init__(self, raw, limit: int | None = None) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.limit is not None:
            buffer = memoryview(buffer)[: self.limit - self.size]
            if not len(buffer):
                return 0
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
        inputs: Sequence[Path | Span],
        skip_bad_lines: bool,
        batch_bytes: int | None = None,
        max_line_bytes: int = MAX_DOCUMENT_BYTES,
        text_key: str = "text",
    ) -> None:
        self.spans = [span if isinstance(span, Span) else Span(Path(span)) for span in inputs]
        self.paths = [span.path for span in self.spans]
        self.text_key = text_key
        """The column of table inputs to read (JSONL lines are parsed later, by the key given there)."""
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
        """[path, first byte, bytes read, SHA-256 of those bytes] for each input read from so far."""
        read = [
            [str(span.path.resolve()), _first_byte(span), done["size"], done["sha256"]]
            for span, done in zip(self.spans, self.inputs)
        ]
        if self._current is not None:
            span = self.spans[len(self.inputs)]
            current = self._current
            read.append([str(span.path.resolve()), _first_byte(span), current.size, current.sha256.copy().hexdigest()])
        return read

    def batches(self) -> Iterator[Batch]:
        for span in self.spans:
            path = span.path
            with open(path, "rb", buffering=0) as raw:
                start = _first_byte(span)
                raw.seek(start)
                limit = None if span.stop is None or is_table(path) else span.stop - start
                self._current = hashing = _HashingReader(raw, limit)
                lines_seen = 0
                if is_table(path):
                    while hashing.read(1 << 20):  # hashed whole first: rows are read by pyarrow, not in file order
                        pass
                    batches = self._row_batches(span)
                else:
                    batches = self._line_batches(span, _decompressed(path, hashing))
                for batch in batches:
                    lines_seen += len(batch.lines)
                    yield batch
                if not lines_seen:
                    if not self.skip_bad_lines:
                        raise BadInputError(
                            f"{path}: the file is empty; remove it from the inputs, or pass --skip-bad-lines to skip it"
                        )
                    self.empty_files += 1
                self.inputs.append(_provenance(span, hashing))
                self._done_bytes += hashing.size
                self._current = None

    def _line_batches(self, span: Span, stream) -> Iterator[Batch]:
        path, limit = span.path, self.max_line_bytes
        batch, size, number = Batch(path, 1, [], origin=span.origin), 0, 0
        try:
            while line := stream.readline(limit + 1):
                number += 1
                if len(line) > limit and not line.endswith(b"\n"):
                    length = len(line) + _skip_rest_of_line(stream)
                    batch.too_long.append((number, TOO_LONG.format(length=length, limit=limit)))
                    line = b""
                batch.lines.append(line)
                size += len(line)
                if size >= self.batch_bytes:
                    yield batch
                    batch, size = Batch(path, number + 1, [], origin=span.origin), 0
        except (OSError, EOFError, ValueError) as exc:
            raise BadInputError(f"{path}: cannot decompress ({exc})") from None
        if batch.lines:
            yield batch

    def _row_batches(self, span: Span) -> Iterator[Batch]:
        """The text column of a Parquet or Arrow file as batches of JSON lines, one a row."""
        path, key, limit = span.path, self.text_key, self.max_line_bytes
        batch, size, number = Batch(path, 1, [], unit="row", origin=span.origin), 0, 0
        groups = None if span.whole else range(span.start, span.stop if span.stop is not None else sys.maxsize)
        for rows in table_rows(path, key, groups):
            for line in rows_as_lines(rows, key):
                number += 1
                if len(line) > limit:
                    batch.too_long.append((number, TOO_LONG.format(length=len(line), limit=limit)))
                    line = b""
                batch.lines.append(line)
                size += len(line)
                if size >= self.batch_bytes:
                    yield batch
                    batch, size = Batch(path, number + 1, [], unit="row", origin=span.origin), 0
        if batch.lines:
            yield batch


def _first_byte(span: Span) -> int:
    """The byte a span's reading starts at (a table is hashed whole, whatever row groups it reads)."""
    return 0 if is_table(span.path) else span.start


def _provenance(span: Span, hashing: _HashingReader) -> dict:
    """The manifest's record of one input: its name, and the size and SHA-256 of the bytes read (of the whole file
    for a table); for part of a file, which part ("bytes" or "row_groups", [start, stop])."""
    entry = {"name": span.path.name, "size": hashing.size, "sha256": hashing.sha256.hexdigest()}
    if not span.whole:
        if is_table(span.path):
            entry["row_groups"] = [span.start, span.stop]
        else:
            entry["bytes"] = [span.start, span.start + hashing.size]
    return entry


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
