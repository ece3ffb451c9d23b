"""The catalog of a content store (`kogitune ls`): each dataset it holds, read from the store alone.

A node serves and announces a dataset of its store when the dataset is complete (every shard there) and signed by
its publisher (published here, or fetched from peers); a copy from web mirrors alone carries no signature and is
neither served nor announced. Which datasets a running node announces now is the node's to say (control op
`status`, "datasets"): the catalog reads files only, so it works with no node running.

The columns of the plain listing are CATALOG_COLUMNS, one (header, cell) pair each, so that a column (a dataset's
name, say) is one entry more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from kogitune.protocol.ids import is_dataset_id
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, parse_manifest

from .content_store import ContentStore
from .errors import KogituneError
from .files import read_limited
from .layout import MANIFEST_FILE, PINNED_FILE, SIGNATURE_FILE


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


def catalog_table(datasets: list[HeldDataset], announced: set[str] | None) -> list[str]:
    """The plain listing: a header line and one line per dataset, columns padded to their widest cell; with
    `announced` (the IDs a running node announces), an ANNOUNCED column."""
    columns = list(CATALOG_COLUMNS)
    if announced is not None:
        columns.append(("ANNOUNCED", lambda d: "yes" if d.dataset_id in announced else "no"))
    rows = [[header for header, _ in columns]] + [[cell(d) for _, cell in columns] for d in datasets]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return ["  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in rows]
