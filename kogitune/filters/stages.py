"""`kogitune filter --parts N`: the filter pipeline, dedup included, as stages of independent tasks.

The inputs are split into N parts exactly as `kogitune store --parts N` splits them (kogitune.write.parts), and
every stage is a list of tasks that an executor runs (local processes, Ray, a Slurm array; kogitune.write.executors):

1. **signatures** (one task per part): run the pipeline on the part with each dedup filter passing every document
   through, but recording the document's keys there (exact: its 128-bit digest as key and value; MinHash: its band
   keys) into B bucket files by key; the documents that every other filter keeps go to a pending file, by document
   number (part << 40 | the number of its line in the part, so numbers sort in input order).
2. **buckets** (one task per dedup filter and bucket): read the bucket's keys from all parts, sort them, and keep
   only the keys that more than one document has: the documents that may be duplicates.
3. **components** and **decisions** (kogitune.filters.decisions; T decisions tasks, and one components task that
   gives each the connected components of "shares a key" it decides): replay each dedup filter's own rule over
   those documents only, in input order: a document is dropped when an earlier document that the filter kept (and
   that no earlier filter dropped) has an equal key (MinHash: any band; exact: the same digest). So the same
   documents are dropped as by the sequential filter, and a task's memory grows with the duplicated keys, not with
   the input. One drop list per decisions task.
4. **write** (one task per part): copy the part's pending lines, less its drop list, to OUT/part-NNNNN.jsonl; or,
   with `keep_lists`, write the numbers of the lines it keeps to OUT/keep/part-NNNNN.u64, for `kogitune store
   --keep-lists OUT` to apply while it tokenizes the inputs (kogitune.filters.keep): no pending lines are written.

The outputs, read in part order, are byte for byte the sequential `kogitune filter`'s output (tested). Every task
holds one batch of documents, its key buffer (`KEY_BUFFER` keys) or one bucket at a time: memory per task is
bounded by the bucket count B, not by the input. Scratch files live in OUT/.stages/ and are removed at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FilterError
from ..files import write_atomic
from ..write.inputs import InputReader, expand_inputs
from ..write.parts import split_inputs
from .base import Filter, Pipeline
from .dedup import ExactDedup, MinHashDedup
from .keep import keep_list_path
from .report import FilterStats
from .run import FilterOptions, OutputFile, dump_line, filter_lines, run_filters

PART_SHIFT = 40
"""A document's number is part << PART_SHIFT | its line's number in the part: 2**40 lines per part, 2**24 parts."""
KEY_BUFFER = 1 << 17
"""Keys a signatures task holds per dedup filter before appending them to the bucket files (24 bytes each: key,
document, value; 3 MB)."""
STAGES = ("signatures", "buckets", "components", "decisions", "write")
"""The stages that run tasks; `finish` (one step) then writes the report."""


@dataclass(frozen=True)
class StagedFilter:
    """What every task of a staged filter run needs: the inputs, the split, the pipeline and where files go."""

    paths: tuple[Path, ...]
    parts: int
    buckets: int
    config: dict
    output: Path
    options: FilterOptions = field(default_factory=FilterOptions)
    keep_lists: bool = False
    """Write keep lists (OUT/keep/, keep-lists.json) for `store --keep-lists` instead of the filtered JSONL."""
    decision_tasks: int = 1

    @property
    def work(self) -> Path:
        return self.output / ".stages"

    def dedups(self) -> list[int]:
        """Positions of the dedup filters in the pipeline."""
        return [at for at, f in enumerate(self.pipeline().filters) if f.stateful]

    def pipeline(self) -> Pipeline:
        pipeline = Pipeline.from_config(self.config)
        for f in pipeline.filters:
            if f.stateful and not isinstance(f, (ExactDedup, MinHashDedup)):
                raise FilterError(f"filter {f.name!r} is stateful and cannot run in parts")
        return pipeline

    def keys_file(self, dedup: int, bucket: int, part: int) -> Path:
        return self.work / "keys" / f"f{dedup:03d}" / f"b{bucket:05d}" / f"p{part:05d}.u64"

    def groups_file(self, dedup: int, bucket: int, part: int) -> Path:
        return self.work / "groups" / f"f{dedup:03d}" / f"b{bucket:05d}" / f"p{part:05d}.u64"

    def edges_file(self, dedup: int, bucket: int) -> Path:
        return self.work / "edges" / f"f{dedup:03d}" / f"b{bucket:05d}.u64"

    def slice_file(self, dedup: int, task: int) -> Path:
        return self.work / "slices" / f"f{dedup:03d}" / f"t{task:05d}.u64"

    def pending(self, part: int) -> tuple[Path, Path]:
        """The part's lines kept by all but the dedup filters, and their document numbers."""
        return self.work / "pending" / f"p{part:05d}.jsonl", self.work / "pending" / f"p{part:05d}.u64"

    def drops_file(self, task: int) -> Path:
        return self.work / "drops" / f"t{task:05d}.u64"

    def part_output(self, part: int) -> Path:
        return self.output / f"part-{part:05d}.jsonl"


