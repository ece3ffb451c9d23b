"""Benchmark `kogitune filter` and measure language-ID accuracy; the figures go into docs/filters.md.

    python scripts/bench_filters.py [--copies 3] [--workers 1 2]

Throughput: the KJV (one chapter per document, 4.2 MB) repeated `--copies` times, through the default English
pipeline (docs/filters.md, without dedup) with 1 and 2 processes, against a baseline measured in the same run:
the same read + JSON parse + write with an empty pipeline. Language ID: the labelled samples of
kogitune/filters/samples.py, KJV chapters and single KJV verses (short text).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kogitune.corpora import kjv_verses, write_kjv_chapters  # noqa: E402
from kogitune.filters.language import detect_language  # noqa: E402
from kogitune.filters.run import FilterOptions, filter_files  # noqa: E402
from kogitune.filters.samples import SHORT, labelled_paragraphs  # noqa: E402

ENGLISH_PIPELINE = {
    "filters": [
        {"name": "nfkc"},
        {"name": "whitespace"},
        {"name": "length", "min_chars": 200},
        {"name": "language", "languages": ["en"], "min_confidence": 0.65},
        {"name": "gopher_quality"},
        {"name": "stop_words", "language": "en"},
        {"name": "compression"},
        {"name": "gopher_repetition"},
        {"name": "pii"},
    ]
}


def throughput(corpus: Path, workers: list[int], directory: Path) -> None:
    size = corpus.stat().st_size
    runs = [("baseline: read + parse + write, no filters", {"filters": []}, 1)]
    runs += [(f"default English pipeline, {n} process{'es' if n > 1 else ''}", ENGLISH_PIPELINE, n) for n in workers]
    baseline = None
    print(
        f"input: {corpus.name}, {size / 1e6:.1f} MB, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} (other work on the machine lowers the MB/s, not the MB per CPU second)"
    )
    for label, config, n in runs:
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        report = filter_files([corpus], directory / "out.jsonl", config, FilterOptions(workers=n), progress=False)
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
        rate = size / 1e6 / seconds
        baseline = baseline or rate
        print(
            f"  {label:<48} {seconds:6.2f} s {rate:7.2f} MB/s  x{rate / baseline:.3f} of baseline  "
            f"{size / 1e6 / cpu:6.2f} MB per CPU second  kept {report.kept:,} of {report.documents:,}"
        )


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers): unlike wall time, it does not
    depend on what else the machine is running."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def language_accuracy(directory: Path) -> None:
    samples: dict[str, list[tuple[str, str]]] = defaultdict(list)
    samples["paragraphs (ja zh ko en fr de es)"] = labelled_paragraphs()
    samples["single sentences (ja zh ko en fr de es)"] = list(SHORT)
    chapters = write_kjv_chapters(directory / "kjv.jsonl")
    samples["KJV chapters (en)"] = [("en", json.loads(line)["text"]) for line in open(chapters, encoding="utf-8")]
    with open(kjv_verses(), encoding="utf-8") as f:
        samples["KJV single verses (en)"] = [("en", json.loads(line)["text"]) for line in f]
    for label, pairs in samples.items():
        started = time.perf_counter()
        results = [(language, detect_language(text)) for language, text in pairs]
        seconds = time.perf_counter() - started
        right = sum(found.language == language for language, found in results)
        confident = sum(found.language == language and found.confidence >= 0.5 for language, found in results)
        wrong = Counter(f"{language}->{found.language}" for language, found in results if found.language != language)
        print(
            f"  {label:<42} {right:>6}/{len(pairs):<6} = {right / len(pairs):6.1%} correct, "
            f"{confident / len(pairs):6.1%} correct with confidence >= 0.5, {len(pairs) / seconds:,.0f} texts/s"
            + (f"  errors: {dict(wrong.most_common(5))}" if wrong else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=3, help="copies of the KJV in the input (default: 3)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts (default: 1 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        chapters = write_kjv_chapters(directory / "chapters.jsonl").read_bytes()
        corpus = directory / "kjv.jsonl"
        corpus.write_bytes(chapters * args.copies)
        print("throughput")
        throughput(corpus, args.workers, directory)
        print("language identification")
        language_accuracy(directory)


if __name__ == "__main__":
    main()
