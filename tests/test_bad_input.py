"""Bad input, through `store()` and through the command line: a clear error naming the file and line (exit 2),
or, with skip_bad_lines, the line skipped and counted. Nothing half-made is left behind."""

from __future__ import annotations

import gzip
import re
import socket
from dataclasses import replace

import numpy as np
import pytest
import zstandard
from conftest import expected_tokens, json_line, store_quietly, write_lines, write_texts

from kogitune.cli import main
from kogitune.errors import BadInputError, ManifestError, TensorError
from kogitune.layout import MANIFEST_FILE
from kogitune.tensor import DataTensor
from kogitune.write import BATCH_BYTES, StoreOptions

OPTIONS = StoreOptions(block_size=64, workers=1)
SKIP = replace(OPTIONS, skip_bad_lines=True)
CLI_STORE = ["--block-size", "64", "--workers", "1", "-q"]

BAD_LINES = {
    "malformed-json": (b'{"text": "In the beginning', "not valid JSON"),
    "missing-key": (b'{"body": "In the beginning", "id": 1}', "has no key 'text' (keys: body, id)"),
    "not-utf8": (b'{"text": "caf\xe9"}', "not UTF-8 (byte 13 is 0xe9)"),
    "not-an-object": (b'["In the beginning"]', "not a JSON object (found list)"),
    "lone-surrogate": (b'{"text": "alone \\ud800 here"}', "'text' contains an unpaired surrogate at character 6"),
    "text-not-a-string": (b'{"text": 42}', "'text' is int, not a string"),
}


def corpus_with(tmp_path, bad: bytes, texts):
    """Line 1 good, line 2 blank, line 3 bad, then good lines."""
    return write_lines(tmp_path / "input.jsonl", [json_line(texts[0]), b"", bad] + [json_line(t) for t in texts[1:4]])


