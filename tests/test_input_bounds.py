"""Hostile input cannot exhaust a writer's memory, and a full disk is named: `store` and `filter` read a line up to
the maximum document size and skip the rest of a longer one without keeping it, inflate compressed input a bounded
amount at a time, turn JSON nested too deeply into a bad line, and say what a full file system left behind.

The memory tests run `kogitune store` in a child process under an address-space limit (so that a regression fails
instead of taking the machine's memory), which reports its peak RSS (VmHWM: of its own memory since exec, whereas
wait4's ru_maxrss also counts the test process the child was forked from). Inputs are generated streaming.
"""

from __future__ import annotations

import gzip
import os
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zstandard
from conftest import OPTIONS, expected_tokens, json_line, store_quietly, write_lines

import kogitune.write.job as store_module
from kogitune.cli import MAX_DOCUMENT_HELP, main
from kogitune.errors import BadInputError, DiskFullError
from kogitune.filters.run import FilterOptions, filter_files
from kogitune.tensor import DataTensor
from kogitune.write import MAX_DOCUMENT_BYTES, StoreOptions

ADDRESS_SPACE_LIMIT = 3 << 30
"""The child's address-space limit: far above what a bounded store needs, far below what an unbounded one took
(11 GB for a 100 MB line)."""
PEAK_RSS_LIMIT = 400 << 20
"""A bounded store of any of these inputs peaks near 100 MB (interpreter, tokenizer, one batch)."""
LIMIT = 1000
"""A small maximum document size for the in-process tests."""
NESTED = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE_NUMBER = b'{"text": "x", "n": 1' + b"0" * 5000 + b"}"


def write_repeated(f, byte: bytes, size: int, chunk: int = 16 << 20) -> None:
    """Write `size` copies of `byte` to the open file `f`, never holding more than `chunk` of them."""
    block = byte * chunk
    while size > 0:
        f.write(block[: min(size, chunk)])
        size -= chunk


STORE_AND_REPORT_PEAK = """
import sys
from kogitune.cli import main

try:
    code = main(sys.argv[2:])
finally:
    with open("/proc/self/status") as status:
        peak_kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(sys.argv[1], "w") as report:
        report.write(peak_kib)
sys.exit(code)
"""


def store_in_child(tmp_path: Path, corpus: Path, *args: str) -> tuple[int, str, int]:
    """(exit status, stderr, peak RSS in bytes, 0 if it died) of `kogitune store` on `corpus` in a child process."""

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))

    peak = tmp_path / "peak-kib.txt"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            STORE_AND_REPORT_PEAK,
            str(peak),
            "store",
            str(corpus),
            "-o",
            str(tmp_path / "out"),
            "--workers",
            "1",
            "-q",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=limit_memory,
        timeout=120,
    )
    return child.returncode, child.stderr.decode(errors="replace"), int(peak.read_text()) * 1024 if peak.exists() else 0


# ---- memory: over-long lines, compression bombs -----------------------------------------------------------------


def test_a_100_mb_line_is_an_error_naming_file_and_line_in_bounded_memory(tmp_path):
    """Before: 11 GB RSS and a Rust abort (under this test's 3 GB limit: SIGABRT)."""
    corpus = tmp_path / "long.jsonl"
    with open(corpus, "wb") as f:
        f.write(json_line("short") + b"\n" + b'{"text": "')
        write_repeated(f, b"a", 100 << 20)
        f.write(b'"}\n')
    code, err, peak = store_in_child(tmp_path, corpus)
    assert code == 2, err
    assert err.startswith(
        f"kogitune store: error: {corpus}, line 2: 104,857,612 bytes, longer than the maximum "
        f"document size ({MAX_DOCUMENT_BYTES:,} bytes; change it with --max-document-size)"
    ), err
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e6:.0f} MB"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("suffix, size", [(".zst", 4 << 30), (".gz", 64 << 20)], ids=["zstd-4GiB", "gzip-64MiB"])
def test_a_compression_bomb_is_skipped_in_bounded_memory(tmp_path, suffix, size):
    """A small file that inflates to one document of gigabytes. Before: the zstd reader inflated 64 KiB of input
    at once (2 GB) and the line was read whole: MemoryError, exit 3; the gzip line was read whole and tokenized:
    a Rust abort under the 3 GB limit."""
    corpus = tmp_path / f"bomb.jsonl{suffix}"
    with open(corpus, "wb") as raw:
        if suffix == ".zst":
            stream = zstandard.ZstdCompressor(level=3).stream_writer(raw)
        else:
            stream = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1)
        with stream:
            stream.write(b'{"text": "')
            write_repeated(stream, b"a", size)
            stream.write(b'"}\n' + json_line("after the bomb") + b"\n")
    assert corpus.stat().st_size < 1 << 20
    code, err, peak = store_in_child(tmp_path, corpus, "--skip-bad-lines")
    assert code == 0, err
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e6:.0f} MB"
    tensor = DataTensor(tmp_path / "out")
    assert tensor.manifest.documents == 1 and tensor.manifest.provenance["skipped"]["bad_lines"] == 1


