"""Exact and MinHash deduplication on the KJV: what they catch, what they leave, determinism, memory and spilling."""

import gc
import json
import random
import re
import resource
import signal

import numpy as np
import pytest

from kogitune.corpora import kjv_verses, write_kjv_chapters
from kogitune.filters import FilterError, Pipeline, build_filter
from kogitune.filters.dedup import MISSING, KeyIndex, Run, merged_chunks, normalize_for_exact, simplify_for_shingles
from kogitune.filters.run import FilterOptions, filter_files


@pytest.fixture(scope="module")
def verses():
    with open(kjv_verses(), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def chapters(tmp_path_factory):
    path = write_kjv_chapters(tmp_path_factory.mktemp("kjv") / "kjv.jsonl", limit=400)
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def word_grams(text, n=5):
    words = simplify_for_shingles(text).split()
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a, b):
    return len(a & b) / len(a | b)


def substituted(text, rate, rng, vocabulary):
    words = text.split()
    return " ".join(rng.choice(vocabulary) if rng.random() < rate else w for w in words)


def test_exact_dedup_keeps_one_of_each_normalized_text(verses):
    dedup = build_filter("exact_dedup")
    kept = [v for v in verses if dedup.apply(v).text is not None]
    assert len(kept) == len({normalize_for_exact(v) for v in verses}) < len(verses)

    variants = [
        "In the beginning God created the heaven and the earth.",
        "IN THE BEGINNING  God created the heaven\nand the earth.",
        "\uff29n the beginning God created the heaven and the earth.",  # fullwidth I, NFKC makes it I
        "  in the beginning god created the heaven and the earth.\t",
    ]
    fresh = build_filter("exact_dedup")
    results = [fresh.apply(v) for v in variants]
    assert results[0].text == variants[0]
    assert [r.reason for r in results[1:]] == ["duplicate"] * 3
    assert fresh.apply("In the beginning God created the heaven and the earth!").text is not None


def test_exact_dedup_adversarial_inputs():
    dedup = build_filter("exact_dedup")
    for text in ["", "\ud800 lone surrogate", "emoji 🦊🦊", "x" * 1_000_000, "\x00\x01 control"]:
        assert dedup.apply(text).text == text
    assert dedup.apply(" \n\t").reason == "duplicate", "whitespace only normalizes to the empty text"
    assert dedup.apply("x" * 1_000_000).reason == "duplicate"


def test_minhash_catches_edited_copies_and_not_unrelated_chapters(chapters):
    rng = random.Random(3)
    vocabulary = sorted({w for c in chapters for w in c.split()})
    dedup = build_filter("minhash_dedup")
    kept_grams = []
    for text in chapters:
        result = dedup.apply(text)
        grams = word_grams(text)
        if result.text is None:
            best = max(jaccard(grams, earlier) for earlier in kept_grams)
            assert best > 0.5, f"an unrelated chapter was dropped (best true Jaccard {best:.2f})"
        else:
            kept_grams.append(grams)
    assert dedup.kept >= 0.97 * len(chapters)

    caught, similar = 0, 0
    for text in chapters[:200]:
        copy = substituted(text, 0.01, rng, vocabulary)
        if jaccard(word_grams(text), word_grams(copy)) >= 0.85:
            similar += 1
            result = dedup.apply(copy)
            caught += result.reason == "near_duplicate"
            assert result.text is not None or 0.6 <= result.score <= 1.0
    assert similar >= 150
    assert caught >= 0.97 * similar, "P(catch) at Jaccard >= 0.85 is >= 0.988 with 14 bands x 8 rows"


