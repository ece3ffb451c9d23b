"""The `kogitune` command line: store, info, verify and head through `main()`, `store_cli` from Python, and the
installed console script in a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_tensor, flip_byte, store_quietly

from kogitune.cli import build_parser, main, store_cli
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions

# `--shard-size 0.0625` MiB is 64 KiB: the small corpus makes two shards of blocks of 64 tokens.
CLI_OPTIONS = ["--block-size", "64", "--shard-size", "0.0625", "--workers", "1", "-q"]
SAME_OPTIONS = StoreOptions(block_size=64, shard_size=64 << 10, workers=1)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tensor(small_corpus, tmp_path_factory) -> DataTensor:
    """The small corpus stored (through the Python API) with the options that CLI_OPTIONS spell."""
    return DataTensor(store_quietly(small_corpus, tmp_path_factory.mktemp("cli") / "kjv", SAME_OPTIONS).path)


def test_store_prints_the_summary_and_dataset_id(tmp_path, small_corpus, tensor, capsys):
    """`kogitune store` makes the same tensor as store() with the same options, and prints its ID."""
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "store", small_corpus, "-o", out_dir, *CLI_OPTIONS)
    assert code == 0, err
    stored = DataTensor(out_dir)
    assert stored.dataset_id == tensor.dataset_id and len(stored.shards) == 2
    assert out.startswith(f"stored {out_dir}\n")
    assert f"{stored.manifest.documents:,} documents, {stored.manifest.tokens:,} tokens" in out
    assert out.rstrip().endswith(f"dataset id {stored.dataset_id}")


def test_store_again_says_already_stored(tmp_path, small_corpus, capsys):
    out_dir = tmp_path / "out"
    assert run_cli(capsys, "store", small_corpus, "-o", out_dir, *CLI_OPTIONS)[0] == 0
    code, out, _ = run_cli(capsys, "store", small_corpus, "-o", out_dir, *CLI_OPTIONS)
    assert code == 0 and out.startswith(f"already stored: {out_dir} ({DataTensor(out_dir).dataset_id})")
    code, out, _ = run_cli(capsys, "store", small_corpus, "-o", out_dir, *CLI_OPTIONS, "--overwrite")
    assert code == 0 and out.startswith(f"stored {out_dir}")


def test_store_default_output_is_tokenizer_id_and_input_name(tmp_path, small_corpus, gpt2, capsys, monkeypatch):
    """Without --output a tensor goes to <tokenizer id>/<input name without suffixes>, relative to the cwd."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "store", small_corpus, *CLI_OPTIONS)
    assert code == 0, err
    assert DataTensor(tmp_path / gpt2.short_id / "kjv").manifest.documents == 40


def test_store_cli_from_python(tmp_path, small_corpus, capsys):
    """`store_cli(files=[...], tokenizer='gpt2', output=...)` as documented: default options (all cores)."""
    report = store_cli(files=[str(small_corpus)], tokenizer="gpt2", output=str(tmp_path / "out"))
    out = capsys.readouterr().out
    tensor = DataTensor(tmp_path / "out")
    assert report.dataset_id == tensor.dataset_id and not report.already_stored
    assert tensor.manifest.block_size == 2048 and tensor.verify() == []
    assert f"dataset id {tensor.dataset_id}" in out


def test_info(tensor, capsys, small_corpus):
    code, out, _ = run_cli(capsys, "info", tensor.path)
    m = tensor.manifest
    assert code == 0
    lines = out.splitlines()
    for expected in (
        f"dataset id  {tensor.dataset_id}",
        f"path        {tensor.path}",
        f"tokenizer   gpt2 ({m.tokenizer.id}, vocab 50,257, eos 50256)",
        f"tokens      {m.tokens:,} in {m.blocks:,} blocks of 64 (uint16)",
        "documents   40",
        f"inputs      kjv.jsonl ({small_corpus.stat().st_size:,} B)",
    ):
        assert expected in lines


