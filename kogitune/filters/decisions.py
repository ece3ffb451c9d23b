"""The decisions of a staged filter's dedup (kogitune.filters.stages), as T tasks that each decide a slice.

The sequential rule drops a document when a key equals a key of an earlier document that the filter *kept*, so a
decision depends on earlier decisions: not by bucket, but along chains of documents that share keys. Documents that
share no key with each other, directly or through others, are decided independently: the connected components of
the graph "shares a key in some dedup filter" (datatrove's MinHash clusters are the same components).

- **components** (one task, only when T > 1): reads the edges the bucket tasks wrote (pairs of documents with an
  equal key, consecutive in key order), labels every document that shares a key with the smallest document of its
  component (hooking and pointer jumping over numpy arrays, a pass over the edge files at a time, until no label
  changes), gives each component to decisions task hash(label) mod T, and writes, per dedup filter and decisions
  task, that task's rows (key, document, value) sorted by document. Its memory: 16 bytes per document that shares a
  key, one bucket's edges, one part's rows.
- **decisions** (T tasks): replays the dedup filters' rules over its documents, a part at a time in input order and
  each document through the dedup filters in pipeline order, with each filter's own index (KeyIndex: within its
  max_index_mb, spilling); writes its drop list. All the documents a decision looks at are in its components, so
  it decides as the sequential filter does; its memory is one part's rows of its slice and the keys its filters
  keep, about 1/T of one task's.

With T = 1 the decisions task reads the bucket tasks' files directly and there is no components task.
"""

from __future__ import annotations

from bisect import bisect_left

import numpy as np

from ..files import write_atomic
from .dedup import MISSING, ExactDedup, MinHashDedup
from .stages import PART_SHIFT, StagedFilter

MIX = np.uint64(0x9E3779B97F4A7C15)
"""Fibonacci hashing of a component's label, so that components spread evenly over the decisions tasks."""


def part_range(rows: np.ndarray, part: int) -> np.ndarray:
    """The rows (sorted by document, column 1) of part `part`'s documents, copied out of the mapped file: a binary
    search reads only the rows it probes (np.searchsorted would copy the whole strided column first)."""
    documents = _Documents(rows)
    first, end = bisect_left(documents, part << PART_SHIFT), bisect_left(documents, (part + 1) << PART_SHIFT)
    return np.array(rows[first:end])


class _Documents:
    """The document column of rows, as a sequence for `bisect`."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> int:
        return int(self.rows[index, 1])


def _rows(path) -> np.ndarray:
    """A file of rows (3 uint64), mapped rather than read when it is not empty."""
    if not path.stat().st_size:
        return np.empty((0, 3), dtype="<u8")
    return np.memmap(path, dtype="<u8", mode="r").reshape(-1, 3)


def _part_rows(job: StagedFilter, at: int, part: int) -> np.ndarray:
    """Part `part`'s rows of dedup filter `at` from every bucket, sorted by document."""
    table = np.concatenate([np.fromfile(job.groups_file(at, b, part), dtype="<u8") for b in range(job.buckets)])
    table = table.reshape(-1, 3)
    return table[np.argsort(table[:, 1], kind="stable")]


def components_task(job: StagedFilter) -> dict:
    """The components stage (see the module's docstring); returns how many documents share a key ("shared") and in
    how many components ("components")."""
    dedups = job.dedups()
    documents = np.concatenate(
        [np.unique(np.concatenate([_part_rows(job, at, part)[:, 1] for at in dedups])) for part in range(job.parts)]
    )
    label = np.arange(len(documents), dtype=np.int64)
    edges = [job.edges_file(at, bucket) for at in dedups for bucket in range(job.buckets)]
    while True:
        before = label.copy()
        for path in edges:
            pairs = np.searchsorted(documents, np.fromfile(path, dtype="<u8")).reshape(-1, 2)
            ends = label[pairs]
            low = ends.min(axis=1)
            np.minimum.at(label, ends[:, 0], low)
            np.minimum.at(label, ends[:, 1], low)
            while not np.array_equal(jumped := label[label], label):
                label = jumped
        if np.array_equal(label, before):
            break
    task_of = ((documents[label] * MIX) >> np.uint64(32)) % np.uint64(job.decision_tasks)
    for at in dedups:
        for task in range(job.decision_tasks):
            job.slice_file(at, task).parent.mkdir(parents=True, exist_ok=True)
            job.slice_file(at, task).write_bytes(b"")
    for part in range(job.parts):
        for at in dedups:
            rows = _part_rows(job, at, part)
            tasks = task_of[np.searchsorted(documents, rows[:, 1])]
            for task in np.unique(tasks).tolist():
                with open(job.slice_file(at, task), "ab") as f:
                    f.write(rows[tasks == task].astype("<u8").tobytes())
    return {"shared": len(documents), "components": int((label == np.arange(len(label))).sum())}


def decisions_task(job: StagedFilter, task: int) -> dict[str, int]:
    """Decisions task `task` (see the module's docstring): its drop list, sorted; returns the documents each dedup
    filter dropped, by its position in the pipeline."""
    filters = job.pipeline().filters
    dedups = job.dedups()
    slices = {at: _rows(job.slice_file(at, task)) for at in dedups} if job.decision_tasks > 1 else {}
    dropped: list[int] = []
    counts = {str(at): 0 for at in dedups}
    for part in range(job.parts):
        rows = {at: part_range(slices[at], part) if slices else _part_rows(job, at, part) for at in dedups}
        starts = {at: _document_starts(rows[at]) for at in dedups}
        for document in np.unique(np.concatenate([rows[at][:, 1] for at in dedups])).tolist():
            for at in dedups:
                found = starts[at].get(document)
                if found is not None and _is_duplicate(filters[at], rows[at][found[0] : found[1]]):
                    dropped.append(document)
                    counts[str(at)] += 1
                    break
    for at in dedups:
        dedup = filters[at]
        assert isinstance(dedup, (ExactDedup, MinHashDedup))
        dedup.close()
    path = job.drops_file(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, np.array(dropped, dtype="<u8").tobytes())
    return counts


def _document_starts(rows: np.ndarray) -> dict[int, tuple[int, int]]:
    """Each document's rows, as (start, end) in `rows` (sorted by document)."""
    documents = rows[:, 1]
    if not len(documents):
        return {}
    starts = np.flatnonzero(np.r_[True, documents[1:] != documents[:-1]])
    ends = [*starts[1:].tolist(), len(documents)]
    return {int(documents[s]): (s, e) for s, e in zip(starts.tolist(), ends)}


def _is_duplicate(dedup, rows: np.ndarray) -> bool:
    """The filter's rule on one document's shared keys: a duplicate when an earlier kept document claimed a key
    (exact: with the same low 64 bits of the digest); else it is kept, and claims its keys when none was claimed."""
    assert isinstance(dedup, (ExactDedup, MinHashDedup))
    exact = isinstance(dedup, ExactDedup)
    keys, values = rows[:, 0], rows[:, 2 if exact else 1]
    found = dedup.index.get(np.ascontiguousarray(keys))
    if exact and found[0] == MISSING or not exact and (found == MISSING).all():
        dedup.index.add(np.ascontiguousarray(keys), np.ascontiguousarray(values))
        return False
    return not exact or bool(found[0] == values[0])
