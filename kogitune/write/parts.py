"""Parts and collections: a store split into N parts, each a data tensor of its own, merged into one collection.

`split_inputs` cuts the inputs into N parts deterministically: at about every N-th of their bytes, a plain JSONL
file is cut at the next line start, a Parquet file at the nearest row group boundary, any other file (.gz, .zst,
Arrow) at the nearer of its ends. The cut depends only on the inputs (their sizes, and the bytes near the cuts) and
N, so every task of a job array computes the same split on its own. `store_part` stores part I of N (a data tensor
whose provenance says which part it is, of which split); `merge` writes the collection of the N parts
(kogitune.protocol.collection), linking to them rather than copying. The parts' IDs, and so the collection's, are
the same whether the parts ran in one process, as N tasks in any order, or again after a task was killed.
"""

from __future__ import annotations

import hashlib
import json
import os
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kogitune.protocol.collection import Collection, collection_file_bytes, parse_collection
from kogitune.protocol.errors import ManifestError
from kogitune.protocol.jsonlimits import loads

from ..collection import summarize_parts
from ..errors import BadInputError, KogituneError, TensorError
from ..files import write_atomic
from ..layout import COLLECTION_FILE, MANIFEST_FILE, PARTS_DIR, part_path, partial_path
from ..tensor import DataTensor
from ..tokenizer import DEFAULT_TOKENIZER, Tokenizer, load_tokenizer
from .checkpoint import CHECKPOINT_FILE
from .inputs import Span, expand_inputs, splits_by_bytes
from .job import StoreOptions, StoreReport, options_with, store_spans, with_keep_lists
from .tables import is_parquet, parquet_row_groups

FIND_LINE_CHUNK = 64 << 10
"""Bytes read at a time while looking for the next line start after a cut."""


@dataclass(frozen=True)
class Cut:
    """A place between two parts: file `index` of the inputs, from `at` (a byte, or a row group of a Parquet file)."""

    index: int
    at: int


def split_inputs(paths: list[Path], parts: int) -> list[list[Span]]:
    """The spans each of `parts` parts reads, in order; together they read every input once, in input order.
    Raises BadInputError when the inputs cannot make that many non-empty parts."""
    if not 1 <= parts <= 1 << 16:
        raise KogituneError(f"parts must be 1 to {1 << 16}, got {parts}")
    sizes = [path.stat().st_size for path in paths]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    cuts = [Cut(0, 0)]
    for k in range(1, parts):
        target = starts[-1] * k // parts
        index = min(bisect_right(starts, target) - 1, len(paths) - 1)
        cuts.append(max(cuts[-1], _cut_in(paths[index], index, target - starts[index], sizes[index]), key=_order))
    cuts.append(Cut(len(paths), 0))
    split = [_spans_between(paths, a, b) for a, b in zip(cuts, cuts[1:])]
    if any(not spans for spans in split):
        raise BadInputError(
            f"the inputs ({len(paths)} files, {starts[-1]:,} bytes) cannot be split into {parts} parts that each "
            "hold some of them; choose fewer parts"
        )
    return split


def _order(cut: Cut) -> tuple[int, int]:
    return cut.index, cut.at


def _cut_in(path: Path, index: int, offset: int, size: int) -> Cut:
    """The cut nearest to byte `offset` of input `index` that the file's format allows."""
    if splits_by_bytes(path):
        at = _next_line_start(path, offset)
        return Cut(index, at) if at < size else Cut(index + 1, 0)
    if is_parquet(path):
        ends, total = [0], 0
        for group_bytes in parquet_row_groups(path):
            total += group_bytes
            ends.append(total)
        scaled = offset * total // max(size, 1)  # row groups' compressed sizes, against the file's size
        group = min(range(len(ends)), key=lambda g: (abs(ends[g] - scaled), g))
        return Cut(index, group) if group < len(ends) - 1 else Cut(index + 1, 0)
    return Cut(index, 0) if offset * 2 < size else Cut(index + 1, 0)


def _next_line_start(path: Path, offset: int) -> int:
    """The first line start at or after byte `offset` (the file's size if none)."""
    if offset == 0:
        return 0
    with open(path, "rb") as f:
        f.seek(offset - 1)
        position = offset - 1
        while chunk := f.read(FIND_LINE_CHUNK):
            newline = chunk.find(b"\n")
            if newline >= 0:
                return position + newline + 1
            position += len(chunk)
        return position


def _spans_between(paths: list[Path], first: Cut, end: Cut) -> list[Span]:
    spans = []
    for index in range(first.index, min(end.index + 1, len(paths))):
        start = first.at if index == first.index else 0
        stop = end.at if index == end.index else None
        if stop is not None and stop <= start:
            continue
        if is_parquet(paths[index]) and (start or stop is not None):
            stop = len(parquet_row_groups(paths[index])) if stop is None else stop
        spans.append(Span(paths[index], start, stop))
    return spans


def split_digest(split: list[list[Span]]) -> str:
    """What identifies a split in its parts' provenance, so that merge refuses parts of different splits: the
    SHA-256 of every span's file name, file size and range."""
    described = [[[s.path.name, s.path.stat().st_size, s.start, s.stop] for s in spans] for spans in split]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()


