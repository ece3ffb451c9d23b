"""Collections on the network: a small layer over datasets. `node` is a running Node (node/daemon.py).

A collection (kogitune.protocol.collection) names its parts by dataset ID. Publishing one publishes every part as a
dataset (node/publish.py), then puts the collection manifest into the store as a collection directory
(copies.store_collection), signed like a dataset manifest (the signature covers the collection ID). A node
announces a collection's ID once it holds the signed manifest and every part complete, and serves the manifest
(node/server.py); a fetcher gets the manifest (it must hash to the ID) and then each part by its own ID, through
the same fetch service as any dataset (node/swarm.py). Nothing of a part is fetched or served differently for being
in a collection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trio

from kogitune.errors import NodeError
from kogitune.protocol.collection import collection_file_bytes
from kogitune.protocol.signing import sign_dataset

from .copies import CollectionCopy, store_collection, stored_collection


@dataclass
class OpenCollection:
    """A collection opened by ID (Swarm.open): its checked, signed manifest in the store; its parts are opened as
    datasets, each by its own ID."""

    dataset_id: str
    directory: Path
    copy: CollectionCopy

    @property
    def parts(self) -> tuple[str, ...]:
        return self.copy.collection.parts

    @property
    def publisher(self) -> str | None:
        return self.copy.publisher

    def trusted_by(self, trusted: frozenset[str] | None) -> bool:
        return trusted is None or self.publisher in trusted


async def publish_collection(node, path: str, allow: list[str] | None = None) -> str:
    """Publish every part of the collection directory `path` (each verified, stored, signed and announced as a
    dataset), then the collection manifest: stored, signed, pinned and announced. Returns the collection ID."""
    from kogitune.collection import DataCollection

    if allow:
        raise NodeError(
            f"{path} is a collection, which is published for everyone: publish its parts with --allow one by one "
            "to make them private"
        )
    local = await trio.to_thread.run_sync(DataCollection, path)
    for part, part_id in zip(local.parts, local.collection.parts):
        published = await node.publish(str(part.path))
        if published != part_id:
            raise NodeError(f"{part.path} changed while it was being published ({published}, not {part_id})")
    collection_id = local.dataset_id
    signature, public_key = sign_dataset(node.seed, collection_id)
    copy = CollectionCopy(collection_file_bytes(local.collection), local.collection, public_key, signature)
    await trio.to_thread.run_sync(store_collection, node.store, collection_id, copy)
    node.store.pin(collection_id)
    await node.announce(collection_id)
    return collection_id


async def get_collection(node, opened: OpenCollection) -> None:
    """Fetch every part of a collection into the store, one part after the other (each part's shards at once),
    each announced as it completes (Node.get); then announce the collection."""
    for part_id in opened.parts:
        await node.get(part_id)
    if node.config.server and opened.publisher is not None:
        node.nursery.start_soon(node.announce, opened.dataset_id)


def complete_collections(node, complete_datasets: set[str]) -> list[str]:
    """The collections of the store that a node announces: signed, with every part among `complete_datasets`."""
    found = []
    for directory in sorted(node.store.datasets.glob("kg1-*")):
        if directory.name in complete_datasets:
            continue
        copy = stored_collection(node.store, directory.name)
        if copy is not None and copy.publisher is not None and set(copy.collection.parts) <= complete_datasets:
            found.append(directory.name)
    return found


async def collection_status(node, collection_id: str, parts: tuple[str, ...]) -> list[dict]:
    """`kogitune status` of a collection: the providers of the collection ID (each holds every part, or it would
    not announce it), then each part's providers and shards (providers.providers_status), all parts at once."""
    from .providers import STATUS_ANSWER_SECONDS, providers_status

    providers = await node.find_providers(collection_id, STATUS_ANSWER_SECONDS)
    report = [{"peer": str(i.peer_id), "collection": True} for i in providers if str(i.peer_id) != node.peer_id]
    if collection_id in await trio.to_thread.run_sync(node.complete_datasets):
        report.insert(0, {"peer": node.peer_id, "collection": True, "this_node": True})
    by_part: dict[int, list[dict]] = {}

    async def part_status(index: int, part_id: str) -> None:
        try:
            by_part[index] = await providers_status(node, part_id)
        except Exception as exc:
            by_part[index] = [{"peer": "-", "error": str(exc)}]

    async with trio.open_nursery() as nursery:
        for index, part_id in enumerate(parts):
            nursery.start_soon(part_status, index, part_id)
    for index, part_id in enumerate(parts):
        report += [{**entry, "part": index, "part_id": part_id} for entry in by_part[index]]
    return report
