"""Recipe locks: `kogitune lock` pins a recipe to dataset IDs; DatasetRecipe.from_lock gives the same samples in
the same order wherever the data is now (a moved mirror, only the local content store)."""

import json
import os

os.environ.setdefault("KOGITUNE_READ_TIMEOUT", "2")

import numpy as np
import pytest
from conftest import BLOCK, PIECE, StoreOptions, store_quietly
from mirrors import mirrors

from kogitune.cli import main
from kogitune.content_store import ContentStore
from kogitune.errors import ManifestError
from kogitune.lock import read_lock
from kogitune.protocol.lock import LockedEntry, RecipeLock, lock_from_dict, parse_lock
from kogitune.recipe import DatasetRecipe

VECTOR_ID = "kg1-aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"


@pytest.fixture(scope="module")
def two_tensors(small_corpus, tmp_path_factory):
    """Two small tensors of different data (64-token blocks, shards of 64 KiB): one served by a mirror, one local."""
    root = tmp_path_factory.mktemp("lock")
    lines = small_corpus.read_bytes().splitlines(keepends=True)
    (root / "a.jsonl").write_bytes(b"".join(lines[:20]))
    (root / "b.jsonl").write_bytes(b"".join(lines[20:]))
    options = StoreOptions(block_size=BLOCK // 2, shard_size=PIECE, piece_size=PIECE, workers=1)
    return [store_quietly(root / f"{n}.jsonl", root / n, options).path for n in "ab"]


def samples(recipe: DatasetRecipe) -> np.ndarray:
    dataset = recipe.get_train_dataset()
    return np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))])


def test_a_lock_gives_the_same_samples_after_the_mirror_moved_and_from_the_store_alone(two_tensors, tmp_path):
    served, local = two_tensors
    first_store = ContentStore(tmp_path / "home")
    recipe_file, lock_file = tmp_path / "recipe.json", tmp_path / "recipe.lock.json"
    with mirrors(served, "ok") as (url,):
        recipe_file.write_text(json.dumps([f"{url}?tokens=20K", {"sources": [str(local)], "weight": 0.5}]))
        assert main(["lock", str(recipe_file), "-o", str(lock_file), "--home", str(first_store.home)]) == 0
        entries = json.loads(recipe_file.read_text())
        expected = samples(DatasetRecipe(entries, seed=3, store=first_store))  # fetches every shard into the store
    lock = read_lock(lock_file)
    assert [e.mirrors for e in lock.entries] == [(url,), ()]
    assert [e.tokens for e in lock.entries] == [20000, None] and lock.entries[1].weight == 0.5
    assert lock.entries[0].dataset_id != lock.entries[1].dataset_id
    assert lock.entries[1].path == str(local)
    with mirrors(served, "ok") as (moved,):  # the mirror moved: the lock lists its new URL; the ID stays
        data = json.loads(lock_file.read_text())
        data["entries"][0]["mirrors"] = [moved]
        lock_file.write_text(json.dumps(data))
        assert read_lock(lock_file).recipe_id == lock.recipe_id
        fresh = ContentStore(tmp_path / "fresh")
        np.testing.assert_array_equal(samples(DatasetRecipe.from_lock(lock_file, seed=3, store=fresh)), expected)
    # no mirror at all: the data is in the content store of the first run
    np.testing.assert_array_equal(samples(DatasetRecipe.from_lock(lock_file, seed=3, store=first_store)), expected)


def test_the_recipe_id_covers_ids_order_and_budgets_not_hints():
    other = "kg1-" + "b" * 51 + "a"
    base = RecipeLock((LockedEntry(VECTOR_ID, tokens=1000), LockedEntry(other, weight=0.5)))
    hinted = RecipeLock(
        (
            LockedEntry(VECTOR_ID, tokens=1000, mirrors=("https://x.example/a",)),
            LockedEntry(other, weight=0.5, path="/d"),
        )
    )
    assert base.recipe_id == hinted.recipe_id and base.recipe_id.startswith("kgr1-")
    assert RecipeLock(base.entries[::-1]).recipe_id != base.recipe_id
    assert RecipeLock((LockedEntry(VECTOR_ID, tokens=1001), base.entries[1])).recipe_id != base.recipe_id
    assert parse_lock(json.dumps(hinted.to_dict()).encode()) == hinted


def test_recipe_id_vector():
    """The vector of docs/format.md#recipe-locks."""
    lock = RecipeLock((LockedEntry(VECTOR_ID, tokens=1000000), LockedEntry(VECTOR_ID, weight=0.5)))
    assert lock.pinned_bytes() == (
        b'{"entries":[{"id":"'
        + VECTOR_ID.encode()
        + b'","tokens":1000000},{"id":"'
        + VECTOR_ID.encode()
        + b'","weight":"0.5"}],"format":"kogitune-lock/1"}'
    )
    assert lock.recipe_id == "kgr1-7rkfxmqwtgkt5dv65aubcnkpyyduiho2fdqwlutwda2uedh3eqpa"


@pytest.mark.parametrize(
    "entry",
    [
        {"id": "kg1-nope"},
        {"id": VECTOR_ID, "tokens": 1, "weight": "0.5"},
        {"id": VECTOR_ID, "tokens": 0},
        {"id": VECTOR_ID, "weight": 0.5},
        {"id": VECTOR_ID, "weight": "0.50"},
        {"id": VECTOR_ID, "mirrors": ["file:///etc"]},
        {"id": VECTOR_ID, "extra": 1},
    ],
)
def test_a_bad_lock_entry_is_refused(entry):
    with pytest.raises(ManifestError):
        lock_from_dict({"format": "kogitune-lock/1", "entries": [entry]})
