"""Reading a collection directory (`kogitune merge`) as one dataset: the samples of its parts, in order.

A collection directory holds `collection.json` (kogitune.protocol.collection: the parts' dataset IDs) and
`parts/<index>`, each a data tensor directory or a link to one. `DataCollection` opens every part (each verified
by its own manifest and checked to have the ID the collection names) and reads them as one tensor: the shards of
part 0, then those of part 1, and so on. `open_local` opens a directory as a DataTensor or a DataCollection,
whichever it holds: recipes and the `info`, `verify` and `head` commands open local paths through it. A collection
opened by ID (kogitune.client.open_dataset_id) opens its parts by their IDs instead (`open_part`): each part is then
a dataset of the content store, its shards fetched on demand.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kogitune.protocol.collection import MAX_COLLECTION_BYTES, Collection, parse_collection
from kogitune.protocol.errors import ManifestError
from kogitune.protocol.manifest import Manifest, ShardInfo

from .errors import TensorError, TokenizerError
from .files import read_limited
from .layout import COLLECTION_FILE, part_path
from .tensor import DataTensor, Problem


def is_collection_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / COLLECTION_FILE).is_file()


def open_local(path: str | os.PathLike) -> DataTensor | DataCollection:
    """The data tensor or the collection in directory `path`."""
    return DataCollection(path) if is_collection_dir(path) else DataTensor(path)


class DataCollection:
    """A collection directory opened for reading: its parts' samples, in order, as one tensor.

    It reads as a DataTensor does (`shards`, `shard_tokens`, `block`, `tokens`, `verify`, `shard_token_counts`,
    `prefetch`), with the shards of all parts in order. `manifest` sums the parts up for display and checks
    (tokenizer, block size, counts, the shards in order); it is no tensor's manifest: the collection's ID is
    `dataset_id`. `open_part(index, part_id)` opens a part (default: the tensor at `parts/<index>`).
    """

    def __init__(self, path: str | os.PathLike, open_part: Callable[[int, str], DataTensor] | None = None) -> None:
        self.path = Path(path)
        manifest_path = self.path / COLLECTION_FILE
        try:
            self.collection: Collection = parse_collection(read_limited(manifest_path, MAX_COLLECTION_BYTES))
        except ManifestError as exc:
            raise ManifestError(f"{manifest_path}: {exc}") from None
        self.dataset_id = self.collection.dataset_id
        self.parts = [self._open_part(i, part_id, open_part) for i, part_id in enumerate(self.collection.parts)]
        self.manifest = summarize_parts(self.parts)
        self._part_of_shard = [(p, i) for p, part in enumerate(self.parts) for i in range(len(part.shards))]
        self.shard_first_block = np.cumsum([0] + [s.blocks for s in self.manifest.shards])

    def __repr__(self) -> str:
        return f"DataCollection({str(self.path)!r}, {self.dataset_id}, {len(self.parts)} parts)"

    def _open_part(self, index: int, part_id: str, open_part) -> DataTensor:
        place = part_path(self.path, index)
        if open_part is not None:  # not kept: a DataLoader worker gets the opened parts, pickled
            tensor = open_part(index, part_id)
        elif not place.exists():
            raise TensorError(f"{self.path}: part {index} ({part_id}) is missing: no tensor at {place}")
        else:
            tensor = DataTensor(place)
        if tensor.dataset_id != part_id:
            raise TensorError(
                f"{place} is {tensor.dataset_id}, but the collection names {part_id} as part {index}: "
                "merge the parts again"
            )
        return tensor

    @property
    def remote(self):
        """Truthy when a part fetches missing shards (the dataset then prefetches ahead of need)."""
        return next((part.remote for part in self.parts if part.remote is not None), None)

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self.manifest.shards

    def shard_path(self, index: int) -> Path:
        """Where shard `index`'s tokens are: in the part that holds it."""
        part, shard = self._part_of_shard[index]
        return self.parts[part].shard_path(shard)

    def shard_tokens(self, index: int) -> np.ndarray:
        part, shard = self._part_of_shard[index]
        return self.parts[part].shard_tokens(shard)

    def shard_token_counts(self) -> list[int]:
        """The real tokens (padding excluded) of each shard, in order: each part pads its own last block."""
        return [count for part in self.parts for count in part.shard_token_counts()]

    def prefetch(self, indexes) -> None:
        """Ask the parts for these shards (the collection's indexes), in this order."""
        wanted: dict[int, list[int]] = {}
        for index in indexes:
            part, shard = self._part_of_shard[index]
            wanted.setdefault(part, []).append(shard)
        for part, shards in wanted.items():
            self.parts[part].prefetch(shards)

    def block(self, index: int) -> np.ndarray:
        if not 0 <= index < self.manifest.blocks:
            raise IndexError(f"block {index} is out of range for a collection of {self.manifest.blocks} blocks")
        shard = int(np.searchsorted(self.shard_first_block, index, side="right")) - 1
        start = (index - int(self.shard_first_block[shard])) * self.manifest.block_size
        return self.shard_tokens(shard)[start : start + self.manifest.block_size]

    def tokens(self) -> np.ndarray:
        """All real tokens of all parts, in order (each part's padding excluded); for inspection and tests."""
        return np.concatenate([part.tokens() for part in self.parts])

    def verify(self) -> list[Problem]:
        """Every part's problems, their shards named `<part>/<shard>`."""
        return [
            Problem(f"{index:05d}/{problem.shard}", problem.file, problem.message)
            for index, part in enumerate(self.parts)
            for problem in part.verify()
        ]


def summarize_parts(parts: list[DataTensor]) -> Manifest:
    """The summary manifest of a collection of `parts` (see DataCollection); TokenizerError or TensorError if the
    parts cannot be read as one dataset (other tokenizers, block sizes or dtypes)."""
    first = parts[0].manifest
    for part in parts[1:]:
        m = part.manifest
        if m.tokenizer.fingerprint != first.tokenizer.fingerprint:
            raise TokenizerError(
                f"{part.path} was tokenized with {m.tokenizer.id}, {parts[0].path} with {first.tokenizer.id}"
            )
        if (m.block_size, m.dtype) != (first.block_size, first.dtype):
            raise TensorError(
                f"{part.path} has blocks of {m.block_size} {m.dtype}, {parts[0].path} of {first.block_size} {first.dtype}"
            )
    return Manifest(
        tokenizer=first.tokenizer,
        dtype=first.dtype,
        block_size=first.block_size,
        piece_size=first.piece_size,
        documents=sum(p.manifest.documents for p in parts),
        tokens=sum(p.manifest.tokens for p in parts),
        blocks=sum(p.manifest.blocks for p in parts),
        shards=tuple(shard for part in parts for shard in part.shards),
        provenance={"inputs": [entry for p in parts for entry in p.manifest.provenance.get("inputs", [])]},
    )
