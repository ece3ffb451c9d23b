"""Parts and collections: `store --task I/N`, `merge`, and a collection opened as one dataset.

One collection ID whether the parts ran in this process or as separate task processes in any order, or again
after a task was killed; its samples are those of one whole store of the same inputs, in order.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import OPTIONS, PARTS_FLAGS, cli, store_quietly

from kogitune.cli import main
from kogitune.collection import DataCollection, open_local
from kogitune.errors import BadInputError, TensorError
from kogitune.protocol.collection import MAX_PARTS, Collection, parse_collection
from kogitune.protocol.errors import ManifestError
from kogitune.protocol.ids import dataset_id_from_digest
from kogitune.recipe import DatasetRecipe
from kogitune.write.parts import merge, split_inputs, store_part


def test_the_split_reads_every_input_once_in_order(parts_inputs):
    split = split_inputs(parts_inputs, 4)
    assert split == split_inputs(parts_inputs, 4)  # deterministic
    assert [[(s.path.name, s.start, s.stop) for s in spans] for spans in split] == [
        [("c.parquet", 0, 3)],
        [("c.parquet", 3, 4), ("a.jsonl", 0, 35119)],
        [("a.jsonl", 35119, 83536)],
        [("a.jsonl", 83536, None), ("b.jsonl.gz", 0, None)],
    ]
    assert {parts_inputs[1].read_bytes()[cut - 1 : cut] for cut in (35119, 83536)} == {b"\n"}  # cut at line starts
    with pytest.raises(BadInputError, match="cannot be split into 2 parts"):
        split_inputs(parts_inputs[2:], 2)


def test_tasks_in_any_order_make_the_collection_of_one_run(parts_inputs, parts_collection, tmp_path):
    order = [2, 0, 3, 1]
    tasks = [
        subprocess.Popen(cli("store", *parts_inputs, "--task", f"{i}/4", "-o", tmp_path / f"t{i}", *PARTS_FLAGS))
        for i in order
    ]
    assert [task.wait(timeout=120) for task in tasks] == [0] * 4
    report = merge([tmp_path / f"t{i}" for i in order], tmp_path / "coll")
    assert report.dataset_id == parts_collection.dataset_id
    assert DataCollection(tmp_path / "coll").collection == parts_collection.collection


def test_the_samples_are_those_of_one_whole_store(parts_inputs, parts_collection, tmp_path):
    whole = store_quietly(parts_inputs, tmp_path / "whole")
    assert np.array_equal(parts_collection.tokens(), open_local(whole.path).tokens())
    recipe = DatasetRecipe([str(parts_collection.path)], shuffle=False)
    dataset = recipe.get_train_dataset(block_size=64)
    samples = np.concatenate([dataset[i]["input_ids"].numpy() for i in range(len(dataset))])
    parts = [
        np.concatenate([p.shard_tokens(s)[: -(-n // 64) * 64] for s, n in enumerate(p.shard_token_counts())])
        for p in parts_collection.parts
    ]
    assert np.array_equal(samples, np.concatenate(parts))


def test_a_task_killed_midway_and_run_again_makes_the_same_part(kjv_corpus, tmp_path):
    reference = store_part(kjv_corpus, (0, 2), tmp_path / "reference", "gpt2", OPTIONS, progress=False)
    part = tmp_path / "part"
    task = subprocess.Popen(cli("store", kjv_corpus, "--task", "0/2", "-o", part, *PARTS_FLAGS, "--workers", "1"))
    deadline = time.monotonic() + 60
    while not (part.with_name("part.partial") / "shards").exists() and task.poll() is None:
        assert time.monotonic() < deadline, "the task never started writing"
        time.sleep(0.005)
    task.send_signal(signal.SIGKILL)
    assert task.wait(timeout=30) == -signal.SIGKILL and not part.exists()
    again = store_part(kjv_corpus, (0, 2), part, "gpt2", OPTIONS, progress=False)
    assert again.dataset_id == reference.dataset_id


def test_a_collection_in_info_verify_head(parts_collection, capsys):
    capsys.readouterr()
    assert main(["info", str(parts_collection.path)]) == 0
    out = capsys.readouterr().out
    assert f"dataset id  {parts_collection.dataset_id}" in out and "parts       4: kg1-" in out
    assert main(["verify", str(parts_collection.path)]) == 0
    assert parts_collection.dataset_id in capsys.readouterr().out
    assert main(["head", str(parts_collection.path), "-n", "1"]) == 0
    assert "--- block 0 ---" in capsys.readouterr().out


def test_merge_refuses_an_incomplete_split(parts_inputs, parts_collection, tmp_path):
    parts = [parts_collection.path / "parts" / f"{i:05d}" for i in (0, 2, 3)]
    with pytest.raises(TensorError, match=r"all 4 parts of the split exactly once; missing or repeated: \[1\]"):
        merge(parts, tmp_path / "coll")


def test_a_part_that_is_not_the_one_named_is_refused(parts_collection, tmp_path):
    out = tmp_path / "coll"
    merge([parts_collection.path / "parts" / f"{i:05d}" for i in range(4)], out)
    (out / "parts" / "00001").unlink()
    (out / "parts" / "00001").symlink_to((parts_collection.path / "parts" / "00002").resolve())
    with pytest.raises(TensorError, match="but the collection names kg1-.* as part 1"):
        DataCollection(out)


def test_collection_test_vector():
    """docs/format.md#collections: two parts, the first the protocol's test dataset."""
    example = "kg1-t43i2wyjlzjobvj4yxxwmt46clslo5f6krknpqkk3fo4hrcw7ega"
    collection = Collection((dataset_id_from_digest(bytes(range(32))), example))
    assert collection.canonical_bytes() == (
        b'{"format":"kogitune-collection/1","parts":["kg1-aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq",'
        b'"kg1-t43i2wyjlzjobvj4yxxwmt46clslo5f6krknpqkk3fo4hrcw7ega"]}'
    )
    assert collection.dataset_id == "kg1-benzfin6ttgpozshflh4ss4b4wa3zk6mge5nzlpyext2rugwfgsq"
    assert parse_collection(json.dumps(collection.to_dict(), indent=3).encode()) == collection


@pytest.mark.parametrize(
    "obj, message",
    [
        ([], "a JSON object"),
        ({"format": "kogitune-collection/1"}, "exactly the fields format and parts"),
        ({"format": "kogitune-collection/2", "parts": ["kg1-" + "a" * 52]}, "unknown collection format"),
        ({"format": "kogitune-collection/1", "parts": []}, "1 to 65536"),
        ({"format": "kogitune-collection/1", "parts": ["kg1-" + "a" * 52] * 2}, "names a part twice"),
        ({"format": "kogitune-collection/1", "parts": ["kg1-nope"]}, "part 0 of the collection is not a dataset ID"),
        ({"format": "kogitune-collection/1", "parts": [f"kg1-{'a' * 51}a"] * (MAX_PARTS + 1)}, "1 to 65536"),
    ],
)
def test_collection_manifests_are_bounded(obj, message):
    with pytest.raises(ManifestError, match=message):
        parse_collection(json.dumps(obj).encode())
    with pytest.raises(ManifestError, match="repeats a key"):
        parse_collection(b'{"format": "kogitune-collection/1", "format": 1, "parts": []}')
    with pytest.raises(ManifestError, match="at most"):
        parse_collection(b" " * (9 << 20))
