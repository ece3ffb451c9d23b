"""Benchmark deduplication on the KJV: MinHash documents/s and memory, and near-duplicate precision/recall.

    python scripts/bench_dedup.py [--documents 120000]

1. Throughput: documents of 3 random verses (about 80 words each); MinHash dedup against two baselines measured
   in the same run on the same documents: exact dedup, and computing the shingles alone.
2. Memory: the index's own bytes per kept document, and the growth of the process's peak RSS during the run.
3. Quality: for each edit rate, edited copies (random word insertions, deletions and substitutions) of 500 KJV
   chapters are checked against an index of the originals; the other 689 chapters, never indexed, are the
   negatives. Recall is the fraction of copies caught, precision the fraction of catches that are copies.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
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
    print(f"  minhash_dedup takes {minhash_seconds / exact_seconds:.1f}x the time of exact_dedup and "
          f"{minhash_seconds / shingles_only:.1f}x the time of shingling alone")
    print(f"  kept {minhash.kept:,} (exact kept {exact.kept:,}); index {minhash.index.nbytes / 1e6:.1f} MB = "
          f"{minhash.index.nbytes / minhash.kept:.0f} bytes per kept document (exact: "
          f"{exact.index.nbytes / exact.kept:.0f}); peak RSS grew {rss_growth:.0f} MB during the minhash run")


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
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def quality() -> None:
    texts = chapters()
    rng = random.Random(1)
    vocabulary = sorted({w for t in texts for w in t.split()})
    order = rng.sample(range(len(texts)), len(texts))
    originals, negatives = [texts[i] for i in order[:500]], [texts[i] for i in order[500:]]
    copies = {rate: [edited(t, rate, rng, vocabulary) for t in originals] for rate in EDIT_RATES}
    true_jaccard = {rate: sum(len(grams(a) & grams(b)) / len(grams(a) | grams(b))
                              for a, b in zip(originals, copies[rate])) / len(originals) for rate in EDIT_RATES}
    print(f"\n## Near-duplicate detection: 500 edited copies per rate vs. {len(negatives)} unrelated chapters")
    for config in CONFIGS:
        probe = build_filter("minhash_dedup", **config)
        print(f"\n{config['bands']} bands x {config['rows']} rows (threshold ~{probe.hasher.threshold:.2f}), "
              "5-gram words\n")
        print("| edit rate | mean true Jaccard | recall | precision | false positives |")
        print("|---|---|---|---|---|")
        for rate in EDIT_RATES:
            dedup = build_filter("minhash_dedup", **config)
            for text in originals:
                dedup.apply(text)
            caught = sum(dedup.apply(c).text is None for c in copies[rate])
            false = sum(dedup.apply(n).text is None for n in negatives)
            precision = caught / (caught + false) if caught + false else 1.0
            print(f"| {rate:.0%} | {true_jaccard[rate]:.2f} | {caught / len(originals):.3f} | {precision:.3f} | "
                  f"{false} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=120_000)
    args = parser.parse_args()
    started = time.perf_counter()
    throughput(args.documents)
    quality()
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
