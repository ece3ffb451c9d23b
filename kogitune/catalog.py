"""The catalog of a content store (`kogitune ls`): each dataset and collection it holds, read from the store alone.

A node serves and announces a dataset of its store when the dataset is complete (every shard there) and signed by
its publisher (published here, or fetched from peers); a copy from web mirrors alone carries no signature and is
neither served nor announced. Which datasets a running node announces now is the node's to say (control op
`status`, "datasets"): the catalog reads files only, so it works with no node running.

The columns of the plain listing are CATALOG_COLUMNS, one (header, cell) pair each, so that a column (a dataset's
name, say) is one entry more; collections (`datasets/<collection ID>/collection.json`, its parts linked from the
parts' own dataset directories) are listed after the datasets, in COLLECTION_COLUMNS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from kogitune.protocol.collection import MAX_COLLECTION_BYTES, parse_collection
from kogitune.protocol.ids import is_dataset_id
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, parse_manifest

from .content_store import ContentStore
from .errors import KogituneError
from .files import read_limited
from .layout import COLLECTION_FILE, MANIFEST_FILE, PINNED_FILE, SIGNATURE_FILE


@dataclass(frozen=True)
class HeldDataset:
    """One dataset of a content store, as its manifest and files say."""

    dataset_id: str
    tokenizer: str
    """The tokenizer ID (e.g. gpt2-f04f); its name is `tokenizer_name`."""
    tokenizer_name: str
    documents: int
    tokens: int
    size: int
    """Bytes of all its shards' tokens files, held or not."""
    shards: int
    shards_held: int
    size_held: int
    private: bool
    """Its manifest restricts it to the peers its publisher allows (`publish --allow`)."""
    signed: bool
    """The publisher's signature is here: a node serves it, and announces it once complete."""
    pinned: bool
    """Kept from eviction by `cache gc` (a published dataset is pinned)."""

    @property
    def complete(self) -> bool:
        return self.shards_held == self.shards

    def to_json(self, announced: bool | None = None) -> dict:
        """Its fields, `complete`, and `announced` (None: no node was asked)."""
        return {**asdict(self), "complete": self.complete, "announced": announced}


def held_datasets(store: ContentStore) -> list[HeldDataset]:
    """Every dataset of the store with a readable manifest that hashes to its directory's name, by ID."""
    found: list[HeldDataset] = []
    if not store.datasets.is_dir():
        return found
    for directory in sorted(store.datasets.iterdir()):
        if not is_dataset_id(directory.name):
            continue
        try:
            manifest = parse_manifest(read_limited(directory / MANIFEST_FILE, MAX_MANIFEST_BYTES))
        except (OSError, KogituneError):
            continue
        if manifest.dataset_id != directory.name:
            continue
        held = [shard for shard in manifest.shards if (directory / shard.tokens_path).is_file()]
        found.append(
            HeldDataset(
                dataset_id=directory.name,
                tokenizer=manifest.tokenizer.id,
                tokenizer_name=manifest.tokenizer.name,
                documents=manifest.documents,
                tokens=manifest.tokens,
                size=sum(shard.size for shard in manifest.shards),
                shards=len(manifest.shards),
                shards_held=len(held),
                size_held=sum(shard.size for shard in held),
                private=manifest.is_private,
                signed=(directory / SIGNATURE_FILE).is_file(),
                pinned=(directory / PINNED_FILE).exists(),
            )
        )
    return found


def _completeness(dataset: HeldDataset) -> str:
    return "yes" if dataset.complete else f"{dataset.shards_held}/{dataset.shards} shards"


def _access(dataset: HeldDataset) -> str:
    return "private" if dataset.private else "public"


CATALOG_COLUMNS: list[tuple[str, Callable[[HeldDataset], str]]] = [
    ("ID", lambda d: d.dataset_id),
    ("TOKENIZER", lambda d: d.tokenizer),
    ("DOCUMENTS", lambda d: f"{d.documents:,}"),
    ("TOKENS", lambda d: f"{d.tokens:,}"),
    ("SIZE", lambda d: f"{d.size / 1e6:.1f} MB"),
    ("COMPLETE", _completeness),
    ("ACCESS", _access),
]
"""The plain listing's columns, left to right: (header, the cell of one dataset)."""


