"""What a filter run did: per filter, the documents and bytes it saw, changed and dropped, its score percentiles,
its drop reasons with a few examples (FilterStats); for the run, the totals and its summary (FilterReport), written
as OUT.report.json beside the output (report_path). kogitune/filters/run.py fills them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

PERCENTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)
MAX_SCORES = 100_000
"""Scores kept per filter for percentiles; beyond this a uniform reservoir sample (seeded) stands in for all."""


@dataclass
class FilterStats:
    """What one filter of the pipeline did: documents and UTF-8 bytes it saw, changed and dropped, its scores,
    its drop reasons and a few dropped examples per reason."""

    name: str
    documents: int = 0
    dropped: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    bytes_dropped: int = 0
    changed: int = 0
    scores: list = field(default_factory=list)
    scores_seen: int = 0
    reasons: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)

    def merge(self, other: FilterStats, sampler: random.Random, max_examples: int) -> None:
        for key in ("documents", "dropped", "bytes_in", "bytes_out", "bytes_dropped", "changed"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for score in other.scores:
            self.scores_seen += 1
            if len(self.scores) < MAX_SCORES:
                self.scores.append(score)
            else:
                slot = sampler.randrange(self.scores_seen)
                if slot < MAX_SCORES:
                    self.scores[slot] = score
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        for reason, found in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(found[: max_examples - len(kept)])

    def to_dict(self) -> dict:
        ordered = sorted(self.scores)
        percentiles = (
            {f"p{p}": ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] for p in PERCENTILES}
            if ordered
            else {}
        )
        return {
            "name": self.name,
            "documents": self.documents,
            "kept": self.documents - self.dropped,
            "dropped": self.dropped,
            "changed": self.changed,
            "bytes_in": self.bytes_in,
            "bytes_kept": self.bytes_out,
            "bytes_dropped": self.bytes_dropped,
            "bytes_removed_by_changes": self.bytes_in - self.bytes_out - self.bytes_dropped,
            "scores": {"count": self.scores_seen, "sampled": len(ordered) < self.scores_seen, **percentiles},
            "reasons": dict(sorted(self.reasons.items(), key=lambda item: -item[1])),
            "examples": self.examples,
        }


@dataclass
class FilterReport:
    output: Path | None
    config: dict
    inputs: list = field(default_factory=list)
    documents: int = 0
    kept: int = 0
    bytes_in: int = 0
    bytes_kept: int = 0
    bad_lines: int = 0
    empty_documents: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    filters: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "output": str(self.output) if self.output else None,
            "dry_run": self.dry_run,
            "config": self.config,
            "inputs": self.inputs,
            "documents": self.documents,
            "kept": self.kept,
            "dropped": self.documents - self.kept,
            "bytes_in": self.bytes_in,
            "bytes_kept": self.bytes_kept,
            "bad_lines": self.bad_lines,
            "empty_documents": self.empty_documents,
            "seconds": round(self.seconds, 3),
            "filters": [s.to_dict() for s in self.filters],
        }

    def summary(self) -> str:
        rate = self.bytes_in / 1e6 / max(self.seconds, 1e-9)
        where = "dry run, nothing written" if self.dry_run else f"wrote {self.output}"
        lines = [
            f"{where}: kept {self.kept:,} of {self.documents:,} documents "
            f"({self.bytes_kept / 1e6:.1f} of {self.bytes_in / 1e6:.1f} MB of text) in {self.seconds:.1f} s "
            f"({rate:.1f} MB/s)"
        ]
        if self.bad_lines or self.empty_documents:
            lines.append(f"  skipped {self.bad_lines} bad lines, {self.empty_documents} empty documents")
        for position, stat in enumerate(self.filters, 1):
            reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(stat.reasons.items(), key=lambda r: -r[1]))
            lines.append(
                f"  {position:2d}. {stat.name:<18} dropped {stat.dropped:>9,} of {stat.documents:>9,}"
                f"{'  (' + reasons + ')' if reasons else ''}"
            )
        return "\n".join(lines)


def report_path(output: Path) -> Path:
    """OUT.jsonl -> OUT.report.json (also for .jsonl.gz and .jsonl.zst)."""
    name = output.name
    for suffix in (".gz", ".zst", ".jsonl", ".json", ".ndjson"):
        name = name.removesuffix(suffix)
    return output.with_name(f"{name}.report.json")