def test_verify_intact(tensor, capsys):
    code, out, _ = run_cli(capsys, "verify", tensor.path)
    assert code == 0
    assert out == f"OK   {tensor.path}: 2 shards, {tensor.manifest.tokens:,} tokens verified ({tensor.dataset_id})\n"


def test_verify_damaged_exits_1_naming_shard_and_piece(tensor, tmp_path, capsys):
    copy = copy_tensor(tensor, tmp_path / "copy")
    flip_byte(copy / "shards/00001.tokens", 100)
    code, out, err = run_cli(capsys, "verify", copy)
    assert code == 1
    last = tensor.shards[1].size - 1
    assert out == f"BAD  shard 00001: shards/00001.tokens: piece 0 (bytes 0-{last}) does not match its hash\n"
    assert f"{copy}: 1 problem(s)" in err


def test_head_decodes_the_first_blocks(tensor, gpt2, capsys):
    code, out, _ = run_cli(capsys, "head", tensor.path, "-n", "2", "--chars", "0")
    assert code == 0
    expected = "".join(f"--- block {i} ---\n{gpt2.decode(tensor.block(i))}\n" for i in range(2))
    assert out == expected
    assert out.startswith("--- block 0 ---\nGenesis 1\n\nIn the beginning God created the heaven and the earth.")


def test_head_cuts_long_blocks(tensor, gpt2, capsys):
    code, out, _ = run_cli(capsys, "head", tensor.path, "-n", "1", "--chars", "20")
    assert code == 0 and out == f"--- block 0 ---\n{gpt2.decode(tensor.block(0))[:20]}…\n"


def test_head_refuses_another_tokenizer(tensor, tiny_tokenizer, capsys):
    code, out, err = run_cli(capsys, "head", tensor.path, "--tokenizer", tiny_tokenizer)
    assert code == 2 and out == ""
    assert "is not the one this tensor was stored with" in err and tensor.manifest.tokenizer.id in err


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["frobnicate"], ["verify"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
    assert "usage: kogitune" in capsys.readouterr().err


def console_script() -> str:
    script = Path(sys.executable).parent / "kogitune"
    assert script.is_file(), f"the console script is not installed in {script.parent}"
    return str(script)


def test_console_script(tensor):
    """The installed `kogitune` entry point runs in a fresh process."""
    help_run = subprocess.run([console_script(), "--help"], capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0
    for command in ("store", "verify", "info", "head"):
        assert command in help_run.stdout
    info_run = subprocess.run([console_script(), "info", str(tensor.path)], capture_output=True, text=True, timeout=120)
    assert info_run.returncode == 0, info_run.stderr
    assert f"dataset id  {tensor.dataset_id}\n" in info_run.stdout
    bad_run = subprocess.run(
        [console_script(), "verify", str(tensor.path / "shards")], capture_output=True, text=True, timeout=120
    )
    assert bad_run.returncode == 2 and "is not a data tensor" in bad_run.stderr


def test_publish_without_a_running_node_says_how_to_start_one(tmp_path, capsys):
    from kogitune.cli import main

    assert main(["publish", str(tmp_path), "--home", str(tmp_path / "home")]) == 2
    message = capsys.readouterr().err
    assert "no Kogitune node is running" in message and "kogitune node start" in message


@pytest.mark.parametrize("interval", ["nan", "-1", "0", "soon"])
def test_node_start_refuses_a_reprovide_interval_that_would_spin(tmp_path, capsys, interval):
    """nan, 0 and negative intervals made the reprovide loop announce (or wake) without ever sleeping."""
    with pytest.raises(SystemExit) as caught:  # parsing only: on a refusal, no node starts
        build_parser().parse_args(["node", "start", "--home", str(tmp_path), "--reprovide-interval", interval])
    assert caught.value.code == 2
    assert "--reprovide-interval" in capsys.readouterr().err