def catalog_table(datasets: list, announced: set[str] | None, columns: list | None = None) -> list[str]:
    """The plain listing: a header line and one line per dataset (or collection, with COLLECTION_COLUMNS), columns
    padded to their widest cell; with `announced` (the IDs a running node announces), an ANNOUNCED column."""
    columns = list(CATALOG_COLUMNS if columns is None else columns)
    if announced is not None:
        columns.append(("ANNOUNCED", lambda d: "yes" if d.dataset_id in announced else "no"))
    rows = [[header for header, _ in columns]] + [[cell(d) for _, cell in columns] for d in datasets]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return ["  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in rows]


@dataclass(frozen=True)
class HeldCollection:
    """One collection of a content store: its parts' IDs, and what the store holds of them."""

    dataset_id: str
    parts: tuple[str, ...]
    parts_held: int
    """Parts whose dataset is complete in the store."""
    size: int
    """Bytes of the shards of the parts whose manifest the store holds (all parts' when it holds every one)."""
    signed: bool

    @property
    def complete(self) -> bool:
        return self.parts_held == len(self.parts)

    def to_json(self, announced: bool | None = None) -> dict:
        return {**asdict(self), "collection": True, "complete": self.complete, "announced": announced}


def held_collections(store: ContentStore, datasets: list[HeldDataset] | None = None) -> list[HeldCollection]:
    """Every collection of the store whose collection.json hashes to its directory's name, by ID; `datasets`, the
    store's held_datasets if already read."""
    found: list[HeldCollection] = []
    if not store.datasets.is_dir():
        return found
    held = {d.dataset_id: d for d in (held_datasets(store) if datasets is None else datasets)}
    for directory in sorted(store.datasets.iterdir()):
        if not is_dataset_id(directory.name):
            continue
        try:
            collection = parse_collection(read_limited(directory / COLLECTION_FILE, MAX_COLLECTION_BYTES))
        except (OSError, KogituneError):
            continue
        if collection.dataset_id != directory.name:
            continue
        parts = [held[part] for part in collection.parts if part in held]
        found.append(
            HeldCollection(
                dataset_id=directory.name,
                parts=collection.parts,
                parts_held=sum(part.complete for part in parts),
                size=sum(part.size for part in parts),
                signed=(directory / SIGNATURE_FILE).is_file(),
            )
        )
    return found


def parts_used_elsewhere(store: ContentStore, collection_id: str) -> set[str]:
    """The IDs that another collection of the store, or a recipe lock published from it (<home>/locks), names:
    parts that `kogitune rm` of `collection_id` keeps."""
    from kogitune.protocol.lock import parse_published_lock

    from .lock import published_locks

    used = {part for c in held_collections(store) if c.dataset_id != collection_id for part in c.parts}
    for recipe_id, data in published_locks(store.home).items():
        used.update(entry.dataset_id for entry in parse_published_lock(data, recipe_id).entries)
    return used


def catalog_listing(datasets: list[HeldDataset], collections: list[HeldCollection], announced) -> str:
    """`kogitune ls`: the datasets' table, then the collections' (each only when there is one)."""
    tables = [catalog_table(datasets, announced)] if datasets else []
    tables += [catalog_table(collections, announced, COLLECTION_COLUMNS)] if collections else []
    return "\n\n".join("\n".join(table) for table in tables)


def collection_removal(store: ContentStore, collection_id: str, all_parts: bool) -> tuple[list[str], list[str]]:
    """What `kogitune rm ID` removes: ([ID], []) for a dataset; for a collection, (the collection, then those of its
    parts held here that no other collection or published lock names, or with `all_parts` every part held; the
    parts it keeps)."""
    if not (store.dataset_dir(collection_id) / COLLECTION_FILE).is_file():
        return [collection_id], []
    found = [c for c in held_collections(store) if c.dataset_id == collection_id]
    if not found:
        raise KogituneError(f"{store.dataset_dir(collection_id)}: no collection.json of {collection_id}")
    held = [part for part in dict.fromkeys(found[0].parts) if store.dataset_dir(part).is_dir()]
    used = set() if all_parts else parts_used_elsewhere(store, collection_id)
    return [collection_id, *(part for part in held if part not in used)], [part for part in held if part in used]


COLLECTION_COLUMNS: list[tuple[str, Callable[[HeldCollection], str]]] = [
    ("COLLECTION", lambda c: c.dataset_id),
    ("PARTS", lambda c: f"{len(c.parts):,}"),
    ("SIZE", lambda c: f"{c.size / 1e6:.1f} MB"),
    ("COMPLETE", lambda c: "yes" if c.complete else f"{c.parts_held}/{len(c.parts)} parts"),
]
"""The columns of the collections' listing (after the datasets')."""