def store_part(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    task: tuple[int, int],
    output: str | os.PathLike,
    tokenizer: str | Tokenizer = DEFAULT_TOKENIZER,
    options: StoreOptions | None = None,
    progress: bool = True,
    **settings,
) -> StoreReport:
    """Store part I of N of `inputs` (`task` = (I, N), I from 0) into the tensor directory `output`, as
    `kogitune store INPUTS --task I/N -o OUTPUT` does; `settings` as for `kogitune.store`."""
    index, parts = task
    if not 0 <= index < parts:
        raise KogituneError(f"task {index}/{parts}: the index runs from 0 to {parts - 1}")
    options = options_with(options or StoreOptions(), settings)
    paths = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
    split = split_inputs(paths, parts)
    part = {"index": index, "of": parts, "split": split_digest(split)}
    options, kept = with_keep_lists(options, paths, task)
    tok = load_tokenizer(tokenizer)
    return store_spans(split[index], tok, Path(output), options, progress, {"part": part}, kept)


@dataclass
class MergeReport:
    path: Path
    dataset_id: str
    parts: int
    documents: int
    tokens: int

    def summary(self) -> str:
        return (
            f"merged {self.path}\n  {self.parts} parts, {self.documents:,} documents, {self.tokens:,} tokens\n"
            f"  dataset id {self.dataset_id}"
        )


def merge(part_dirs: Iterable[str | os.PathLike], output: str | os.PathLike) -> MergeReport:
    """Write the collection of the data tensors `part_dirs` into the directory `output` (`collection.json` and
    `parts/<index>`, each the part's directory or a relative symbolic link to it); no token is copied. Parts made by
    `store_part` are ordered by their index and must be all N parts of one split; other tensors keep the order
    given. As `kogitune merge` does."""
    out = Path(output)
    tensors = [DataTensor(path) for path in part_dirs]
    if not tensors:
        raise TensorError("merge needs at least one part")
    tensors = _in_part_order(tensors)
    summarize_parts(tensors)  # refuses parts that cannot be read as one dataset
    if (out / "manifest.json").exists():
        raise TensorError(f"{out} is a data tensor; merge into another directory")
    for index, tensor in enumerate(tensors):
        _place_part(out, index, tensor)
    collection = Collection(tuple(t.dataset_id for t in tensors))
    write_atomic(out / COLLECTION_FILE, collection_file_bytes(collection))
    return MergeReport(
        out,
        collection.dataset_id,
        len(tensors),
        sum(t.manifest.documents for t in tensors),
        sum(t.manifest.tokens for t in tensors),
    )


def parts_status(output: str | os.PathLike, parts: int) -> list[str]:
    """One line per part of a `store --parts` into `output` (stored and verified, interrupted and how far, or not
    started) and one for the collection, as `kogitune store ... --parts N --status` prints them."""
    out, lines, ids = Path(output), [], []
    for index in range(parts):
        place = part_path(out, index)
        if (place / MANIFEST_FILE).is_file():
            tensor = DataTensor(place)
            ids.append(tensor.dataset_id)
            checked = "verified" if tensor.is_verified() else "not verified since it changed (run kogitune verify)"
            lines.append(f"part {index:05d}  stored, {checked}  {tensor.dataset_id}")
        elif partial_path(place).exists():
            try:
                tokens = f" at {int(loads((partial_path(place) / CHECKPOINT_FILE).read_bytes())['writer']['tokens']):,} tokens"
            except (OSError, ValueError, KeyError, TypeError):
                tokens = " before its first checkpoint"
            lines.append(f"part {index:05d}  interrupted or running{tokens}")
        else:
            lines.append(f"part {index:05d}  not started")
    try:
        collection = parse_collection((out / COLLECTION_FILE).read_bytes())
    except (OSError, ManifestError):
        collection = None
    if collection is not None and list(collection.parts) == ids:
        lines.append(f"collection  merged  {collection.dataset_id}")
    else:
        lines.append(f"collection  not merged ({len(ids)} of {parts} parts stored)")
    return lines


def _in_part_order(tensors: list[DataTensor]) -> list[DataTensor]:
    marks = [t.manifest.provenance.get("part") for t in tensors]
    if not any(marks):
        return tensors
    if not all(isinstance(m, dict) for m in marks):
        raise TensorError("merge takes the parts of one `store --task` split, or tensors stored whole, not both")
    expected = {(m["of"], m["split"]) for m in marks}  # type: ignore[index]
    if len(expected) != 1:
        raise TensorError("these parts come from different splits (other inputs or another number of parts)")
    of = marks[0]["of"]  # type: ignore[index]
    indexes = sorted(m["index"] for m in marks)  # type: ignore[index]
    if indexes != list(range(of)):
        missing = sorted(set(range(of)) - set(indexes))
        raise TensorError(
            f"merge needs all {of} parts of the split exactly once; missing or repeated: {missing or indexes}"
        )
    return sorted(tensors, key=lambda t: t.manifest.provenance["part"]["index"])


def _place_part(out: Path, index: int, tensor: DataTensor) -> None:
    """Make `out/parts/<index>` the part's directory: itself when it is there already, else a relative link."""
    place = part_path(out, index)
    if place.resolve() == tensor.path.resolve():
        return
    if place.is_symlink():
        place.unlink()
    elif place.exists():
        raise TensorError(f"{place} exists and is not part {index} ({tensor.path}); remove it or merge elsewhere")
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(tensor.path.resolve(), place.parent.resolve()), place)
