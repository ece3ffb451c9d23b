"""Collections on the network: a small layer over datasets. `node` is a running Node (node/daemon.py).

A collection (kogitune.protocol.collection) names its parts by dataset ID. Publishing one publishes every part as a
dataset (node/publish.py), then puts the collection manifest into the store as a collection directory
(copies.store_collection), signed like a dataset manifest (the signature covers the collection ID). A node
announces a collection's ID once it holds the signed manifest and every part complete, and serves the manifest
(node/server.py); a fetcher gets the manifest (it must hash to the ID) and then each part by its own ID, through
the same fetch service as any dataset (node/swarm.py). Nothing of a part is fetched or served differently for being
in a collection.

A collection has web mirrors too: a collection directory (`kogitune merge -o DIR`, or a store's
`datasets/<collection ID>/`) on a static web server serves `collection.json`, maybe its `signature`, and each part
as a dataset's mirror at `parts/<index>` (layout.part_url). `mirrors_manifest` asks the mirrors named for an ID
for both `manifest.json` and `collection.json` at once (the ID does not say which it names); a mirror whose
`collection.json` is another collection's is dropped for the collection and all its parts, and each part is then
opened by its own ID with the part's mirror under each mirror kept (OpenCollection.part_mirrors), beside its peers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import trio

from kogitune.content_store import ContentStore
from kogitune.errors import FetchError, NodeError, SourceError
from kogitune.layout import COLLECTION_FILE, part_url
from kogitune.protocol.collection import MAX_COLLECTION_BYTES, Collection, collection_file_bytes, parse_collection
from kogitune.protocol.errors import ManifestError
from kogitune.protocol.manifest import Manifest
from kogitune.protocol.signing import sign_dataset

from .copies import CollectionCopy, store_collection, stored_collection
from .pool import MinRateBody, SourceHealth, SourcePool
from .small_files import fetch_manifest, first_answer


@dataclass
class OpenCollection:
    """A collection opened by ID (Swarm.open): its checked, signed manifest in the store; its parts are opened as
    datasets, each by its own ID."""

    dataset_id: str
    directory: Path
    copy: CollectionCopy
    mirrors: list[str] = field(default_factory=list)
    """The collection's web mirrors (base URLs) named so far, less those `dropped`."""
    dropped: dict[str, str] = field(default_factory=dict)
    """Mirrors that served another collection's `collection.json`, and what they served: never used again here."""

    @property
    def parts(self) -> tuple[str, ...]:
        return self.copy.collection.parts

    def add_mirrors(self, urls) -> None:
        self.mirrors += [url for url in urls if url not in self.mirrors and url not in self.dropped]

    def part_mirrors(self, index: int) -> list[str]:
        """The web mirrors of part `index`: its place under each mirror of the collection."""
        return [part_url(url, index) for url in self.mirrors]

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


def opened_collection(store: ContentStore, collection_id: str, copy: CollectionCopy, pool: SourcePool | None = None):
    """A collection just resolved, stored as a collection directory; its mirrors those of `pool` (the mirrors named
    for it) that were not banned while it was resolved."""
    opened = OpenCollection(collection_id, store_collection(store, collection_id, copy), copy)
    for health in pool.health if pool is not None else ():
        if health.banned:
            opened.dropped[health.source.name] = health.banned
        else:
            opened.mirrors.append(health.source.name)
    return opened


def mirrors_collection(collections: dict, store: ContentStore, data: bytes, collection: Collection, pool: SourcePool):
    """The collection that web mirrors alone serve (Swarm.open_mirrors), opened once per store and kept in
    `collections`; the mirrors of `pool` that were not banned join it."""
    opened = collections.get(collection.dataset_id)
    if opened is None:
        copy = CollectionCopy(data, collection)
        opened = collections[collection.dataset_id] = opened_collection(store, collection.dataset_id, copy, pool)
    opened.add_mirrors(h.source.name for h in pool.health if not h.banned)
    return opened


async def mirrors_manifest(pool: SourcePool, dataset_id: str | None = None) -> tuple[bytes, Manifest | Collection]:
    """What the web mirrors of `pool` serve for `dataset_id` (or for whatever ID, when None), a dataset or a
    collection: `manifest.json` (small_files.fetch_manifest) and `collection.json` (`mirror_collection`) are asked
    for at once, and the first valid one wins. FetchError, naming what each mirror did, when neither comes."""
    found: list[tuple[bytes, Manifest | Collection]] = []
    why: list[str] = []

    async def tensor(nursery: trio.Nursery) -> None:
        try:
            found.append(await fetch_manifest(pool, dataset_id))
        except FetchError as exc:
            why.append(str(exc))
            return
        nursery.cancel_scope.cancel()

    async def collection(nursery: trio.Nursery) -> None:
        data = await mirror_collection(pool, dataset_id)
        if data is not None:
            found.append((data, parse_collection(data)))
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tensor, nursery)
        nursery.start_soon(collection, nursery)
    if not found:
        raise FetchError(f"{why[0] if why else 'no mirror answered'} (nor a valid {COLLECTION_FILE})")
    return found[0]


async def mirror_collection(pool: SourcePool, collection_id: str | None) -> bytes | None:
    """The bytes of the first valid `collection.json` the mirrors of `pool` serve (hashing to `collection_id` when
    given), or None. Each mirror is asked once and no failure counts against its health: a dataset's mirror has no
    `collection.json` (a 404), and a server that answers anything for any path is no liar for it. A mirror that
    serves a valid collection manifest of another ID is banned."""

    async def ask(health: SourceHealth) -> bytes | None:
        name = health.source.name
        try:
            async with health.source.stream(COLLECTION_FILE, 0) as (_, body):
                data = await MinRateBody(body, pool.limits, name).read_all(MAX_COLLECTION_BYTES, f"{name}: collection")
            collection = parse_collection(data)
        except (SourceError, ManifestError):
            return None
        if collection_id is not None and collection.dataset_id != collection_id:
            pool.ban(health, f"{COLLECTION_FILE} is the collection {collection.dataset_id}, not {collection_id}")
            return None
        health.files_verified += 1
        return data

    return await first_answer(pool.usable(), ask)


async def get_collection(node, opened: OpenCollection) -> None:
    """Fetch every part of a collection into the store, one part after the other (each part's shards at once, from
    its peers and its mirrors under the collection's), each announced as it completes (Node.get); then announce the
    collection."""
    for index, part_id in enumerate(opened.parts):
        await node.get(part_id, opened.part_mirrors(index))
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
