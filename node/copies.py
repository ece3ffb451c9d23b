"""A dataset's copy in a content store, besides its shards: the manifest that hashes to the dataset ID, the
publisher's signature of that ID, and a private dataset's allow-list as its publisher signed it. A collection's copy
is its collection manifest and the publisher's signature of the collection ID, in a collection directory whose
`parts/<index>` link to the parts' own directories in the store (`store_collection`).

The fetch service (node/swarm.py) writes a copy when it opens a dataset (`store_copy`) and reads it back when a
dataset is opened again (`stored_copy`); a training process reads it too (kogitune/client.py), to open a dataset it
already holds without the network. Files only: no trio, no libp2p.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kogitune.content_store import ContentStore
from kogitune.errors import KogituneError
from kogitune.files import read_limited, write_atomic
from kogitune.layout import (
    COLLECTION_FILE,
    MANIFEST_FILE,
    part_path,
    read_signature,
    write_allow_files,
    write_signature,
)
from kogitune.protocol.collection import MAX_COLLECTION_BYTES, Collection, parse_collection
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from kogitune.protocol.signing import allowed_peers, check_signed, check_signed_manifest, peer_id_from_public_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestCopy:
    """A manifest that hashes to its dataset ID, from wherever it came (the store, a peer, a web mirror), with the
    signature found for it: none for an unsigned copy from web mirrors, which a node does not serve on. `peer`: the
    peer that served it, if one did (it is the first source of the dataset's pool)."""

    data: bytes
    manifest: Manifest
    public_key: bytes = b""
    signature: bytes = b""
    allow: tuple[str, ...] = ()
    allow_signature: bytes = b""
    peer: object = None

    @property
    def publisher(self) -> str | None:
        return peer_id_from_public_key(self.public_key) if self.public_key else None


def stored_copy(store: ContentStore, dataset_id: str) -> ManifestCopy | None:
    """The manifest of `dataset_id` in `store` if it hashes to the ID (else None), with its signature if that
    verifies."""
    directory = store.dataset_dir(dataset_id)
    try:
        data = read_limited(directory / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        manifest = parse_manifest(data)
    except (OSError, KogituneError, ValueError):
        return None
    if manifest.dataset_id != dataset_id:
        return None
    try:
        public_key, signature = read_signature(directory)
        check_signed_manifest(dataset_id, data, public_key, signature)
    except (OSError, KogituneError, ValueError):
        return ManifestCopy(data, manifest)
    return ManifestCopy(data, manifest, public_key, signature)


def store_copy(store: ContentStore, dataset_id: str, copy: ManifestCopy, own_peer_id: str = "") -> Path:
    """Write a checked manifest (and its signature, with which a node serves the dataset on) into `store`; keep the
    allow-list of a private dataset when the publisher it names signed it (written first, as in publish, so the
    copy is never served without it). Any other list is dropped: a public dataset has none, whoever signed one, and
    a replica never inherits a list its publisher did not sign. A list held already is not dropped because another
    provider sent none. Returns the dataset's directory."""
    directory = store.make_dataset_dir(dataset_id, copy.manifest.is_private)
    if copy.allow and copy.publisher != own_peer_id:
        if allowed_peers(dataset_id, copy.manifest, copy.allow, copy.allow_signature):
            write_allow_files(directory, copy.allow, copy.allow_signature)
        else:
            log.warning(
                "%s: a provider sent an allow-list with a public manifest, or one that the publisher the "
                "manifest names did not sign; ignored",
                dataset_id,
            )
    stored = stored_copy(store, dataset_id)
    if stored is None or stored.data != copy.data:
        write_atomic(directory / MANIFEST_FILE, copy.data)
    if copy.public_key and (stored is None or stored.public_key + stored.signature != copy.public_key + copy.signature):
        write_signature(directory, copy.public_key, copy.signature)
    return directory


@dataclass(frozen=True)
class CollectionCopy:
    """A collection manifest that hashes to its ID, with the publisher's signature of that ID (none: an unsigned
    copy, which is neither served nor announced), and the peer that served it, if one did."""

    data: bytes
    collection: Collection
    public_key: bytes = b""
    signature: bytes = b""
    peer: object = None

    @property
    def publisher(self) -> str | None:
        return peer_id_from_public_key(self.public_key) if self.public_key else None


def stored_collection(store: ContentStore, collection_id: str) -> CollectionCopy | None:
    """The collection manifest of `collection_id` in `store` if it hashes to the ID (else None), with its signature
    if that verifies."""
    directory = store.dataset_dir(collection_id)
    try:
        data = read_limited(directory / COLLECTION_FILE, MAX_COLLECTION_BYTES)
        collection = parse_collection(data)
    except (OSError, KogituneError, ValueError):
        return None
    if collection.dataset_id != collection_id:
        return None
    try:
        public_key, signature = read_signature(directory)
        check_signed(collection_id, data, public_key, signature)
    except (OSError, KogituneError, ValueError):
        return CollectionCopy(data, collection)
    return CollectionCopy(data, collection, public_key, signature)


def store_collection(store: ContentStore, collection_id: str, copy: CollectionCopy) -> Path:
    """Write a checked collection manifest into `store` as a collection directory (kogitune.collection opens it):
    `collection.json`, `parts/<index>` as relative links to `../../<part ID>` (each part is a dataset of the store,
    fetched and verified by its own ID), and the signature last (a node serves and announces nothing unsigned).
    Returns the collection's directory."""
    directory = store.dataset_dir(collection_id)
    directory.mkdir(parents=True, exist_ok=True)
    for index, part_id in enumerate(copy.collection.parts):
        link = part_path(directory, index)
        if not link.is_symlink():
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(f"../../{part_id}", target_is_directory=True)
    stored = stored_collection(store, collection_id)
    if stored is None or stored.data != copy.data:
        write_atomic(directory / COLLECTION_FILE, copy.data)
    if copy.public_key and (stored is None or stored.public_key + stored.signature != copy.public_key + copy.signature):
        write_signature(directory, copy.public_key, copy.signature)
    return directory
