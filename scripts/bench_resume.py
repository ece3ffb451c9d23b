"""Benchmark resuming training at sample 10,000,000 of a Kogitune dataset, against the goal "under a second".

Data: random gpt2 token ids (uniform, seeded) in --shards whole shards of 32 MiB (stored block 2048, 1 MiB
pieces; 10 shards = 320 MiB), written with kogitune.write.TensorWriter and opened as a local tensor; samples of
--block-size tokens (16 by default: 10 shards hold 10,485,760 samples). Its verification marks are written as
`kogitune store` writes them, so opening a shard does not re-hash it.

Baseline ("raw memmap"): np.memmap of the shard file that holds token 10,000,000 x block size (in stored order),
slice the sample, convert it to int64: the least a random-access read can cost.

Kogitune ("dataset[i]"): `DatasetRecipe([path]).get_train_dataset(block_size)` (construction includes
set_epoch(0)), `set_epoch(1)`, then `dataset[10_000_000]`: what a resume that indexes the dataset directly costs
(bisect over segments and windows, one window permutation, one memory map), split into its three parts.

HF Trainer's own resume: `Trainer(resume_from_checkpoint=...)` wraps the DataLoader in
`accelerate.skip_first_batches(dataloader, steps)`, whose SkipBatchSampler iterates and drops the first `steps`
batches of the batch sampler (no sample is loaded, but every index is generated). Measured here as
skip_first_batches(DataLoader(dataset, batch_size=--batch, sampler=S), 10,000,000 / batch) then the first batch,
with S = SequentialSampler (TrainingArguments(train_sampling_strategy="sequential"), the streaming setting) and
S = RandomSampler with a seeded generator (Trainer's default). A third line is the dataset's own fast path:
`dataset.set_start(10_000_000)` (what `load_state_dict` does), then the first batch of a plain DataLoader.

Each variant runs --repeat times, interleaved; the table shows the best run, the median and the spread.

    python scripts/bench_resume.py [--shards 10] [--block-size 16] [--sample 10000000] [--batch 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from bisect import bisect_right
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_fetch import MiB, load_note, summary, write_tensor  # noqa: E402

from kogitune.protocol.manifest import TokenizerInfo  # noqa: E402
from kogitune.recipe import DatasetRecipe  # noqa: E402
from kogitune.tokenizer import load_tokenizer  # noqa: E402

STORED_BLOCK = 2048
DOCUMENT = 1024  # tokens per (random) document


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10, help="shards of 32 MiB (default: 10)")
    parser.add_argument("--block-size", type=int, default=16, help="sample length in tokens (default: 16)")
    parser.add_argument("--sample", type=int, default=10_000_000, help="sample to resume at (default: 10000000)")
    parser.add_argument("--batch", type=int, default=8, help="per-device batch size for the skip (default: 8)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (default: 3)")
    args = parser.parse_args()
    if args.repeat < 1 or args.shards < 1 or args.batch < 1 or args.sample < 0:
        parser.error("--repeat, --shards and --batch must be positive, --sample not negative")
    if STORED_BLOCK % args.block_size:
        parser.error(f"--block-size must divide the stored block size {STORED_BLOCK}")
    return args


def random_tensor(out: Path, shards: int) -> None:
    tok = load_tokenizer("gpt2")
    info = TokenizerInfo(tok.name, tok.short_id, tok.fingerprint, tok.vocab_size, tok.eos_id)
    per_shard = 32 * MiB // 2
    tokens = np.random.default_rng(0).integers(0, tok.vocab_size, size=per_shard, dtype=np.uint16)
    lengths = np.full(per_shard // DOCUMENT, DOCUMENT, dtype=np.int64)
    write_tensor(
        out,
        info,
        "uint16",
        ((tokens, lengths) for _ in range(shards)),
        STORED_BLOCK,
        32 * MiB,
        MiB,
        f"uniform random gpt2 ids, {shards} x {per_shard} tokens, seed 0",
    )


def raw_memmap(path: Path, sample: int, block_size: int) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    shard_tokens = 32 * MiB // 2
    token = sample * block_size
    tokens = np.memmap(path / "shards" / f"{token // shard_tokens:05d}.tokens", dtype="<u2", mode="r")
    at = token % shard_tokens
    sample_ids = torch.from_numpy(tokens[at : at + block_size].astype(np.int64))
    return time.perf_counter() - started, sample_ids


def dataset_resume(path: Path, sample: int, block_size: int) -> tuple[float, float, float]:
    """(construct s, set_epoch s, dataset[sample] s)."""
    started = time.perf_counter()
    dataset = DatasetRecipe([str(path)]).get_train_dataset(block_size=block_size)
    built = time.perf_counter()
    dataset.set_epoch(1)
    epoch = time.perf_counter()
    item = dataset[sample]
    done = time.perf_counter()
    assert item["input_ids"].shape == (block_size,)
    return built - started, epoch - built, done - epoch


def skip_resume(dataset, sampler, steps: int, batch: int) -> float:
    """Seconds from accelerate.skip_first_batches to the first batch after the skipped ones."""
    from accelerate.data_loader import skip_first_batches

    started = time.perf_counter()
    loader = skip_first_batches(torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler), steps)
    first = next(iter(loader))
    elapsed = time.perf_counter() - started
    assert first["input_ids"].shape[0] == batch
    return elapsed


def main() -> None:
    args = parse_args()
    print(f"bench_resume: {load_note()} (start)")
    work = Path(tempfile.mkdtemp(prefix="kogitune-bench-resume-"))
    try:
        started = time.perf_counter()
        path = work / "random"
        random_tensor(path, args.shards)
        dataset = DatasetRecipe([str(path)]).get_train_dataset(block_size=args.block_size)
        if len(dataset) <= args.sample:
            raise SystemExit(
                f"the dataset has {len(dataset):,} samples, not more than --sample {args.sample:,}: "
                "raise --shards or lower --block-size"
            )
        steps = args.sample // args.batch
        print(
            f"tensor: {args.shards} shards of 32 MiB ({args.shards * 32} MiB), {len(dataset):,} samples of "
            f"{args.block_size} tokens, {len(dataset._order.streams[0].segments)} segments in windows of {dataset.window}; "
            f"resume at sample {args.sample:,} = batch {steps:,} of {args.batch}; built in "
            f"{time.perf_counter() - started:.1f} s"
        )

        times: dict[str, list[float]] = {
            name: []
            for name in (
                "raw memmap (baseline)",
                "dataset[i] resume",
                "  construct",
                "  set_epoch",
                "  dataset[i]",
                "skip_first_batches seq",
                "skip_first_batches random",
                "dataset.set_start",
            )
        }
        expected = None
        for run in range(args.repeat):
            seconds, sample_ids = raw_memmap(path, args.sample, args.block_size)
            times["raw memmap (baseline)"].append(seconds)
            construct, epoch, item = dataset_resume(path, args.sample, args.block_size)
            times["dataset[i] resume"].append(construct + epoch + item)
            times["  construct"].append(construct)
            times["  set_epoch"].append(epoch)
            times["  dataset[i]"].append(item)
            dataset.set_epoch(0)  # each variant starts with no window permutation cached
            times["skip_first_batches seq"].append(
                skip_resume(dataset, torch.utils.data.SequentialSampler(dataset), steps, args.batch)
            )
            dataset.set_epoch(0)
            generator = torch.Generator().manual_seed(42)
            times["skip_first_batches random"].append(
                skip_resume(dataset, torch.utils.data.RandomSampler(dataset, generator=generator), steps, args.batch)
            )
            dataset.set_epoch(0)
            if expected is None:  # set_start resumes at the very sample the skip reaches (sequential order)
                expected = dataset[steps * args.batch]["input_ids"]
                dataset.set_epoch(0)  # no window permutation cached
            offset = time.perf_counter()
            dataset.set_start(steps * args.batch)
            first = next(iter(torch.utils.data.DataLoader(dataset, batch_size=args.batch)))
            times["dataset.set_start"].append(time.perf_counter() - offset)
            dataset.set_start(0)
            assert torch.equal(first["input_ids"][0], expected)
            print(
                f"  run {run + 1}/{args.repeat}: "
                + ", ".join(
                    f"{name.strip()} {values[-1]:.4f} s" for name, values in times.items() if not name.startswith(" ")
                ),
                flush=True,
            )

        print(f"\n{'':<28}{'best s':>10}{'median s':>10}{'spread':>8}{'vs raw':>10}")
        base = min(times["raw memmap (baseline)"])
        for name, values in times.items():
            best, median, spread = summary(values)
            print(f"{name:<28}{best:>10.4f}{median:>10.4f}{spread:>8.0%}{best / base:>9.0f}x")
        dataset.set_epoch(1)
        stream = dataset._order.streams[0]
        window = bisect_right(stream.window_start, args.sample) - 1
        size = stream.window_start[window + 1] - stream.window_start[window]
        started = time.perf_counter()
        stream._permutation(window)
        print(
            f"dataset[i] is two bisects, one memory map and the permutation of the sample's shuffle window "
            f"({size:,} samples here: {time.perf_counter() - started:.4f} s on its own): O(window), not O(i)"
        )
        resume = statistics.median(times["dataset[i] resume"])
        skip_seq = statistics.median(times["skip_first_batches seq"])
        skip_random = statistics.median(times["skip_first_batches random"])
        verdict = "met" if resume < 1 else "NOT met"
        print(f'\nGoal "resuming at sample {args.sample:,} takes under a second":')
        print(f"  Kogitune dataset[i] (construct + set_epoch + item): {resume:.3f} s median: {verdict}.")
        for name, value in (("SequentialSampler", skip_seq), ("RandomSampler", skip_random)):
            state = "under" if value < 1 else "OVER"
            print(
                f"  HF Trainer resume (accelerate.skip_first_batches, {name}): {value:.2f} s median, {state} a "
                f"second; it is O(samples skipped): about {value / max(args.sample, 1) * 1e9:.0f} ns a sample."
            )
        print(f"bench_resume: {load_note()} (end)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
