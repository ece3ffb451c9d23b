"""`store`: JSONL text in, a data tensor out whose tokens, counts, layout and ID are exactly what they should be."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zstandard
from conftest import (
    BLOCK,
    EOS_TEXT,
    OPTIONS,
    SHARD,
    expected_tokens,
    file_states,
    json_line,
    store_quietly,
    stored_tokens,
    write_lines,
    write_texts,
)

import kogitune.write.job as store_module
from kogitune.corpora import write_kjv_chapters
from kogitune.errors import BadInputError, KogituneError, TensorError
from kogitune.layout import MANIFEST_FILE
from kogitune.perturb import PerturbSpec
from kogitune.tensor import DataTensor
from kogitune.write import (
    BATCH_BYTES,
    DTYPES_NP,
    InputReader,
    StoreOptions,
    TensorWriter,
    pack_documents,
    worker_processes,
)

SMALL = StoreOptions(block_size=64, shard_size=64 << 10, workers=1)


@pytest.fixture(scope="module")
def small_tensor_path(small_corpus, tmp_path_factory):
    """The small corpus stored with SMALL options (block size 64, 64 KiB shards)."""
    return store_quietly(small_corpus, tmp_path_factory.mktemp("small") / "kjv", SMALL).path


def manifest_without_inputs(tensor: DataTensor) -> dict:
    manifest = tensor.manifest.to_dict()
    del manifest["provenance"]["inputs"]
    return manifest


# ---- what is stored ---------------------------------------------------------------------------------------------


def test_tokens_are_the_documents_joined_with_eos(kjv_tensor, kjv_texts, kjv_expected, gpt2):
    """The token stream is each document's tokens then EOS, in input order, and decodes back to the text."""
    tokens = kjv_tensor.tokens()
    assert tokens.dtype == np.uint16
    np.testing.assert_array_equal(tokens, kjv_expected)
    assert gpt2.decode(tokens) == "".join(text + EOS_TEXT for text in kjv_texts)


