"""Running a staged filter (kogitune.filters.stages): the tasks of each stage, a record of every task done, re-runs
that skip what is done, `--status`, and `finish`, which writes the report.

A task that completes writes OUT/.stages/done/<stage>-<task>.json: its counts, and the size and SHA-256 of every
file it wrote, under the digest of the job (the inputs' paths, sizes and modification times, the parts, buckets,
pipeline and options, the Kogitune version). A task whose record is there, for the same job, with every file as
recorded, is done: running it again (the same command after a failure, a Slurm array task resubmitted) returns at
once. Anything else runs it again whole; tasks are deterministic, so its files come out the same and the records
of the stages after it stay true. `finish` removes the scratch files but keeps the records; its own record covers
the outputs (part-NNNNN.jsonl or the keep lists, report.json), so the same command on a finished job runs nothing,
and on one whose outputs were changed since runs again what that needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kogitune.protocol.jsonlimits import loads

from .. import __version__
from ..errors import FilterError
from ..files import read_limited, write_atomic
from ..write.parts import split_digest, split_inputs
from .base import Pipeline
from .decisions import components_task, decisions_task
from .keep import KEEP_LISTS_FILE, keep_list_path, write_keep_lists
from .run import FilterOptions
from .stages import STAGES, StagedFilter, bucket_task, signatures_task, staged_job, write_task

REPORT_FILE = "report.json"
MAX_RECORD_BYTES = 64 << 20
"""Largest task record read: a bucket task's names a file per part (65,536 at most, about 100 bytes each)."""
HASH_CHUNK = 1 << 20


@dataclass
class StagedReport:
    """What a staged filter run did: documents read, kept, and dropped by each dedup filter; tasks found done."""

    output: Path
    parts: int
    documents: int = 0
    empty_documents: int = 0
    bad_lines: int = 0
    kept: int = 0
    deduplicated: dict = field(default_factory=dict)
    keep_lists: bool = False
    tasks_done_before: int = 0
    """Tasks this run skipped because an earlier run had done them (not in report.json)."""

    def to_dict(self) -> dict:
        fields = {**self.__dict__, "output": str(self.output)}
        del fields["tasks_done_before"]
        return fields

    def summary(self) -> str:
        drops = ", ".join(f"{name} dropped {n:,}" for name, n in self.deduplicated.items()) or "no dedup"
        written = f"keep lists in {self.output}/keep/" if self.keep_lists else f"{self.output}/part-*.jsonl"
        before = f"\n  {self.tasks_done_before} tasks were done already" if self.tasks_done_before else ""
        return (
            f"filtered into {written} ({self.parts} parts)\n  {self.documents:,} documents, kept {self.kept:,}; "
            f"{drops}{before}"
        )


def stage_tasks(job: StagedFilter, stage: str) -> int:
    """How many tasks `stage` has: one per part, per dedup filter and bucket, or one."""
    if stage in ("signatures", "write"):
        return job.parts
    if stage == "buckets":
        return len(job.dedups()) * job.buckets
    if stage == "components":
        return 1 if job.decision_tasks > 1 else 0
    if stage == "decisions":
        return job.decision_tasks
    if stage == "finish":
        return 1
    raise FilterError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}, finish")


