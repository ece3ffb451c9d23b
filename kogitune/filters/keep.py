"""Keep lists: a staged filter's decisions, applied when storing, so that a terabyte corpus is not written again as
filtered JSONL before it is tokenized.

`kogitune filter INPUTS --parts N --keep-lists -o DIR` runs the stages of kogitune.filters.stages but writes, instead
of part-NNNNN.jsonl, one keep list per part (DIR/keep/part-NNNNN.u64: the numbers of the lines it keeps, counted from
0 in the part, every line the input reader yields counted, blank and bad ones too; sorted, little-endian uint64)
and DIR/keep-lists.json, which says what they were made from: the split (kogitune.write.parts), the text key, the
pipeline, each list's line count, length and SHA-256. `kogitune store INPUTS --keep-lists DIR` (whole, or as the
same N parts) then blanks every line a list does not keep before parsing it, and, when a filter of the run changed
the text of a document (Unicode normalization, PII masking), runs the pipeline's filters other than dedup again on
the kept texts, which gives those texts exactly, since they are deterministic. The stored documents and tokens are
those of storing the sequential `kogitune filter`'s output (tests/test_keep_lists.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kogitune.protocol.jsonlimits import loads

from ..errors import FilterError
from ..files import read_limited, write_atomic

KEEP_LISTS_FILE = "keep-lists.json"
KEEP_LISTS_FORMAT = "kogitune-keep-lists/1"
MAX_KEEP_LISTS_BYTES = 64 << 20
"""Largest keep-lists.json read: about 150 bytes a part, so 65,536 parts (the most a split has) take 10 MB."""


def keep_list_path(directory: Path, part: int) -> Path:
    return directory / "keep" / f"part-{part:05d}.u64"


def write_keep_lists(directory: Path, split: str, text_key: str, filters: dict, refilter: bool, lines: list[int]):
    """keep-lists.json for the keep lists already written in `directory` (one per part, `lines[p]` lines each)."""
    lists = []
    for part, count in enumerate(lines):
        data = keep_list_path(directory, part).read_bytes()
        lists.append({"lines": count, "kept": len(data) // 8, "sha256": hashlib.sha256(data).hexdigest()})
    description = {
        "format": KEEP_LISTS_FORMAT,
        "split": split,
        "text_key": text_key,
        "filters": filters,
        "refilter": refilter,
        "parts": lists,
    }
    write_atomic(directory / KEEP_LISTS_FILE, json.dumps(description, indent=1).encode() + b"\n")


@dataclass(frozen=True)
class KeepLists:
    """The keep lists of one staged filter run, as keep-lists.json describes them (checked when opened)."""

    directory: Path
    split: str
    text_key: str
    filters: dict
    refilter: bool
    parts: tuple[dict, ...]
    digest: str
    """SHA-256 of keep-lists.json, which holds every list's SHA-256: what identifies the lists."""

    @classmethod
    def open(cls, directory: str | Path) -> KeepLists:
        path = Path(directory) / KEEP_LISTS_FILE
        try:
            data = read_limited(path, MAX_KEEP_LISTS_BYTES)
            found = loads(data)
        except (OSError, ValueError) as exc:
            raise FilterError(
                f"{path}: cannot read the keep lists ({exc}); make them with `kogitune filter ... --parts N "
                "--keep-lists -o DIR`"
            ) from None
        try:
            if found["format"] != KEEP_LISTS_FORMAT:
                raise ValueError(f"format {found['format']!r}")
            parts = tuple(
                {"lines": int(p["lines"]), "kept": int(p["kept"]), "sha256": str(p["sha256"])} for p in found["parts"]
            )
            lists = cls(
                Path(directory), str(found["split"]), str(found["text_key"]), dict(found["filters"]),
                bool(found["refilter"]), parts, hashlib.sha256(data).hexdigest(),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise FilterError(f"{path}: not a keep-lists file of this Kogitune ({exc})") from None
        if not parts:
            raise FilterError(f"{path}: no parts")
        return lists

    def stateless_filters(self) -> dict | None:
        """The pipeline less its dedup filters, which a store runs on the kept texts; None when no filter of the
        run changed a text (the kept lines are then stored as they are)."""
        if not self.refilter:
            return None
        from .base import Pipeline

        kept = [f.to_config() for f in Pipeline.from_config(self.filters).filters if not f.stateful]
        return {"filters": kept}

    def provenance(self) -> dict:
        from .base import Pipeline

        return {"filters": Pipeline.from_config(self.filters).to_provenance(), "sha256": self.digest}

    def lines(self, split: str, text_key: str, part: tuple[int, int] | None = None) -> KeptLines:
        """The kept lines of a store of `part` (index, of N) of inputs split as `split` digests, or (None) of the
        whole inputs, whose split into this run's N parts digests as `split`."""
        if text_key != self.text_key:
            raise FilterError(f"the keep lists read the text key {self.text_key!r}; store with --text-key too")
        if part is not None and part[1] != len(self.parts):
            raise FilterError(
                f"the keep lists are of {len(self.parts)} parts; store the whole inputs, or --parts "
                f"{len(self.parts)} (--task I/{len(self.parts)}), not {part[1]} parts"
            )
        if split != self.split:
            raise FilterError(
                f"the keep lists in {self.directory} are of other inputs (or files changed since): their split "
                "differs; store the inputs that `kogitune filter --keep-lists` read"
            )
        return KeptLines(self, [part[0]] if part is not None else list(range(len(self.parts))))

    def load(self, part: int) -> np.ndarray:
        """Part `part`'s list, checked against keep-lists.json (length, SHA-256, sorted, within its lines)."""
        path, expected = keep_list_path(self.directory, part), self.parts[part]
        try:
            data = read_limited(path, expected["kept"] * 8)
        except OSError as exc:
            raise FilterError(f"{path}: cannot read the keep list ({exc})") from None
        if len(data) != expected["kept"] * 8 or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise FilterError(f"{path}: not the keep list that {KEEP_LISTS_FILE} describes (changed or cut short)")
        kept = np.frombuffer(data, dtype="<u8")
        if len(kept) and (kept[-1] >= expected["lines"] or (np.diff(kept.astype(np.int64)) <= 0).any()):
            raise FilterError(f"{path}: line numbers out of order or past the part's {expected['lines']} lines")
        return kept


class KeptLines:
    """Walks a store's input lines in order, part after part, saying which ones a keep list keeps; holds one part's
    list at a time (8 bytes per kept line)."""

    def __init__(self, lists: KeepLists, parts: list[int]) -> None:
        self.lists, self.parts = lists, parts
        self.current = -1
        self.kept = np.empty(0, dtype="<u8")
        self.at = self.size = 0

    def apply(self, batches: Iterator) -> Iterator:
        """The batches with the lines not kept blanked (and not reported as too long): a blank line is skipped by
        the parser; `dropped` counts the blanked lines that held something."""
        for batch in batches:
            keep = self._next(len(batch.lines))
            lines = [line if kept else b"" for line, kept in zip(batch.lines, keep.tolist())]
            dropped = sum(1 for line, kept in zip(batch.lines, keep.tolist()) if not kept and line.strip())
            too_long = [(n, why) for n, why in batch.too_long if keep[n - batch.first_line]]
            yield dataclasses.replace(batch, lines=lines, too_long=too_long, dropped=dropped)
        if self.current != len(self.parts) - 1 or self.at != self.size:
            raise FilterError(
                f"the inputs have fewer lines than the keep lists in {self.lists.directory} counted; store the inputs "
                "that `kogitune filter --keep-lists` read"
            )

    def _next(self, count: int) -> np.ndarray:
        keep, filled = np.zeros(count, dtype=bool), 0
        while filled < count:
            if self.at == self.size:
                self._next_part()
            take = min(count - filled, self.size - self.at)
            first, end = np.searchsorted(self.kept, [self.at, self.at + take])
            keep[filled + self.kept[first:end].astype(np.int64) - self.at] = True
            self.at += take
            filled += take
        return keep

    def _next_part(self) -> None:
        if self.current == len(self.parts) - 1:
            raise FilterError(
                f"the inputs have more lines than the keep lists in {self.lists.directory} counted; store the inputs "
                "that `kogitune filter --keep-lists` read"
            )
        self.current += 1
        part = self.parts[self.current]
        self.kept, self.at, self.size = self.lists.load(part), 0, self.lists.parts[part]["lines"]
