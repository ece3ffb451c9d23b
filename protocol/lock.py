"""Recipe locks: a training recipe pinned to dataset IDs, and its recipe ID.

A lock (`kogitune-lock/1`, docs/format.md#recipe-locks) lists a recipe's datasets in order, each by dataset ID with
its budget (`tokens` or `weight`) and hints of where to find it (`mirrors`, the local `path` and the `name` it was
locked from). The **recipe ID** (`kgr1-...`) is the SHA-256 of the canonical encoding of what decides the samples
(format, and per entry the ID and the budget), so moving a mirror or a folder does not change it, while any other
dataset, order or budget does.

A **published lock** is exactly those canonical bytes, put on the DHT under `/kogitune-lock/<recipe ID>` (lock_key):
content-addressed, so any node may store and serve it, and a node accepts one only if it hashes to the ID in its
key (parse_published_lock).
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import IntegrityError, ManifestError
from .ids import is_dataset_id, sha256
from .jsonlimits import loads
from .manifest import canonical_encoding

LOCK_FORMAT = "kogitune-lock/1"
RECIPE_ID_PREFIX = "kgr1-"
MAX_LOCK_BYTES = 8 << 20
MAX_LOCK_ENTRIES = 1 << 16
LOCK_NAMESPACE = "kogitune-lock"
"""The DHT record namespace of published locks: a lock's key is `/kogitune-lock/<recipe ID>`."""
MAX_PUBLISHED_LOCK_BYTES = 64 << 10
"""The largest published lock (its canonical bytes), about 700 entries; a larger lock is shared as a file."""
_RECIPE_ID_RE = re.compile(r"kgr1-[a-z2-7]{51}[aq]")
_HINTS = {"mirrors", "path", "name"}
_BUDGETS = {"tokens", "weight"}


@dataclass(frozen=True)
class LockedEntry:
    """One dataset of a lock: its ID, its budget (at most one of tokens and weight), and where it may be found."""

    dataset_id: str
    tokens: int | None = None
    weight: float | None = None
    mirrors: tuple[str, ...] = ()
    path: str | None = None
    name: str | None = None

    def pinned(self) -> dict[str, Any]:
        """What of the entry the recipe ID covers: the ID and the budget (a weight as its shortest decimal text,
        since the canonical encoding has no floats)."""
        pinned: dict[str, Any] = {"id": self.dataset_id}
        if self.tokens is not None:
            pinned["tokens"] = self.tokens
        if self.weight is not None:
            pinned["weight"] = repr(self.weight)
        return pinned

    def to_dict(self) -> dict[str, Any]:
        entry = self.pinned()
        entry["mirrors"] = list(self.mirrors)
        if self.path is not None:
            entry["path"] = self.path
        if self.name is not None:
            entry["name"] = self.name
        return entry


@dataclass(frozen=True)
class RecipeLock:
    entries: tuple[LockedEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"format": LOCK_FORMAT, "entries": [entry.to_dict() for entry in self.entries]}

    def pinned_bytes(self) -> bytes:
        return canonical_encoding({"format": LOCK_FORMAT, "entries": [entry.pinned() for entry in self.entries]})

    @cached_property
    def recipe_id(self) -> str:
        return recipe_id_from_digest(sha256(self.pinned_bytes()))


def recipe_id_from_digest(digest: bytes) -> str:
    return RECIPE_ID_PREFIX + base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def is_recipe_id(text: object) -> bool:
    return isinstance(text, str) and bool(_RECIPE_ID_RE.fullmatch(text))


