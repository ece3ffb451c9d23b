"""Reading a data tensor: verification down to the piece, the verification marks, blocks and the torch dataset."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import BLOCK, EOS_TEXT, PIECE, copy_tensor, expected_tokens, flip_byte, store_quietly, stored_tokens
from torch.utils.data import DataLoader

import kogitune.marks as marks_module
import kogitune.tensor as tensor_module
from kogitune.dataset import TokenBlockDataset
from kogitune.errors import IntegrityError, RecipeError, TokenizerError
from kogitune.layout import MANIFEST_FILE, MARKS_FILE
from kogitune.protocol.ids import dataset_id_from_digest, sha256
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, canonical_encoding
from kogitune.recipe import DatasetRecipe
from kogitune.tensor import DataTensor
from kogitune.tokenizer import load_tokenizer
from kogitune.write import StoreOptions


@pytest.fixture
def damaged(kjv_tensor, tmp_path):
    """A private copy of the main tensor, to be damaged."""
    return copy_tensor(kjv_tensor, tmp_path / "copy")


def problems_of(path) -> list[str]:
    return [str(p) for p in DataTensor(path).verify()]


def piece_problem(tensor: DataTensor, shard_index: int, offset: int) -> str:
    """The problem `verify` must report for a damaged byte at `offset` of a shard's tokens file."""
    shard = tensor.shards[shard_index]
    piece = offset // PIECE
    start, end = piece * PIECE, min((piece + 1) * PIECE, shard.size) - 1
    return f"shard {shard.name}: {shard.tokens_path}: piece {piece} (bytes {start}-{end}) does not match its hash"


# ---- the stored layout ------------------------------------------------------------------------------------------


def test_main_tensor_has_several_shards_of_several_pieces(kjv_tensor):
    """The layout the damage tests rely on: 3 shards; 3 pieces each (the last one short), 2 in the last shard."""
    m = kjv_tensor.manifest
    assert [m.pieces_in(s) for s in m.shards] == [3, 3, 2]
    assert [path.stat().st_size for path in sorted((kjv_tensor.path / "shards").glob("*.pieces"))] == [96, 96, 64]


def test_dataset_id_is_the_hash_of_the_canonical_manifest(kjv_tensor):
    """manifest.json is written pretty-printed; the ID hashes its canonical form."""
    on_disk = (kjv_tensor.path / MANIFEST_FILE).read_bytes()
    canonical = canonical_encoding(json.loads(on_disk))
    assert on_disk != canonical
    assert kjv_tensor.dataset_id == dataset_id_from_digest(sha256(canonical))


def test_blocks_are_the_stored_blocks(kjv_tensor):
    raw = stored_tokens(kjv_tensor).reshape(-1, BLOCK)
    assert len(raw) == kjv_tensor.manifest.blocks
    for index in range(len(raw)):
        np.testing.assert_array_equal(kjv_tensor.block(index), raw[index])
    for index in (-1, len(raw)):
        with pytest.raises(IndexError):
            kjv_tensor.block(index)


# ---- verify -----------------------------------------------------------------------------------------------------


def test_intact_tensor_verifies_and_is_marked(damaged):
    assert problems_of(damaged) == []
    marks = json.loads((damaged / MARKS_FILE).read_bytes())
    assert marks["dataset_id"] == DataTensor(damaged).dataset_id
    assert sorted(marks["shards"]) == ["00000", "00001", "00002"]


@pytest.mark.parametrize(
    "shard_index, offset",
    [(0, 0), (1, PIECE + 999), (0, -1), (2, PIECE), (2, -1)],
    ids=["first-byte", "middle-piece", "short-last-piece", "last-shard", "last-byte"],
)
def test_flipped_byte_is_named_by_shard_and_piece(kjv_tensor, damaged, shard_index, offset):
    """verify names exactly the damaged shard and piece, with the piece's byte range."""
    shard = kjv_tensor.shards[shard_index]
    offset %= shard.size
    flip_byte(damaged / shard.tokens_path, offset)
    assert problems_of(damaged) == [piece_problem(kjv_tensor, shard_index, offset)]


