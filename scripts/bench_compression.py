"""Benchmark compressed sidecars (kogitune compress): size, read speed, and a fetch over a slow link.

Corpora, all real text stored with the built-in gpt2 tokenizer (uint16 tokens), 1 MiB pieces:
  kjv      the King James Bible, one chapter per document (scripts/bench_fetch.py's kjv_tensor), ~2 MB of tokens;
  stdlib   the Python standard library's own source (.py files of this interpreter's Lib, sorted, the first
           --stdlib-mb MB of text), one file per document: code;
  pydoc    the Python documentation's topics (pydoc_data/topics.py), one topic per document: ~0.25 MB.

Section 1, per corpus and zstd level: the size ratio (tokens bytes / sidecar bytes), the compression speed (one
thread, MB of tokens per second), and the read speed of one core, interleaved in one loop, as MB of verified tokens
per second:
  raw      pread each piece of the .tokens file + SHA-256 against the .pieces file (what a fetcher does with a piece
           it received: the network is left out);
  zstd     pread each frame of the sidecar + decode_piece (bounded) + SHA-256.
A fetcher that keeps up moves min(link, raw) verified MB/s without sidecars and min(link x ratio, zstd) with them,
per core: the table says up to which link speed the sidecar wins.

Section 2: `kogitune.client.open_mirrors` + every shard fetched from one tests/mirror_server.py process limited to
each of --rates MiB/s (a token bucket on its writes, scripts/bench_fetch.py's mirrors; 0: not limited, loopback at
full speed), the KJV tokens repeated to --size-mb MB, with compressed_transfer=1 (the mirror serves sidecars) and 0
(flat tokens), interleaved --repeat times, each into a fresh store; the ratio of the medians.

    python scripts/bench_compression.py [--levels 1,3,9,19] [--rates 16,64,0] [--size-mb 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fetch import fresh_store, kjv_tensor, kogitune_fetch, load_note, mirrors, repeated_kjv_tensor  # noqa: E402

from kogitune.protocol.compression import decode_piece, header_size, parse_header, sidecar_path  # noqa: E402
from kogitune.sidecars import compress  # noqa: E402
from kogitune.tensor import DataTensor  # noqa: E402
from kogitune.write import StoreOptions, store  # noqa: E402

MiB = 1 << 20


def stdlib_corpus(path: Path, limit_mb: float) -> Path:
    """The .py files of the standard library, sorted by path, until `limit_mb` MB of text: one document each."""
    import json

    root, size = Path(sysconfig.get_paths()["stdlib"]), 0
    with open(path, "w", encoding="utf-8") as out:
        for source in sorted(root.rglob("*.py")):
            if "site-packages" in source.parts or size >= limit_mb * 1e6:
                continue
            try:
                text = source.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            out.write(json.dumps({"text": text}) + "\n")
            size += len(text.encode())
    return path


def pydoc_corpus(path: Path) -> Path:
    import json
    from pydoc_data.topics import topics

    with open(path, "w", encoding="utf-8") as out:
        for name in sorted(topics):
            out.write(json.dumps({"text": topics[name]}) + "\n")
    return path


def stored(corpus: Path, out: Path) -> DataTensor:
    store([corpus], "gpt2", out, StoreOptions(workers=1, block_size=64, shard_size=32 * MiB), progress=False)
    return DataTensor(out)


def read_rates(tensor: DataTensor, rounds: int) -> tuple[float, float]:
    """(raw, zstd) verified MB/s of one core, the two interleaved shard by shard, best of `rounds`."""
    piece_size = tensor.manifest.piece_size
    raw_times, zstd_times = [], []
    for _ in range(rounds):
        raw = zstd = 0.0
        for shard in tensor.shards:
            pieces = tensor.manifest.pieces_in(shard)
            digests = (tensor.path / shard.pieces_path).read_bytes()
            lengths = [min(piece_size, shard.size - i * piece_size) for i in range(pieces)]
            started = time.perf_counter()
            with open(tensor.path / shard.tokens_path, "rb") as f:
                for i, length in enumerate(lengths):
                    piece = os.pread(f.fileno(), length, i * piece_size)
                    assert hashlib.sha256(piece).digest() == digests[32 * i : 32 * i + 32]
            raw += time.perf_counter() - started
            started = time.perf_counter()
            with open(tensor.path / sidecar_path(shard), "rb") as f:
                index = parse_header(f.read(header_size(pieces)), shard, piece_size)
                for i, length in enumerate(lengths):
                    at, frame_length = index.frame(i)
                    piece = decode_piece(os.pread(f.fileno(), frame_length, at), length)
                    assert hashlib.sha256(piece).digest() == digests[32 * i : 32 * i + 32]
            zstd += time.perf_counter() - started
        raw_times.append(raw)
        zstd_times.append(zstd)
    size = sum(s.size for s in tensor.shards)
    return size / min(raw_times) / 1e6, size / min(zstd_times) / 1e6


def size_and_speed(tensors: dict[str, DataTensor], levels: list[int], rounds: int) -> None:
    print(
        "| corpus | tokens MB | level | ratio | compress MB/s | raw read+verify MB/s | zstd read+decode+verify MB/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, tensor in tensors.items():
        size = sum(s.size for s in tensor.shards)
        for level in levels:
            started = time.perf_counter()
            report = compress(tensor.path, level=level, workers=1, overwrite=True)
            seconds = time.perf_counter() - started
            raw, zstd = read_rates(tensor, rounds)
            print(
                f"| {name} | {size / 1e6:.2f} | {level} | {report.ratio:.3f} | {size / seconds / 1e6:.0f} | "
                f"{raw:.0f} | {zstd:.0f} |",
                flush=True,
            )


def fetch_over_links(work: Path, size_mb: float, rates: list[float], level: int, repeat: int) -> None:
    tensor = repeated_kjv_tensor(work, work / "repeated", size_mb)
    report = compress(tensor.path, level=level)
    print(
        f"\n{len(tensor.shards)} shards, {report.tokens_bytes / 1e6:.1f} MB of tokens, sidecars {report.ratio:.2f}x "
        f"smaller (level {level})"
    )
    for rate in rates:
        fetch_at(work, tensor, report.tokens_bytes, rate, repeat)


def fetch_at(work: Path, tensor: DataTensor, tokens_bytes: int, rate: float, repeat: int) -> None:
    print(f"\none mirror {f'at {rate:g} MiB/s' if rate else 'at full speed (loopback, not limited)'}\n")
    times: dict[str, list[float]] = {"flat": [], "sidecars": []}
    cpu: dict[str, list[float]] = {"flat": [], "sidecars": []}
    with mirrors(tensor.path, 1, rate) as urls:  # rate 0: not limited
        for _ in range(repeat):
            for name, setting in (("flat", "0"), ("sidecars", "1")):
                os.environ["KOGITUNE_COMPRESSED_TRANSFER"] = setting
                _, fetch_s, fetch_cpu, _ = kogitune_fetch(urls, fresh_store(work), True, open_shards=False)
                times[name].append(fetch_s)
                cpu[name].append(fetch_cpu)
    os.environ.pop("KOGITUNE_COMPRESSED_TRANSFER", None)
    print("| fetch | median s | best s | MB/s of tokens (median) | client CPU s |")
    print("| --- | --- | --- | --- | --- |")
    for name in times:
        median = statistics.median(times[name])
        print(
            f"| {name} | {median:.2f} | {min(times[name]):.2f} | {tokens_bytes / median / 1e6:.1f} | "
            f"{statistics.median(cpu[name]):.2f} |"
        )
    print(f"\nsidecars / flat time: {statistics.median(times['sidecars']) / statistics.median(times['flat']):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,3,9,19", help="zstd levels (default: 1,3,9,19)")
    parser.add_argument("--rounds", type=int, default=3, help="read passes per level, best taken (default: 3)")
    parser.add_argument("--stdlib-mb", type=float, default=8, help="MB of stdlib source text (default: 8)")
    parser.add_argument(
        "--rates", default="16,64,0", help="MiB/s of the mirror in section 2, 0: not limited; empty: skip it"
    )
    parser.add_argument("--size-mb", type=float, default=64, help="MB of tokens fetched in section 2 (default: 64)")
    parser.add_argument("--level", type=int, default=3, help="zstd level of section 2 (default: 3)")
    parser.add_argument("--repeat", type=int, default=3, help="fetches of each kind in section 2 (default: 3)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    print(load_note())
    with tempfile.TemporaryDirectory(prefix="kogitune-bench-compression-") as tmp:
        work = Path(tmp)
        tensors = {
            "kjv": kjv_tensor(work),
            "stdlib": stored(stdlib_corpus(work / "stdlib.jsonl", args.stdlib_mb), work / "stdlib"),
            "pydoc": stored(pydoc_corpus(work / "pydoc.jsonl"), work / "pydoc"),
        }
        print()
        size_and_speed(tensors, levels, args.rounds)
        if args.rates:
            rates = [float(x) for x in args.rates.split(",")]
            fetch_over_links(work, args.size_mb, rates, args.level, args.repeat)
        print(f"\n{load_note()}")


if __name__ == "__main__":
    main()