def lock_from_dict(obj: Any) -> RecipeLock:
    """Check a decoded lock: exactly `format` and `entries` (1 to MAX_LOCK_ENTRIES), each entry an `id`, at most
    one of `tokens` (a positive integer) and `weight` (the decimal text of a positive number), and the hints
    `mirrors` (http(s) URLs), `path` and `name` (strings); else ManifestError."""
    if not isinstance(obj, dict) or set(obj) != {"format", "entries"}:
        raise ManifestError("a recipe lock is a JSON object with exactly the fields format and entries")
    if obj["format"] != LOCK_FORMAT:
        raise ManifestError(f"unknown recipe lock format {obj['format']!r}; expected {LOCK_FORMAT!r}")
    entries = obj["entries"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_LOCK_ENTRIES:
        raise ManifestError(f"a recipe lock's entries are a list of 1 to {MAX_LOCK_ENTRIES} objects")
    return RecipeLock(tuple(_entry(index, entry) for index, entry in enumerate(entries)))


def _entry(index: int, entry: Any) -> LockedEntry:
    where = f"entry {index} of the recipe lock"
    if not isinstance(entry, dict) or "id" not in entry or set(entry) - _HINTS - _BUDGETS - {"id"}:
        raise ManifestError(f"{where} is an object with id, optional tokens or weight, mirrors, path and name")
    if not isinstance(entry["id"], str) or not is_dataset_id(entry["id"]):
        raise ManifestError(f"{where}: id is not a dataset ID")
    if "tokens" in entry and "weight" in entry:
        raise ManifestError(f"{where} has both tokens and weight")
    tokens = entry.get("tokens")
    if tokens is not None and (type(tokens) is not int or not 0 < tokens < 2**63):
        raise ManifestError(f"{where}: tokens is a positive integer")
    weight = _weight(where, entry.get("weight"))
    mirrors = entry.get("mirrors", [])
    if not isinstance(mirrors, list) or not all(
        isinstance(url, str) and url.startswith(("http://", "https://")) for url in mirrors
    ):
        raise ManifestError(f"{where}: mirrors is a list of http(s) URLs")
    for hint in ("path", "name"):
        if hint in entry and not isinstance(entry[hint], str):
            raise ManifestError(f"{where}: {hint} is a string")
    return LockedEntry(entry["id"], tokens, weight, tuple(mirrors), entry.get("path"), entry.get("name"))


def _weight(where: str, text: Any) -> float | None:
    if text is None:
        return None
    try:
        weight = float(text) if isinstance(text, str) else math.nan
    except ValueError:
        weight = math.nan
    if not 0 < weight < 1e9 or repr(weight) != text:
        raise ManifestError(f'{where}: weight is the shortest decimal text of a positive number, such as "0.5"')
    return weight


def parse_lock(data: bytes) -> RecipeLock:
    """A recipe lock from its bytes (at most MAX_LOCK_BYTES of UTF-8 JSON; any layout)."""
    if len(data) > MAX_LOCK_BYTES:
        raise ManifestError(f"a recipe lock is at most {MAX_LOCK_BYTES} bytes, got {len(data)}")
    try:
        obj = loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"a recipe lock is UTF-8 JSON: {exc}") from None
    return lock_from_dict(obj)


def lock_file_bytes(lock: RecipeLock) -> bytes:
    """How `kogitune lock` lays out a lock file: indented, sorted keys, a final newline."""
    return json.dumps(lock.to_dict(), indent=1, sort_keys=True).encode("utf-8") + b"\n"


def lock_key(recipe_id: str) -> str:
    """The DHT key of a published lock, `/kogitune-lock/<recipe ID>` (its UTF-8 bytes on the wire)."""
    if not is_recipe_id(recipe_id):
        raise ManifestError(f"{str(recipe_id)[:200]!r} is not a recipe ID (kgr1-...)")
    return f"/{LOCK_NAMESPACE}/{recipe_id}"


def published_lock_bytes(lock: RecipeLock) -> bytes:
    """What publishing a lock puts on the DHT: its canonical bytes without hints (ManifestError if too large)."""
    data = lock.pinned_bytes()
    if len(data) > MAX_PUBLISHED_LOCK_BYTES:
        raise ManifestError(
            f"a published lock is at most {MAX_PUBLISHED_LOCK_BYTES} bytes, this one {len(data)}; share the file"
        )
    return data


def parse_published_lock(data: bytes, recipe_id: str) -> RecipeLock:
    """The lock a published value holds, if it is one of at most MAX_PUBLISHED_LOCK_BYTES whose SHA-256 is
    `recipe_id` (IntegrityError: another lock or any other bytes; ManifestError: too large)."""
    if len(data) > MAX_PUBLISHED_LOCK_BYTES:
        raise ManifestError(f"a published lock is at most {MAX_PUBLISHED_LOCK_BYTES} bytes, got {len(data)}")
    if recipe_id_from_digest(sha256(data)) != recipe_id:
        raise IntegrityError(f"the published lock does not hash to {recipe_id}")
    return parse_lock(data)