def test_counts_and_tokenizer_are_recorded(kjv_report, kjv_tensor, kjv_texts, kjv_lengths, gpt2):
    """Documents, tokens, blocks and shards agree between the report, the manifest and the text."""
    m = kjv_tensor.manifest
    n_tokens = sum(kjv_lengths)
    assert m.documents == kjv_report.documents == len(kjv_texts) == sum(s.documents for s in m.shards)
    assert m.tokens == kjv_report.tokens == n_tokens
    assert m.blocks == kjv_report.blocks == -(-n_tokens // BLOCK) == sum(s.blocks for s in m.shards)
    assert kjv_report.shards == len(m.shards) == 3
    assert kjv_report.dataset_id == kjv_tensor.dataset_id
    assert (m.block_size, m.piece_size, m.dtype) == (BLOCK, OPTIONS.piece_size, "uint16")
    assert (m.tokenizer.name, m.tokenizer.id, m.tokenizer.fingerprint) == ("gpt2", gpt2.short_id, gpt2.fingerprint)
    assert (m.tokenizer.vocab_size, m.tokenizer.eos_id) == (50257, 50256) == (gpt2.vocab_size, gpt2.eos_id)
    assert m.provenance["options"] == OPTIONS.provenance()
    assert m.provenance["skipped"] == {"bad_lines": 0, "empty_documents": 0, "empty_files": 0}


def test_shards_are_full_and_padding_is_eos_in_the_last_block_only(kjv_report, kjv_tensor, gpt2):
    """Every shard but the last holds shard_size bytes; the last block alone is padded, with EOS."""
    m = kjv_tensor.manifest
    full_blocks = SHARD // (BLOCK * 2)
    assert [s.blocks for s in m.shards[:-1]] == [full_blocks] * (len(m.shards) - 1)
    assert all(s.size == s.blocks * BLOCK * 2 for s in m.shards)
    raw = stored_tokens(kjv_tensor)
    assert len(raw) == m.blocks * BLOCK
    padding = raw[m.tokens :]
    assert 0 < len(padding) < BLOCK and kjv_report.padding == len(padding)
    assert (padding == gpt2.eos_id).all()


def test_document_starts_point_at_each_documents_first_token(kjv_tensor, kjv_lengths):
    """Each shard's `.docs` lists, relative to the shard, the offsets where documents begin in it."""
    starts = np.cumsum([0] + kjv_lengths[:-1])
    shard_bounds = np.cumsum([0] + [s.blocks * BLOCK for s in kjv_tensor.shards])
    for index, shard in enumerate(kjv_tensor.shards):
        low, high = shard_bounds[index], shard_bounds[index + 1]
        expected = starts[(starts >= low) & (starts < high)] - low
        found = kjv_tensor.document_starts(index)
        np.testing.assert_array_equal(found, expected)
        assert shard.documents == len(found)
    assert any(kjv_tensor.document_starts(i)[0] > 0 for i in range(1, len(kjv_tensor.shards))), (
        "some document should continue across a shard boundary"
    )


def test_several_inputs_are_one_stream_in_order(tmp_path, small_texts, gpt2):
    """Three input files store as their documents concatenated; the provenance names each file, with its hash."""
    parts = [small_texts[:5], small_texts[5:6], small_texts[6:20]]
    files = [write_texts(tmp_path / f"{name}.jsonl", part) for name, part in zip("cab", parts)]
    report = store_quietly(files, tmp_path / "out")
    tensor = DataTensor(report.path)
    np.testing.assert_array_equal(tensor.tokens(), expected_tokens(gpt2, small_texts[:20]))
    assert tensor.manifest.documents == 20
    assert tensor.manifest.provenance["inputs"] == [
        {"name": f.name, "size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()} for f in files
    ]


def zstd_two_frames(data: bytes) -> bytes:
    compressor = zstandard.ZstdCompressor()
    return compressor.compress(data[: len(data) // 3]) + compressor.compress(data[len(data) // 3 :])


@pytest.mark.parametrize(
    "suffix, compress",
    [
        (".jsonl.gz", gzip.compress),
        (".jsonl.zst", zstandard.ZstdCompressor().compress),
        (".jsonl.zst", zstd_two_frames),
    ],
    ids=["gzip", "zstd", "zstd-two-frames"],
)
def test_compressed_input_stores_the_same_tensor(tmp_path, small_corpus, small_tensor_path, suffix, compress):
    """A .gz or .zst input stores the same shards as the plain file; only the provenance differs: it records
    the compressed file as read (name, size, SHA-256), so the dataset ID commits to the exact input."""
    raw = small_corpus.read_bytes()
    packed = tmp_path / ("kjv" + suffix)
    packed.write_bytes(compress(raw))
    tensor = DataTensor(store_quietly(packed, tmp_path / "out", SMALL).path)
    plain = DataTensor(small_tensor_path)
    np.testing.assert_array_equal(tensor.tokens(), plain.tokens())
    assert tensor.shards == plain.shards
    assert manifest_without_inputs(tensor) == manifest_without_inputs(plain)
    assert tensor.manifest.provenance["inputs"] == [
        {"name": packed.name, "size": packed.stat().st_size, "sha256": hashlib.sha256(packed.read_bytes()).hexdigest()}
    ]
    assert tensor.dataset_id != plain.dataset_id


def test_text_key_chooses_the_field(tmp_path, small_texts, gpt2):
    """With text_key="body" the text is read from "body" (other fields ignored) and the key is recorded."""
    lines = [json.dumps({"id": i, "text": "not this", "body": t}).encode() for i, t in enumerate(small_texts)]
    corpus = write_lines(tmp_path / "bodies.jsonl", lines)
    options = StoreOptions(block_size=64, text_key="body", workers=1)
    tensor = DataTensor(store_quietly(corpus, tmp_path / "out", options).path)
    np.testing.assert_array_equal(tensor.tokens(), expected_tokens(gpt2, small_texts))
    assert tensor.manifest.provenance["options"]["text_key"] == "body"


# ---- the dataset ID does not depend on where or how ---------------------------------------------------------------


def test_same_input_same_id_in_another_directory(small_corpus, small_tensor_path, tmp_path):
    """Storing the same file again elsewhere gives byte-identical manifest and shards, so the same ID."""
    again = store_quietly(small_corpus, tmp_path / "elsewhere" / "copy", SMALL)
    assert again.dataset_id == DataTensor(small_tensor_path).dataset_id
    names = [MANIFEST_FILE] + [str(p.relative_to(small_tensor_path)) for p in small_tensor_path.glob("shards/*")]
    assert len(names) == 7
    for name in names:
        assert (again.path / name).read_bytes() == (small_tensor_path / name).read_bytes(), name


def test_every_way_of_tokenizing_gives_the_same_tensor(tmp_path, small_texts, gpt2):
    """The default (in this process), one worker (the same) and two spawned tokenizer processes give the same tensor,
    over three input batches holding text (so that results arriving out of order would show). Blank lines (1 MiB of
    them, cheap to tokenize) fill the batches."""
    blanks = [b" " * 1023] * (BATCH_BYTES // 1024)
    lines = [json_line(t) for t in small_texts]
    corpus = write_lines(tmp_path / "padded.jsonl", lines[:15] + blanks + lines[15:30] + blanks + lines[30:])
    assert len(list(InputReader([corpus], skip_bad_lines=False).batches())) == 3
    options = StoreOptions(block_size=BLOCK, shard_size=256 << 10, piece_size=64 << 10)
    reports = [store_quietly(corpus, tmp_path / str(w), replace(options, workers=w)) for w in (0, 1, 2)]
    manifests = {(report.path / MANIFEST_FILE).read_bytes() for report in reports}
    assert len({report.dataset_id for report in reports}) == 1 and len(manifests) == 1
    assert DataTensor(reports[2].path).verify() == []
    np.testing.assert_array_equal(DataTensor(reports[0].path).tokens(), expected_tokens(gpt2, small_texts))


def test_default_tokenizes_in_this_process_unless_filters_or_rust_parallelism_is_off(monkeypatch):
    """workers=0 uses all cores: the Rust tokenizer's threads in this process, or one process per core when Python
    filters run or TOKENIZERS_PARALLELISM turns the Rust threads off. 0 processes means this process."""
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    filters = {"filters": [{"name": "nfkc"}]}
    assert [worker_processes(StoreOptions(workers=w)) for w in (0, 1, 2, 3)] == [0, 0, 2, 3]
    assert [worker_processes(StoreOptions(workers=w, filters=filters)) for w in (0, 1, 2)] == [6, 0, 2]
    for value, processes in [("true", 0), ("1", 0), ("false", 6), ("OFF", 6), ("0", 6), ("", 6)]:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", value)
        assert worker_processes(StoreOptions()) == processes, value
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert worker_processes(StoreOptions(filters=filters)) == 0


def test_pack_documents_joins_ids_with_eos_in_either_dtype(gpt2, small_texts):
    """Real encodings packed as uint16, and as uint32 with an EOS id above 65535, against plain numpy."""
    encodings = gpt2.encodings(list(small_texts[:5]))
    for dtype, eos in (("uint16", gpt2.eos_id), ("uint32", 70000)):
        tokens, lengths = pack_documents(encodings, eos, dtype)
        expected = np.concatenate([np.array(e.ids + [eos]) for e in encodings])
        np.testing.assert_array_equal(np.frombuffer(tokens, DTYPES_NP[dtype]), expected)
        assert np.frombuffer(lengths, np.int64).tolist() == [len(e.ids) + 1 for e in encodings]
    assert pack_documents([], gpt2.eos_id, "uint16") == (b"", b"")


# ---- re-running, overwriting, interruptions -----------------------------------------------------------------------


def test_storing_again_reports_already_stored_and_writes_nothing(tmp_path, small_corpus):
    first = store_quietly(small_corpus, tmp_path / "out", SMALL)
    before = file_states(first.path)
    again = store_quietly(small_corpus, tmp_path / "out", SMALL)
    assert again.already_stored and again.dataset_id == first.dataset_id
    assert "already stored" in again.summary()
    assert file_states(first.path) == before


def test_overwrite_stores_again(tmp_path, small_corpus):
    """overwrite=True replaces the tensor (here with another block size) and leaves no temporary directories."""
    first = store_quietly(small_corpus, tmp_path / "out", SMALL)
    again = store_quietly(small_corpus, tmp_path / "out", StoreOptions(block_size=32, workers=1, overwrite=True))
    assert not again.already_stored and again.dataset_id != first.dataset_id
    tensor = DataTensor(tmp_path / "out")
    assert tensor.dataset_id == again.dataset_id and tensor.manifest.block_size == 32
    assert tensor.verify() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_leftover_partial_directory_is_cleaned(tmp_path, small_corpus, small_tensor_path):
    """A `<out>.partial` left by an interrupted run is not a tensor; the next store starts afresh and completes."""
    partial = tmp_path / "out.partial"
    (partial / "shards").mkdir(parents=True)
    (partial / "shards" / "00000.tokens").write_bytes(b"half a shard")
    (partial / "junk.txt").write_text("left over")
    with pytest.raises(TensorError, match="unfinished or was interrupted"):
        DataTensor(tmp_path / "out")
    report = store_quietly(small_corpus, tmp_path / "out", SMALL)
    assert not partial.exists()
    assert not (report.path / "junk.txt").exists()
    assert report.dataset_id == DataTensor(small_tensor_path).dataset_id
    assert DataTensor(report.path).verify() == []


@pytest.mark.parametrize("content", [b"[" * 100_000, b'{"job": ' + b"[" * 100 + b"]" * 100 + b"}"])
def test_a_checkpoint_nested_too_deep_is_ignored(tmp_path, small_corpus, small_tensor_path, content):
    """A checkpoint file that is JSON nested too deep (RecursionError from json before: the store crashed) is no
    usable checkpoint: the store starts afresh and makes the same tensor."""
    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / store_module.CHECKPOINT_FILE).write_bytes(content)
    report = store_quietly(small_corpus, tmp_path / "out", SMALL)
    assert report.dataset_id == DataTensor(small_tensor_path).dataset_id and not partial.exists()


def interrupt_after(monkeypatch, batches: int) -> None:
    """Make the store stop (as Ctrl-C would) right after it wrote its batch number `batches`, before the checkpoint
    that would count that batch: the shard being written then holds bytes the checkpoint does not."""
    add = TensorWriter.add
    calls = []

    def add_then_stop(self, tokens, lengths):
        add(self, tokens, lengths)
        calls.append(1)
        if len(calls) == batches:
            raise KeyboardInterrupt

    monkeypatch.setattr(TensorWriter, "add", add_then_stop)


def shard_bytes(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((path / "shards").iterdir())}


@pytest.mark.parametrize(
    "options",
    [OPTIONS, replace(OPTIONS, perturb=PerturbSpec(mask=0.2, mask_id=7, drop=0.1, seed=3))],
    ids=["plain", "perturbed"],
)
def test_an_interrupted_store_goes_on_from_its_checkpoint(tmp_path, kjv_corpus, monkeypatch, options):
    """Interrupted after 7 of ~14 batches, run again: it restores the checkpoint (6 batches, a shard cut back to
    what they wrote) instead of starting over, and makes the tensor an uninterrupted store makes, byte for byte."""
    monkeypatch.setattr(store_module, "BATCH_BYTES", 64 << 10)
    monkeypatch.setattr(store_module, "CHECKPOINT_SECONDS", 0.0)
    reference = store_quietly(kjv_corpus, tmp_path / "reference", options)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 7)
        with pytest.raises(KeyboardInterrupt):
            store_quietly(kjv_corpus, tmp_path / "out", options)
    checkpoint = json.loads((tmp_path / "out.partial" / store_module.CHECKPOINT_FILE).read_bytes())
    assert checkpoint["batches"] == 6 and checkpoint["writer"]["shards"]
    restored = []
    restore = TensorWriter.restore
    monkeypatch.setattr(TensorWriter, "restore", lambda self, state: restored.append(1) or restore(self, state))
    report = store_quietly(kjv_corpus, tmp_path / "out", options)
    assert restored == [1]
    assert report.dataset_id == reference.dataset_id
    assert (report.documents, report.tokens, report.text_bytes) == (
        reference.documents,
        reference.tokens,
        reference.text_bytes,
    )
    assert shard_bytes(report.path) == shard_bytes(reference.path)
    assert not (tmp_path / "out.partial").exists() and DataTensor(report.path).verify() == []
    assert not (report.path / store_module.CHECKPOINT_FILE).exists()


KILLED_STORE = """
import sys
import kogitune.write.job as store
store.BATCH_BYTES, store.CHECKPOINT_SECONDS = 64 << 10, 0.0
store.store([sys.argv[1]], "gpt2", sys.argv[2], store.StoreOptions(block_size=128, shard_size=256 << 10,
                                                                  workers=int(sys.argv[3])), progress=False)
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_a_store_killed_with_sigkill_goes_on_from_its_checkpoint(tmp_path, workers):
    """A real process, killed (SIGKILL: nothing runs at exit) once its checkpoint counts 10 batches; run again, it
    goes on from the checkpoint and makes the tensor an uninterrupted store makes."""
    corpus = write_kjv_chapters(tmp_path / "kjv.jsonl")
    command = [sys.executable, "-c", KILLED_STORE, str(corpus)]
    proc = subprocess.Popen([*command, str(tmp_path / "out"), str(workers)])
    checkpoint = tmp_path / "out.partial" / store_module.CHECKPOINT_FILE
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads(checkpoint.read_bytes())["batches"] >= 10:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    workers_left = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the store ended before it could be killed"
    deadline = time.monotonic() + 30
    while workers_left and time.monotonic() < deadline:  # orphaned workers must not block forever on a full pipe
        workers_left = [
            pid
            for pid in workers_left
            if Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        ]
        time.sleep(0.05)
    assert not workers_left, f"worker processes {workers_left} outlived the killed store"
    assert 10 <= json.loads(checkpoint.read_bytes())["batches"] < 60
    first_shard = tmp_path / "out.partial" / "shards" / "00000.tokens"
    written = (first_shard.stat().st_ino, first_shard.stat().st_mtime_ns)
    subprocess.run([*command, str(tmp_path / "out"), str(workers)], check=True, timeout=300)
    kept = tmp_path / "out" / "shards" / "00000.tokens"
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == written, "the shards before the checkpoint were redone"
    subprocess.run([*command, str(tmp_path / "reference"), str(workers)], check=True, timeout=300)
    assert DataTensor(tmp_path / "out").dataset_id == DataTensor(tmp_path / "reference").dataset_id
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "reference")


def test_a_script_without_a_main_guard_gets_a_clear_error_not_a_hang(tmp_path, small_corpus):
    """Spawned workers import the script, which stores again and dies; the store must say why, not hang (it did,
    while the tokenizer travelled to the workers through a pipe that outgrew its buffer)."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from kogitune.write import StoreOptions, store\n"
        f"store([{str(small_corpus)!r}], 'gpt2', {str(tmp_path / 'out')!r}, StoreOptions(workers=2), "
        "progress=False)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert 'put the call under `if __name__ == "__main__":`' in result.stderr


def test_a_changed_input_makes_the_store_start_afresh(tmp_path, kjv_corpus, monkeypatch):
    monkeypatch.setattr(store_module, "BATCH_BYTES", 64 << 10)
    monkeypatch.setattr(store_module, "CHECKPOINT_SECONDS", 0.0)
    corpus = tmp_path / "kjv.jsonl"
    corpus.write_bytes(kjv_corpus.read_bytes())
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            store_quietly(corpus, tmp_path / "out", OPTIONS)
    corpus.write_bytes(corpus.read_bytes().replace(b"LORD", b"Lord"))
    monkeypatch.setattr(TensorWriter, "restore", lambda self, state: pytest.fail("restored a stale checkpoint"))
    report = store_quietly(corpus, tmp_path / "out", OPTIONS)
    assert report.dataset_id == store_quietly(corpus, tmp_path / "fresh", OPTIONS).dataset_id


def interrupted_store(tmp_path, corpus, monkeypatch, batches: int = 7):
    monkeypatch.setattr(store_module, "BATCH_BYTES", 64 << 10)
    monkeypatch.setattr(store_module, "CHECKPOINT_SECONDS", 0.0)
    with monkeypatch.context() as patch:
        interrupt_after(patch, batches)
        with pytest.raises(KeyboardInterrupt):
            store_quietly(corpus, tmp_path / "out", OPTIONS)
    return tmp_path / "out.partial"


def test_temporary_files_of_cut_writes_do_not_reach_the_tensor(tmp_path, kjv_corpus, monkeypatch):
    """A kill inside an atomic write leaves its temporary file; a resume must not carry it into the tensor."""
    partial = interrupted_store(tmp_path, kjv_corpus, monkeypatch)
    (partial / ".manifest.json.x1.tmp").write_text("{")
    (partial / "shards" / ".00001.pieces.x2.tmp").write_bytes(b"half")
    report = store_quietly(kjv_corpus, tmp_path / "out", OPTIONS)
    assert not [p for p in report.path.rglob("*.tmp")]


@pytest.mark.parametrize("change", ["same size and mtime", "closed shard cut short"])
def test_a_resume_that_cannot_be_trusted_starts_afresh(tmp_path, kjv_corpus, monkeypatch, change):
    """An input rewritten in place with its size and mtime kept (the checkpoint holds the SHA-256 of the bytes it
    read), or a closed shard of the partial cut short: the store starts afresh and makes the right tensor."""
    corpus = tmp_path / "kjv.jsonl"
    corpus.write_bytes(kjv_corpus.read_bytes())
    partial = interrupted_store(tmp_path, corpus, monkeypatch)
    if change == "same size and mtime":
        before = corpus.stat()
        corpus.write_bytes(corpus.read_bytes().replace(b"LORD", b"Lord"))
        os.utime(corpus, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        with open(partial / "shards" / "00000.tokens", "r+b") as f:
            f.truncate(1000)
    monkeypatch.setattr(TensorWriter, "restore", lambda self, state: pytest.fail("restored an untrustworthy state"))
    report = store_quietly(corpus, tmp_path / "out", OPTIONS)
    assert report.dataset_id == store_quietly(corpus, tmp_path / "fresh", OPTIONS).dataset_id


@pytest.mark.parametrize("new_in_place", [False, True])
def test_an_overwrite_cut_inside_its_swap_is_settled(tmp_path, small_corpus, new_in_place):
    """--overwrite moves the old tensor to .out.old, the new one in, then removes the old. Cut between the steps,
    the next run puts the old one back (new one not in place) or removes it (new one in place)."""
    out, old = tmp_path / "out", tmp_path / ".out.old"
    first = store_quietly(small_corpus, out, SMALL)
    if new_in_place:
        shutil.copytree(out, old)
    else:
        out.rename(old)
    report = store_quietly(small_corpus, out, SMALL)
    assert report.already_stored and report.dataset_id == first.dataset_id
    assert not old.exists() and DataTensor(out).verify() == []


def test_a_damaged_checkpoint_makes_the_store_start_afresh(tmp_path, kjv_corpus, monkeypatch):
    monkeypatch.setattr(store_module, "BATCH_BYTES", 64 << 10)
    monkeypatch.setattr(store_module, "CHECKPOINT_SECONDS", 0.0)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            store_quietly(kjv_corpus, tmp_path / "out", OPTIONS)
    path = tmp_path / "out.partial" / store_module.CHECKPOINT_FILE
    checkpoint = json.loads(path.read_bytes())
    checkpoint["writer"]["in_shard"] = 10**9
    path.write_text(json.dumps(checkpoint))
    monkeypatch.setattr(TensorWriter, "restore", lambda self, state: pytest.fail("restored a damaged checkpoint"))
    report = store_quietly(kjv_corpus, tmp_path / "out", OPTIONS)
    assert report.dataset_id == store_quietly(kjv_corpus, tmp_path / "fresh", OPTIONS).dataset_id


def test_failed_store_leaves_neither_output_nor_partial(tmp_path, small_texts):
    """A bad line after good ones stops the store; nothing that looks like a tensor (or half of one) remains."""
    corpus = write_lines(tmp_path / "in.jsonl", [json_line(t) for t in small_texts] + [b"{oops"])
    with pytest.raises(BadInputError, match=f"line {len(small_texts) + 1}"):
        store_quietly(corpus, tmp_path / "out", SMALL)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_failed_overwrite_keeps_the_existing_tensor(tmp_path, small_corpus, small_texts):
    first = store_quietly(small_corpus, tmp_path / "out", SMALL)
    bad = write_lines(tmp_path / "bad.jsonl", [json_line(small_texts[0]), b"[1, 2]"])
    with pytest.raises(BadInputError):
        store_quietly(bad, tmp_path / "out", replace(SMALL, overwrite=True))
    tensor = DataTensor(tmp_path / "out")
    assert tensor.dataset_id == first.dataset_id and tensor.verify() == []
    assert not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_refuses_to_replace_a_directory_that_is_not_a_tensor(tmp_path, small_corpus, overwrite):
    """An existing non-empty directory without a manifest is the user's, not ours: it is left alone."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(KogituneError, match="not a data tensor"):
        store_quietly(small_corpus, out, replace(SMALL, overwrite=overwrite))
    assert (out / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "notes.partial").exists()


def test_an_existing_empty_directory_is_a_fine_output(tmp_path, small_corpus, small_tensor_path):
    (tmp_path / "out").mkdir()
    report = store_quietly(small_corpus, tmp_path / "out", SMALL)
    assert report.dataset_id == DataTensor(small_tensor_path).dataset_id
