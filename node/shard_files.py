"""The files of a shard being fetched, on disk: the lock that lets one process fetch it, the pieces of an
interrupted fetch that can be kept, writes that never take less than asked silently, and making a finished shard durable before it is recorded as verified (node/fetch.py)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from kogitune.files import opener_like_folder
from kogitune.layout import SHARDS_DIR, shard_lock_path
from kogitune.marks import record_verified
from kogitune.protocol.manifest import Manifest, ShardInfo

log = logging.getLogger(__name__)
LOCK_POLL_SECONDS = 0.05
SYNC_THREADS = 2
"""Threads of one trio run that fsync finished shards: on a slow disk, syncing shards wait their turn instead of
taking the threads that check pieces."""
WRITE_SLICE_BYTES = 256 * 1024
"""The most of a verified piece written with one pwrite (`write_all`). Linux sizes the page-cache folio of a write
by its length (ext4 and xfs use large folios), and a 1 MiB folio, on a virtual machine with free page reporting
(virtio-balloon, as on Firecracker), mostly comes out of 2 MiB blocks that the host took back while they were free
and must fault in again: on the 2-core benchmark VM, 192 MiB written in 1 MiB pwrites a few seconds after the last
big write cost 0.14-0.29 s against 0.04-0.07 s in 256 KiB ones (the same right after one), and a `get` of 192.5 MiB
from 3 data ports 0.55-0.62 s of the fetching node's kernel time against 0.11-0.14 s (docs/benchmarks.md)."""
_sync_limiter: trio.lowlevel.RunVar = trio.lowlevel.RunVar("kogitune_sync_limiter")


@asynccontextmanager
async def shard_lock(directory: Path, shard_name: str):
    """One process per shard at a time (ranks and DataLoader workers share the cache)."""
    lock_path = shard_lock_path(directory, shard_name)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b", opener=opener_like_folder) as lock:
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await trio.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def kept_pieces(fd: int, size: int, piece_size: int, expected: bytes) -> list[int]:
    """Size the `.partial` file `fd` to `size`, and list the pieces of an earlier, interrupted fetch in it that
    still match their hashes (`expected`: the shard's .pieces file): one pass over the file, one piece at a time
    into one buffer (a shard may be larger than memory)."""
    fresh = os.fstat(fd).st_size == 0
    os.ftruncate(fd, size)
    if fresh:  # nothing to keep: reading and hashing the zeros would cost ~0.1 s per 32 MiB shard
        return []
    kept, piece = [], bytearray(piece_size)
    for index in range(-(-size // piece_size)):
        view = memoryview(piece)[: min(piece_size, size - index * piece_size)]
        if (
            os.preadv(fd, [view], index * piece_size) == len(view)
            and hashlib.sha256(view).digest() == expected[index * 32 : (index + 1) * 32]
        ):
            kept.append(index)
    return kept


def write_all(fd: int, data: memoryview, offset: int) -> None:
    """pwrite all of `data` at `offset`, at most WRITE_SLICE_BYTES at a time: a regular file may take part of a
    write (e.g. a disk filling up) without an error, and a write of nothing means the disk is full."""
    while data:
        written = os.pwrite(fd, data[:WRITE_SLICE_BYTES], offset)
        if not written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data, offset = data[written:], offset + written


async def make_durable(directory: Path, manifest: Manifest, shard: ShardInfo, checked_as: list | None) -> None:
    """fsync the shard's files and directory, then record the shard as verified if its files are still as
    installed (`checked_as`, from record_checked), on a thread (SYNC_THREADS per trio run): fsyncs take as long as
    the disk needs, and must not stall other fetches. Failing here loses only the record."""
    try:
        limiter = _sync_limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(SYNC_THREADS)
        _sync_limiter.set(limiter)
    await trio.to_thread.run_sync(_sync_and_record, directory, manifest, shard, checked_as, limiter=limiter)


def _sync_and_record(directory: Path, manifest: Manifest, shard: ShardInfo, checked_as: list | None) -> None:
    try:
        for name in (shard.tokens_path, shard.pieces_path, shard.docs_path, SHARDS_DIR):
            fd = os.open(directory / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        record_verified(directory, manifest, [shard], checked_as=checked_as)
    except FileNotFoundError:
        log.debug("shard %s was removed (cache eviction) before it was synced", shard.name)
    except OSError as exc:
        log.warning(
            "shard %s is in place but could not be synced to disk (%s); it will be re-checked on open", shard.name, exc
        )
