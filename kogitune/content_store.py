"""The local content store: data tensors fetched from elsewhere, kept under `$KOGITUNE_HOME/datasets/<id>/`.

Each dataset directory is an ordinary data tensor directory whose shards may be missing (not fetched yet, or
evicted). Its name is the dataset ID, which commits to every byte, so the store is content-addressed. Shard files
appear only by an atomic rename after verification (see kogitune.node.fetch), so processes that share the store
(ranks, DataLoader workers) never read a partial file. `shards/<name>.used` records when a shard was last opened,
for least-recently-used eviction; a `pinned` file in a dataset directory protects it from eviction.

Eviction never takes a shard from under a process that uses it. Three flocks say who uses a shard, and gc takes
each exclusively without waiting, skipping the shard if any is held:
- `<name>.lock`, held exclusively by the process fetching the shard (kogitune.node.fetch) or replacing a damaged copy;
- `<name>.used`, held shared by a reader from before it asks for the shard until it has mapped it (see `using`):
  this covers the wait for a fetch and the moment between the fetch and the open, in whichever process fetches;
- the tokens file itself, held shared by every memory map of it (kogitune.tensor), for as long as the map lives.
Lock files are never removed (a process holding a removed one would lock nothing); they are empty, except by
`remove`, which takes all three of every shard, renames the dataset directory away while it holds them, and only
then deletes it: a reader that comes later finds no dataset rather than part of one.
A `<name>.tokens.partial` file holds the pieces of an unfinished fetch; the next fetch of the shard resumes from it.
gc counts it like a shard and removes it, least recently written first, when no fetch holds the shard's lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from kogitune.protocol.ids import is_dataset_id

from .errors import KogituneError, TensorError
from .files import file_mode_in, make_folders, opener_like_folder
from .layout import (
    DATASETS_DIR,
    LOCK,
    PARTIAL,
    PINNED_FILE,
    REMOVING_PREFIX,
    SHARDS_DIR,
    TOKENS,
    USED,
    shard_used_path,
)

PARTIAL_SUFFIX = f"{TOKENS}.{PARTIAL}"
"""`<shard>.tokens.partial`: the verified pieces of an unfinished fetch (see kogitune.node.fetch)."""
LOCK_SUFFIXES = (LOCK, USED)
"""`<shard>.lock` and `<shard>.used`, which gc never removes: the fetch lock and the readers' lock."""


def kogitune_home() -> Path:
    """`$KOGITUNE_HOME`, else `$XDG_CACHE_HOME/kogitune`, else `~/.cache/kogitune`."""
    home = os.environ.get("KOGITUNE_HOME")
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "kogitune"


def cache_limit_bytes() -> int:
    """The setting cache_limit (kogitune.settings; `$KOGITUNE_CACHE_LIMIT`), given in GB (decimal), in bytes."""
    from .settings import settings

    return int(settings().cache_limit * 1e9)


@dataclass(frozen=True)
class StoredShard:
    """A shard in the content store, as `shards()` lists it and `gc` evicts it: the size of its files, when it was
    last used (`shards()` says how that is read), whether its dataset is pinned."""

    dataset_id: str
    name: str
    size: int
    last_used: float
    pinned: bool
    partial: bool = False
    """A `.tokens.partial` file of an unfinished fetch rather than a complete shard."""


