"""Published recipe locks: on the DHT under their recipe ID, refused unless they hash to it, and opened by
`DatasetRecipe(["kgr1-..."])` on another machine (a node's daemon, or a training process with no daemon) with the
same samples in the same order as the lock file."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import BLOCK, PIECE, StoreOptions, store_quietly
from netnodes import ENV

from kogitune.errors import IntegrityError, ManifestError
from kogitune.lock import read_lock
from kogitune.protocol.lock import (
    MAX_PUBLISHED_LOCK_BYTES,
    LockedEntry,
    RecipeLock,
    lock_key,
    parse_published_lock,
    published_lock_bytes,
)
from kogitune.recipe import DatasetRecipe

VECTOR_ID = "kg1-aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"
TRAIN_SCRIPT = """
import sys
import numpy as np
from kogitune.recipe import DatasetRecipe
dataset = DatasetRecipe([sys.argv[1]], seed=1).get_train_dataset()
np.save(sys.argv[2], np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))]))
"""


def test_the_validator_accepts_only_the_lock_that_hashes_to_its_key():
    from kogitune.node.locks import lock_validator

    lock = RecipeLock((LockedEntry(VECTOR_ID, tokens=1000),))
    other = RecipeLock((LockedEntry(VECTOR_ID, tokens=1001),))
    validator, key = lock_validator(), lock_key(lock.recipe_id)
    assert key == "/kogitune-lock/" + lock.recipe_id
    validator.validate(key, published_lock_bytes(lock))
    assert parse_published_lock(published_lock_bytes(lock), lock.recipe_id) == lock
    for refused in (published_lock_bytes(other), json.dumps(lock.to_dict()).encode(), b"junk"):
        with pytest.raises(IntegrityError):  # another lock, the same lock laid out otherwise, anything else
            validator.validate(key, refused)
    with pytest.raises(ManifestError):
        validator.validate(key, b" " * (MAX_PUBLISHED_LOCK_BYTES + 1))
    with pytest.raises(ManifestError):  # a key that is no recipe ID
        lock_key("kg1-nope")


@pytest.fixture(scope="module")
def tensor(small_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("published-lock")
    options = StoreOptions(block_size=BLOCK // 2, shard_size=PIECE, piece_size=PIECE, workers=1)
    return store_quietly(small_corpus, root / "kjv", options).path


def samples(recipe: DatasetRecipe) -> np.ndarray:
    dataset = recipe.get_train_dataset()
    return np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))])


def test_a_published_lock_gives_the_same_samples_on_another_machine(nodes, tensor, tmp_path, monkeypatch):
    a = nodes("a")
    b = nodes("b", [a.address])
    a.cli("publish", str(tensor))
    recipe, lock = tmp_path / "recipe.json", tmp_path / "recipe.lock.json"
    recipe.write_text(json.dumps([f"{tensor}?tokens=20K"]))
    recipe_id = a.cli("lock", str(recipe), "-o", str(lock)).stdout.strip()
    assert a.cli("publish", str(lock)).stdout.strip() == recipe_id == read_lock(lock).recipe_id
    expected = samples(DatasetRecipe.from_lock(lock, seed=1))  # the lock's local directory
    # a training process on B's machine: B's daemon fetches the lock from the DHT, then the data from A
    monkeypatch.setenv("KOGITUNE_HOME", str(b.home))
    np.testing.assert_array_equal(samples(DatasetRecipe([recipe_id], seed=1)), expected)
    beside = DatasetRecipe([recipe_id, str(tensor)]).entries  # a recipe ID among other entries: its lock's entries
    assert [(e.dataset_id, e.tokens) for e in beside] == [(read_lock(lock).entries[0].dataset_id, 20000), (None, None)]
    # a training process with no daemon: its embedded node, bootstrapped through B
    out = tmp_path / "seen.npy"
    env = {**ENV, "KOGITUNE_HOME": str(tmp_path / "trainer"), "KOGITUNE_BOOTSTRAP": b.address}
    subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, recipe_id, str(out)], check=True, env=env, timeout=120)
    np.testing.assert_array_equal(np.load(out), expected)
    unknown = RecipeLock((LockedEntry(VECTOR_ID, tokens=7),)).recipe_id
    with pytest.raises(Exception, match="no published lock"):
        DatasetRecipe([unknown])
