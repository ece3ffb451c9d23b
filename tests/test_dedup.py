"""Exact and MinHash deduplication on the KJV: what they catch, what they leave, determinism and memory."""

import json
import random

import numpy as np
import pytest

from kogitune.corpora import kjv_verses, write_kjv_chapters
from kogitune.filters import FilterError, Pipeline, build_filter
from kogitune.filters.dedup import MISSING, KeyIndex, normalize_for_exact, simplify_for_shingles


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
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a, b):
    return len(a & b) / len(a | b)


def substituted(text, rate, rng, vocabulary):
    words = text.split()
    return " ".join(rng.choice(vocabulary) if rng.random() < rate else w for w in words)


def test_exact_dedup_keeps_one_of_each_normalized_text(verses):
    dedup = build_filter("exact_dedup")
    kept = [v for v in verses if dedup.apply(v).text is not None]
    assert len(kept) == len({normalize_for_exact(v) for v in verses}) < len(verses)

    variants = ["In the beginning God created the heaven and the earth.",
                "IN THE BEGINNING  God created the heaven\nand the earth.",
                "\uff29n the beginning God created the heaven and the earth.",  # fullwidth I, NFKC makes it I
                "  in the beginning god created the heaven and the earth.\t"]
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
    edited = [text[:len(text) // 2] + "X" + text[len(text) // 2:] for text in squeezed]
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


def test_index_memory_grows_with_documents_not_text_length(verses, chapters):
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

    bounded = build_filter("minhash_dedup", max_index_mb=0.001)
    with pytest.raises(FilterError, match="max_index_mb"):
        for text in verses[:1000]:
            bounded.apply(text)


def test_key_index_agrees_with_a_dict_across_many_merges():
    rng = np.random.default_rng(0)
    index, reference = KeyIndex(buffer_keys=100), {}
    for _ in range(300):
        keys = rng.integers(0, 2**64 - 1, size=7, dtype=np.uint64)
        values = rng.integers(0, 1000, size=7, dtype=np.uint64)
        index.add(keys, values)
        reference.update(zip(keys.tolist(), values.tolist()))
    probe = np.concatenate((np.array(list(reference), dtype=np.uint64)[::3],
                            rng.integers(0, 2**64 - 1, size=50, dtype=np.uint64)))
    expected = [reference.get(k, int(MISSING)) for k in probe.tolist()]
    assert index.get(probe).tolist() == expected
    assert len(index._runs) < 8, "runs are merged, not kept one per flush"


def test_pipeline_from_config_names_the_dropping_filter(verses):
    pipeline = Pipeline.from_config({"filters": [{"name": "exact_dedup"},
                                                 {"name": "minhash_dedup", "bands": 20, "rows": 5}]})
    assert pipeline.stateful
    assert pipeline.to_config()["filters"][1] == {"name": "minhash_dedup", "shingle": "word", "ngram": 5,
                                                  "bands": 20, "rows": 5, "seed": 1, "max_index_mb": 0.0}
    text = verses[100]
    assert pipeline.apply(text).text == text
    assert pipeline.apply(text.upper()).reason == "exact_dedup:duplicate"
    assert pipeline.apply(text + " And so it was.").reason == "minhash_dedup:near_duplicate"
    with pytest.raises(FilterError, match="shingle"):
        build_filter("minhash_dedup", shingle="sentence")