class ContentStore:
    """Dataset directories under one home; safe to use from several processes at once."""

    def __init__(self, home: str | os.PathLike | None = None) -> None:
        self.home = Path(home) if home is not None else kogitune_home()
        self.datasets = self.home / DATASETS_DIR

    def dataset_dir(self, dataset_id: str) -> Path:
        if not is_dataset_id(dataset_id):
            raise KogituneError(f"{dataset_id!r} is not a dataset ID")
        return self.datasets / dataset_id

    def make_dataset_dir(self, dataset_id: str, private: bool) -> Path:
        """Create the directory of a dataset and its shards folder if needed, and return it. A private dataset's
        (its manifest has `access`) are owner-only, and so is every file created in them (files.file_mode_in):
        other users of the machine can neither list nor read a private dataset."""
        directory = self.dataset_dir(dataset_id)
        make_folders([directory, directory / SHARDS_DIR], owner_only=private)
        return directory

    def touch(self, dataset_dir: Path, shard_name: str) -> None:
        """Note that a shard was just used (for eviction order)."""
        used = shard_used_path(dataset_dir, shard_name)
        try:
            used.touch(mode=file_mode_in(used.parent))
        except OSError:
            pass

    @contextmanager
    def using(self, dataset_dir: Path, shard_name: str):
        """Keep the shard from eviction while the caller fetches (or waits for) and maps it: a shared lock on its
        `.used` file, which gc cannot take. The fetch itself, in this process or a daemon's, locks `.lock`, so the
        two never wait for each other. Once mapped, the map's own lock on the tokens file protects the shard."""
        try:
            lock = open(shard_used_path(dataset_dir, shard_name), "a+b", opener=opener_like_folder)
        except OSError:  # a store this process may not write to (read-only): it neither fetches nor evicts there
            yield
            return
        with lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_SH)
            yield

    def pin(self, dataset_id: str, pinned: bool = True) -> None:
        marker = self.dataset_dir(dataset_id) / PINNED_FILE
        if pinned:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch(mode=file_mode_in(marker.parent))
        else:
            marker.unlink(missing_ok=True)

    def remove(self, dataset_id: str, force: bool = False) -> Path:
        """Remove a dataset from the store (`kogitune rm`): refused (TensorError) while a process fetches, opens or
        maps one of its shards, unless `force`. The directory is first renamed to a hidden name (REMOVING_PREFIX),
        which no scan of the store takes for a dataset, then deleted: an interrupted removal never leaves a
        directory that looks like a dataset, complete or not. Returns the directory it was."""
        directory = self.dataset_dir(dataset_id)
        if not directory.is_dir():
            raise TensorError(f"{dataset_id} is not in the content store {self.home}")
        with ExitStack() as locks:
            if not force:
                for path, create in _reader_locks(directory):
                    if not locks.enter_context(_exclusive_now(path, create)) and (create or path.exists()):
                        raise TensorError(
                            f"{dataset_id} is in use: a process is reading or fetching {path.name}; stop it, or "
                            "pass --force to remove the dataset anyway (that process then fails)"
                        )
            doomed = self.datasets / f"{REMOVING_PREFIX}{dataset_id}.{os.getpid()}.{time.monotonic_ns()}"
            os.rename(directory, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        for leftover in self.datasets.glob(f"{REMOVING_PREFIX}*"):  # of removals interrupted earlier
            shutil.rmtree(leftover, ignore_errors=True)
        return directory

    def shards(self, partial: bool = False) -> list[StoredShard]:
        """Every complete shard in the store (last used: its last open or its fetch, whichever is later); with
        `partial`, also every `.tokens.partial` file (last used: its last write). A file that another process's gc
        removes meanwhile is left out."""
        found: list[StoredShard] = []
        if not self.datasets.is_dir():
            return found
        for directory in sorted(self.datasets.iterdir()):
            if not is_dataset_id(directory.name):
                continue
            pinned = (directory / PINNED_FILE).exists()
            for name, files in sorted(_shard_files(directory / SHARDS_DIR).items()):
                tokens, used, unfinished = files.get(TOKENS), files.get(USED), files.get(PARTIAL_SUFFIX)
                if tokens is not None:
                    size = sum(st.st_size for suffix, st in files.items() if suffix != PARTIAL_SUFFIX)
                    stamp = max(tokens.st_mtime, used.st_mtime if used is not None else 0.0)
                    found.append(StoredShard(directory.name, name, size, stamp, pinned))
                if partial and unfinished is not None:
                    found.append(
                        StoredShard(directory.name, name, unfinished.st_size, unfinished.st_mtime, pinned, partial=True)
                    )
        return found

    def gc(self, limit_bytes: int | None = None) -> list[StoredShard]:
        """Evict unpinned shards and partial files, least recently used first, until the store fits in
        `limit_bytes`. A shard or partial file that a process uses is skipped (so the store may stay above the
        limit until it is released)."""
        limit = cache_limit_bytes() if limit_bytes is None else limit_bytes
        held = self.shards(partial=True)
        total = sum(s.size for s in held)
        evicted = []
        for shard in sorted((s for s in held if not s.pinned), key=lambda s: s.last_used):
            if total <= limit:
                break
            if self._evict(shard):
                total -= shard.size
                evicted.append(shard)
        return evicted

    def _evict(self, shard: StoredShard) -> bool:
        """Remove a shard's files (the tokens first: their presence means complete), or its partial file, if no
        process fetches, opens or maps it; return whether it was removed."""
        shard_dir = self.datasets / shard.dataset_id / SHARDS_DIR
        with _exclusive_now(shard_dir / f"{shard.name}.{LOCK}") as no_fetch:
            if not no_fetch:
                return False
            if shard.partial:
                (shard_dir / f"{shard.name}.{PARTIAL_SUFFIX}").unlink(missing_ok=True)
                return True
            tokens = shard_dir / f"{shard.name}.{TOKENS}"
            with (
                _exclusive_now(shard_dir / f"{shard.name}.{USED}") as no_reader,
                _exclusive_now(tokens, create=False) as no_map,
            ):
                if not (no_reader and no_map):
                    return False
                tokens.unlink(missing_ok=True)
                for path in shard_dir.glob(f"{shard.name}.*"):
                    if path.name.partition(".")[2] not in LOCK_SUFFIXES:
                        path.unlink(missing_ok=True)
        return True


@contextmanager
def _exclusive_now(path: Path, create: bool = True):
    """Yield whether this process got an exclusive flock on `path` without waiting (False when someone holds a
    lock on it, or when `path` cannot be opened); the lock is released on exit."""
    try:
        lock = open(path, "a+b", opener=opener_like_folder) if create else open(path, "rb")
    except OSError:  # gone, or a store this process may not write to
        yield False
        return
    with lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            got = True
        except BlockingIOError:
            got = False
        yield got


def _reader_locks(directory: Path) -> list[tuple[Path, bool]]:
    """(path, create) of every lock that says a process uses a shard of a dataset directory: each shard's fetch
    lock and readers' lock (created if missing), and its tokens file, which every memory map of it locks shared."""
    names = _shard_files(directory / SHARDS_DIR)
    return [
        (path, create)
        for name in sorted(names)
        for path, create in (
            (directory / SHARDS_DIR / f"{name}.{LOCK}", True),
            (directory / SHARDS_DIR / f"{name}.{USED}", True),
            (directory / SHARDS_DIR / f"{name}.{TOKENS}", False),
        )
    ]


def _shard_files(shards_dir: Path) -> dict[str, dict[str, os.stat_result]]:
    """shard name -> file suffix ("tokens", "used", "tokens.partial", ...) -> its stat, in one pass over the folder
    (temporary files of atomic writes, which begin with a dot, are not a shard's)."""
    files: dict[str, dict[str, os.stat_result]] = {}
    try:
        entries = list(os.scandir(shards_dir))
    except FileNotFoundError:
        return files
    for entry in entries:
        name, _, suffix = entry.name.partition(".")
        if not name:
            continue
        try:
            files.setdefault(name, {})[suffix] = entry.stat()
        except FileNotFoundError:
            continue
    return files


def age(seconds_since_epoch: float) -> str:
    seconds = max(0, time.time() - seconds_since_epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"
