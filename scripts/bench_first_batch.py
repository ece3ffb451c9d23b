"""Benchmark the cold start of training from a web mirror: recipe to first DataLoader batch, empty store.

Data: the KJV tokens (gpt2) repeated into --shards whole shards of 32 MiB (1 MiB pieces, stored block 2048),
served by one tests/mirror_server.py process on 127.0.0.1 (see bench_fetch.py for the helpers).

Kogitune ("first batch"): in a fresh, empty ContentStore,
    dataset = DatasetRecipe([url], store=store).get_train_dataset(block_size=--block-size)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
timed end to end and split into "open" (get_train_dataset: manifest fetch, dataset layout) and "batch" (the rest:
the dataset asks for the shards of its first windows, waits for the shard of sample 0, verifies it on open).
The breakdown also shows how long the batch waited inside the tensor's remote ensure (the fetch of the needed shard) and
inside DataTensor.verify_shard (re-hashing it on open).

Baseline ("plain first shard"): one httpx.Client downloading manifest.json and the first shard's files (.tokens,
.pieces, .docs) from the same mirror to disk, no hashing: the least any streaming design must wait before its
first batch. All shards have the same size, so which shard sample 0 lives in does not matter.

Both run at full loopback speed and, with --rate (MiB/s, default 64; 0 skips), against a mirror limited to that
uplink (a token bucket around mirror_server.py's handler), where shards fetched ahead compete with the needed one.
After each timed Kogitune run every shard is awaited (untimed) so that no background fetch outlives its store.

Each variant runs --repeat times, interleaved; the table shows the best run, the median and the spread.

    python scripts/bench_first_batch.py [--shards 4] [--block-size 512] [--repeat 3] [--rate 64] [--workers 0]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_fetch import (
    MiB,
    fresh_store,
    load_note,
    mirrors,
    plain_download,
    repeated_kjv_tensor,  # noqa: E402
    summary,
)

from kogitune import client  # noqa: E402
from kogitune.content_store import ContentStore  # noqa: E402
from kogitune.layout import MANIFEST_FILE  # noqa: E402
from kogitune.recipe import DatasetRecipe  # noqa: E402
from kogitune.tensor import DataTensor  # noqa: E402

BATCH = 8


class Waits:
    """Seconds spent inside the remote shards' ensure and DataTensor.verify_shard in this process (num_workers=0)."""

    ensure = 0.0
    verify = 0.0

    @classmethod
    def install(cls) -> None:
        remote = getattr(client, "RemoteShards", None) or client.MirrorShards  # MirrorShards: before issue 12
        ensure, verify = remote.ensure, DataTensor.verify_shard

        def timed_ensure(self, manifest, index):
            started = time.perf_counter()
            try:
                return ensure(self, manifest, index)
            finally:
                cls.ensure += time.perf_counter() - started

        def timed_verify(self, shard):
            started = time.perf_counter()
            try:
                return verify(self, shard)
            finally:
                cls.verify += time.perf_counter() - started

        remote.ensure, DataTensor.verify_shard = timed_ensure, timed_verify

    @classmethod
    def reset(cls) -> None:
        cls.ensure = cls.verify = 0.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4, help="shards of 32 MiB in the tensor (default: 4)")
    parser.add_argument("--block-size", type=int, default=512, help="sample length in tokens (default: 512)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (default: 3)")
    parser.add_argument(
        "--rate", type=float, default=64, help="MiB/s of the throttled mirror; 0 skips the throttled runs (default: 64)"
    )
    parser.add_argument("--workers", type=int, default=0, help="DataLoader num_workers (default: 0)")
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="segments per shuffle window (TokenBlockDataset window; default: the dataset's, 4)",
    )
    parser.add_argument(
        "--lookahead",
        type=int,
        default=None,
        help="windows prefetched ahead (TokenBlockDataset lookahead; default: the dataset's, 2)",
    )
    args = parser.parse_args()
    if args.repeat < 1 or args.shards < 1 or args.workers < 0:
        parser.error("--repeat and --shards must be positive, --workers not negative")
    return args