def signatures_task(job: StagedFilter, part: int) -> dict:
    """Stage 1 for one part: bucket files of the dedup keys, the pending lines and their numbers; returns counts."""
    pipeline = job.pipeline()
    filters = pipeline.filters
    head, _ = pipeline.split_stateless_prefix()
    dedups = job.dedups()
    keys = KeyFiles(job, part, dedups)
    options = job.options
    counts = {"documents": 0, "empty_documents": 0, "bad_lines": 0, "pending": 0, "lines": 0, "changed": 0}
    reader = InputReader(
        split_inputs(list(job.paths), job.parts)[part],
        options.skip_bad_lines,
        max_line_bytes=options.max_document_bytes,
        text_key=options.text_key,
    )
    lines_path, numbers_path = job.pending(part)
    lines_path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.devnull if job.keep_lists else lines_path, "wb") as pending, open(numbers_path, "wb") as numbers:
        for batch in reader.batches():
            result = filter_lines(head, batch.lines, batch.first_line, batch.path.name, options)
            counts["bad_lines"] += len(batch.bad_lines(result.bad, options.skip_bad_lines))
            counts["empty_documents"] += result.empty
            counts["documents"] += result.documents
            stats = [FilterStats(f.name) for f in filters]  # run_filters counts into them; a staged run reports none
            kept = []
            for number, text, size, line in result.kept:
                document = part << PART_SHIFT | counts["lines"] + number - batch.first_line
                survived = _pass_tail(filters, len(head), text, size, stats, keys, document, options)
                if survived is None:
                    continue
                if survived != text and not job.keep_lists:
                    line = dump_line(json.loads(line), options.text_key, survived)
                pending.write(line + b"\n")
                kept.append(document)
            numbers.write(np.array(kept, dtype="<u8").tobytes())
            counts["pending"] += len(kept)
            counts["lines"] += len(batch.lines)
            counts["changed"] += sum(s.changed for s in [*result.stats, *stats])
    keys.close()
    return counts


def _pass_tail(filters, start, text, size, stats, keys, document, options) -> str | None:
    """Run filters[start:] on one document, recording its keys at each dedup filter instead of deciding there."""
    at = start
    while at < len(filters):
        end = next((i for i in range(at, len(filters)) if filters[i].stateful), len(filters))
        if end > at:
            text, size = run_filters(filters[at:end], at, text, size, stats, {}, options)
            if text is None:
                return None
        if end < len(filters):
            keys.add(end, filters[end], text, document)
        at = end + 1
    return text


class KeyFiles:
    """A signatures task's keys, in a fixed buffer per dedup filter (rows of key, document, value), appended to one
    file per dedup filter and bucket whenever the buffer is full."""

    def __init__(self, job: StagedFilter, part: int, dedups: list[int]) -> None:
        self.job, self.part = job, part
        self.buffers = {at: np.empty((KEY_BUFFER, 3), dtype=np.uint64) for at in dedups}
        self.held = dict.fromkeys(dedups, 0)
        for at in dedups:
            for bucket in range(job.buckets):
                path = job.keys_file(at, bucket, part)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")

    def add(self, at: int, dedup: Filter, text: str, document: int) -> None:
        if isinstance(dedup, ExactDedup):
            high, low = dedup.digest(text)
            keys, value = np.array([high], dtype=np.uint64), low
        else:
            assert isinstance(dedup, MinHashDedup)
            keys, value = dedup.band_keys(text), np.uint64(0)
        if self.held[at] + len(keys) > KEY_BUFFER:
            self.flush(at)
        rows = self.buffers[at][self.held[at] : self.held[at] + len(keys)]
        rows[:, 0], rows[:, 1], rows[:, 2] = keys, document, value
        self.held[at] += len(keys)

    def flush(self, at: int) -> None:
        table = self.buffers[at][: self.held[at]]
        bucket_of = table[:, 0] % np.uint64(self.job.buckets)
        for bucket in np.unique(bucket_of).tolist():
            with open(self.job.keys_file(at, bucket, self.part), "ab") as f:
                f.write(table[bucket_of == bucket].astype("<u8").tobytes())
        self.held[at] = 0

    def close(self) -> None:
        for at in self.buffers:
            self.flush(at)


