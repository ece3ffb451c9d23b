"""Keep lists: `kogitune filter --parts N --keep-lists` writes only the decisions, and `kogitune store --keep-lists`
applies them while it tokenizes; the documents and tokens stored are those of storing the sequential filter's
output."""

import json

import numpy as np
import pytest
from test_filter_stages import PIPELINE
from test_filter_stages import dedup_inputs as dedup_inputs  # a fixture

from kogitune.cli import main
from kogitune.errors import FilterError
from kogitune.filters.run import FilterOptions, filter_files
from kogitune.filters.staged_run import filter_in_stages
from kogitune.tensor import DataTensor
from kogitune.write import store
from kogitune.write.parts import store_part

CHANGES_TEXTS = {"filters": [*PIPELINE["filters"][:3], {"name": "whitespace"}, *PIPELINE["filters"][3:]]}
"""The staged filter tests' pipeline, with a filter that changes the texts of the double-spaced copies."""
QUALITY_ONLY = {
    "filters": [
        {"name": "length", "min_chars": 60},
        {"name": "exact_dedup"},
        {"name": "minhash_dedup", "bands": 20, "rows": 3, "ngram": 3},
    ]
}


def documents_and_tokens(path):
    """(documents, all tokens) of a tensor, or of a collection's parts in order (each document ends with EOS)."""
    parts = path / "parts"
    tensors = (
        [DataTensor(parts / p) for p in sorted(p.name for p in parts.iterdir())]
        if parts.is_dir()
        else [DataTensor(path)]
    )
    return sum(t.manifest.documents for t in tensors), np.concatenate([t.tokens() for t in tensors]).tobytes()


@pytest.fixture(scope="module", params=[CHANGES_TEXTS, QUALITY_ONLY], ids=["changes-texts", "keeps-texts"])
def stored_sequentially(request, dedup_inputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sequential")
    filter_files(dedup_inputs, folder / "out.jsonl", request.param, FilterOptions(workers=1), progress=False)
    store(folder / "out.jsonl", "gpt2", folder / "tensor", progress=False, workers=1, shard_size=64 << 10)
    return request.param, documents_and_tokens(folder / "tensor")


def test_a_whole_store_with_keep_lists_stores_what_the_filtered_jsonl_stores(
    dedup_inputs, stored_sequentially, tmp_path
):
    config, expected = stored_sequentially
    report = filter_in_stages(dedup_inputs, tmp_path / "kept", config, parts=3, buckets=2, keep_lists=True)
    assert not list((tmp_path / "kept").glob("part-*.jsonl"))
    lists = json.loads((tmp_path / "kept" / "keep-lists.json").read_text())
    assert lists["refilter"] is (config == CHANGES_TEXTS)
    assert sum(p["kept"] for p in lists["parts"]) == report.kept
    stored = store(
        dedup_inputs,
        "gpt2",
        tmp_path / "tensor",
        progress=False,
        workers=1,
        shard_size=64 << 10,
        keep_lists=tmp_path / "kept",
    )
    assert documents_and_tokens(tmp_path / "tensor") == expected
    provenance = DataTensor(tmp_path / "tensor").manifest.provenance
    assert provenance["keep_lists"]["sha256"] and stored.filtered_documents > 0
    # the same keep lists, as 3 store tasks merged into a collection (the CLI, as a Slurm array task runs it)
    for task in (2, 0, 1):
        part = tmp_path / "parts" / str(task)
        assert main(["store", *map(str, dedup_inputs), "--task", f"{task}/3", "-o", str(part), "--keep-lists",
                     str(tmp_path / "kept"), "--workers", "1", "--shard-size", "0.0625", "-q"]) == 0  # fmt: skip
    assert main(["merge", *(str(tmp_path / "parts" / str(t)) for t in range(3)), "-o", str(tmp_path / "coll")]) == 0
    assert documents_and_tokens(tmp_path / "coll") == expected


def test_keep_lists_of_other_inputs_or_another_split_are_refused(dedup_inputs, tmp_path):
    config = {"filters": [{"name": "exact_dedup"}]}
    filter_in_stages(dedup_inputs, tmp_path / "kept", config, parts=3, keep_lists=True)
    with pytest.raises(FilterError, match="of 3 parts"):
        store_part(dedup_inputs, (0, 2), tmp_path / "p", "gpt2", progress=False, keep_lists=str(tmp_path / "kept"))
    with pytest.raises(FilterError, match="other inputs"):
        store(dedup_inputs[:1], "gpt2", tmp_path / "t", progress=False, keep_lists=str(tmp_path / "kept"))
    with pytest.raises(FilterError, match="text key"):
        store(dedup_inputs, "gpt2", tmp_path / "t", progress=False, text_key="id", keep_lists=str(tmp_path / "kept"))
    keep = tmp_path / "kept" / "keep" / "part-00001.u64"
    keep.write_bytes(keep.read_bytes()[:-8])
    with pytest.raises(FilterError, match="not the keep list"):
        store(dedup_inputs, "gpt2", tmp_path / "t", progress=False, keep_lists=str(tmp_path / "kept"))
