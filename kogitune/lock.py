"""Locking a recipe: every entry pinned to the dataset ID it stands for today, so it trains on the same samples
tomorrow and on any machine (`kogitune lock`, `DatasetRecipe.from_lock`).

    from kogitune.lock import lock_recipe, write_lock
    lock = lock_recipe(["./wiki", "https://mirror.example/x/kjv?tokens=10M", "12D3KooW.../wiki2023_tiny"])
    write_lock(lock, "recipe.lock.json"); print(lock.recipe_id)     # kgr1-...

An entry by dataset ID stays as it is; one of web mirrors gets the ID its manifest hashes to (the manifest is
fetched and checked, as any recipe does); a local directory its tensor's (or collection's) ID, the directory kept
as a hint; a name (`<peer ID>/name`) the ID it points to now. Budgets and mirrors stay as given. The format and the
recipe ID are kogitune.protocol.lock's (docs/format.md#recipe-locks).

A published lock (`kogitune publish recipe.lock.json`) is on the DHT under its recipe ID: `DatasetRecipe(["kgr1-..."])`
fetches it (fetch_lock), checks that it hashes to the ID and opens it as from_lock does (without the hints, which
the ID does not cover). The publishing node keeps its locks in `<home>/locks/` (owner: this module) and puts them on
the DHT again with every announcement.
"""

from __future__ import annotations

import os
from pathlib import Path

from kogitune.protocol.lock import (
    LockedEntry,
    RecipeLock,
    is_recipe_id,
    lock_file_bytes,
    parse_lock,
    parse_published_lock,
    published_lock_bytes,
)

from .collection import open_local
from .content_store import ContentStore
from .errors import KogituneError, RecipeError
from .files import read_limited, write_atomic
from .layout import LOCKS_DIR
from .recipe import RecipeEntry, parse_entry

__all__ = ["fetch_lock", "lock_recipe", "lock_entries", "read_lock", "write_lock"]


def lock_recipe(entries, store: ContentStore | None = None) -> RecipeLock:
    """The lock of a recipe's entries (what DatasetRecipe takes): each resolved to its dataset ID."""
    entries = [entries] if isinstance(entries, (str, Path)) else list(entries)
    if not entries:
        raise RecipeError("a recipe needs at least one dataset (a path, URL, dataset ID or name)")
    return RecipeLock(tuple(_locked(parse_entry(entry), store) for entry in entries))


def _locked(entry: RecipeEntry, store: ContentStore | None) -> LockedEntry:
    if entry.dataset_id is not None:
        return LockedEntry(entry.dataset_id, entry.tokens, entry.weight, entry.mirrors)
    if entry.dataset_name is not None:
        from .names import resolve_name

        home = store.home if store is not None else None
        dataset_id = resolve_name(entry.dataset_name, home)
        return LockedEntry(dataset_id, entry.tokens, entry.weight, entry.mirrors, name=entry.dataset_name)
    if entry.mirrors:
        from .client import open_mirrors

        dataset_id = open_mirrors(list(entry.mirrors), store).dataset_id
        return LockedEntry(dataset_id, entry.tokens, entry.weight, entry.mirrors)
    if len(entry.sources) > 1:
        raise RecipeError(f"{entry.name}: several local paths in one entry; list each tensor as its own entry")
    path = os.path.abspath(entry.sources[0])
    return LockedEntry(open_local(path).dataset_id, entry.tokens, entry.weight, path=path)


def lock_entries(lock: RecipeLock) -> list[dict]:
    """The recipe entries that open a lock's datasets: a local directory of a hint when it still holds the locked
    ID, else the ID and its mirrors (the local store, peers and mirrors; whatever serves must hash to the ID)."""
    entries: list[dict] = []
    for locked in lock.entries:
        budget = {k: v for k, v in (("tokens", locked.tokens), ("weight", locked.weight)) if v is not None}
        if locked.path is not None and _holds(locked.path, locked.dataset_id):
            entries.append({"sources": [locked.path], **budget})
        else:
            entries.append({"id": locked.dataset_id, "mirrors": list(locked.mirrors), **budget})
    return entries


def _holds(path: str, dataset_id: str) -> bool:
    try:
        return open_local(path).dataset_id == dataset_id
    except (OSError, KogituneError):  # gone, or not a tensor any more: the hint is stale
        return False


def read_lock(path: str | os.PathLike) -> RecipeLock:
    from kogitune.protocol.lock import MAX_LOCK_BYTES

    return parse_lock(read_limited(Path(path), MAX_LOCK_BYTES))


def write_lock(lock: RecipeLock, path: str | os.PathLike) -> None:
    write_atomic(Path(path), lock_file_bytes(lock))


def save_published_lock(home: Path, lock: RecipeLock) -> bytes:
    """Keep a lock this node publishes (`<home>/locks/<recipe ID>`); returns its published bytes."""
    data = published_lock_bytes(lock)
    (Path(home) / LOCKS_DIR).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(home) / LOCKS_DIR / lock.recipe_id, data)
    return data


def published_locks(home: Path) -> dict[str, bytes]:
    """The locks published from `home`, by recipe ID (each checked again: a damaged file is skipped)."""
    from kogitune.protocol.lock import MAX_PUBLISHED_LOCK_BYTES

    found: dict[str, bytes] = {}
    directory = Path(home) / LOCKS_DIR
    for path in sorted(directory.iterdir()) if directory.is_dir() else ():
        try:
            data = read_limited(path, MAX_PUBLISHED_LOCK_BYTES)
            parse_published_lock(data, path.name)
        except (OSError, KogituneError):
            continue
        found[path.name] = data
    return found


def fetch_lock(recipe_id: str, home: Path | None = None, timeout: float | None = None) -> RecipeLock:
    """The published lock of `recipe_id`: this node's own, else from the DHT through the node daemon of `home`
    when one runs, else through a node started in this process; checked against the ID (RecipeError: not found)."""
    from .client import DEFAULT_FETCH_TIMEOUT, DaemonClient
    from .content_store import kogitune_home
    from .errors import NodeNotRunning

    if not is_recipe_id(recipe_id):
        raise RecipeError(f"{str(recipe_id)[:200]!r} is not a recipe ID (kgr1-...)")
    home = Path(home) if home is not None else kogitune_home()
    timeout = timeout or DEFAULT_FETCH_TIMEOUT
    data = published_locks(home).get(recipe_id)
    if data is None:
        try:
            data = DaemonClient(home).call("lock", timeout, id=recipe_id)["lock"].encode()
        except NodeNotRunning:
            from kogitune.node.embedded import EmbeddedNode

            from .settings import settings

            data = EmbeddedNode(settings().read_timeout, home).fetch_lock(recipe_id, timeout)
    return parse_published_lock(data, recipe_id)
