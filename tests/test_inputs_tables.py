"""Inputs that teams hold: Parquet files, HF `datasets` saved to disk, directories and globs, a chosen text column.

The same text stores the same tokens whatever holds it: a row is read as the JSON line of its text.
"""

from __future__ import annotations

import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import OPTIONS, store_quietly, write_texts

from kogitune.cli import main
from kogitune.errors import BadInputError
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions
from kogitune.write.inputs import expand_inputs


def shard_contents(tensor: DataTensor) -> list[tuple[str, str]]:
    return [(s.root, s.docs_sha256) for s in tensor.shards]


@pytest.fixture(scope="module")
def texts(small_texts) -> list[str]:
    return small_texts[:60] + ["", "naïve — 日本語 text"]


def test_parquet_and_datasets_store_the_tokens_of_the_same_jsonl(tmp_path, texts):
    import datasets

    jsonl = store_quietly(write_texts(tmp_path / "t.jsonl", texts), tmp_path / "from-jsonl")
    table = pa.table({"id": list(range(len(texts))), "body": texts})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=7)
    body = StoreOptions(**{**vars(OPTIONS), "text_key": "body"})
    parquet = store_quietly(tmp_path / "t.parquet", tmp_path / "from-parquet", body)
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "hf"), num_shards=2)
    hf = store_quietly(tmp_path / "hf", tmp_path / "from-hf", body)
    expected = shard_contents(DataTensor(jsonl.path))
    for report in (parquet, hf):
        assert shard_contents(DataTensor(report.path)) == expected
        assert (report.documents, report.tokens, report.empty_documents) == (jsonl.documents, jsonl.tokens, 1)
    # the dataset IDs differ only by the provenance: the input files' names, sizes and hashes
    assert [i["name"] for i in DataTensor(hf.path).manifest.provenance["inputs"]] == [
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
    ]


def test_directories_and_globs_expand_in_sorted_order(tmp_path, texts):
    for name in ("b.jsonl", "a.jsonl", "sub/c.jsonl.gz"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    (tmp_path / "in" / "notes.txt").write_text("not an input")
    root = tmp_path / "in"
    assert expand_inputs([root]) == [root / "a.jsonl", root / "b.jsonl", root / "sub/c.jsonl.gz"]
    assert expand_inputs([f"{root}/*.jsonl", root / "a.jsonl"]) == [
        root / "a.jsonl",
        root / "b.jsonl",
        root / "a.jsonl",
    ]
    with pytest.raises(BadInputError, match="no file matches"):
        expand_inputs([f"{root}/*.parquet"])


def test_bad_columns_are_clear_errors(tmp_path, capsys):
    pq.write_table(pa.table({"n": [1, 2], "text": ["a", None]}), tmp_path / "t.parquet")
    for key, message in (
        ("body", "has no column 'body' (columns: n, text)"),
        ("n", "column 'n' holds int64, not text"),
    ):
        code = main(["store", str(tmp_path / "t.parquet"), "-o", str(tmp_path / "out"), "--text-key", key, "-q"])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
    with pytest.raises(BadInputError, match="t.parquet, row 2: 'text' is NoneType, not a string"):
        store_quietly(tmp_path / "t.parquet", tmp_path / "out")
    skip = StoreOptions(**{**vars(OPTIONS), "skip_bad_lines": True})
    assert store_quietly(tmp_path / "t.parquet", tmp_path / "out", skip).bad_lines == 1


def test_a_row_longer_than_the_limit_is_a_bad_row(tmp_path):
    pq.write_table(pa.table({"text": ["short", "x" * 5000, "also short"]}), tmp_path / "t.parquet")
    limited = StoreOptions(**{**vars(OPTIONS), "max_document_bytes": 1000})
    with pytest.raises(BadInputError, match="row 2: 5,012 bytes, longer than the maximum document size"):
        store_quietly(tmp_path / "t.parquet", tmp_path / "out", limited)


def test_without_pyarrow_the_error_says_what_to_install(tmp_path, monkeypatch):
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "t.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed: `import pyarrow` fails
    with pytest.raises(BadInputError, match=r"needs pyarrow: pip install 'kogitune\[parquet\]'"):
        store_quietly(tmp_path / "t.parquet", tmp_path / "out")


def test_a_datasets_dict_names_its_splits(tmp_path):
    import datasets

    split = datasets.Dataset.from_dict({"text": ["a"]})
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(BadInputError, match="holds several splits \\(test, train\\); give one"):
        expand_inputs([tmp_path / "dd"])


def test_an_arrow_file_in_either_ipc_format(tmp_path, texts):
    """HF datasets write the IPC stream format; an IPC file (random access) is read too; a damaged table is named."""
    table = pa.table({"text": texts})
    with pa.ipc.new_file(tmp_path / "t.arrow", table.schema) as writer:
        writer.write_table(table)
    reference = store_quietly(write_texts(tmp_path / "t.jsonl", texts), tmp_path / "from-jsonl")
    stored = store_quietly(tmp_path / "t.arrow", tmp_path / "from-arrow")
    assert shard_contents(DataTensor(stored.path)) == shard_contents(DataTensor(reference.path))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(BadInputError, match="bad.parquet: cannot be read as Parquet"):
        store_quietly(tmp_path / "bad.parquet", tmp_path / "out")
