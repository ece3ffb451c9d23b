"""The fetch service: datasets opened by ID, each with one pool of sources, filling one verified content store.

A dataset's sources are the peers that provide it on the DHT and the web mirrors named for it (web seeds, as in
BitTorrent's BEP 19), all in ONE SourcePool: one scheduler (node/fetch.py's ShardFetch: piece board, failover,
bans, rate and stall rules, FetchLimits) reads each shard from all of them at once, and whatever a source did
(a ban for a wrong hash, failures) holds for every shard of the dataset. The daemon (node/daemon.py) and the
embedded node of a training process (node/embedded.py) run this same service; the sync world reaches it through
kogitune/client.py.

How a dataset is opened (`open`; where its manifest comes from is node/manifest_race.py):
- by ID alone: the signed manifest from the connected bootstrap peers, else from the providers on the DHT
  (node/providers.py); those that gave no bad answer are its sources, more providers joining in the background;
  the data port of the peer that gave it joins before the open returns (DATA_PORT_WAIT_SECONDS);
- by ID with mirrors: the mirrors and the peers race for the manifest. Peers found at any time join the pool, so a
  missing DHT never holds up a dataset that mirrors serve, and a dataset no node holds trains from its mirrors
  alone. A manifest already in the
  store that hashes to the ID is used as it is (every DataLoader worker opens the dataset again);
- by mirrors alone (`open_mirrors`): the same with no peers; the ID is the hash of the manifest they serve.

A collection ID (kogitune.protocol.collection) opens from the store, its providers or its web mirrors like a
dataset ID: its providers answer the manifest request with the signed collection manifest, its mirrors serve
`collection.json` (node/collection.py: mirrors_manifest asks for both files), which is stored as a collection
directory (copies.store_collection), and `open` returns an OpenCollection; its parts are datasets, each opened
and fetched by its own ID, with its mirrors under the collection's (a collection has no shards of its own).

One in-flight table (one fetch per shard at a time in this process; ShardFetch's lock file covers the others), at
most MAX_SHARDS_IN_FLIGHT shards at once, and one prefetch rule (PREFETCH_SHARDS).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from kogitune.content_store import ContentStore
from kogitune.errors import FetchError
from kogitune.layout import MANIFEST_FILE
from kogitune.protocol.manifest import Manifest
from kogitune.settings import settings

from .collection import OpenCollection, mirrors_collection, mirrors_manifest, opened_collection
from .copies import CollectionCopy, ManifestCopy, store_collection, store_copy, stored_collection, stored_copy
from .fetch import ShardFetch
from .have_answers import HaveAnswers
from .havemaps import refresh_for
from .manifest_race import ManifestFinder, connected_bootstrap_peers
from .metrics import SHARD_FETCH_BUCKETS, Timings
from .peer_http import add_data_port, join_data_port
from .peers import PeerSource
from .pool import SourcePool, prefetch_in_order
from .providers import connect_providers
from .sources import HttpSource

log = logging.getLogger(__name__)
MAX_SHARDS_IN_FLIGHT = settings().shards_at_once
"""Shards this service fetches at once, whatever asks for them (a trainer's wait, a prefetch, `get`)."""
DATA_PORT_WAIT_SECONDS = 0.25
"""How long an open by ID waits for the have answers (data ports) of its bootstrap peers and the providers that gave
no bad answer, asked at the same moment as the manifest (node/have_answers.py), so that the first shard starts on
HTTP rather than on the slower libp2p streams; a peer that answers later still joins."""
LOOKUP_DEFERRED_SECONDS = 1.0
"""When bootstrap peers gave the manifest, the background DHT lookup for more providers waits this long, unless a
shard fetch finds no source that holds its shard or fails: while the peers it knows deliver, its CPU time (on this
node and on the peers that answer it) would only slow the shards a trainer waits for."""
PREFETCH_SHARDS = settings().prefetch_shards
"""Shards fetched ahead of need at once. One shard already streams from every source; a second would only halve
the bandwidth of the shard a trainer waits for (at a cold start the first shard is prefetched first, so the first
batch waits for one shard, not four)."""


@dataclass
class OpenDataset:
    """A dataset being fetched: its checked manifest, its publisher (None: an unsigned copy from web mirrors, which
    this node does not serve on), and the shared health of its sources."""

    dataset_id: str
    directory: Path
    manifest: Manifest
    publisher: str | None
    pool: SourcePool
    copy: ManifestCopy
    looking_for_peers: bool = False
    look_now: trio.Event = field(default_factory=trio.Event)
    """Set when a deferred lookup for more providers should start (Swarm._look_for_peers)."""

    def trusted_by(self, trusted: frozenset[str] | None) -> bool:
        return trusted is None or self.publisher in trusted


class Swarm:
    """The fetch service of one content store. `network(optional)` gives the libp2p node that finds and reaches
    peers (the daemon's own, or the embedded client node, started on first use); None when there is none to ask
    (`optional`: the dataset has mirrors, and a node with no bootstrap peer would find nobody)."""

    def __init__(self, store: ContentStore, network, nursery: trio.Nursery, read_timeout: float) -> None:
        self.store = store
        self.network = network
        self.nursery = nursery
        self.read_timeout = read_timeout
        self.manifests = ManifestFinder(network, read_timeout)
        """Where a manifest the store lacks comes from (node/manifest_race.py)."""
        self.bytes_fetched = 0
        self.shard_timings = Timings(SHARD_FETCH_BUCKETS)
        """How long each shard fetch took, by outcome (ok, failed): node/metrics.py."""
        self.opened: dict[str, OpenDataset] = {}
        self.collections: dict[str, OpenCollection] = {}
        self._opening: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self._fetching: dict[tuple[str, int], trio.Event] = {}
        self._shards = trio.CapacityLimiter(MAX_SHARDS_IN_FLIGHT)
        self._prefetch = trio.CapacityLimiter(PREFETCH_SHARDS)
        self.on_stored: Callable[[OpenDataset], None] | None = None
        """Called with the OpenDataset after each shard this service put in the store (the daemon announces a
        dataset once it holds one shard of it: node/daemon.py)."""

    # ---- opening ------------------------------------------------------------------------------------------------

    async def open(
        self, dataset_id: str, mirrors=(), trusted: frozenset[str] | None = None, peers: bool = True
    ) -> OpenDataset | OpenCollection:
        """The dataset or collection `dataset_id`, opened once per process and kept: its manifest checked, a
        dataset's sources in one pool. `mirrors` join the pool of a dataset opened already; with `peers` False no
        peer is looked for (a recipe entry of mirror URLs alone)."""
        mirrors = tuple(dict.fromkeys(str(m).rstrip("/") for m in mirrors))
        async with self._opening[dataset_id]:
            collection = self.collections.get(dataset_id) or self._stored_collection(dataset_id)
            if collection is not None and collection.trusted_by(trusted):
                self.collections[dataset_id] = collection
                collection.add_mirrors(mirrors)
                return collection
            opened = self.opened.get(dataset_id)
            if opened is None or not opened.trusted_by(trusted):
                resolved = await self._resolve(dataset_id, mirrors, trusted, peers)
                if isinstance(resolved, OpenCollection):
                    self.collections[dataset_id] = resolved
                    return resolved
                opened = self.opened[dataset_id] = resolved
            elif not (opened.directory / MANIFEST_FILE).exists():  # the store was removed or evicted meanwhile
                store_copy(self.store, dataset_id, opened.copy)
            for url in mirrors:
                opened.pool.add(HttpSource(url, self.read_timeout))
            if peers and not opened.looking_for_peers and mirrors:
                self._look_for_peers(opened)
            return opened

    async def open_dataset(self, dataset_id: str, mirrors=(), peers: bool = True) -> OpenDataset:
        """`open`, for what needs a dataset's shards: a collection is refused (its parts are datasets)."""
        opened = await self.open(dataset_id, mirrors, peers=peers)
        if isinstance(opened, OpenCollection):
            raise FetchError(f"{dataset_id} is a collection of {len(opened.parts)} parts: open its parts by their IDs")
        return opened

    def _stored_collection(self, collection_id: str) -> OpenCollection | None:
        """The signed collection of this ID in the store, if there is one."""
        copy = stored_collection(self.store, collection_id)
        if copy is None or copy.publisher is None:
            return None
        return OpenCollection(collection_id, self.store.dataset_dir(collection_id), copy)

    async def open_mirrors(self, mirrors) -> OpenDataset | OpenCollection:
        """A dataset that web mirrors serve, named by them alone: its ID is the hash of the manifest they serve
        (the first valid one; a mirror serving another is then a failed source of this dataset). No peer is looked
        for, and no signature: the copy is one the user chose by its URLs. Mirrors of a collection give the
        collection (its parts are then opened by their IDs)."""
        pool = SourcePool([HttpSource(str(url).rstrip("/"), self.read_timeout) for url in mirrors])
        data, manifest = await mirrors_manifest(pool)
        dataset_id = manifest.dataset_id
        if not isinstance(manifest, Manifest):
            return mirrors_collection(self.collections, self.store, data, manifest, pool)
        async with self._opening[dataset_id]:
            if dataset_id not in self.opened:
                copy = ManifestCopy(data, manifest)
                directory = store_copy(self.store, dataset_id, copy)
                self.opened[dataset_id] = OpenDataset(dataset_id, directory, manifest, None, pool, copy)
                return self.opened[dataset_id]
        return await self.open_dataset(dataset_id, [h.source.name for h in pool.health], peers=False)

    async def _resolve(self, dataset_id: str, mirrors, trusted, peers: bool) -> OpenDataset | OpenCollection:
        if not mirrors:
            return await self._resolve_from_peers(dataset_id, trusted)
        pool = SourcePool([HttpSource(url, self.read_timeout) for url in mirrors])
        copy = stored_copy(self.store, dataset_id) or stored_collection(self.store, dataset_id)
        if copy is None or (trusted is not None and copy.publisher not in trusted):
            copy = await self.manifests.from_mirrors_and_peers(dataset_id, pool, trusted, peers)
        if isinstance(copy, CollectionCopy):
            return opened_collection(self.store, dataset_id, copy, pool)
        directory = store_copy(self.store, dataset_id, copy)
        opened = OpenDataset(dataset_id, directory, copy.manifest, copy.publisher, pool, copy)
        if copy.peer is not None:
            self._add_peer(opened.pool, await self.network(optional=False), copy.peer, dataset_id, copy.manifest)
        return opened

    async def peek(self, dataset_id: str) -> ManifestCopy | CollectionCopy:
        """The signed manifest of a dataset or collection, to look at (`kogitune info ID`): the copy opened or
        stored here, else one from its providers, as `open` gets it, but written nowhere and fetching no shard."""
        collection = self.collections.get(dataset_id) or self._stored_collection(dataset_id)
        if collection is not None:
            return collection.copy
        opened = self.opened.get(dataset_id)
        stored = opened.copy if opened is not None else stored_copy(self.store, dataset_id)
        if stored is not None and stored.publisher is not None:
            return stored
        return (await self.manifests.from_peers(dataset_id, None))[1]

    async def _resolve_from_peers(self, dataset_id: str, trusted) -> OpenDataset | OpenCollection:
        """The signed manifest from peers (ManifestFinder.from_peers), stored; the providers that gave no bad answer
        are its sources (found in the background when a bootstrap peer answered first). Beside the manifest, the
        connected bootstrap peers are asked for their have answer (node/have_answers.py): each one that holds the
        dataset joins its pool with its data port. The open waits for their answers (within DATA_PORT_WAIT_SECONDS;
        usually in already), so the first shard starts on every data port. A collection's manifest is stored as a
        collection directory."""
        network = await self.network(optional=False)
        haves = HaveAnswers(network.host, dataset_id, self.read_timeout, self.nursery)
        for peer in connected_bootstrap_peers(network):
            haves.ask(peer)
        network, copy, reachable, failed, look_for_more = await self.manifests.from_peers(dataset_id, trusted)
        if isinstance(copy, CollectionCopy):
            return OpenCollection(dataset_id, store_collection(self.store, dataset_id, copy), copy)
        sources = [copy.peer] + [p for p in reachable if p != copy.peer and str(p) not in failed]
        directory = store_copy(self.store, dataset_id, copy, network.peer_id)
        pool = SourcePool(
            [PeerSource(network.host, peer, dataset_id, copy.manifest, self.read_timeout) for peer in sources]
        )
        seed = network.seed if copy.manifest.access is not None else None

        def join(peer_id, found, shards: bytes) -> None:  # a peer's have answer: it holds the dataset
            if str(peer_id) in failed:  # it gave a bad or untrusted manifest
                return
            if not any(isinstance(h.source, PeerSource) and h.source.identity == str(peer_id) for h in pool.health):
                pool.add(PeerSource(network.host, peer_id, dataset_id, copy.manifest, self.read_timeout))
            add_data_port(pool, peer_id, found, shards, dataset_id, self.read_timeout, seed)

        for peer in sources:
            haves.ask(peer)
        haves.attach(join)
        await haves.wait(DATA_PORT_WAIT_SECONDS)
        opened = OpenDataset(dataset_id, directory, copy.manifest, copy.publisher, pool, copy)
        if look_for_more:
            self._look_for_peers(opened, skip=frozenset(failed), deferred=True)
        return opened

    def _look_for_peers(self, opened: OpenDataset, skip: frozenset[str] = frozenset(), deferred: bool = False) -> None:
        """In the background, providers of a dataset join its pool as they are found (but those in `skip`: peers
        that failed to give its manifest). `deferred` (an open by ID whose bootstrap peers gave the manifest): the
        lookup starts after LOOKUP_DEFERRED_SECONDS, or once a shard fetch finds no source that holds its shard or
        fails, so that its CPU time does not slow the shards the known peers are delivering; a fetch
        with no source left waits for it all the same (SourcePool.more_sources)."""
        opened.looking_for_peers = True

        async def look() -> None:
            try:
                if deferred:
                    with trio.move_on_after(LOOKUP_DEFERRED_SECONDS):
                        await opened.look_now.wait()
                network = await self.network(optional=True)
                if network is None:
                    return
                providers = [p for p in await network.find_providers(opened.dataset_id) if str(p.peer_id) not in skip]
                failed: dict[str, str] = {}
                for peer in await connect_providers(network, providers, failed) if providers else []:
                    self._add_peer(opened.pool, network, peer, opened.dataset_id, opened.manifest)
            except Exception as exc:  # the dataset has sources already; more peers are a bonus
                log.info("looking for peers of %s failed: %s", opened.dataset_id, exc)
            finally:
                opened.pool.search_ended()

        opened.pool.search_started()
        self.nursery.start_soon(look)

    def _add_peer(self, pool: SourcePool, network, peer, dataset_id: str, manifest: Manifest) -> None:
        """A provider joins a dataset's pool: its libp2p source now, its data port when it names one."""
        if any(h.source.identity == str(peer) for h in pool.health):
            return
        pool.add(PeerSource(network.host, peer, dataset_id, manifest, self.read_timeout))
        self._join_data_port(pool, network, peer, dataset_id, manifest)

    def _join_data_port(self, pool: SourcePool, network, peer, dataset_id: str, manifest: Manifest) -> None:
        """The provider's data port joins the pool in the background when it names one: over TLS, signed with this
        node's identity, for a private dataset (node/tlsdata.py)."""
        seed = network.seed if manifest.access is not None else None
        self.nursery.start_soon(join_data_port, pool, network.host, peer, dataset_id, self.read_timeout, seed)

    # ---- fetching -----------------------------------------------------------------------------------------------

    async def fetch_shard(self, dataset_id: str, index: int, mirrors=(), peers: bool = True) -> Path:
        """Shard `index` of the dataset, verified in the store (fetched unless it is there); its directory."""
        opened = await self.open_dataset(dataset_id, mirrors, peers=peers)
        shard = opened.manifest.shards[index]
        key = (dataset_id, index)
        while key in self._fetching:
            await self._fetching[key].wait()
        if not (opened.directory / shard.tokens_path).exists():
            self._fetching[key] = trio.Event()
            try:
                async with self._shards:
                    await refresh_for(opened.pool, len(opened.manifest.shards), index)
                    if not opened.pool.usable(index):  # no source known to hold it: a deferred lookup starts now
                        opened.look_now.set()
                    await self._fetch(opened, shard)
            except BaseException:
                opened.look_now.set()  # the shard failed: more providers may help
                raise
            finally:
                self._fetching.pop(key).set()
        return opened.directory

    async def _fetch(self, opened: OpenDataset, shard) -> None:
        """One shard into the store, timed (shard_timings: "ok", or "failed" when it raised or was cancelled)."""
        started, outcome = trio.current_time(), "failed"
        try:
            fetch = ShardFetch(opened.directory, opened.manifest, shard, opened.pool)
            await self.nursery.start(fetch.run)
            outcome = "ok"
        finally:
            self.shard_timings.observe(outcome, trio.current_time() - started)
        self.bytes_fetched += sum(fetch.bytes_by_source.values())
        if self.on_stored is not None:
            self.on_stored(opened)

    async def prefetch(self, dataset_id: str, indexes: list[int], mirrors=(), peers: bool = True) -> None:
        """Fetch shards ahead of need, in this order, at most PREFETCH_SHARDS at a time, so that a shard someone is
        waiting for (fetch_shard) is not starved by look-ahead. Failures only log: the wait for the shard reports
        them."""

        async def fetch(index: int) -> None:
            await self.fetch_shard(dataset_id, index, mirrors, peers)

        await prefetch_in_order(self.nursery, self._prefetch, indexes, fetch)

    async def get(self, dataset_id: str, mirrors=()) -> OpenDataset:
        """Every shard of the dataset into the store (MAX_SHARDS_IN_FLIGHT at a time)."""
        opened = await self.open_dataset(dataset_id, mirrors)
        async with trio.open_nursery() as nursery:
            for index in range(len(opened.manifest.shards)):
                nursery.start_soon(self.fetch_shard, dataset_id, index)
        return opened

    def forget(self, dataset_id: str) -> None:
        """Drop what this service keeps of a dataset removed from the store (its opened state and sources)."""
        self.opened.pop(dataset_id, None)
        self.collections.pop(dataset_id, None)

    def bytes_verified(self, dataset_id: str) -> int:
        """Bytes of `dataset_id` fetched and verified since it was opened (0 if it is not): counted piece by piece,
        so a progress bar moves while a shard arrives."""
        opened = self.opened.get(dataset_id)
        return sum(health.bytes_verified for health in opened.pool.health) if opened else 0

    def source_bytes(self, dataset_id: str) -> dict[str, int]:
        """Verified bytes of the dataset from each of its sources (by name: a mirror's URL, "peer <ID>")."""
        opened = self.opened.get(dataset_id)
        return {h.source.name: h.bytes_verified for h in opened.pool.health} if opened else {}