def test_minhash_character_shingles_catch_copies_without_word_boundaries(chapters):
    dedup = build_filter("minhash_dedup", shingle="char", ngram=5)
    squeezed = [c.replace(" ", "") for c in chapters[:100]]
    assert all(dedup.apply(text).text is not None for text in squeezed)
    edited = [text[: len(text) // 2] + "X" + text[len(text) // 2 :] for text in squeezed]
    assert sum(dedup.apply(text).reason == "near_duplicate" for text in edited) >= 98


def test_minhash_is_deterministic_given_the_seed(chapters):
    first, second, other = (build_filter("minhash_dedup", seed=s) for s in (7, 7, 8))
    text = chapters[0]
    signature = first.hasher.signature(first.hasher.shingles(text))
    assert np.array_equal(signature, second.hasher.signature(second.hasher.shingles(text)))
    assert not np.array_equal(signature, other.hasher.signature(other.hasher.shingles(text)))
    decisions = [[f.apply(c).text is None for c in chapters + chapters[:50]] for f in (first, second)]
    assert decisions[0] == decisions[1] and sum(decisions[0]) >= 50


def test_minhash_keeps_texts_without_words_and_odd_characters():
    dedup = build_filter("minhash_dedup")
    for text in ["", "   ", "...!!!", "\ud800\udfff?", "🦊 emoji 🦊 fox 🦊", "short"]:
        assert dedup.apply(text).text == text
    assert dedup.apply("short").reason == "near_duplicate"


def test_index_memory_grows_with_documents_not_text_length(verses, chapters, tmp_path):
    def index_after(texts):
        dedup = build_filter("minhash_dedup")
        dedup.index = KeyIndex(buffer_keys=14 * 20)
        for text in texts:
            dedup.apply(text)
        return dedup

    short = index_after(verses[:300])
    long = index_after(c * 10 for c in chapters[:300])
    assert short.kept == long.kept == 300
    assert len(short.index) == len(long.index) == 300 * 14
    assert short.index.nbytes == long.index.nbytes <= 300 * 14 * 16 + 14 * 20 * 100

    bounded, in_memory = build_filter("minhash_dedup", max_index_mb=0.05, spill_dir=str(tmp_path)), []
    for text in verses[:600]:
        bounded.apply(text)
        in_memory.append(bounded.index.nbytes - bounded.index.spilled_bytes)
    assert max(in_memory) <= 50_000 < bounded.index.spilled_bytes, "the budget holds; the rest went to disk"
    assert len(bounded.index) == 14 * bounded.kept


def test_key_index_agrees_with_a_dict_across_many_merges():
    rng = np.random.default_rng(0)
    index, reference = KeyIndex(buffer_keys=100), {}
    for _ in range(300):
        keys = rng.integers(0, 2**64 - 1, size=7, dtype=np.uint64)
        values = rng.integers(0, 1000, size=7, dtype=np.uint64)
        index.add(keys, values)
        reference.update(zip(keys.tolist(), values.tolist()))
    probe = np.concatenate(
        (np.array(list(reference), dtype=np.uint64)[::3], rng.integers(0, 2**64 - 1, size=50, dtype=np.uint64))
    )
    expected = [reference.get(k, int(MISSING)) for k in probe.tolist()]
    assert index.get(probe).tolist() == expected
    assert len(index._runs) < 8, "runs are merged, not kept one per flush"


def test_key_index_spills_to_disk_within_its_budget_and_agrees_with_a_dict(tmp_path):
    """8,000 bytes: 64 keys in the dict, runs over 125 keys on disk, merged 64 keys at a time. Keys repeat, and
    a repeated key keeps its first value, as in memory."""
    rng = np.random.default_rng(1)
    index, reference, most_files = KeyIndex(memory_budget=8000, spill_dir=tmp_path), {}, 0
    for step in range(700):
        keys = rng.integers(0, 3000, size=7, dtype=np.uint64)
        values = rng.integers(0, 1000, size=7, dtype=np.uint64)
        index.add(keys, values)
        for key, value in zip(keys.tolist(), values.tolist()):
            reference.setdefault(key, value)
        if step % 25 == 0:
            probe = rng.integers(0, 3500, size=300, dtype=np.uint64)
            assert index.get(probe).tolist() == [reference.get(k, int(MISSING)) for k in probe.tolist()]
        assert index.nbytes - index.spilled_bytes <= 8000
        most_files = max(most_files, len(list(tmp_path.glob("kogitune-dedup-*/run-*.u64"))))
    probe = np.arange(3500, dtype=np.uint64)
    assert index.get(probe).tolist() == [reference.get(k, int(MISSING)) for k in probe.tolist()]
    on_disk = [run for run in index._runs if run.path is not None]
    assert on_disk and all(run.path.is_file() for run in on_disk) and most_files >= 2
    assert len(index._runs) < 8
    assert not list(tmp_path.glob("*/*.tmp")), "merged-away and temporary files are removed"
    index.close()
    assert list(tmp_path.iterdir()) == [] and len(index) == 0


def check_merge(old_keys, new_keys, chunk):
    """merged_chunks gives what a stable sort of old + new gives, in slices of at most 2 * chunk keys."""
    old = Run(np.array(old_keys, dtype=np.uint64), np.arange(len(old_keys), dtype=np.uint64))
    new = Run(np.array(new_keys, dtype=np.uint64), np.arange(len(new_keys), dtype=np.uint64) + 1000)
    chunks = list(merged_chunks(old, new, chunk))
    assert all(0 < len(keys) == len(values) <= 2 * chunk for keys, values in chunks)
    both_keys, both_values = np.concatenate((old.keys, new.keys)), np.concatenate((old.values, new.values))
    order = np.argsort(both_keys, kind="stable")
    assert [k for keys, _ in chunks for k in keys.tolist()] == both_keys[order].tolist()
    assert [v for _, values in chunks for v in values.tolist()] == both_values[order].tolist()


@pytest.mark.parametrize(
    "old, new",
    [
        ([5, 5, 5, 5, 5], [5, 5, 5]),  # equal keys across runs and across chunk boundaries
        ([1, 2, 2, 2, 2, 2, 2, 9], [2, 2, 2, 3]),  # a run of equal keys longer than a chunk in both
        ([], [1, 2, 3]),
        ([1, 2, 3], []),
        ([], []),  # one run empty, or both
        ([7, 8, 9], [1, 2, 3]),
        ([1, 2, 3], [7, 8, 9]),  # one run entirely after the other
        ([0, 2**64 - 1], [2**64 - 1, 2**64 - 1]),  # the largest key (MISSING as a key)
    ],
)
@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_merged_chunks_equal_a_stable_sort_of_both_runs(old, new, chunk):
    check_merge(old, new, chunk)


def test_merged_chunks_on_random_runs_with_many_equal_keys():
    rng = np.random.default_rng(2)
    for _ in range(200):
        old, new = (np.sort(rng.integers(0, 12, size=rng.integers(0, 60))).tolist() for _ in range(2))
        check_merge(old, new, int(rng.integers(1, 20)))


def test_spilling_dedup_makes_the_same_decisions_as_in_memory(verses, tmp_path):
    exact_input = verses[:6000] + [v.upper() for v in verses[:1000]] + verses[3000:3500]
    minhash_input = verses[:1500] + [v + " And it was so." for v in verses[:700]]
    for name, texts, budget in (("exact_dedup", exact_input, 0.02), ("minhash_dedup", minhash_input, 0.05)):
        in_memory = build_filter(name, max_index_mb=0)
        spilling = build_filter(name, max_index_mb=budget, spill_dir=str(tmp_path))
        expected = [in_memory.apply(text) for text in texts]
        assert [spilling.apply(text) for text in texts] == expected
        assert sum(result.text is None for result in expected) > 500
        assert in_memory.index.spilled_bytes == 0 and spilling.index.spilled_bytes > 0
        assert any(tmp_path.glob("kogitune-dedup-*/run-*.u64")), "the runs are on disk while the filter is open"
        spilling.close()
        assert list(tmp_path.iterdir()) == []


def test_spill_directory_is_made_when_needed_and_removed_when_collected(verses, tmp_path):
    dedup = build_filter("exact_dedup", max_index_mb=0.01, spill_dir=str(tmp_path / "spill"))
    for text in verses[:100]:
        dedup.apply(text)
    assert not (tmp_path / "spill").exists(), "nothing spilled yet: no directory"
    for text in verses[100:2000]:
        dedup.apply(text)
    (directory,) = (tmp_path / "spill").iterdir()
    assert directory.name.startswith("kogitune-dedup-") and any(directory.glob("run-*.u64"))
    del dedup
    gc.collect()
    assert not directory.exists()


def test_unwritable_spill_dir_gives_a_filter_error(verses, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    dedup = build_filter("exact_dedup", max_index_mb=0.01, spill_dir=str(blocker / "spill"))
    with pytest.raises(
        FilterError,
        match=rf"cannot write the dedup index to {re.escape(str(blocker / 'spill'))} "
        r"\(Not a directory\).*set spill_dir to a writable directory",
    ):
        for text in verses[:2000]:
            dedup.apply(text)
    with pytest.raises(FilterError, match="max_index_mb must be 0"):
        build_filter("minhash_dedup", max_index_mb=-1)


def test_a_failed_write_gives_a_filter_error_and_leaves_no_partial_file(tmp_path):
    """A file size limit makes writes fail as a full disk does (EFBIG instead of ENOSPC)."""
    index = KeyIndex(memory_budget=8000, spill_dir=tmp_path)
    index.add(np.arange(64, dtype=np.uint64), np.arange(64, dtype=np.uint64))  # a run of 1,024 bytes, in memory
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(FilterError, match="cannot write the dedup index to .*kogitune-dedup-.*File too large"):
            index.add(np.arange(64, 128, dtype=np.uint64), np.arange(64, dtype=np.uint64))  # merged: 2,048 to disk
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)
    assert not any(tmp_path.glob("*/*"))
    index.close()


def test_filter_files_with_a_spilling_dedup_writes_the_same_output_and_cleans_up(verses, tmp_path):
    corpus = tmp_path / "verses.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for number, text in enumerate(verses[:1500] + verses[:300] + [v + " Selah." for v in verses[500:800]]):
            f.write(json.dumps({"id": number, "text": text}) + "\n")
    outputs = []
    for name, budget in (("memory", 0), ("spill", 0.02)):
        config = {
            "filters": [
                {"name": "exact_dedup", "max_index_mb": budget, "spill_dir": str(tmp_path / name)},
                {"name": "minhash_dedup", "max_index_mb": budget, "spill_dir": str(tmp_path / name)},
            ]
        }
        report = filter_files([corpus], tmp_path / f"{name}.jsonl", config, FilterOptions(workers=1), progress=False)
        outputs.append((tmp_path / f"{name}.jsonl").read_bytes())
        assert report.filters[0].dropped >= 300 and report.filters[1].dropped >= 250
    assert outputs[0] == outputs[1]
    assert not (tmp_path / "memory").exists(), "nothing spilled without a budget"
    spilled = tmp_path / "spill"
    assert spilled.is_dir() and not any(spilled.iterdir()), "the runner's filters are collected when it returns"


def test_pipeline_from_config_names_the_dropping_filter(verses):
    pipeline = Pipeline.from_config(
        {"filters": [{"name": "exact_dedup"}, {"name": "minhash_dedup", "bands": 20, "rows": 5}]}
    )
    assert pipeline.stateful
    assert pipeline.to_config()["filters"][1] == {
        "name": "minhash_dedup",
        "shingle": "word",
        "ngram": 5,
        "bands": 20,
        "rows": 5,
        "seed": 1,
        "max_index_mb": 512.0,
        "spill_dir": "",
    }
    text = verses[100]
    assert pipeline.apply(text).text == text
    assert pipeline.apply(text.upper()).reason == "exact_dedup:duplicate"
    assert pipeline.apply(text + " And so it was.").reason == "minhash_dedup:near_duplicate"
    with pytest.raises(FilterError, match="shingle"):
        build_filter("minhash_dedup", shingle="sentence")
