"""What a node may send: only bytes it has checked against the dataset ID since they last changed.

The content store shares inodes with the tensors a user published (hard links), so a store file can change under
the node after it was verified: an edit in place through the user's copy, a truncation, a chmod. The node must never
pass such bytes on (they may be anything the user wrote there). So, before a tokens file is served:

- it is opened without following symbolic links (the store holds none: `Node.publish` refuses them);
- the `stat_signature` of the open file (size, mtime, inode, ctime: a write, truncate or chmod always moves ctime,
  and nobody can set it back) must be the one recorded when the shard last passed a check (`marks.is_marked`);
- it is compared again after every read and before that chunk is sent: Linux moves ctime before a write copies its
  data, so a chunk read while the signature still held is the verified one. A change mid-stream cuts the stream.

A shard whose files changed since their check is hashed again on a worker thread when a peer next asks for it (one
check at a time per node, once per change), in the background: peers are answered not_found at once until the
check ends (their fetchers go to other sources or ask again). If it still verifies (e.g. only a chmod or a new hard
link), it is served again; if not, it is withheld (not_found, as for a missing shard), logged once, and listed as
damaged by `kogitune node status`. `.pieces` and `.docs` files are hashed against the manifest, and compressed
sidecars (`.tokens.zst`) decoded frame by frame against the `.pieces` file (on a worker thread), once per change of
their stat_signature, and served like tokens files (read in chunks, each checked
unchanged before it is sent); the manifest is checked against the dataset ID (in DataServer).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from functools import partial
from pathlib import Path

import trio

from kogitune.files import read_limited
from kogitune.marks import TIMESTAMP_GRANULARITY_NS, file_signature, is_marked, stat_signature
from kogitune.protocol.compression import sidecar_path
from kogitune.protocol.errors import IntegrityError
from kogitune.protocol.manifest import Manifest, ShardInfo, piece_count
from kogitune.protocol.pieces import check_pieces_file, root_of
from kogitune.sidecars import sidecar_problem
from kogitune.tensor import DataTensor, Problem

log = logging.getLogger(__name__)
RECHECK_THREADS = 1
"""Shards a node hashes again at once (after their files changed): a background chore, it must not take the CPU
that serving needs."""
SERVE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW
"""How a node opens a file it serves: never through a symbolic link."""
CHANGED = (
    "its files changed since they were verified (not checked again yet: the next request for it starts a "
    "re-check); withheld until that passes"
)


_links_seen: set[str] = set()
"""Store paths found to be symbolic links (put there by hand: publish makes none), logged once each."""


class ChangedWhileServing(Exception):
    """A served file changed between two reads: the stream is cut before the changed bytes leave."""


def open_served(path: Path) -> int | None:
    """A read-only descriptor on `path`, or None if it is missing or a symbolic link."""
    try:
        return os.open(path, SERVE_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            if str(path) not in _links_seen:
                _links_seen.add(str(path))
                log.warning("%s is a symbolic link; a node serves no links: withheld", path)
            return None
        raise


class StoreGuard:
    """Decides which store files a DataServer may send, and remembers which files it found damaged."""

    def __init__(self) -> None:
        self.damaged: dict[tuple[str, str], tuple[str, str]] = {}
        """(dataset ID, file path in the dataset directory) -> (its shard's name, or "manifest.json"; the problem
        found), from when a check finds the file damaged until a check of it passes."""
        self._failed: dict[tuple[str, str], list] = {}
        self._checking: set[tuple[str, str]] = set()
        """Shards being hashed again now (in the background)."""
        self._limiter = trio.CapacityLimiter(RECHECK_THREADS)
        self._small_checked: dict[tuple[str, str], list] = {}
        """(dataset ID, path of a .pieces or .docs file) -> its stat_signature when it last matched the manifest."""

    def open_tokens(self, directory: Path, manifest: Manifest, shard: ShardInfo) -> tuple[int, list] | None:
        """A descriptor on the shard's tokens file and the stat_signature it must keep while it is served; None
        when the shard is missing or withheld (changed since its check, and a re-check did not pass)."""
        fd = open_served(directory / shard.tokens_path)
        if fd is None:
            return None
        try:
            opened = stat_signature(os.fstat(fd))
            if self._trusted(directory, manifest, shard, opened):
                return fd, opened
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def check_unchanged(self, fd: int, opened: list, directory: Path, path: str) -> None:
        """Raise ChangedWhileServing if the open file `path` changed since `opened` was taken."""
        if stat_signature(os.fstat(fd)) != opened:
            log.info(
                "%s %s changed while being served; the stream was cut and it is withheld until it passes a check again",
                directory.name,
                path,
            )
            raise ChangedWhileServing(f"{directory / path} changed while being served")

    async def open_small_file(
        self, directory: Path, manifest: Manifest, shard: ShardInfo, kind: str
    ) -> tuple[int, list] | None:
        """A descriptor on the shard's .pieces or .docs file, or its compressed sidecar (`kind` "pieces", "docs",
        "sidecar"), and the stat_signature it must keep while it is served, if it matches the manifest (a sidecar:
        every frame decodes to its piece, kogitune.sidecars); None if it is missing, a link, damaged (noted) or
        changing. It is checked (on a worker thread) once per change of the file, not per request."""
        if kind == "pieces":
            path = shard.pieces_path
            check = partial(
                _check_small_file, size=manifest.pieces_in(shard) * 32, matches=lambda data: root_of(data) == shard.root
            )
        elif kind == "docs":
            path = shard.docs_path
            check = partial(
                _check_small_file,
                size=shard.docs_size,
                matches=lambda data: hashlib.sha256(data).hexdigest() == shard.docs_sha256,
            )
        else:
            path = sidecar_path(shard)
            check = partial(_check_sidecar, directory=directory, shard=shard, piece_size=manifest.piece_size)
        fd = open_served(directory / path)
        if fd is None:
            return None
        try:
            key = (directory.name, path)
            opened = stat_signature(os.fstat(fd))
            if self._small_checked.get(key) != opened:
                checked, ok = await trio.to_thread.run_sync(check, fd)
                if checked is None:  # changed while it was hashed: not served now, checked again next time
                    ok = False
                elif ok:
                    self._small_checked[key] = checked
                    self.note_intact(directory.name, path)
                else:
                    self._small_checked.pop(key, None)
                    self.note_damaged(directory.name, shard.name, path, f"{path} does not match the manifest")
                if checked is None or not ok:
                    os.close(fd)
                    return None
                opened = checked
            return fd, opened
        except BaseException:
            os.close(fd)
            raise

    def note_damaged(self, dataset_id: str, shard_name: str, path: str, problem: str) -> None:
        """Record a damaged file of a shard (or the manifest: `shard_name` "manifest.json"), logging it once."""
        if self.damaged.get((dataset_id, path)) != (shard_name, problem):
            log.warning(
                "%s %s is damaged and withheld from peers: %s. Undo the change, or store and publish (or "
                "fetch) the dataset again",
                dataset_id,
                path,
                problem,
            )
        self.damaged[(dataset_id, path)] = (shard_name, problem)

    def note_intact(self, dataset_id: str, path: str) -> None:
        """A check of the file at `path` passed: it is no longer damaged."""
        if self.damaged.pop((dataset_id, path), None) is not None:
            log.info("%s %s passed its check again; serving it", dataset_id, path)

    def is_damaged(self, dataset_id: str, shard: ShardInfo) -> bool:
        """Whether a file of `shard` was found damaged (and not checked good since)."""
        return any((dataset_id, path) in self.damaged for path in shard_paths(shard))

    def _trusted(self, directory: Path, manifest: Manifest, shard: ShardInfo, opened: list) -> bool:
        """Whether the shard's files, the tokens file being the one `opened`, are as they last passed a check. If
        they changed since, and did not already fail as they are now, a re-check starts in the background and the
        answer is no at once: the requester goes to other sources or asks again (a re-hash can take longer than
        it waits for an answer, and many changed shards are hashed one at a time)."""
        signature = file_signature(directory, shard)
        if signature is None or signature[0] != opened:
            return False
        if is_marked(directory, directory.name, shard.name, signature):
            return True
        key = (directory.name, shard.name)
        if self._failed.get(key) != signature and key not in self._checking:
            self._checking.add(key)
            trio.lowlevel.spawn_system_task(
                self._recheck, directory, manifest, shard, signature, name=f"recheck {directory.name} {shard.name}"
            )
        return False

    async def _recheck(self, directory: Path, manifest: Manifest, shard: ShardInfo, signature: list) -> None:
        """Hash the shard again on a worker thread, against `manifest` (checked against the dataset ID by the
        server), and record the result. Runs as a trio system task: it outlives the request that started it, and
        it never raises (a failure to read is logged and the shard stays withheld)."""
        key = (directory.name, shard.name)
        try:
            problems = await trio.to_thread.run_sync(_check, directory, manifest, shard, limiter=self._limiter)
        except Exception as exc:
            log.warning("%s shard %s could not be checked again: %r; withheld", directory.name, shard.name, exc)
            problems = [Problem(shard.name, shard.tokens_path, f"could not be read: {exc}")]
        finally:
            self._checking.discard(key)
        if problems:
            self._failed[key] = signature
        else:
            self._failed.pop(key, None)
        found = {problem.file: str(problem) for problem in reversed(problems)}  # the first problem of each file
        for path in shard_paths(shard):  # the check read all three
            if path in found:
                self.note_damaged(directory.name, shard.name, path, found[path])
            else:
                self.note_intact(directory.name, path)

    def changed_shards(self, directory: Path, manifest: Manifest) -> list[ShardInfo]:
        """The shards held in `directory` whose files changed since their last check (withheld until re-checked)."""
        changed = []
        for shard in manifest.shards:
            signature = file_signature(directory, shard)
            if signature is not None and not is_marked(directory, directory.name, shard.name, signature):
                changed.append(shard)
        return changed


def _check(directory: Path, manifest: Manifest, shard: ShardInfo) -> list[Problem]:
    """Hash a store shard against its dataset's manifest, recording the result as its mark (on a worker thread)."""
    return DataTensor(directory, manifest=manifest).check_and_mark(shard)


