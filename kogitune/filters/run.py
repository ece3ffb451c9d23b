"""`kogitune filter`: run a filter pipeline over JSONL files into one JSONL file and a per-filter report.

Input is read and checked as `kogitune store` reads it (kogitune.write.inputs). The
stateless filters before the first stateful one run in worker processes; the rest (deduplication) run in the main
process in input order, so the output does not depend on the number of workers. The output is written to a
temporary file beside it and renamed only once complete.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import BadInputError, DiskFullError
from ..files import DISK_FULL, write_atomic
from ..parallel import ordered_map
from ..write.inputs import MAX_DOCUMENT_BYTES, InputReader, check_max_document_bytes, document_of, expand_inputs
from .base import Pipeline
from .report import FilterReport, FilterStats, report_path

if TYPE_CHECKING:
    from zstandard import ZstdCompressionWriter


@dataclass(frozen=True)
class FilterOptions:
    text_key: str = "text"
    workers: int = 0
    skip_bad_lines: bool = False
    dry_run: bool = False
    examples: int = 3
    example_chars: int = 300
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    """A longer input line is a bad line (an error, or skipped and counted with skip_bad_lines)."""

    def __post_init__(self) -> None:
        check_max_document_bytes(self.max_document_bytes)


def run_filters(
    filters: Iterable, offset: int, text: str, size: int, stats: list[FilterStats], where: dict, options: FilterOptions
) -> tuple[str | None, int]:
    """Run `filters` (positions offset.. of the pipeline) on one document, counting into `stats`.

    Returns the kept text and its UTF-8 size, or (None, 0) when a filter dropped it.
    """
    for position, f in enumerate(filters, offset):
        stat = stats[position]
        stat.documents += 1
        stat.bytes_in += size
        result = f.apply(text)
        if result.score is not None:
            stat.scores.append(result.score)
        if result.text is None:
            stat.dropped += 1
            stat.bytes_dropped += size
            stat.reasons[result.reason] = stat.reasons.get(result.reason, 0) + 1
            found = stat.examples.setdefault(result.reason, [])
            if len(found) < options.examples:
                found.append({**where, "score": result.score, "text": text[: options.example_chars]})
            return None, 0
        if result.text is not text:
            if result.text != text:
                stat.changed += 1
            text, size = result.text, _utf8_size(result.text)
        stat.bytes_out += size
    return text, size


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass
class BatchResult:
    kept: list  # (line number, text, its UTF-8 size, output line bytes)
    bad: list  # (line number, reason)
    empty: int
    documents: int
    text_bytes: int
    stats: list


def filter_lines(
    pipeline: Pipeline,
    lines: list[bytes],
    first_line: int,
    path_name: str,
    options: FilterOptions,
) -> BatchResult:
    """Parse JSONL lines and run `pipeline` on their texts; kept documents come back as output lines."""
    stats = [FilterStats(f.name) for f in pipeline.filters]
    result = BatchResult([], [], 0, 0, 0, stats)
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        document, text, reason = document_of(line, options.text_key)
        if document is None:
            result.bad.append((number, reason))
            continue
        if not text:
            result.empty += 1
            continue
        size = _utf8_size(text)
        result.documents += 1
        result.text_bytes += size
        kept, kept_size = run_filters(
            pipeline.filters, 0, text, size, stats, {"file": path_name, "line": number}, options
        )
        if kept is not None:
            result.kept.append(
                (
                    number,
                    kept,
                    kept_size,
                    line.rstrip(b"\r\n") if kept == text else dump_line(document, options.text_key, kept),
                )
            )
    return result


def dump_line(document: dict, key: str, text: str) -> bytes:
    return json.dumps({**document, key: text}, ensure_ascii=False).encode("utf-8", "surrogatepass")


def filter_files(
    files: Iterable[str | os.PathLike],
    output: str | os.PathLike | None,
    config: dict | str | os.PathLike | Pipeline,
    options: FilterOptions | None = None,
    progress: bool = True,
) -> FilterReport:
    """Filter JSONL `files` into `output` (JSONL, or .jsonl.gz / .jsonl.zst) and write OUT.report.json beside it.

    With `options.dry_run` nothing but the report is written (and no report either when `output` is None).
    """
    from tqdm import tqdm

    options = options or FilterOptions()
    pipeline = config if isinstance(config, Pipeline) else Pipeline.from_config(config)
    paths = expand_inputs([files] if isinstance(files, (str, os.PathLike)) else list(files))
    if output is None and not options.dry_run:
        raise BadInputError("no output file given; pass -o OUT.jsonl, or --dry-run for a report only")
    out = Path(output) if output is not None else None
    started = time.perf_counter()
    report = FilterReport(
        out, pipeline.to_config(), dry_run=options.dry_run, filters=[FilterStats(f.name) for f in pipeline.filters]
    )
    head, tail = pipeline.split_stateless_prefix()
    reader = InputReader(
        paths, options.skip_bad_lines, max_line_bytes=options.max_document_bytes, text_key=options.text_key
    )
    sampler = random.Random(0)
    with (
        OutputFile(out, enabled=not options.dry_run) as sink,
        tqdm(
            total=sum(p.stat().st_size for p in paths),
            unit="B",
            unit_scale=True,
            desc="filter",
            disable=None if progress else True,
        ) as bar,
    ):
        for batch, result in _in_order(reader.batches(), head, options):
            report.bad_lines += len(batch.bad_lines(result.bad, options.skip_bad_lines))
            report.empty_documents += result.empty
            report.documents += result.documents
            report.bytes_in += result.text_bytes
            for total, part in zip(report.filters, result.stats):
                total.merge(part, sampler, options.examples)
            tail_stats = [FilterStats(f.name) for f in pipeline.filters]
            for number, text, size, line in result.kept:
                if tail.filters:
                    kept, size = run_filters(
                        tail.filters,
                        len(head),
                        text,
                        size,
                        tail_stats,
                        {"file": batch.path.name, "line": number},
                        options,
                    )
                    if kept is None:
                        continue
                    if kept != text:
                        line = dump_line(json.loads(line), options.text_key, kept)
                report.kept += 1
                report.bytes_kept += size
                sink.write(line)
            for total, part in zip(report.filters[len(head) :], tail_stats[len(head) :]):
                total.merge(part, sampler, options.examples)
            bar.update(reader.bytes_read - bar.n)
    report.inputs = reader.inputs
    report.seconds = time.perf_counter() - started
    if out is not None:
        write_atomic(report_path(out), json.dumps(report.to_dict(), indent=1, ensure_ascii=False).encode() + b"\n")
    return report


def _in_order(batches: Iterator, head: Pipeline, options: FilterOptions):
    """Yield (batch, BatchResult) in input order, at most 2 batches per worker in flight (bounded memory)."""
    workers = options.workers or os.cpu_count() or 1
    if workers == 1 or not head.filters:
        for batch in batches:
            yield batch, filter_lines(head, batch.lines, batch.first_line, batch.path.name, options)
        return
    jobs = ((batch, (batch.lines, batch.first_line, batch.path.name, options)) for batch in batches)
    yield from ordered_map(_filter_in_worker, jobs, workers, _init_worker, (head.to_config(),))


_worker_pipeline: Pipeline | None = None


def _init_worker(config: dict) -> None:
    global _worker_pipeline
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_pipeline = Pipeline.from_config(config)


def _filter_in_worker(lines: list[bytes], first_line: int, path_name: str, options: FilterOptions) -> BatchResult:
    assert _worker_pipeline is not None, "the pool runs _init_worker first"
    return filter_lines(_worker_pipeline, lines, first_line, path_name, options)


class OutputFile:
    """Kept lines go to a temporary file beside the output, renamed over it only when everything succeeded."""

    def __init__(self, path: Path | None, enabled: bool) -> None:
        self.path = path if enabled else None
        self._tmp: str | None = None
        self._raw: BinaryIO | None = None
        self._stream: gzip.GzipFile | ZstdCompressionWriter | None = None
        self._write: Callable[[bytes], object] | None = None

    def __enter__(self) -> OutputFile:
        if self.path is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._raw = os.fdopen(fd, "wb", buffering=1 << 20)
        if self.path.name.endswith(".gz"):
            self._stream = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)
        elif self.path.name.endswith(".zst"):
            import zstandard

            self._stream = zstandard.ZstdCompressor().stream_writer(self._raw, closefd=False)
        return self

    def write(self, line: bytes) -> None:
        if self.path is not None:
            target = self._stream or self._raw
            assert target is not None  # opened by __enter__ whenever there is a path
            target.write(line)
            target.write(b"\n")

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path is None:
            return
        try:
            self._close(succeeded=exc_type is None)
        except OSError as error:
            if error.errno not in DISK_FULL:
                raise
            exc = error
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise DiskFullError(
                f"{self.path}: {exc.strerror}. Nothing was kept (the partial output is removed); "
                "free space there or choose another output, and run again"
            ) from None

    def _close(self, succeeded: bool) -> None:
        """Close the temporary file, and rename it over the output if the run `succeeded`; else remove it."""
        assert self._raw is not None and self._tmp is not None and self.path is not None  # see __enter__
        try:
            if self._stream is not None:
                self._stream.close()
            if succeeded:
                self._raw.flush()
                os.fsync(self._raw.fileno())
            self._raw.close()
            if succeeded:
                os.chmod(self._tmp, 0o644)
                os.replace(self._tmp, self.path)
        finally:
            Path(self._tmp).unlink(missing_ok=True)
