"""Dataset names: signed, versioned records (vectors, forgeries, older versions) and, across 3 node processes, a
name that moves to a new version while a lock keeps the old one."""

import json

import numpy as np
import pytest
from conftest import BLOCK, PIECE, StoreOptions, store_quietly

from kogitune.content_store import ContentStore
from kogitune.errors import IntegrityError, ManifestError
from kogitune.lock import read_lock
from kogitune.protocol.names import (
    name_payload,
    parse_record,
    record_key,
    select_record,
    sign_name,
)
from kogitune.recipe import DatasetRecipe

SEED, OTHER_SEED = bytes([1]) * 32, bytes([2]) * 32
PEER = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"
NAME = PEER + "/wiki2023_tiny"
VECTOR_ID = "kg1-aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"
OTHER_ID = "kg1-" + "b" * 51 + "a"


def test_name_record_vector():
    """The vector of docs/protocol.md#names."""
    assert record_key(NAME) == "/kogitune-name/" + NAME
    assert name_payload(NAME, 1, VECTOR_ID).hex() == (
        "6b6f676974756e652f6e616d652f763100313244334b6f6f574b3939566f56784e4537587a79427758457a573778684b374770"
        "76383572394633563366794b53554b5048352f77696b69323032335f74696e79000000000000000001000102030405060708090a"
        "0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    )
    record = sign_name(SEED, NAME, 1, VECTOR_ID)
    assert record.signature.hex() == (
        "747b39e87633f8057ae8fc569d8fbf48c17f4dae8c33058c4ab0665c107365155376ceff983a0665b6a5da407ed1e126ab52c97931"
        "06dad06ab79290b5670604"
    )
    assert record.to_bytes() == (
        b'{"format":"kogitune-name/1","name":"'
        + NAME.encode()
        + b'","seq":1,"signature":"'
        + record.signature.hex().encode()
        + b'","value":"'
        + VECTOR_ID.encode()
        + b'"}'
    )
    assert parse_record(record.to_bytes(), NAME) == record


def test_a_forged_record_is_refused():
    forged = sign_name(OTHER_SEED, NAME, 5, OTHER_ID)  # another key signs PEER's name
    with pytest.raises(IntegrityError):
        parse_record(forged.to_bytes(), NAME)
    honest = json.loads(sign_name(SEED, NAME, 5, VECTOR_ID).to_bytes())
    honest["value"] = OTHER_ID  # the pointer changed after signing
    with pytest.raises(IntegrityError):
        parse_record(json.dumps(honest).encode(), NAME)
    with pytest.raises(ManifestError):  # a valid record of another name under this key
        parse_record(sign_name(SEED, PEER + "/other", 5, VECTOR_ID).to_bytes(), NAME)


def test_the_newest_record_wins_and_the_node_refuses_forged_and_older_ones():
    from kogitune.node.names import name_validator

    old, new = sign_name(SEED, NAME, 1, VECTOR_ID), sign_name(SEED, NAME, 2, OTHER_ID)
    assert select_record([old, new]) == 1 and select_record([new, old]) == 0
    validator, key = name_validator(), record_key(NAME)
    validator.validate(key, new.to_bytes())
    with pytest.raises(IntegrityError):
        validator.validate(key, sign_name(OTHER_SEED, NAME, 9, OTHER_ID).to_bytes())
    assert validator.select(key, [new.to_bytes(), old.to_bytes()]) == 0  # a PUT of the older one is refused
    forged = sign_name(OTHER_SEED, NAME, 9, OTHER_ID).to_bytes()
    assert validator.select(key, [old.to_bytes(), forged]) == 0


@pytest.fixture(scope="module")
def versions(small_corpus, tmp_path_factory):
    """Two versions of a small dataset (different data)."""
    root = tmp_path_factory.mktemp("versions")
    lines = small_corpus.read_bytes().splitlines(keepends=True)
    (root / "v1.jsonl").write_bytes(b"".join(lines[:12]))
    (root / "v2.jsonl").write_bytes(b"".join(lines[12:24]))
    options = StoreOptions(block_size=BLOCK // 2, shard_size=PIECE, piece_size=PIECE, workers=1)
    return [store_quietly(root / f"{v}.jsonl", root / v, options).path for v in ("v1", "v2")]


def samples(recipe: DatasetRecipe) -> np.ndarray:
    dataset = recipe.get_train_dataset()
    return np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))])


def test_a_name_moves_to_a_new_version_while_a_lock_keeps_the_old(nodes, versions, tmp_path):
    v1, v2 = versions
    a = nodes("a")
    b, c = nodes("b", [a.address]), nodes("c", [a.address])
    v1_id = a.cli("publish", str(v1), "--name", "tiny").stdout.split()[0]
    name = f"{a.peer_id}/tiny"
    recipe, lock = tmp_path / "recipe.json", tmp_path / "recipe.lock.json"
    recipe.write_text(json.dumps([name]))
    b.cli("lock", str(recipe), "-o", str(lock))
    assert [(e.dataset_id, e.name) for e in read_lock(lock).entries] == [(v1_id, name)]
    published = a.cli("publish", str(v2), "--name", "tiny").stdout.split()
    v2_id = published[0]
    assert v2_id != v1_id and published[1:3] == ["name", name]
    assert c.cli("resolve", name).stdout.strip() == v2_id
    assert a.cli("resolve", "tiny").stdout.strip() == v2_id  # a bare name: one of the node's own
    b.cli("get", v1_id)
    locked = samples(DatasetRecipe.from_lock(lock, seed=1, store=ContentStore(b.home)))
    np.testing.assert_array_equal(locked, samples(DatasetRecipe([str(v1)], seed=1)))
    missing = c.cli("resolve", f"{a.peer_id}/nothing", check=False)
    assert missing.returncode == 2 and "no record" in missing.stderr
