"""The local content store: data tensors fetched from elsewhere, kept under `$KOGITUNE_HOME/datasets/<id>/`.

Each dataset directory is an ordinary data tensor directory whose shards may be missing (not fetched yet, or
evicted). Its name is the dataset ID, which commits to every byte, so the store is content-addressed. Shard files
appear only by an atomic rename after verification (see kogitune.node.fetch), so processes that share the store
(ranks, DataLoader workers) never read a partial file. `shards/<name>.used` records when a shard was last opened,
for least-recently-used eviction; a `pinned` file in a dataset directory protects it from eviction.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from kogitune.protocol.ids import is_dataset_id
from kogitune.protocol.manifest import parse_manifest

from .errors import KogituneError
from .files import file_mode_in, make_folders, write_atomic

DEFAULT_LIMIT_BYTES = 50 * 10**9
PINNED_FILE = "pinned"


def kogitune_home() -> Path:
    """`$KOGITUNE_HOME`, else `$XDG_CACHE_HOME/kogitune`, else `~/.cache/kogitune`."""
    home = os.environ.get("KOGITUNE_HOME")
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "kogitune"


def cache_limit_bytes() -> int:
    """`$KOGITUNE_CACHE_LIMIT` in GB (decimal; e.g. 100 or 0.5), default 50 GB."""
    value = os.environ.get("KOGITUNE_CACHE_LIMIT")
    if not value:
        return DEFAULT_LIMIT_BYTES
    try:
        return int(float(value) * 1e9)
    except ValueError:
        raise KogituneError(f"KOGITUNE_CACHE_LIMIT={value!r} is not a number of GB") from None


@dataclass(frozen=True)
class CachedShard:
    dataset_id: str
    name: str
    size: int
    last_used: float
    pinned: bool


class ContentStore:
    """Dataset directories under one home; safe to use from several processes at once."""

    def __init__(self, home: str | os.PathLike | None = None) -> None:
        self.home = Path(home) if home is not None else kogitune_home()
        self.datasets = self.home / "datasets"

    def dataset_dir(self, dataset_id: str) -> Path:
        if not is_dataset_id(dataset_id):
            raise KogituneError(f"{dataset_id!r} is not a dataset ID")
        return self.datasets / dataset_id

    def make_dataset_dir(self, dataset_id: str, private: bool) -> Path:
        """Create the directory of a dataset and its shards folder if needed, and return it. A private dataset's
        (its manifest has `access`) are owner-only, and so is every file created in them (files.file_mode_in):
        other users of the machine can neither list nor read a private dataset."""
        directory = self.dataset_dir(dataset_id)
        make_folders([directory, directory / "shards"], owner_only=private)
        return directory

    def add_manifest(self, manifest_bytes: bytes) -> Path:
        """Record a dataset by its manifest (checked) and return its directory."""
        manifest = parse_manifest(manifest_bytes)
        directory = self.make_dataset_dir(manifest.dataset_id, manifest.is_private)
        if not (directory / "manifest.json").exists():
            write_atomic(directory / "manifest.json", manifest_bytes)
        return directory

    def touch(self, dataset_dir: Path, shard_name: str) -> None:
        """Note that a shard was just used (for eviction order)."""
        used = dataset_dir / "shards" / f"{shard_name}.used"
        try:
            used.touch(mode=file_mode_in(used.parent))
        except OSError:
            pass

    def pin(self, dataset_id: str, pinned: bool = True) -> None:
        marker = self.dataset_dir(dataset_id) / PINNED_FILE
        if pinned:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch(mode=file_mode_in(marker.parent))
        else:
            marker.unlink(missing_ok=True)

    def shards(self) -> list[CachedShard]:
        """Every complete shard in the store."""
        found = []
        if not self.datasets.is_dir():
            return found
        for directory in sorted(self.datasets.iterdir()):
            if not is_dataset_id(directory.name):
                continue
            pinned = (directory / PINNED_FILE).exists()
            for tokens in sorted((directory / "shards").glob("*.tokens")):
                name = tokens.name[: -len(".tokens")]
                used = tokens.with_name(f"{name}.used")
                stamp = used.stat().st_mtime if used.exists() else tokens.stat().st_mtime
                size = sum(p.stat().st_size for p in tokens.parent.glob(f"{name}.*") if p.is_file())
                found.append(CachedShard(directory.name, name, size, stamp, pinned))
        return found

    def gc(self, limit_bytes: int | None = None) -> list[CachedShard]:
        """Evict unpinned shards, least recently used first, until the store fits in `limit_bytes`."""
        limit = cache_limit_bytes() if limit_bytes is None else limit_bytes
        shards = self.shards()
        total = sum(s.size for s in shards)
        evicted = []
        for shard in sorted((s for s in shards if not s.pinned), key=lambda s: s.last_used):
            if total <= limit:
                break
            shard_dir = self.datasets / shard.dataset_id / "shards"
            for path in shard_dir.glob(f"{shard.name}.*"):
                if not path.name.endswith(".lock"):
                    path.unlink(missing_ok=True)
            total -= shard.size
            evicted.append(shard)
        return evicted


def age(seconds_since_epoch: float) -> str:
    seconds = max(0, time.time() - seconds_since_epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"