def test_several_damaged_pieces_are_all_named(kjv_tensor, damaged):
    flip_byte(damaged / "shards/00000.tokens", 5)
    flip_byte(damaged / "shards/00000.tokens", 2 * PIECE + 5)
    flip_byte(damaged / "shards/00002.tokens", PIECE + 5)
    assert problems_of(damaged) == [
        piece_problem(kjv_tensor, 0, 5),
        piece_problem(kjv_tensor, 0, 2 * PIECE + 5),
        piece_problem(kjv_tensor, 2, PIECE + 5),
    ]


@pytest.mark.parametrize(
    "change, found",
    [
        (lambda path: os.truncate(path, path.stat().st_size - 2), "has 163838 bytes, the manifest says 163840"),
        (lambda path: path.open("ab").write(b"\0\0"), "has 163842 bytes, the manifest says 163840"),
        (lambda path: path.unlink(), "missing"),
    ],
    ids=["truncated", "extended", "missing"],
)
def test_wrong_size_or_missing_shard_is_reported(damaged, change, found):
    change(damaged / "shards/00001.tokens")
    assert problems_of(damaged) == [
        f"shard 00001: shards/00001.tokens: {found}" + (" (truncated or extended)" if "bytes" in found else "")
    ]


def test_damaged_pieces_file_with_intact_tokens(damaged):
    flip_byte(damaged / "shards/00001.pieces", 40)
    assert problems_of(damaged) == [
        "shard 00001: shards/00001.pieces: missing or does not match the root in the manifest (the tokens are intact)"
    ]


def test_damaged_tokens_and_pieces_together(damaged):
    flip_byte(damaged / "shards/00000.pieces", 0)
    flip_byte(damaged / "shards/00000.tokens", 0)
    assert problems_of(damaged) == [
        "shard 00000: shards/00000.tokens: does not match the root in the manifest "
        "(and the .pieces file is damaged too)"
    ]


def test_damaged_docs_file(damaged):
    flip_byte(damaged / "shards/00002.docs", 3)
    assert problems_of(damaged) == ["shard 00002: shards/00002.docs: missing or does not match the manifest"]
    tensor = DataTensor(damaged)
    tensor.document_starts(1)
    with pytest.raises(IntegrityError, match="shard 00002: shards/00002.docs does not match the manifest"):
        tensor.document_starts(2)