def task_outputs(job: StagedFilter, stage: str, task: int) -> list[Path]:
    """The files task `task` of `stage` writes (its record's checks)."""
    if stage == "signatures":
        keys = [job.keys_file(at, bucket, task) for at in job.dedups() for bucket in range(job.buckets)]
        lines, numbers = job.pending(task)
        return [*keys, numbers] if job.keep_lists else [*keys, lines, numbers]
    if stage == "buckets":
        at, bucket = job.dedups()[task // job.buckets], task % job.buckets
        return [*(job.groups_file(at, bucket, part) for part in range(job.parts)), job.edges_file(at, bucket)]
    if stage == "components":
        return [job.slice_file(at, t) for at in job.dedups() for t in range(job.decision_tasks)]
    if stage == "decisions":
        return [job.drops_file(task)]
    if stage == "write":
        return [keep_list_path(job.output, task) if job.keep_lists else job.part_output(task)]
    outputs = [path for part in range(job.parts) for path in task_outputs(job, "write", part)]
    return [*outputs, job.output / REPORT_FILE, *([job.output / KEEP_LISTS_FILE] if job.keep_lists else [])]


def run_task(job: StagedFilter, stage: str, task: int) -> bool:
    """Task `task` of `stage` (from 0 to stage_tasks - 1), as `kogitune filter --stage STAGE --task I/N` runs it,
    unless it is done (its record holds, or the whole job is finished); returns whether it ran."""
    count = stage_tasks(job, stage)
    if not 0 <= task < count:
        raise FilterError(f"stage {stage} has {count} tasks here; task {task} is not one of them")
    digest = job_digest(job)
    if task_done(job, stage, task, digest) is not None or task_done(job, "finish", 0, digest, hashes=False):
        return False
    if stage == "signatures":
        counts = signatures_task(job, task)
    elif stage == "buckets":
        counts = bucket_task(job, job.dedups()[task // job.buckets], task % job.buckets)
    elif stage == "components":
        counts = components_task(job)
    elif stage == "decisions":
        counts = decisions_task(job, task)
    elif stage == "write":
        counts = write_task(job, task)
    else:
        counts = finish(job).to_dict()
    _record(job, stage, task, digest, counts)
    return True


def finish(job: StagedFilter) -> StagedReport:
    """The last step: sum the tasks' counts into OUT/report.json (and write keep-lists.json), and remove the scratch
    files, keeping the tasks' records."""
    filters = job.pipeline().filters
    report = StagedReport(job.output, job.parts, keep_lists=job.keep_lists)
    signatures = [_counts(job, "signatures", part) for part in range(job.parts)]
    for counts in signatures:
        for key in ("documents", "empty_documents", "bad_lines"):
            setattr(report, key, getattr(report, key) + counts[key])
    report.kept = sum(_counts(job, "write", part)["kept"] for part in range(job.parts))
    decided = [_counts(job, "decisions", task) for task in range(job.decision_tasks)]
    report.deduplicated = {filters[int(at)].name: sum(counts[at] for counts in decided) for at in decided[0]}
    if job.keep_lists:
        split = split_digest(split_inputs(list(job.paths), job.parts))
        changed = any(counts["changed"] for counts in signatures)
        lines = [counts["lines"] for counts in signatures]
        write_keep_lists(job.output, split, job.options.text_key, job.config, changed, lines)
    write_atomic(job.output / REPORT_FILE, json.dumps(report.to_dict(), indent=1).encode() + b"\n")
    for scratch in job.work.iterdir():
        if scratch.name != "done":
            shutil.rmtree(scratch, ignore_errors=True)
    return report


def job_digest(job: StagedFilter) -> str:
    """What a task's record is valid for: the same inputs (unchanged), split, pipeline and options."""
    inputs = [[str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns] for path in job.paths]
    described = {
        "kogitune": __version__,
        "inputs": inputs,
        "parts": job.parts,
        "buckets": job.buckets,
        "config": job.config,
        "options": asdict(job.options),
        "keep_lists": job.keep_lists,
        "decision_tasks": job.decision_tasks,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _record_path(job: StagedFilter, stage: str, task: int) -> Path:
    return job.work / "done" / f"{stage}-{task:05d}.json"


def _record(job: StagedFilter, stage: str, task: int, digest: str, counts: dict) -> None:
    outputs = {
        str(path.relative_to(job.output)): [path.stat().st_size, _sha256(path)]
        for path in task_outputs(job, stage, task)
    }
    path = _record_path(job, stage, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"job": digest, "counts": counts, "outputs": outputs}).encode())


def task_done(job: StagedFilter, stage: str, task: int, digest: str, hashes: bool = True) -> dict | None:
    """The counts of a task done for the job `digest` whose files are as it wrote them (their SHA-256 hashed again,
    or with `hashes` False, their sizes only); None if it is not done."""
    try:
        record = loads(read_limited(_record_path(job, stage, task), MAX_RECORD_BYTES))
        if record["job"] != digest:
            return None
        for name, (size, sha256) in record["outputs"].items():
            path = job.output / name
            if path.stat().st_size != size or hashes and _sha256(path) != sha256:
                return None
        return dict(record["counts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _counts(job: StagedFilter, stage: str, task: int) -> dict:
    record = loads(read_limited(_record_path(job, stage, task), MAX_RECORD_BYTES))
    return record["counts"]


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def stages_status(job: StagedFilter) -> list[str]:
    """One line per stage (tasks done, and which are not), as `kogitune filter ... --parts N --status` prints them;
    a task counts as done when its record is for this job and its files have the sizes recorded."""
    digest, lines = job_digest(job), []
    finished = task_done(job, "finish", 0, digest, hashes=False) is not None
    for stage in (*STAGES, "finish"):
        count = stage_tasks(job, stage)
        todo = [] if finished else [t for t in range(count) if task_done(job, stage, t, digest, False) is None]
        shown = ", ".join(map(str, todo[:20])) + (f" and {len(todo) - 20} more" if len(todo) > 20 else "")
        lines.append(f"{stage:<11} {count - len(todo)} of {count} tasks done" + (f"; to do: {shown}" if todo else ""))
    lines.append(f"filtered into {job.output}" if finished else "not finished")
    return lines


def filter_in_stages(
    files: list[str | os.PathLike],
    output: str | os.PathLike,
    config: dict | str | os.PathLike | Pipeline,
    parts: int,
    buckets: int | None = None,
    options: FilterOptions | None = None,
    executor: str = "local",
    address: str | None = None,
    keep_lists: bool = False,
    decision_tasks: int | None = None,
) -> StagedReport:
    """Filter `files` in `parts` parts into the directory `output` (part-00000.jsonl, ...; or, with `keep_lists`,
    keep/part-00000.u64, ... and keep-lists.json; report.json), running each stage's tasks on `executor` ("local"
    processes or "ray", at `address`), one stage after the other; tasks an earlier run did are skipped, and a
    finished job whose outputs still hash as recorded runs nothing."""
    from ..write.executors import run_tasks

    job = staged_job(files, output, config, parts, buckets, options, keep_lists, decision_tasks)
    if task_done(job, "finish", 0, job_digest(job)) is None:
        _record_path(job, "finish", 0).unlink(missing_ok=True)  # its outputs changed: the tasks check their own
    skipped = 0
    for stage in (*STAGES, "finish"):
        tasks = [(job, stage, task) for task in range(stage_tasks(job, stage))]
        if tasks:
            ran = run_tasks(run_task, tasks, executor, address) if stage != "finish" else [run_task(job, stage, 0)]
            skipped += ran.count(False)
    report = StagedReport(job.output, job.parts, keep_lists=job.keep_lists, tasks_done_before=skipped)
    for key, value in _counts(job, "finish", 0).items():
        if key != "output":
            setattr(report, key, value)
    return report