def first_batch(url: str, home: Path, block_size: int, workers: int, options: dict) -> tuple[float, float]:
    """(open s, batch s) of a cold start into an empty store at `home`; then waits (untimed) for every shard."""
    store = ContentStore(home)
    started = time.perf_counter()
    dataset = DatasetRecipe([url], store=store).get_train_dataset(block_size=block_size, **options)
    opened = time.perf_counter()
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=workers)
    batches = iter(loader)
    batch = next(batches)
    done = time.perf_counter()
    assert batch["input_ids"].shape == (BATCH, block_size)
    del batches  # shuts DataLoader workers down
    tensor = dataset.tensors[0]
    for i in range(len(tensor.shards)):  # let background prefetches finish before the store is removed
        tensor.remote.ensure(tensor.manifest, i)
    return opened - started, done - opened


def measure(url: str, served: DataTensor, work: Path, args, label: str) -> dict[str, list[float]]:
    first = served.shards[0]
    paths = [MANIFEST_FILE, first.tokens_path, first.pieces_path, first.docs_path]
    times: dict[str, list[float]] = {
        "plain first shard": [],
        "kogitune first batch": [],
        "  open": [],
        "  batch": [],
        "    in ensure (fetch)": [],
        "    in verify_shard": [],
    }
    for run in range(args.repeat):
        target = fresh_store(work)
        try:
            started = time.perf_counter()
            plain_download(url, paths, target)
            times["plain first shard"].append(time.perf_counter() - started)
        finally:
            shutil.rmtree(target, ignore_errors=True)
        try:
            Waits.reset()
            options = {k: v for k, v in (("window", args.window), ("lookahead", args.lookahead)) if v is not None}
            open_s, batch_s = first_batch(url, target, args.block_size, args.workers, options)
            times["kogitune first batch"].append(open_s + batch_s)
            times["  open"].append(open_s)
            times["  batch"].append(batch_s)
            times["    in ensure (fetch)"].append(Waits.ensure)
            times["    in verify_shard"].append(Waits.verify)
        finally:
            shutil.rmtree(target, ignore_errors=True)
        print(
            f"  {label} run {run + 1}/{args.repeat}: plain first shard {times['plain first shard'][-1]:.2f} s, "
            f"kogitune first batch {times['kogitune first batch'][-1]:.2f} s",
            flush=True,
        )
    return times


def report(times: dict[str, list[float]], title: str, workers: int) -> None:
    print(f"\n{title}")
    print(f"{'':<26}{'best s':>8}{'median s':>10}{'spread':>8}")
    for name, values in times.items():
        if name.startswith("    ") and workers:
            continue  # the waits happen in the DataLoader workers, where they are not measured
        best, median, spread = summary(values)
        print(f"{name:<26}{best:>8.2f}{median:>10.2f}{spread:>8.0%}")
    plain, kogitune = min(times["plain first shard"]), min(times["kogitune first batch"])
    plain_m = statistics.median(times["plain first shard"])
    kogitune_m = statistics.median(times["kogitune first batch"])
    print(
        f"first batch / plain first shard: {kogitune / plain:.2f}x best to best, {kogitune_m / plain_m:.2f}x median "
        "to median (1.00x = no streaming overhead)"
    )


def main() -> None:
    args = parse_args()
    print(f"bench_first_batch: {load_note()} (start)")
    work = Path(tempfile.mkdtemp(prefix="kogitune-bench-first-batch-"))
    try:
        started = time.perf_counter()
        served = repeated_kjv_tensor(work, work / "served", args.shards * 32 * MiB / 1e6)
        print(
            f"tensor: {len(served.shards)} shards of {served.shards[0].size / MiB:.0f} MiB, stored block "
            f"{served.manifest.block_size}, samples of {args.block_size} tokens, batch {BATCH}, DataLoader "
            f"num_workers={args.workers}; built in {time.perf_counter() - started:.1f} s"
        )
        Waits.install()
        with mirrors(served.path, 1) as urls:
            plain_download(urls[0], [MANIFEST_FILE], work / "warmup")  # imports, first connection, page cache
            shutil.rmtree(work / "warmup")
            full = measure(urls[0], served, work, args, "full speed")
        report(full, "Full speed (loopback):", args.workers)
        if args.rate:
            with mirrors(served.path, 1, rate_mib=args.rate) as urls:
                slow = measure(urls[0], served, work, args, f"{args.rate:g} MiB/s")
            report(slow, f"Mirror limited to {args.rate:g} MiB/s:", args.workers)
        print(f"bench_first_batch: {load_note()} (end)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
