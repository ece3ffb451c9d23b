"""Store-time perturbation: rates match the spec, ids stay in the vocabulary, documents stay whole, runs repeat."""

import json
import math
from itertools import islice

import numpy as np
import pytest

from kogitune.corpora import kjv_verses, write_kjv_chapters
from kogitune.perturb import Perturber, PerturbError, PerturbSpec, keep_probability
from kogitune.tensor import DataTensor
from kogitune.tokenizer import load_tokenizer
from kogitune.write import StoreOptions, store

VOCAB = 50257
EOS = 50256


@pytest.fixture(scope="module")
def verses():
    """The first 6,000 KJV verses tokenized with GPT-2, packed as store packs them (each document then EOS)."""
    tok = load_tokenizer("gpt2")
    with open(kjv_verses(), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in islice(f, 6000)]
    ids = tok.encode_batch(texts)
    tokens = np.concatenate([np.array(x + [EOS], dtype=np.uint16) for x in ids])
    lengths = np.array([len(x) + 1 for x in ids], dtype=np.int64)
    return tokens, lengths


def ends(lengths):
    return np.cumsum(lengths) - 1


def tolerance(p, n):
    """Five standard deviations of a binomial proportion: a correct implementation fails about once in 10**6."""
    return 5 * math.sqrt(p * (1 - p) / n)


def test_randomized_response_keeps_tokens_at_the_stated_rate(verses):
    tokens, lengths = verses
    spec = PerturbSpec(epsilon=11.0, seed=1)
    out, new_lengths = Perturber(spec, VOCAB).apply(tokens, lengths)
    content = np.ones(len(tokens), dtype=bool)
    content[ends(lengths)] = False
    kept = np.mean(out[content] == tokens[content])
    expected = math.exp(11.0) / (math.exp(11.0) + VOCAB - 1)
    assert keep_probability(11.0, VOCAB) == pytest.approx(expected)
    assert abs(kept - expected) < tolerance(expected, content.sum())
    assert np.array_equal(new_lengths, lengths)
    assert np.all(out[ends(lengths)] == EOS), "the separators between documents are not perturbed"
    replaced = out[content][out[content] != tokens[content]]
    assert replaced.max() < VOCAB
    assert abs(replaced.mean() - (VOCAB - 1) / 2) < 5 * VOCAB / math.sqrt(12 * len(replaced)), (
        "replacements are uniform over the vocabulary, not near the true token"
    )


def test_masking_and_dropping_rates_and_document_lengths(verses):
    tokens, lengths = verses
    unused = int(np.setdiff1d(np.arange(VOCAB), tokens)[0])
    spec = PerturbSpec(mask=0.2, mask_id=unused, drop=0.3, seed=2)
    out, new_lengths = Perturber(spec, VOCAB).apply(tokens, lengths)
    content = len(tokens) - len(lengths)
    assert len(new_lengths) == len(lengths) and new_lengths.min() >= 1
    assert new_lengths.sum() == len(out)
    assert np.all(out[ends(new_lengths)] == EOS), "every document still ends in its EOS where its length says"
    dropped = (len(tokens) - len(out)) / content
    assert abs(dropped - 0.3) < tolerance(0.3, content)
    remaining = len(out) - len(lengths)
    assert abs(np.count_nonzero(out == unused) / remaining - 0.2) < tolerance(0.2, remaining)
    assert np.all(new_lengths <= lengths)


def test_same_seed_same_output_and_batches_do_not_matter(verses):
    tokens, lengths = verses
    spec = PerturbSpec(epsilon=10.0, mask=0.1, mask_id=7, drop=0.1, seed=5)
    whole = Perturber(spec, VOCAB).apply(tokens, lengths)
    again = Perturber(spec, VOCAB).apply(tokens, lengths)
    other = Perturber(PerturbSpec(epsilon=10.0, mask=0.1, mask_id=7, drop=0.1, seed=6), VOCAB).apply(tokens, lengths)
    assert np.array_equal(whole[0], again[0]) and np.array_equal(whole[1], again[1])
    assert not np.array_equal(whole[0][:1000], other[0][:1000])


def test_spec_parsing_and_errors():
    spec = PerturbSpec.parse("krr=2.5, drop=0.1,seed=9")
    assert spec == PerturbSpec(epsilon=2.5, drop=0.1, seed=9)
    for bad, words in [
        ("mask=0.1", "mask_id"),
        ("drop=1.5", "probability"),
        ("krr=abc", "float"),
        ("size=3", "cannot read"),
        ("seed=1", "at least one"),
        ("krr=-1", ">= 0"),
    ]:
        with pytest.raises(PerturbError, match=words):
            PerturbSpec.parse(bad)
    with pytest.raises(PerturbError, match="outside the vocabulary"):
        Perturber(PerturbSpec(mask=0.5, mask_id=VOCAB), VOCAB)


def test_store_records_the_perturbation_and_does_not_depend_on_workers(tmp_path):
    corpus = write_kjv_chapters(tmp_path / "kjv.jsonl", limit=120)
    spec = PerturbSpec(epsilon=12.0, drop=0.05, seed=11)
    clean = store([corpus], "gpt2", tmp_path / "clean", StoreOptions(block_size=256, workers=1), progress=False)
    one = store(
        [corpus], "gpt2", tmp_path / "one", StoreOptions(block_size=256, workers=1, perturb=spec), progress=False
    )
    two = store(
        [corpus], "gpt2", tmp_path / "two", StoreOptions(block_size=256, workers=2, perturb=spec), progress=False
    )
    assert one.dataset_id == two.dataset_id != clean.dataset_id
    assert one.documents == clean.documents == 120 and one.tokens < clean.tokens

    tensor = DataTensor(tmp_path / "one")
    assert tensor.verify() == []
    record = tensor.manifest.provenance["perturb"]
    assert record["seed"] == 11 and record["krr"]["epsilon_per_token"] == "12.0" and record["krr"]["k"] == VOCAB
    assert record["drop"] == {"rate": "0.05"}
    assert "perturb" not in DataTensor(tmp_path / "clean").manifest.provenance
    starts = tensor.document_starts(0)
    stream = tensor.tokens()
    assert np.all(stream[starts[1:] - 1] == EOS) and stream[-1] == EOS
    assert stream.max() < VOCAB