def bucket_task(job: StagedFilter, dedup: int, bucket: int) -> dict:
    """Stage 2 for one bucket of one dedup filter: the rows (key, document, value) of the keys that more than one
    document has, one file per part of the documents, sorted by document; and the edges between them (pairs of
    documents with an equal key, consecutive in key order) for the components task; returns how many ("shared")."""
    tables = [np.fromfile(job.keys_file(dedup, bucket, part), dtype="<u8") for part in range(job.parts)]
    table = np.concatenate(tables).reshape(-1, 3)
    table = table[np.lexsort((table[:, 1], table[:, 0]))]
    shared = np.zeros(len(table), dtype=bool)
    if len(table) > 1:
        same = table[1:, 0] == table[:-1, 0]
        shared[1:] |= same
        shared[:-1] |= same
    table = table[shared]
    linked = np.flatnonzero(table[1:, 0] == table[:-1, 0]) if len(table) else np.empty(0, int)
    edges = np.stack([table[linked, 1], table[linked + 1, 1]], axis=1)
    job.edges_file(dedup, bucket).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(job.edges_file(dedup, bucket), edges.astype("<u8").tobytes())
    table = table[np.argsort(table[:, 1], kind="stable")]
    parts = table[:, 1] >> np.uint64(PART_SHIFT)
    for part in range(job.parts):
        path = job.groups_file(dedup, bucket, part)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, table[parts == part].astype("<u8").tobytes())
    return {"shared": len(table)}


def write_task(job: StagedFilter, part: int) -> dict:
    """Stage 4 for one part: its pending lines less its drop list, into OUT/part-NNNNN.jsonl, or the numbers of the
    lines it keeps into its keep list; returns how many it kept ("kept")."""
    lines_path, numbers_path = job.pending(part)
    numbers = np.fromfile(numbers_path, dtype="<u8")
    bounds = np.array([part << PART_SHIFT, (part + 1) << PART_SHIFT], dtype=np.uint64)
    drops = []
    for task in range(job.decision_tasks):
        dropped = np.fromfile(job.drops_file(task), dtype="<u8")
        drops.append(dropped[slice(*np.searchsorted(dropped, bounds))])
    keep = ~np.isin(numbers, np.concatenate(drops))
    if job.keep_lists:
        kept_lines = numbers[keep] & np.uint64((1 << PART_SHIFT) - 1)
        path = keep_list_path(job.output, part)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, kept_lines.astype("<u8").tobytes())
        return {"kept": int(keep.sum())}
    with open(lines_path, "rb") as lines, OutputFile(job.part_output(part), enabled=True) as sink:
        for line, kept in zip(lines, keep.tolist()):
            if kept:
                sink.write(line.rstrip(b"\n"))
    return {"kept": int(keep.sum())}


def staged_job(
    files: list[str | os.PathLike],
    output: str | os.PathLike,
    config: dict | str | os.PathLike | Pipeline,
    parts: int,
    buckets: int | None = None,
    options: FilterOptions | None = None,
    keep_lists: bool = False,
    decision_tasks: int | None = None,
) -> StagedFilter:
    """The job of filtering `files` in `parts` parts into the directory `output`, dedup keys in `buckets` buckets
    and decided by `decision_tasks` tasks (both by default as many as parts); checks the pipeline and the split
    once, here, rather than in every task."""
    pipeline = config if isinstance(config, Pipeline) else Pipeline.from_config(config)
    job = StagedFilter(
        tuple(expand_inputs(list(files))),
        parts,
        buckets or parts,
        pipeline.to_config(),
        Path(output),
        options or FilterOptions(),
        keep_lists,
        decision_tasks or parts,
    )
    if job.buckets < 1 or job.decision_tasks < 1:
        raise FilterError(f"buckets and decision tasks must be 1 or more, got {job.buckets}, {job.decision_tasks}")
    job.pipeline()  # refuses a stateful filter other than the dedup filters
    split_inputs(list(job.paths), parts)  # and inputs that cannot make `parts` parts
    return job
