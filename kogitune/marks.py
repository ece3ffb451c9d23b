"""Verification marks: which shards passed a check, remembered while their files stay unchanged.

A shard that passed is recorded in `.kogitune-verified` in the tensor directory together with the size, mtime,
inode and ctime of its files (their `stat_signature`), so later opens skip the hashing while the files are
unchanged; any change on disk voids the record (a write, truncate, chmod or new hard link always moves ctime, and
nobody can set it back). The node's server trusts the same marks (kogitune.node.integrity).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from kogitune.protocol.jsonlimits import loads
from kogitune.protocol.manifest import MAX_SHARDS, Manifest, ShardInfo

from .files import opener_like_folder, read_limited, write_atomic
from .layout import MARKS_FILE, MARKS_LOCK_FILE

MAX_MARKS_BYTES = MAX_SHARDS * 256
"""A marks file longer than this (about 100 bytes a shard are written) is not read: its shards are hashed again."""
MAX_OPEN_SHARDS = 64
TIMESTAMP_GRANULARITY_NS = 20_000_000
"""How coarse a file system's change times can be (Linux stamps them from a clock that ticks every 1-10 ms). A
check only starts once its files' last change is at least this old, so that any write after the check began moves
their ctime past the one recorded: two changes within one tick would otherwise look like one."""


_checked_here: dict[tuple[str, str], list | None] = {}
"""(directory, shard name) -> file signature of shards a fetcher in this process checked piece by piece: trusted
while the files are unchanged, also before their record in the marks file (written after the fsync) exists."""


def is_marked(directory: Path, dataset_id: str, shard_name: str, signature: list) -> bool:
    """Whether `signature` (see `file_signature`) is how the shard's files were when they last passed a check, in
    this process or as recorded in the marks file (read again only when that file was replaced)."""
    key = (str(directory), shard_name)
    if _checked_here.get(key) == signature:
        return True
    marks = _cached_marks(directory)
    if marks.get("dataset_id") == dataset_id and marks["shards"].get(shard_name) == signature:
        _checked_here[key] = signature
        return True
    return False


def record_checked(directory: Path, shard: ShardInfo, signature: list | None = None) -> list | None:
    """Remember, in this process only, that `shard` was just checked as its files are now (or were, as `signature`
    says); returns that signature."""
    if signature is None:
        signature = file_signature(directory, shard)
    _checked_here[(str(directory), shard.name)] = signature
    return signature


def record_verified(directory: Path, manifest: Manifest, shards, checked_as: list | None = None) -> bool:
    """Remember that `shards` passed verification as their files are now (best effort: read-only dirs skip it).
    With `checked_as` (the `file_signature` of the one shard when it was checked), only if its files are unchanged;
    returns whether they were."""
    with _marks_locked(directory):
        marks = _read_marks(directory)
        if marks.get("dataset_id") != manifest.dataset_id:
            marks = {"dataset_id": manifest.dataset_id, "shards": {}}
        for shard in shards:
            signature = file_signature(directory, shard)
            if checked_as is not None and signature != checked_as:
                return False
            marks["shards"][shard.name] = signature
        _write_marks(directory, marks)
    return True


def forget_verified(directory: Path, shards) -> None:
    """Drop the marks of `shards`, found damaged (e.g. by bit rot, which changes no size, mtime or inode), so
    that opening them hashes them again."""
    for shard in shards:
        _checked_here.pop((str(directory), shard.name), None)
    with _marks_locked(directory):
        marks = _read_marks(directory)
        dropped = [marks["shards"].pop(shard.name) for shard in shards if shard.name in marks.get("shards", {})]
        if dropped:
            _write_marks(directory, marks)


@contextmanager
def _marks_locked(directory: Path):
    """Serialize read-modify-write of the marks file: shards of one tensor finish in parallel threads and processes."""
    try:
        lock = open(directory / MARKS_LOCK_FILE, "a+b", opener=opener_like_folder)
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _write_marks(directory: Path, marks: dict) -> None:
    try:
        write_atomic(directory / MARKS_FILE, json.dumps(marks).encode())
    except OSError:
        pass


def _read_marks(directory: Path) -> dict:
    try:
        data = read_limited(directory / MARKS_FILE, MAX_MARKS_BYTES)
        marks = loads(data) if len(data) <= MAX_MARKS_BYTES else None
    except (OSError, ValueError):  # missing, unreadable, not JSON, or nested too deep: no marks
        return {}
    return marks if isinstance(marks, dict) and isinstance(marks.get("shards"), dict) else {}


_marks_read: dict[str, tuple[list, dict]] = {}
"""directory -> (stat_signature of its marks file when read, its contents), for `is_marked`: a node asks on every
request it serves. Read only: writers read the file afresh."""


def _cached_marks(directory: Path) -> dict:
    path = directory / MARKS_FILE
    try:
        identity = stat_signature(os.stat(path))
    except OSError:
        return {}
    cached = _marks_read.get(str(directory))
    if cached is None or cached[0] != identity:
        cached = _marks_read[str(directory)] = (identity, _read_marks(directory))
    return cached[1]


def stat_signature(st: os.stat_result) -> list:
    """What identifies one version of a file: size, mtime, inode and ctime (which every change moves)."""
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def file_signature(directory: Path, shard: ShardInfo) -> list | None:
    """The `stat_signature` of the shard's three files: any change to them changes it."""
    signature = []
    for name in (shard.tokens_path, shard.pieces_path, shard.docs_path):
        try:
            st = os.stat(directory / name)
        except OSError:
            return None
        signature.append(stat_signature(st))
    return signature


def settled_signature(directory: Path, shard: ShardInfo) -> list | None:
    """The shard's `file_signature` once its last change is TIMESTAMP_GRANULARITY_NS old (waiting if needed)."""
    signature = file_signature(directory, shard)
    if signature is None:
        return None
    wait_ns = max(entry[3] for entry in signature) + TIMESTAMP_GRANULARITY_NS - time.time_ns()
    if wait_ns > 0:
        time.sleep(wait_ns / 1e9)
        signature = file_signature(directory, shard)
    return signature