def test_edited_manifest_is_a_different_tensor(kjv_tensor, damaged):
    """The manifest commits to every shard: editing a root gives another ID, and its shard no longer verifies."""
    manifest = json.loads((damaged / MANIFEST_FILE).read_bytes())
    manifest["shards"][1]["root"] = "0" * 64
    (damaged / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert DataTensor(damaged).dataset_id != kjv_tensor.dataset_id
    assert problems_of(damaged) == [
        "shard 00001: shards/00001.tokens: does not match the root in the manifest "
        "(and the .pieces file is damaged too)"
    ]


# ---- the verification marks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["tokens", "pieces", "docs"])
def test_opening_a_changed_shard_raises(damaged, suffix):
    """A verified shard whose file then changes on disk is hashed again when opened, and refused."""
    assert problems_of(damaged) == []  # every shard is now marked as verified
    flip_byte(damaged / f"shards/00001.{suffix}", 1)
    tensor = DataTensor(damaged)
    tensor.shard_tokens(0)
    with pytest.raises(IntegrityError, match=f"shard 00001: shards/00001.{suffix}"):
        tensor.shard_tokens(1)
    with pytest.raises(IntegrityError):
        DataTensor(damaged).tokens()


def test_verify_hashes_even_marked_shards_and_unmarks_damaged_ones(kjv_tensor, damaged):
    """Bit rot changes no size, mtime or inode, so the shard's verification mark still matches its files; verify
    hashes every piece regardless, and a shard it found damaged is not trusted on open any more."""
    assert problems_of(damaged) == []
    path = damaged / "shards/00001.tokens"
    before = path.stat()
    flip_byte(path, PIECE + 7)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert problems_of(damaged) == [piece_problem(kjv_tensor, 1, PIECE + 7)]
    with pytest.raises(IntegrityError, match="shard 00001"):
        DataTensor(damaged).shard_tokens(1)


def test_marks_for_another_dataset_id_vouch_for_nothing(damaged):
    """Marks recorded under another dataset ID (say, before the manifest was replaced) are not trusted, even
    when the files' size, mtime and inode still match them."""
    assert problems_of(damaged) == []
    path = damaged / "shards/00000.tokens"
    before = path.stat()
    flip_byte(path, 9)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    marks = json.loads((damaged / MARKS_FILE).read_bytes())
    marks["dataset_id"] = dataset_id_from_digest(bytes(32))
    (damaged / MARKS_FILE).write_text(json.dumps(marks))
    with pytest.raises(IntegrityError, match="shard 00000"):
        DataTensor(damaged).shard_tokens(0)


def test_a_shard_with_a_missing_file_and_no_mark_is_hashed_not_trusted(damaged):
    """With marks for the other shards only, a shard whose .docs is gone has no signature; that must not count
    as matching its (absent) mark: opening it hashes it and refuses it."""
    assert problems_of(damaged) == []
    marks = json.loads((damaged / MARKS_FILE).read_bytes())
    del marks["shards"]["00001"]
    (damaged / MARKS_FILE).write_text(json.dumps(marks))
    flip_byte(damaged / "shards/00001.tokens", 3)
    (damaged / "shards/00001.docs").unlink()
    with pytest.raises(IntegrityError, match="shard 00001"):
        DataTensor(damaged).shard_tokens(1)


@pytest.mark.parametrize("content", [b"[" * 100_000, b'{"shards": {"00000": ' + b"[" * 100 + b"]" * 100 + b"}}"])
def test_a_marks_file_nested_too_deep_vouches_for_nothing(kjv_tensor, damaged, content):
    """A marks file is written by any program of the user: nested too deep (RecursionError from json before, out
    of every open) it vouches for nothing, so the shards are hashed again, and a damaged one is found."""
    assert problems_of(damaged) == []
    path = damaged / "shards/00000.tokens"
    before = path.stat()
    flip_byte(path, 9)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    (damaged / MARKS_FILE).write_bytes(content)
    with pytest.raises(IntegrityError, match="shard 00000"):
        DataTensor(damaged).shard_tokens(0)
    assert DataTensor(damaged).shard_tokens(1) is not None


def test_a_marks_file_over_its_limit_is_not_read(damaged, monkeypatch):
    """Only MAX_MARKS_BYTES of a marks file are read: a longer one vouches for nothing (its shards are hashed)."""
    assert problems_of(damaged) == []
    marks = (damaged / MARKS_FILE).read_bytes()
    monkeypatch.setattr(marks_module, "MAX_MARKS_BYTES", len(marks) + 10)
    hashed = []
    digests = tensor_module.piece_digests
    monkeypatch.setattr(tensor_module, "piece_digests", lambda *args: hashed.append(1) or digests(*args))

    def opening_hashes() -> bool:
        marks_module._checked_here.clear()  # what this process checked itself is trusted without the file
        hashed.clear()
        DataTensor(damaged).shard_tokens(0)
        return bool(hashed)

    assert not opening_hashes()  # within the limit, the mark is trusted
    (damaged / MARKS_FILE).write_bytes(marks + b" " * 11)
    assert opening_hashes()


HUGE_MANIFEST = """
import resource, sys
from kogitune.errors import ManifestError
from kogitune.tensor import DataTensor
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    DataTensor(sys.argv[1])
except ManifestError as exc:
    print(exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10)
"""


def test_a_huge_manifest_file_is_refused_without_reading_it_all(tmp_path):
    """A manifest.json of 2 GiB (sparse here) is refused after MAX_MANIFEST_BYTES + 1 bytes (read whole before)."""
    (tmp_path / "t").mkdir()
    with open(tmp_path / "t" / MANIFEST_FILE, "wb") as f:
        f.truncate(2 << 30)
    result = subprocess.run(
        [sys.executable, "-c", HUGE_MANIFEST, str(tmp_path / "t")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    message, grown_mib = result.stdout.splitlines()
    assert int(grown_mib) < 4 * (MAX_MANIFEST_BYTES >> 20)
    assert f"{MANIFEST_FILE}: manifest has more than the limit of {MAX_MANIFEST_BYTES} bytes" in message


def test_only_the_last_shards_opened_stay_mapped(kjv_tensor, monkeypatch):
    """Each open memory map holds a file descriptor (and the disk space of a shard the cache evicted): a tensor
    keeps at most MAX_OPEN_SHARDS of them, and a shard opened again is the same data."""
    monkeypatch.setattr(tensor_module, "MAX_OPEN_SHARDS", 2)
    tensor = DataTensor(kjv_tensor.path)
    first = np.array(tensor.shard_tokens(0))
    for index in range(len(tensor.shards)):
        tensor.shard_tokens(index)
    assert list(tensor._arrays) == [len(tensor.shards) - 2, len(tensor.shards) - 1]
    np.testing.assert_array_equal(tensor.shard_tokens(0), first)
    assert list(tensor._arrays) == [len(tensor.shards) - 1, 0]


# ---- the torch dataset ------------------------------------------------------------------------------------------


def samples(dataset) -> np.ndarray:
    return np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))])