def _check_small_file(fd: int, size: int, matches) -> tuple[list | None, bool]:
    """Hash a .pieces or .docs file (`size` bytes if intact) on a worker thread once its last change is
    TIMESTAMP_GRANULARITY_NS old (a later write then moves its ctime): (its stat_signature, whether `matches(data)`),
    or (None, False) if it changed while being read."""
    _settle(fd)
    status = os.fstat(fd)
    data = os.pread(fd, size + 1, 0)
    checked = stat_signature(status)
    if stat_signature(os.fstat(fd)) != checked:
        return None, False
    return checked, len(data) == size and matches(data)


def _check_sidecar(fd: int, directory: Path, shard: ShardInfo, piece_size: int) -> tuple[list | None, bool]:
    """As _check_small_file, for a compressed sidecar: every frame decoded and hashed against the shard's `.pieces`
    file (itself checked against the root), one frame at a time."""
    _settle(fd)
    checked = stat_signature(os.fstat(fd))
    try:
        digests = read_limited(directory / shard.pieces_path, 32 * piece_count(shard.size, piece_size))
        check_pieces_file(shard, digests, piece_size)
    except (OSError, IntegrityError):
        return checked, False
    ok = sidecar_problem(fd, shard, piece_size, digests) is None
    if stat_signature(os.fstat(fd)) != checked:
        return None, False
    return checked, ok


def _settle(fd: int) -> None:
    """Wait until the open file's last change is TIMESTAMP_GRANULARITY_NS old (a later write then moves its ctime)."""
    wait_ns = os.fstat(fd).st_ctime_ns + TIMESTAMP_GRANULARITY_NS - time.time_ns()
    if wait_ns > 0:
        time.sleep(wait_ns / 1e9)


def shard_paths(shard: ShardInfo) -> tuple[str, str, str]:
    """The paths of a shard's three files in its dataset directory."""
    return shard.tokens_path, shard.pieces_path, shard.docs_path