# ---- over-long lines in process: numbering, skipping, filter --------------------------------------------------------


def long_line_corpus(tmp_path, texts) -> Path:
    """Line 1 good, line 2 five times the limit, line 3 good, line 4 not JSON, then good lines."""
    lines = [json_line(texts[0]), json_line("x" * 5 * LIMIT), json_line(texts[1]), b"{oops"]
    return write_lines(tmp_path / "input.jsonl", lines + [json_line(t) for t in texts[2:4]])


def test_a_line_longer_than_the_limit_is_a_bad_line(tmp_path, small_texts, gpt2):
    texts = [t[: LIMIT // 2] for t in small_texts[:4]]
    corpus = long_line_corpus(tmp_path, texts)
    options = replace(OPTIONS, max_document_bytes=LIMIT)
    with pytest.raises(
        BadInputError, match=f"^{corpus}, line 2: 5,012 bytes, longer than the maximum document size \\(1,000 bytes"
    ):
        store_quietly(corpus, tmp_path / "out", options)
    report = store_quietly(corpus, tmp_path / "out", replace(options, skip_bad_lines=True))
    assert (report.documents, report.bad_lines) == (4, 2)
    np.testing.assert_array_equal(DataTensor(report.path).tokens(), expected_tokens(gpt2, texts))


def test_a_line_of_exactly_the_limit_is_read(tmp_path, small_texts):
    line = json_line("y" * (LIMIT - 12))
    assert len(line) == LIMIT
    corpus = write_lines(tmp_path / "exact.jsonl", [line, json_line(small_texts[0][: LIMIT // 2])])
    assert store_quietly(corpus, tmp_path / "out", replace(OPTIONS, max_document_bytes=LIMIT)).documents == 2
    with pytest.raises(
        BadInputError, match=f"line 1: {LIMIT:,} bytes, longer than the maximum document size \\({LIMIT - 1:,} bytes"
    ):
        store_quietly(corpus, tmp_path / "out2", replace(OPTIONS, max_document_bytes=LIMIT - 1))


def test_filter_reads_lines_up_to_the_limit(tmp_path, small_texts, capsys):
    corpus = long_line_corpus(tmp_path, [t[: LIMIT // 2] for t in small_texts[:4]])
    config = {"filters": [{"name": "length", "min_chars": 1}]}
    with pytest.raises(BadInputError, match=f"^{corpus}, line 2: 5,012 bytes, longer than the maximum"):
        filter_files(
            [corpus], tmp_path / "out.jsonl", config, FilterOptions(workers=1, max_document_bytes=LIMIT), progress=False
        )
    code = main(
        [
            "filter",
            str(corpus),
            "-o",
            str(tmp_path / "out.jsonl"),
            "-f",
            "length:min_chars=1",
            "-q",
            "--workers",
            "1",
            "--skip-bad-lines",
            "--max-document-size",
            str(LIMIT / (1 << 20)),
        ]
    )
    assert code == 0 and "skipped 2 bad lines" in capsys.readouterr().out
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 4


def test_the_store_command_takes_the_limit(tmp_path, small_texts, capsys):
    corpus = long_line_corpus(tmp_path, [t[: LIMIT // 2] for t in small_texts[:4]])
    code = main(
        [
            "store",
            str(corpus),
            "-o",
            str(tmp_path / "out"),
            "-q",
            "--workers",
            "1",
            "--max-document-size",
            str(LIMIT / (1 << 20)),
        ]
    )
    assert code == 2 and "line 2: 5,012 bytes, longer than the maximum document size" in capsys.readouterr().err
    assert (
        main(
            [
                "store",
                str(corpus),
                "-o",
                str(tmp_path / "out"),
                "-q",
                "--workers",
                "1",
                "--skip-bad-lines",
                "--max-document-size",
                "0.001",
            ]
        )
        == 0
    )  # 1,048 bytes
    assert DataTensor(tmp_path / "out").manifest.provenance["skipped"]["bad_lines"] == 2
    assert f"(default: {MAX_DOCUMENT_BYTES >> 20}," in MAX_DOCUMENT_HELP


@pytest.mark.parametrize("limit", [0, -1, 1.5])
def test_a_limit_that_is_not_a_positive_number_of_bytes_is_refused(limit):
    from kogitune.errors import KogituneError

    with pytest.raises(KogituneError, match="maximum document size must be a positive number of bytes"):
        StoreOptions(max_document_bytes=limit)
    with pytest.raises(KogituneError, match="maximum document size must be a positive number of bytes"):
        FilterOptions(max_document_bytes=limit)


# ---- JSON that Python cannot parse: nesting, huge numbers -------------------------------------------------------

BAD_JSON = {
    "nested-100k-deep": (NESTED, "arrays or objects nested too deeply for Python's JSON parser"),
    "5000-digit-number": (HUGE_NUMBER, "cannot be read (Exceeds the limit (4300 digits) for integer string"),
}


@pytest.mark.parametrize("bad, reason", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_json_python_cannot_parse_is_a_bad_line(tmp_path, small_texts, gpt2, capsys, bad, reason):
    """Before: RecursionError (or ValueError) out of the store, a traceback and exit 3, even with --skip-bad-lines."""
    corpus = write_lines(tmp_path / "input.jsonl", [json_line(small_texts[0]), bad, json_line(small_texts[1])])
    code = main(["store", str(corpus), "-o", str(tmp_path / "out"), "-q", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"kogitune store: error: {corpus}, line 2: {reason}"), err
    report = store_quietly(corpus, tmp_path / "out", replace(OPTIONS, skip_bad_lines=True))
    assert (report.documents, report.bad_lines) == (2, 1)
    np.testing.assert_array_equal(DataTensor(report.path).tokens(), expected_tokens(gpt2, small_texts[:2]))
    filtered = filter_files(
        [corpus],
        tmp_path / "out.jsonl",
        {"filters": [{"name": "length", "min_chars": 1}]},
        FilterOptions(workers=1, skip_bad_lines=True),
        progress=False,
    )
    assert (filtered.kept, filtered.bad_lines) == (2, 1)


# ---- a full disk --------------------------------------------------------------------------------------------------


@pytest.fixture
def small_file_system(tmp_path):
    """A 256 KiB tmpfs (root only; the test is skipped where mounting is not permitted), and a function that
    grows it."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(
            f"a full file system needs a small tmpfs, and mounting one is not permitted here ({mounted.stderr.strip()})"
        )

    def grow(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)

    try:
        yield mount_point, grow
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_disk_keeps_the_checkpoint_and_the_same_command_goes_on(
    small_file_system, kjv_corpus, kjv_report, monkeypatch
):
    """Before: OSError "[Errno 28] No space left on device", naming no path and not what was kept."""
    mount_point, grow = small_file_system
    monkeypatch.setattr(store_module, "BATCH_BYTES", 64 << 10)
    monkeypatch.setattr(store_module, "CHECKPOINT_SECONDS", 0.0)
    out = mount_point / "kjv"
    with pytest.raises(
        DiskFullError,
        match=f"^{out}.partial: No space left on device. Kept {out}.partial "
        r"\([0-9.]+ MB: [0-9]+ finished shards and a checkpoint at [0-9,]+ "
        "tokens\\). Free space there and run the same command again",
    ):
        store_quietly(kjv_corpus, out, OPTIONS)
    assert (mount_point / "kjv.partial" / store_module.CHECKPOINT_FILE).is_file()
    grow("4m")
    report = store_quietly(kjv_corpus, out, OPTIONS)
    assert report.dataset_id == kjv_report.dataset_id
    assert DataTensor(out).verify() == []


def test_a_full_disk_before_the_first_checkpoint_gives_the_space_back(small_file_system, kjv_corpus, capsys):
    mount_point, _ = small_file_system
    out = mount_point / "kjv"
    code = main(["store", str(kjv_corpus), "-o", str(out), "-q", "--workers", "1", "--block-size", "128"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(
        f"kogitune store: error: {out}.partial: No space left on device. Nothing was kept"
    ), err
    assert "Traceback" not in err
    assert not (mount_point / "kjv.partial").exists()
    assert os.statvfs(mount_point).f_bfree == os.statvfs(mount_point).f_blocks, "the space was not given back"


def test_a_full_disk_under_filter_names_the_output_and_leaves_nothing(small_file_system, kjv_corpus, capsys):
    """Before: "[Errno 28] No space left on device", naming no path."""
    mount_point, _ = small_file_system
    out = mount_point / "kjv.jsonl"
    code = main(["filter", str(kjv_corpus), "-o", str(out), "-f", "nfkc", "-q", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"kogitune filter: error: {out}: No space left on device. Nothing was kept"), (
        err
    )
    assert list(mount_point.iterdir()) == []