def sorted_rows(rows: np.ndarray) -> list[tuple]:
    return sorted(map(tuple, rows.tolist()))


def test_dataset_at_the_stored_block_size(kjv_tensor):
    """One sample per stored block; the last one ends in EOS padding."""
    dataset = DatasetRecipe(str(kjv_tensor.path)).get_train_dataset(shuffle=False)
    assert len(dataset) == kjv_tensor.manifest.blocks
    item = dataset[0]["input_ids"]
    assert item.dtype == torch.int64 and item.shape == (BLOCK,)
    np.testing.assert_array_equal(samples(dataset), stored_tokens(kjv_tensor).reshape(-1, BLOCK))


def test_dataset_at_a_divisor_block_size(kjv_tensor):
    """128 stored, 32 asked: 4 samples per stored block, each the next 32 tokens; none that is padding only."""
    dataset = DatasetRecipe(str(kjv_tensor.path)).get_train_dataset(block_size=32, shuffle=False)
    tokens = kjv_tensor.manifest.tokens
    assert len(dataset) == -(-tokens // 32) < 4 * kjv_tensor.manifest.blocks
    raw = stored_tokens(kjv_tensor)
    np.testing.assert_array_equal(samples(dataset), raw[: len(dataset) * 32].reshape(-1, 32))
    np.testing.assert_array_equal(
        np.concatenate([dataset[i]["input_ids"].numpy() for i in range(2800, 2804)]), kjv_tensor.block(700)
    )
    np.testing.assert_array_equal(dataset[-1]["input_ids"].numpy(), dataset[len(dataset) - 1]["input_ids"].numpy())
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_shuffled_dataset_is_a_permutation(kjv_tensor):
    """The default (shuffled) order holds the same samples, each once, in another order."""
    ordered = samples(DatasetRecipe(str(kjv_tensor.path)).get_train_dataset(block_size=64, shuffle=False))
    shuffled = samples(DatasetRecipe(str(kjv_tensor.path)).get_train_dataset(block_size=64))
    assert not np.array_equal(ordered, shuffled)
    assert sorted_rows(ordered) == sorted_rows(shuffled)


@pytest.mark.parametrize("block_size", [48, 100, 256])
def test_block_size_must_divide_the_stored_one(kjv_tensor, block_size):
    with pytest.raises(RecipeError, match=f"block size {block_size} does not divide the stored block size 128"):
        DatasetRecipe(str(kjv_tensor.path)).get_train_dataset(block_size=block_size)


@pytest.mark.parametrize("bad", [0, -32, 32.0, "32", True])
def test_block_size_must_be_a_positive_integer(kjv_tensor, bad):
    with pytest.raises(RecipeError, match="block_size must be a positive integer"):
        TokenBlockDataset([kjv_tensor], bad)


def test_bad_indexes_are_clear_errors(kjv_tensor):
    dataset = DatasetRecipe(str(kjv_tensor.path)).get_train_dataset(block_size=64)
    with pytest.raises(IndexError, match=f"sample {-len(dataset) - 1} is out of range"):
        dataset[-len(dataset) - 1]
    for bad in [slice(0, 2), [1, 2], "1", None, 1.0]:
        with pytest.raises(TypeError, match="a sample index is an integer"):
            dataset[bad]
    np.testing.assert_array_equal(dataset[np.int64(3)]["input_ids"], dataset[torch.tensor(3)]["input_ids"])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_persistent_workers_follow_set_epoch(kjv_tensor, context):
    """HF and accelerate call set_epoch on the dataset of the main process; persistent workers hold copies made
    before, and must still walk the new epoch's order, not the old one again."""
    dataset = DatasetRecipe(str(kjv_tensor.path)).get_train_dataset(block_size=64)
    loader = DataLoader(
        dataset, batch_size=256, num_workers=2, persistent_workers=True, multiprocessing_context=context
    )
    for epoch in range(3):
        dataset.set_epoch(epoch)
        seen = np.concatenate([batch["input_ids"].numpy() for batch in loader])
        reference = DatasetRecipe(str(kjv_tensor.path)).get_train_dataset(block_size=64)
        reference.set_epoch(epoch)
        np.testing.assert_array_equal(seen, samples(reference))


def test_dataloader_workers_see_every_sample_once(kjv_tensor):
    """Two spawned DataLoader workers unpickle the dataset (a DataTensor travels without its memory maps, and
    each worker maps the shards itself) and together yield every sample exactly once."""
    kjv_tensor.tokens()  # every shard is memory-mapped in this process
    assert len(pickle.dumps(kjv_tensor)) < 20_000 < kjv_tensor.shards[0].size
    dataset = DatasetRecipe(str(kjv_tensor.path)).get_train_dataset(block_size=32)
    loader = DataLoader(dataset, batch_size=64, num_workers=2, multiprocessing_context="spawn")
    seen = np.concatenate([batch["input_ids"].numpy() for batch in loader])
    expected = stored_tokens(kjv_tensor)[: len(dataset) * 32].reshape(-1, 32)
    assert sorted_rows(seen) == sorted_rows(expected)


# ---- several tensors --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_gpt2_tensor(small_corpus, tmp_path_factory) -> DataTensor:
    path = tmp_path_factory.mktemp("small-gpt2") / "kjv"
    return DataTensor(store_quietly(small_corpus, path, StoreOptions(block_size=64, workers=1)).path)


@pytest.fixture(scope="module")
def other_tokenizer_tensor(small_corpus, tiny_tokenizer, tmp_path_factory) -> DataTensor:
    """The small corpus stored with the tiny BPE tokenizer, named by its directory."""
    path = tmp_path_factory.mktemp("small-bpe") / "kjv"
    options = StoreOptions(block_size=64, workers=1)
    return DataTensor(store_quietly(small_corpus, path, options, tokenizer=str(tiny_tokenizer)).path)


def test_store_with_a_tokenizer_directory(other_tokenizer_tensor, tiny_tokenizer, small_texts):
    """A tokenizer given by path is recorded by name, id and fingerprint, and its EOS ends every document."""
    tokenizer = load_tokenizer(str(tiny_tokenizer))
    info = other_tokenizer_tensor.manifest.tokenizer
    assert (info.name, info.id, info.fingerprint) == ("kjvbpe", tokenizer.short_id, tokenizer.fingerprint)
    assert info.id.startswith("kjvbpe-") and info.vocab_size == tokenizer.vocab_size <= 400
    assert info.eos_id == tokenizer.backend.token_to_id(EOS_TEXT)
    tokens = other_tokenizer_tensor.tokens()
    np.testing.assert_array_equal(tokens, expected_tokens(tokenizer, small_texts))
    assert tokenizer.decode(tokens) == "".join(text + EOS_TEXT for text in small_texts)


def test_mixing_tokenizers_is_refused(kjv_tensor, other_tokenizer_tensor, gpt2):
    """A recipe cannot mix tensors of different tokenizers; the error names both."""
    recipe = DatasetRecipe([str(kjv_tensor.path), str(other_tokenizer_tensor.path)], block_size=64)
    with pytest.raises(TokenizerError) as caught:
        recipe.get_train_dataset()
    message = str(caught.value)
    for name in (
        gpt2.short_id,
        other_tokenizer_tensor.manifest.tokenizer.id,
        str(kjv_tensor.path),
        str(other_tokenizer_tensor.path),
    ):
        assert name in message


def test_tensors_of_one_tokenizer_make_one_dataset(kjv_tensor, small_gpt2_tensor):
    """Tensors of the same tokenizer (stored with other block sizes) concatenate at a common divisor."""
    dataset = DatasetRecipe([str(kjv_tensor.path), str(small_gpt2_tensor.path)]).get_train_dataset(
        block_size=64, shuffle=False
    )
    first = -(-kjv_tensor.manifest.tokens // 64)
    assert len(dataset) == first + -(-small_gpt2_tensor.manifest.tokens // 64)
    np.testing.assert_array_equal(dataset[first]["input_ids"].numpy(), small_gpt2_tensor.block(0))


# ---- budgets and mixing -----------------------------------------------------------------------------------------


def test_token_budgets_and_weights_set_each_sources_share(kjv_tensor, small_gpt2_tensor):
    """`?tokens=` repeats a small tensor (upsampling) and `weight` cuts a big one; the epoch holds exactly the
    budgeted samples of each, each sample of a source at most ceil(budget / its size) times, and `mixture`
    reports the realized counts."""
    natural_small = -(-small_gpt2_tensor.manifest.tokens // 64)
    natural_kjv = -(-kjv_tensor.manifest.tokens // 64)
    budget = 2 * natural_small * 64 + 640  # two copies and 10 more samples
    dataset = DatasetRecipe(
        [f"{small_gpt2_tensor.path}?tokens={budget}", {"sources": [str(kjv_tensor.path)], "weight": 0.25}]
    ).get_train_dataset(block_size=64)
    want_small, want_kjv = 2 * natural_small + 10, round(natural_kjv * 0.25)
    assert len(dataset) == want_small + want_kjv
    assert [(m.samples, m.natural_samples) for m in dataset.mixture] == [
        (want_small, natural_small),
        (want_kjv, natural_kjv),
    ]
    assert "3.00x" not in dataset.describe_mixture() and "0.25x its data" in dataset.describe_mixture()
    upsampled = Counter(
        map(
            tuple,
            samples(
                DatasetRecipe(f"{small_gpt2_tensor.path}?tokens={budget}").get_train_dataset(block_size=64)
            ).tolist(),
        )
    )
    small_rows = Counter(
        map(tuple, samples(DatasetRecipe(str(small_gpt2_tensor.path)).get_train_dataset(block_size=64)).tolist())
    )
    assert sum(upsampled.values()) == want_small and upsampled.keys() == small_rows.keys()
    assert all(2 * small_rows[row] <= count <= 3 * small_rows[row] for row, count in upsampled.items())
    cut = Counter(
        map(tuple, samples(DatasetRecipe(f"{kjv_tensor.path}?weight=0.25").get_train_dataset(block_size=64)).tolist())
    )
    kjv_rows = Counter(map(tuple, stored_tokens(kjv_tensor)[: natural_kjv * 64].reshape(-1, 64).tolist()))
    assert sum(cut.values()) == want_kjv and all(count <= kjv_rows[row] for row, count in cut.items())


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{path}?tokens=0", "leaves nothing to train on"),
        ("{path}?weight=0", "must be a positive number"),
        ("{path}?weight=-1", "must be a positive number"),
        ("{path}?weight=nan", "must be a positive number"),
        ("{path}?weight=inf", "must be a positive number"),
        ("{path}?weight=1e400", "must be a positive number"),
        ("{path}?weight=x", "is not a number"),
        ("{path}?tokens=1M&tokens=5", "tokens is given twice"),
        ("{path}?tokens=1M&weight=2", "give tokens or weight, not both"),
    ],
)
def test_bad_budgets_are_recipe_errors(kjv_tensor, entry, message):
    with pytest.raises(RecipeError, match=message):
        DatasetRecipe(entry.format(path=kjv_tensor.path))


def test_a_dict_entry_with_none_budgets_takes_the_data_as_it_is(kjv_tensor):
    dataset = DatasetRecipe([{"sources": [str(kjv_tensor.path)], "tokens": None, "weight": None}]).get_train_dataset()
    assert len(dataset) == kjv_tensor.manifest.blocks
