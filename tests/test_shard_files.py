"""node/shard_files.py's write_all: pieces go to disk in slices of at most WRITE_SLICE_BYTES (a 1 MiB write takes
a 1 MiB page-cache folio, slow to come by on a VM with free page reporting), and a short or empty write is not
taken for a whole one."""

from __future__ import annotations

import errno
import os

import pytest

from kogitune.node import shard_files
from kogitune.node.shard_files import WRITE_SLICE_BYTES, write_all


def test_a_piece_is_written_in_slices_at_its_offset(tmp_path, monkeypatch):
    lengths = []
    real_pwrite = os.pwrite

    def recording_pwrite(fd, data, offset):
        lengths.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(shard_files.os, "pwrite", recording_pwrite)
    piece = os.urandom(4 * WRITE_SLICE_BYTES + 1000)
    path = tmp_path / "tokens.partial"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        write_all(fd, memoryview(piece), 12345)
    finally:
        os.close(fd)
    assert max(lengths) <= WRITE_SLICE_BYTES and sum(lengths) == len(piece)
    assert path.read_bytes()[12345:] == piece


def test_a_short_write_goes_on_and_an_empty_one_means_a_full_disk(tmp_path, monkeypatch):
    real_pwrite = os.pwrite
    monkeypatch.setattr(shard_files.os, "pwrite", lambda fd, data, offset: real_pwrite(fd, data[:100], offset))
    path = tmp_path / "tokens.partial"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        write_all(fd, memoryview(b"x" * 1000), 0)
        assert path.read_bytes() == b"x" * 1000
        monkeypatch.setattr(shard_files.os, "pwrite", lambda fd, data, offset: 0)
        with pytest.raises(OSError) as raised:
            write_all(fd, memoryview(b"y"), 0)
        assert raised.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