def starting(text: str) -> str:
    """A pytest.raises pattern: the message starts with exactly `text`."""
    return "^" + re.escape(text)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("bad, reason", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_bad_line_stops_store(tmp_path, small_texts, bad, reason):
    corpus = corpus_with(tmp_path, bad, small_texts)
    with pytest.raises(BadInputError, match=starting(f"{corpus}, line 3: {reason}")) as caught:
        store_quietly(corpus, tmp_path / "out", OPTIONS)
    assert "--skip-bad-lines" in str(caught.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("bad, reason", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_bad_line_on_the_command_line_exits_2(tmp_path, small_texts, capsys, bad, reason):
    corpus = corpus_with(tmp_path, bad, small_texts)
    code, out, err = run_cli(capsys, "store", corpus, "-o", tmp_path / "out", *CLI_STORE)
    assert code == 2 and out == ""
    assert err.startswith(f"kogitune store: error: {corpus}, line 3: ")
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_lines_are_skipped_and_counted(tmp_path, small_texts, gpt2):
    """With skip_bad_lines every kind of bad line is skipped, counted in the report and the provenance, and
    the good lines are stored exactly."""
    good = small_texts[: len(BAD_LINES)]
    lines = []
    for text, (bad, _) in zip(good, BAD_LINES.values()):
        lines += [json_line(text), bad]
    report = store_quietly(write_lines(tmp_path / "mixed.jsonl", lines), tmp_path / "out", SKIP)
    assert report.bad_lines == len(BAD_LINES) and report.documents == len(good)
    assert f"skipped {len(BAD_LINES)} bad lines" in report.summary()
    tensor = DataTensor(report.path)
    assert tensor.manifest.provenance["skipped"] == {
        "bad_lines": len(BAD_LINES),
        "empty_documents": 0,
        "empty_files": 0,
    }
    assert tensor.manifest.provenance["options"]["skip_bad_lines"] is True
    np.testing.assert_array_equal(tensor.tokens(), expected_tokens(gpt2, good))


def test_skip_bad_lines_on_the_command_line(tmp_path, small_texts, capsys):
    corpus = corpus_with(tmp_path, b"{oops", small_texts)
    code, out, _ = run_cli(capsys, "store", corpus, "-o", tmp_path / "out", "--skip-bad-lines", *CLI_STORE)
    assert code == 0 and "skipped 1 bad lines" in out
    assert DataTensor(tmp_path / "out").manifest.documents == 4


def test_blank_lines_are_ignored(tmp_path, small_texts, gpt2):
    """Empty and whitespace-only lines are neither documents nor bad lines."""
    texts = small_texts[:3]
    lines = [b"", json_line(texts[0]), b"   ", b"\t", json_line(texts[1]), b"\r", b"", json_line(texts[2]), b" "]
    report = store_quietly(write_lines(tmp_path / "blanks.jsonl", lines), tmp_path / "out", OPTIONS)
    assert (report.documents, report.bad_lines, report.empty_documents) == (3, 0, 0)
    np.testing.assert_array_equal(DataTensor(report.path).tokens(), expected_tokens(gpt2, texts))


def test_empty_documents_are_counted_not_stored(tmp_path, small_texts, gpt2):
    lines = [json_line(""), json_line(small_texts[0]), json_line(""), json_line(small_texts[1])]
    report = store_quietly(write_lines(tmp_path / "empties.jsonl", lines), tmp_path / "out", OPTIONS)
    assert (report.documents, report.empty_documents, report.bad_lines) == (2, 2, 0)
    tensor = DataTensor(report.path)
    assert tensor.manifest.provenance["skipped"]["empty_documents"] == 2
    np.testing.assert_array_equal(tensor.tokens(), expected_tokens(gpt2, small_texts[:2]))


def test_line_numbers_count_across_input_batches(tmp_path, small_texts):
    """A bad line beyond the first batch of input (1 MiB) is reported with its line number in the file."""
    lines = [json_line(t) for t in small_texts] + [b" " * 1023] * (BATCH_BYTES // 1024) + [json_line("x")] * 9
    corpus = write_lines(tmp_path / "long.jsonl", lines + [b'{"text": '])
    with pytest.raises(BadInputError, match=starting(f"{corpus}, line {len(lines) + 1}: not valid JSON")):
        store_quietly(corpus, tmp_path / "out", OPTIONS)


def test_bad_line_in_a_worker_process(tmp_path, small_texts):
    """Workers (spawned processes) find bad lines as the in-process tokenizer does, and nothing is left behind."""
    corpus = corpus_with(tmp_path, b"[]", small_texts)
    with pytest.raises(BadInputError, match=starting(f"{corpus}, line 3: not a JSON object")):
        store_quietly(corpus, tmp_path / "out", replace(OPTIONS, workers=2))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# ---- empty, missing and damaged files ---------------------------------------------------------------------------


def test_empty_file_is_an_error(tmp_path, capsys):
    empty = write_lines(tmp_path / "empty.jsonl", [])
    with pytest.raises(BadInputError, match=starting(f"{empty}: the file is empty")):
        store_quietly(empty, tmp_path / "out", OPTIONS)
    code, _, err = run_cli(capsys, "store", empty, "-o", tmp_path / "out", *CLI_STORE)
    assert code == 2 and f"{empty}: the file is empty" in err


def test_empty_file_is_skipped_and_counted(tmp_path, small_texts, gpt2):
    empty = write_lines(tmp_path / "empty.jsonl", [])
    good = write_texts(tmp_path / "good.jsonl", small_texts[:2])
    report = store_quietly([empty, good], tmp_path / "out", SKIP)
    assert report.empty_files == 1
    tensor = DataTensor(report.path)
    assert tensor.manifest.provenance["skipped"]["empty_files"] == 1
    assert [i["name"] for i in tensor.manifest.provenance["inputs"]] == ["empty.jsonl", "good.jsonl"]
    np.testing.assert_array_equal(tensor.tokens(), expected_tokens(gpt2, small_texts[:2]))


@pytest.mark.parametrize(
    "lines", [[], [b"", b"  "], [b"{oops"], [json_line("")]], ids=["empty", "blank", "all-bad", "empty-text"]
)
def test_inputs_without_text_are_an_error(tmp_path, lines):
    """Even when skipping, inputs that hold no text at all make no tensor."""
    corpus = write_lines(tmp_path / "none.jsonl", lines)
    with pytest.raises(BadInputError, match="the inputs hold no text"):
        store_quietly(corpus, tmp_path / "out", SKIP)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_nonexistent_input_file(tmp_path, capsys):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(BadInputError, match=starting(f"{missing}: no such file")):
        store_quietly(missing, tmp_path / "out", OPTIONS)
    code, _, err = run_cli(capsys, "store", missing, "-o", tmp_path / "out", *CLI_STORE)
    assert code == 2 and f"{missing}: no such file" in err
    assert not (tmp_path / "out").exists()


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "suffix, make",
    [
        (".jsonl.gz", lambda raw: truncated(gzip.compress(raw))),
        (".jsonl.zst", lambda raw: truncated(zstandard.ZstdCompressor().compress(raw))),
        (".jsonl.zst", lambda raw: zstandard.ZstdCompressor().compress(raw)[:-1]),
        (".jsonl.gz", lambda raw: b"not gzip at all\n" * 10),
        (".jsonl.zst", lambda raw: b"not zstd at all\n" * 10),
    ],
    ids=["gzip-truncated", "zstd-truncated", "zstd-last-byte-missing", "gzip-garbage", "zstd-garbage"],
)
def test_damaged_compressed_input(tmp_path, small_corpus, capsys, suffix, make):
    """A truncated or corrupt compressed file is an error, never a silently shorter tensor."""
    damaged = tmp_path / ("kjv" + suffix)
    damaged.write_bytes(make(small_corpus.read_bytes()))
    with pytest.raises(BadInputError, match=starting(f"{damaged}: cannot decompress")):
        store_quietly(damaged, tmp_path / "out", SKIP)
    code, _, err = run_cli(capsys, "store", damaged, "-o", tmp_path / "out", *CLI_STORE)
    assert code == 2 and f"{damaged}: cannot decompress" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_directory_without_inputs(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an input")
    code, _, err = run_cli(capsys, "store", tmp_path, "-o", tmp_path / "out", *CLI_STORE)
    assert code == 2 and f"{tmp_path}: a directory with no input files" in err


@pytest.mark.parametrize("setting", ["HF_HUB_OFFLINE", "HF_ENDPOINT"])
def test_a_hub_name_out_of_reach_fails_at_once(tmp_path, small_corpus, capsys, monkeypatch, setting):
    """Not a path, not cached, and the hub plainly unreachable: a clear error without transformers' minute of
    retries (HF_ENDPOINT points at a closed port here, so the test needs no network either way)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    if setting == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        why = "HF_HUB_OFFLINE is set"
    else:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        why = f"the hub (127.0.0.1:{closed.getsockname()[1]}) cannot be reached from here (ConnectionRefusedError"
    with closed:
        code, _, err = run_cli(
            capsys, "store", small_corpus, "-o", tmp_path / "out", "--tokenizer", "nobody/typo", *CLI_STORE
        )
    assert (
        code == 2
        and f"could not load tokenizer 'nobody/typo': it is not a local path, not in the Hugging Face cache, and {why}"
        in err
    )


def test_tokenizer_file_that_is_not_one(tmp_path, small_corpus, capsys):
    bogus = tmp_path / "tokenizer.json"
    bogus.write_text('{"not": "a tokenizer"}')
    code, _, err = run_cli(capsys, "store", small_corpus, "-o", tmp_path / "out", "--tokenizer", bogus, *CLI_STORE)
    assert code == 2 and f"{bogus} is not a tokenizers JSON file" in err


def test_output_that_is_a_file(tmp_path, small_corpus, capsys):
    out = tmp_path / "out"
    out.write_text("a file, not a directory")
    code, _, err = run_cli(capsys, "store", small_corpus, "-o", out, *CLI_STORE)
    assert code == 2 and "exists and is not a data tensor" in err
    assert out.read_text() == "a file, not a directory"


# ---- directories that are not tensors ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "info", "head"])
def test_not_a_tensor_directory_exits_2(tmp_path, capsys, command):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    nowhere, dataset_id = tmp_path / "nowhere", "kg1-" + "a" * 52
    for directory, message in [
        (plain, f"{plain} is not a data tensor: it has no manifest.json"),
        (nowhere, f"{nowhere}: no such directory"),
        # an ID the store does not hold: `info` looks for it on the network (no peer here), the others refuse
        (dataset_id, f"no peer provides {dataset_id}" if command == "info" else f"{dataset_id} is not in the content"),
    ]:
        code, out, err = run_cli(capsys, command, directory, "--home", tmp_path / "home")
        assert code == 2 and out == ""
        assert err.startswith(f"kogitune {command}: error: {message}")
    with pytest.raises(TensorError):
        DataTensor(plain)


def test_interrupted_store_is_named_as_such(tmp_path, capsys):
    (tmp_path / "out.partial").mkdir()
    code, _, err = run_cli(capsys, "info", tmp_path / "out")
    assert code == 2 and "a store into it is unfinished or was interrupted" in err


@pytest.mark.parametrize(
    "manifest, message",
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b'{"format": "kogitune-tensor/1"}', "manifest lacks"),
    ],
    ids=["not-json", "incomplete"],
)
@pytest.mark.parametrize("command", ["verify", "info", "head"])
def test_broken_manifest_exits_2(tmp_path, capsys, command, manifest, message):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / MANIFEST_FILE).write_bytes(manifest)
    code, _, err = run_cli(capsys, command, tmp_path / "t")
    assert code == 2 and f"{tmp_path / 't' / MANIFEST_FILE}: " in err and message in err
    with pytest.raises(ManifestError):
        DataTensor(tmp_path / "t")


def test_a_byte_order_mark_at_the_start_of_a_file_is_not_a_bad_line(tmp_path):
    """Editors on Windows write a UTF-8 BOM before the first line; it is not part of the JSON."""
    from kogitune.write import StoreOptions, store

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "In the beginning"}\n{"text": "was the word"}\n')
    report = store([path], "gpt2", tmp_path / "out", StoreOptions(block_size=8, workers=1), progress=False)
    assert report.documents == 2 and report.bad_lines == 0


@pytest.mark.parametrize(
    "option",
    [
        {"block_size": 0},
        {"block_size": 2 << 20},
        {"piece_size": 100},
        {"piece_size": 32 << 20},
        {"shard_size": -1},
        {"workers": -1},
    ],
)
def test_store_options_that_make_an_unreadable_tensor_are_refused(option):
    from kogitune.errors import KogituneError
    from kogitune.write import StoreOptions

    with pytest.raises(KogituneError):
        StoreOptions(**option)
