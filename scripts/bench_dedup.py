"""Benchmark deduplication on the KJV: documents/s and memory, spilling to disk, near-duplicate precision/recall.

    python scripts/bench_dedup.py [--documents 120000] [--section all|throughput|spill|quality]

1. Throughput: documents of 3 random verses (about 80 words each); MinHash dedup against two baselines measured
   in the same run on the same documents: exact dedup, and computing the shingles alone.
2. Memory: the index's own bytes per kept document, and the growth of the process's peak RSS during the run.
3. Spilling: exact and MinHash dedup with `max_index_mb` an eighth of their index (at 120,000 documents), so that
   most of it goes to disk in several runs, against the same filter all in memory (max_index_mb=0), in the same
   process on the same documents: documents/s, same decisions, and the resident memory each run added (sampled
   from /proc/self/status: anonymous memory, i.e. the heap and numpy arrays, and file-backed pages of the
   memory-mapped runs, which the kernel can evict). The load average is printed, as other work slows every rate.
4. Quality: for each edit rate, edited copies (random word insertions, deletions and substitutions) of 500 KJV
   chapters are checked against an index of the originals; the other 689 chapters, never indexed, are the
   negatives. Recall is the fraction of copies caught, precision the fraction of catches that are copies.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time

from kogitune.corpora import kjv_verses
from kogitune.filters import build_filter
from kogitune.filters.dedup import simplify_for_shingles

EDIT_RATES = (0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3)
CONFIGS = ({"bands": 14, "rows": 8}, {"bands": 20, "rows": 5}, {"bands": 9, "rows": 13})


def verse_documents(count: int, seed: int = 0) -> list[str]:
    with open(kjv_verses(), encoding="utf-8") as f:
        verses = [json.loads(line)["text"] for line in f]
    rng = random.Random(seed)
    return [" ".join(rng.sample(verses, 3)) for _ in range(count)]


def chapters() -> list[str]:
    by_chapter: dict[tuple[str, int], list[str]] = {}
    with open(kjv_verses(), encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            by_chapter.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return [" ".join(verses) for verses in by_chapter.values()]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(name: str, documents: list[str], run) -> float:
    started = time.perf_counter()
    for text in documents:
        run(text)
    seconds = time.perf_counter() - started
    print(f"  {name:<34} {len(documents) / seconds:>9,.0f} docs/s  ({seconds:.1f} s)")
    return seconds


def throughput(count: int) -> None:
    documents = verse_documents(count)
    words = sum(len(d.split()) for d in documents) / len(documents)
    print(f"## Throughput: {len(documents):,} documents of 3 random verses ({words:.0f} words each on average)")
    minhash = build_filter("minhash_dedup")
    shingles_only = timed("baseline: shingles only", documents, minhash.hasher.shingles)
    exact = build_filter("exact_dedup")
    exact_seconds = timed("baseline: exact_dedup", documents, exact.apply)
    rss_before = peak_rss_mb()
    minhash_seconds = timed("minhash_dedup (14 x 8, 5-gram words)", documents, minhash.apply)
    rss_growth = peak_rss_mb() - rss_before
    print(
        f"  minhash_dedup takes {minhash_seconds / exact_seconds:.1f}x the time of exact_dedup and "
        f"{minhash_seconds / shingles_only:.1f}x the time of shingling alone"
    )
    print(
        f"  kept {minhash.kept:,} (exact kept {exact.kept:,}); index {minhash.index.nbytes / 1e6:.1f} MB = "
        f"{minhash.index.nbytes / minhash.kept:.0f} bytes per kept document (exact: "
        f"{exact.index.nbytes / exact.kept:.0f}); peak RSS grew {rss_growth:.0f} MB during the minhash run"
    )


def memory_mb() -> dict[str, float]:
    """Resident memory now (Linux): all, anonymous, and file-backed (here: the memory-mapped runs), in MB."""
    found = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                found[key] = int(value.split()[0]) / 1024
    return found


def sampled_run(dedup, documents: list[str]) -> tuple[float, list[bool], dict[str, float]]:
    """Seconds, which documents were kept, and the peak growth of each memory figure (sampled every 1,000)."""
    start = memory_mb()
    peak = dict(start)
    kept = []
    started = time.perf_counter()
    for number, text in enumerate(documents):
        kept.append(dedup.apply(text).text is not None)
        if number % 1000 == 0:
            peak = {key: max(value, peak[key]) for key, value in memory_mb().items()}
    seconds = time.perf_counter() - started
    peak = {key: max(value, peak[key]) for key, value in memory_mb().items()}
    return seconds, kept, {key: peak[key] - start[key] for key in peak}


def spilling(count: int) -> None:
    """Each filter spilling, then all in memory, on the same documents; the spilling run goes first so that it
    cannot reuse memory the other freed."""
    documents = verse_documents(count)
    load = os.getloadavg()[0]
    print(
        f"\n## Spilling: {len(documents):,} documents of 3 random verses; budgets of 0.25 MB (exact) and 4 MB "
        "(MinHash): an eighth of the index at 120,000 documents"
    )
    for name, budget in (("exact_dedup", 0.25), ("minhash_dedup", 4.0)):
        warm_up = build_filter(name, max_index_mb=0)
        for text in documents[:2000]:
            warm_up.apply(text)
        with tempfile.TemporaryDirectory(prefix="bench-dedup-") as spill_dir:
            spilled = build_filter(name, max_index_mb=budget, spill_dir=spill_dir)
            spill_seconds, spill_kept, spill_memory = sampled_run(spilled, documents)
            index = spilled.index
            on_disk, total, files = index.spilled_bytes / 1e6, index.nbytes / 1e6, index._files
            spilled.close()
        in_memory = build_filter(name, max_index_mb=0)
        memory_seconds, memory_kept, memory_memory = sampled_run(in_memory, documents)
        for label, seconds, grown in (
            (f"{name}, max_index_mb=0 (in memory)", memory_seconds, memory_memory),
            (f"{name}, max_index_mb={budget}", spill_seconds, spill_memory),
        ):
            print(
                f"  {label:<42} {len(documents) / seconds:>8,.0f} docs/s  resident memory grew "
                f"{grown['VmRSS']:5.1f} MB (anonymous {grown['RssAnon']:5.1f}, file-backed {grown['RssFile']:5.1f})"
            )
        print(
            f"  spilling runs at {memory_seconds / spill_seconds:.2f}x the in-memory rate; same decisions: "
            f"{spill_kept == memory_kept} (kept {sum(spill_kept):,}); index {total:.1f} MB, {on_disk:.1f} MB of it "
            f"on disk at the end; {files} run files written in all"
        )
    print(
        f"  load average (1 min) {load:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores; "
        f"process peak RSS {peak_rss_mb():.0f} MB"
    )


def edited(text: str, rate: float, rng: random.Random, vocabulary: list[str]) -> str:
    """Each word: with probability `rate` deleted, substituted, or followed by an inserted word (equally likely)."""
    out = []
    for word in text.split():
        if rng.random() >= rate:
            out.append(word)
            continue
        kind = rng.randrange(3)
        if kind == 1:
            out.append(rng.choice(vocabulary))
        elif kind == 2:
            out.extend((word, rng.choice(vocabulary)))
    return " ".join(out)


def grams(text: str, n: int = 5) -> set:
    words = simplify_for_shingles(text).split()
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def quality() -> None:
    texts = chapters()
    rng = random.Random(1)
    vocabulary = sorted({w for t in texts for w in t.split()})
    order = rng.sample(range(len(texts)), len(texts))
    originals, negatives = [texts[i] for i in order[:500]], [texts[i] for i in order[500:]]
    copies = {rate: [edited(t, rate, rng, vocabulary) for t in originals] for rate in EDIT_RATES}
    true_jaccard = {
        rate: sum(len(grams(a) & grams(b)) / len(grams(a) | grams(b)) for a, b in zip(originals, copies[rate]))
        / len(originals)
        for rate in EDIT_RATES
    }
    print(f"\n## Near-duplicate detection: 500 edited copies per rate vs. {len(negatives)} unrelated chapters")
    for config in CONFIGS:
        probe = build_filter("minhash_dedup", **config)
        print(
            f"\n{config['bands']} bands x {config['rows']} rows (threshold ~{probe.hasher.threshold:.2f}), "
            "5-gram words\n"
        )
        print("| edit rate | mean true Jaccard | recall | precision | false positives |")
        print("|---|---|---|---|---|")
        for rate in EDIT_RATES:
            dedup = build_filter("minhash_dedup", **config)
            for text in originals:
                dedup.apply(text)
            caught = sum(dedup.apply(c).text is None for c in copies[rate])
            false = sum(dedup.apply(n).text is None for n in negatives)
            precision = caught / (caught + false) if caught + false else 1.0
            print(
                f"| {rate:.0%} | {true_jaccard[rate]:.2f} | {caught / len(originals):.3f} | {precision:.3f} | {false} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=120_000)
    parser.add_argument("--section", choices=("all", "throughput", "spill", "quality"), default="all")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.section in ("all", "throughput"):
        throughput(args.documents)
    if args.section in ("all", "spill"):
        spilling(args.documents)
    if args.section in ("all", "quality"):
        quality()
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
