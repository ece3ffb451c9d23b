"""Collections: one dataset made of data tensors (its *parts*), named by their dataset IDs in order.

A collection's manifest (`collection.json`, format `kogitune-collection/1`) lists the IDs of its parts and nothing
else; its own ID is the SHA-256 of its canonical encoding, written as a dataset ID (`kg1-...`). It copies no bytes:
the parts stay data tensors of their own, each verified by its own ID. Its samples are those of its parts, in
order. So a corpus stored as N parts (by N tasks of a job array, in any order, or re-run after a crash) has one ID
that depends only on the parts' contents and their order (docs/format.md#collections).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import ManifestError
from .ids import dataset_id_from_digest, is_dataset_id, sha256
from .jsonlimits import loads
from .manifest import Manifest, canonical_encoding, parse_manifest

COLLECTION_FORMAT = "kogitune-collection/1"
MAX_COLLECTION_BYTES = 8 << 20
"""A collection manifest of MAX_PARTS parts takes about 3.8 MB as the writer lays it out."""
MAX_PARTS = 1 << 16


@dataclass(frozen=True)
class Collection:
    """The parts of a collection, by dataset ID, in order."""

    parts: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"format": COLLECTION_FORMAT, "parts": list(self.parts)}

    def canonical_bytes(self) -> bytes:
        return canonical_encoding(self.to_dict())

    @cached_property
    def dataset_id(self) -> str:
        """The collection's own ID: the SHA-256 of its canonical encoding, as a dataset ID."""
        return dataset_id_from_digest(sha256(self.canonical_bytes()))


def collection_from_dict(obj: Any) -> Collection:
    """Check a decoded collection manifest against the schema (exactly `format` and `parts`; 1 to MAX_PARTS parts,
    each a dataset ID, none twice)."""
    if not isinstance(obj, dict):
        raise ManifestError(f"a collection manifest is a JSON object, not {type(obj).__name__}")
    if set(obj) != {"format", "parts"}:
        raise ManifestError(f"a collection manifest has exactly the fields format and parts, got {sorted(obj)}")
    if obj["format"] != COLLECTION_FORMAT:
        raise ManifestError(f"unknown collection format {obj['format']!r}; expected {COLLECTION_FORMAT!r}")
    parts = obj["parts"]
    if not isinstance(parts, list) or not 1 <= len(parts) <= MAX_PARTS:
        raise ManifestError(f"a collection's parts are a list of 1 to {MAX_PARTS} dataset IDs")
    for index, part in enumerate(parts):
        if not isinstance(part, str) or not is_dataset_id(part):
            raise ManifestError(f"part {index} of the collection is not a dataset ID: {str(part)[:80]!r}")
    if len(set(parts)) != len(parts):
        raise ManifestError("a collection names a part twice")
    return Collection(tuple(parts))


def parse_collection(data: bytes) -> Collection:
    """A collection manifest from its bytes (at most MAX_COLLECTION_BYTES, UTF-8 JSON; any layout)."""
    if len(data) > MAX_COLLECTION_BYTES:
        raise ManifestError(f"a collection manifest is at most {MAX_COLLECTION_BYTES} bytes, got {len(data)}")
    try:
        obj = loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"a collection manifest is UTF-8 JSON: {exc}") from None
    return collection_from_dict(obj)


def parse_manifest_or_collection(data: bytes) -> Manifest | Collection:
    """What an ID names, from its manifest's bytes: a data tensor's manifest, or a collection's (the answer to a
    manifest request, or `kogitune info ID`). The error is the tensor manifest's when the bytes are neither."""
    try:
        return parse_manifest(data)
    except ManifestError as exc:
        if len(data) > MAX_COLLECTION_BYTES:
            raise
        try:
            return parse_collection(data)
        except ManifestError:
            raise exc from None


def collection_file_bytes(collection: Collection) -> bytes:
    """How the writer lays out collection.json (as manifest.json: indented, sorted keys, a final newline)."""
    return json.dumps(collection.to_dict(), indent=1, sort_keys=True).encode("utf-8") + b"\n"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ManifestError("a collection manifest repeats a key")
    return dict(pairs)
