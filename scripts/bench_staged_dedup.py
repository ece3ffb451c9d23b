"""Benchmark dedup in stages (`kogitune filter --parts N`) against the sequential filter: peak memory per task.

    python scripts/bench_staged_dedup.py [--documents 20000 80000] [--parts 3] [--buckets 4] [--decision-tasks 1 3]

Input: documents of 3 random KJV verses (about 420 bytes each), a tenth of them repeated (half exact copies,
half with a few words changed), as one JSONL file; the pipeline is exact_dedup then minhash_dedup (14 x 8).
Every run is its own process, started as the Slurm script's tasks start (`python -m kogitune.cli filter ...`), and
its peak resident memory is its ru_maxrss from os.wait4: the sequential `kogitune filter`, and each task of each
stage of the staged run (once per number of decisions tasks). The command doing nothing (`kogitune filter --help`)
is the floor. The staged output is checked to be the sequential output, byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kogitune.corpora import kjv_verses

PIPELINE = {"filters": [{"name": "exact_dedup"}, {"name": "minhash_dedup"}]}


def write_input(path: Path, count: int, seed: int = 0) -> None:
    with open(kjv_verses(), encoding="utf-8") as f:
        verses = [json.loads(line)["text"] for line in f]
    rng = random.Random(seed)
    documents = [" ".join(rng.sample(verses, 3)) for _ in range(count)]
    for _ in range(count // 10):
        words = rng.choice(documents).split()
        if rng.random() < 0.5:
            words[rng.randrange(len(words))] = rng.choice(words)
        documents.insert(rng.randrange(len(documents)), " ".join(words))
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in documents))


def run(argv: list[str]) -> tuple[float, float]:
    """Run `python -m kogitune.cli ARGV` in its own process: (its peak RSS in MB, seconds); its CPU seconds (user
    and system, its children's included) are added to CPU_SECONDS[argv[0]]."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "kogitune.cli", *argv], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{argv[:1]} failed with exit code {process.returncode}")
    CPU_SECONDS[argv[0]] = CPU_SECONDS.get(argv[0], 0.0) + usage.ru_utime + usage.ru_stime
    return usage.ru_maxrss / 1024, time.perf_counter() - started


CPU_SECONDS: dict[str, float] = {}


def digest(*paths: Path) -> str:
    """SHA-256 of the files one after the other, read a MiB at a time: this process must stay small (see bench)."""
    sha = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
    return sha.hexdigest()


def floor_mb() -> float:
    """The peak RSS of the command doing nothing: `kogitune filter --help`."""
    return run(["filter", "--help"])[0]


def bench(count: int, parts: int, buckets: int, decision_tasks: int, folder: Path) -> None:
    source, config = folder / f"in-{count}.jsonl", folder / "pipeline.json"
    # Written by a child process: a forked child starts with its parent's resident memory, and Linux keeps
    # ru_maxrss across exec, so this process must stay small for its children's figures to be theirs.
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_staged_dedup as b; "
    subprocess.run([sys.executable, "-c", code + f"b.write_input(b.Path({str(source)!r}), {count})"], check=True)
    config.write_text(json.dumps(PIPELINE))
    size = source.stat().st_size / 1e6
    CPU_SECONDS.pop("filter", None)
    sequential_mb, sequential_s = run(["filter", str(source), "-c", str(config), "-o", str(folder / "seq.jsonl"), "-q"])
    sequential_cpu = CPU_SECONDS["filter"]
    out = folder / f"staged-{count}"
    flags = [str(source), "-c", str(config), "--parts", str(parts), "--buckets", str(buckets), "-o", str(out)]
    flags += ["--decision-tasks", str(decision_tasks)]
    stage_tasks = {
        "signatures": parts,
        "buckets": 2 * buckets,
        "components": int(decision_tasks > 1),
        "decisions": decision_tasks,
        "write": parts,
        "finish": 1,
    }
    print(
        f"\n{count + count // 10:,} documents, {size:.1f} MB; {parts} parts, {buckets} buckets, "
        f"{decision_tasks} decisions tasks"
    )
    print(
        f"  sequential kogitune filter (1 process)  peak RSS {sequential_mb:6.1f} MB  {sequential_s:5.1f} s, "
        f"{sequential_cpu:5.1f} CPU s"
    )
    total = 0.0
    for stage, tasks in stage_tasks.items():
        if not tasks:
            continue
        CPU_SECONDS.pop("filter", None)
        measured = [run(["filter", *flags, "--stage", stage, "--task", f"{i}/{tasks}", "-q"]) for i in range(tasks)]
        peaks = [mb for mb, _ in measured]
        total += sum(seconds for _, seconds in measured)
        print(
            f"  {stage:<11} {tasks:2d} tasks  peak RSS per task: max {max(peaks):6.1f} MB, "
            f"min {min(peaks):6.1f} MB  ({sum(s for _, s in measured):5.1f} s in all, "
            f"{max(s for _, s in measured):5.1f} s the longest; {CPU_SECONDS['filter']:5.1f} CPU s)"
        )
    same = digest(*(out / f"part-{p:05d}.jsonl" for p in range(parts))) == digest(folder / "seq.jsonl")
    print(f"  staged total {total:5.1f} s of task processes; same output as sequential: {'yes' if same else 'NO'}")
    if decision_tasks == 1:
        store_both_ways(source, config, parts, folder / f"kept-{count}")


def store_both_ways(source: Path, config: Path, parts: int, folder: Path) -> None:
    """CPU seconds of `store --keep-lists` of the input against `store` of the sequential filter's output."""
    kept, filtered = folder / "decided", source.parent / "seq.jsonl"
    run(["filter", str(source), "-c", str(config), "--parts", str(parts), "--keep-lists", "-o", str(kept), "-q"])
    flags = ["--workers", "1", "-q"]
    for name, argv in (
        ("store of the filtered JSONL", ["store", str(filtered), "-o", str(folder / "a"), *flags]),
        (
            "store --keep-lists of the input",
            ["store", str(source), "--keep-lists", str(kept), "-o", str(folder / "b"), *flags],
        ),
    ):
        CPU_SECONDS.pop("store", None)
        mb, seconds = run(argv)
        print(f"  {name:<32} {CPU_SECONDS['store']:5.1f} CPU s, {seconds:5.1f} s, peak RSS {mb:6.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, nargs="+", default=[20_000, 80_000])
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--buckets", type=int, default=4)
    parser.add_argument("--decision-tasks", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    print(f"floor: `kogitune filter --help` in its own process, peak RSS {floor_mb():.1f} MB")
    with tempfile.TemporaryDirectory() as folder:
        for count in args.documents:
            for decision_tasks in args.decision_tasks:
                bench(count, args.parts, args.buckets, decision_tasks, Path(folder))


if __name__ == "__main__":
    main()
