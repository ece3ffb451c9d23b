"""The public API at the top of the package: `from kogitune import DatasetRecipe, store, filter, verify`, imported
lazily, and the names the original Kogitune's users call (kogitune.trainers.DatasetRecipe, kogitune.cli.store_cli)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import flip_byte

import kogitune
from kogitune.errors import BadInputError, KogituneError, TensorError

HEAVY = ("torch", "transformers", "trio", "libp2p", "numpy", "tokenizers")


def fresh_python(code: str) -> str:
    """Run `code` in a new interpreter and return its standard output."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_kogitune_loads_no_heavy_package():
    loaded = fresh_python(
        f"import sys, kogitune\nprint(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    ).split()
    assert loaded == []


def test_public_names_resolve_without_torch_or_the_network_stack():
    """Every name of __all__ resolves; none of them needs torch, trio or libp2p to be imported."""
    loaded = fresh_python(
        "import sys, kogitune\n"
        "for name in kogitune.__all__: getattr(kogitune, name)\n"
        "from kogitune import DatasetRecipe, filter, store, verify\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'trio', 'libp2p'))))"
    ).split()
    assert loaded == []
    for name in kogitune.__all__:
        assert getattr(kogitune, name) is not None, name
    assert set(kogitune.__all__) <= set(dir(kogitune))
    with pytest.raises(AttributeError):
        kogitune.no_such_name  # noqa: B018


def test_store_is_the_function_after_every_submodule_is_imported():
    """No submodule of kogitune is named like a public function: importing one would replace the attribute."""
    import kogitune.cli
    import kogitune.write.job

    for name in ("store", "filter", "verify"):
        assert callable(getattr(kogitune, name)) and not isinstance(getattr(kogitune, name), type(kogitune)), name
    assert kogitune.store is kogitune.write.job.store
    assert issubclass(kogitune.errors.BadInputError, kogitune.KogituneError)


def test_old_names_still_work():
    from kogitune.cli import filter_cli, main, store_cli
    from kogitune.trainers import DatasetRecipe

    assert DatasetRecipe is kogitune.DatasetRecipe
    assert callable(store_cli) and callable(filter_cli) and callable(main)


def test_store_filter_and_verify_read_like_prose(small_corpus, tmp_path):
    cleaned = tmp_path / "clean.jsonl"
    filtered = kogitune.filter(
        small_corpus, cleaned, {"filters": [{"name": "nfkc"}]}, progress=False, workers=1, examples=1
    )
    assert filtered.kept > 0 and cleaned.is_file()

    report = kogitune.store(
        cleaned, "gpt2", tmp_path / "tensor", block_size=64, shard_size=64 << 10, workers=1, progress=False
    )
    assert report.shards > 1 and report.dataset_id.startswith("kg1-")
    assert kogitune.verify(report.path) == []
    assert kogitune.verify(kogitune.DataTensor(report.path)) == []
    again = kogitune.store(cleaned, "gpt2", tmp_path / "tensor", progress=False)
    assert again.already_stored and again.dataset_id == report.dataset_id

    home = tmp_path / "home"
    held = home / "datasets" / report.dataset_id
    shutil.copytree(report.path, held)
    assert kogitune.verify(report.dataset_id, home=home) == []
    flip_byte(held / "shards" / "00000.tokens", 10)
    problems = kogitune.verify(report.dataset_id, home=home)
    assert [(p.shard, "piece 0" in p.message) for p in problems] == [("00000", True)]
    with pytest.raises(TensorError, match="kogitune get"):
        kogitune.verify("kg1-" + "a" * 52, home=home)


def test_store_reads_settings_as_the_command_line_does(small_corpus, tmp_path):
    """A filter config file and a perturbation spec are accepted as keywords, as `store_cli` passes them."""
    config = tmp_path / "filters.json"
    config.write_text(json.dumps({"filters": [{"name": "length", "min_chars": 1}]}))
    report = kogitune.store(
        small_corpus, "gpt2", tmp_path / "t", filters=config, perturb="drop=0.1,seed=1", workers=1, progress=False
    )
    manifest = kogitune.DataTensor(report.path).manifest
    assert manifest.provenance["filters"] and manifest.provenance["perturb"]
    with pytest.raises(TypeError):
        kogitune.store(small_corpus, "gpt2", tmp_path / "u", no_such_option=1)
    with pytest.raises(BadInputError):
        kogitune.store([], "gpt2", tmp_path / "v")
    with pytest.raises(KogituneError):
        kogitune.store(small_corpus, "gpt2", tmp_path / "w", block_size=0)
