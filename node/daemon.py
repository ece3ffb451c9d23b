"""The Kogitune node: a libp2p host, a Kademlia DHT, the data server, the fetch service, and what the control API
asks of them.

A node in server mode (the daemon, `kogitune node start`) serves its store and announces one provider record per
dataset it holds the signed manifest and at least one verified shard of (under ids.provider_key): at once when it
fetched that first shard (it serves what it holds while it fetches the rest; peers ask which shards, node/havemaps.py),
again every `reprovide_interval` and after connecting to bootstrap peers; it takes part in the training jobs its
trainers name (node/jobs.py). A node
in client mode (embedded in a training process when no daemon runs) only fetches: it neither serves nor announces.
Everything fetched goes through the fetch service (node/swarm.py), which this node's `swarm` runs on its store;
finding providers is node/providers.py, publishing node/publish.py, collections node/collection.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from kogitune.content_store import ContentStore
from kogitune.layout import SIGNATURE_FILE
from kogitune.protocol import wire
from kogitune.settings import settings

from . import collection, locks, names, providers, publish
from .collection import OpenCollection
from .dataport import DataPort
from .host import keep_dht_clients_out, load_identity_seed, new_kogitune_host
from .integrity import CHANGED, shard_paths
from .jobs import Jobs
from .metrics import LOOKUP_BUCKETS, Timings
from .providers import CONNECT_TIMEOUT, LOOKUP_DEADLINE, load_manifest
from .server import DataServer
from .swarm import OpenDataset, Swarm
from .tlsdata import ServerTls

if TYPE_CHECKING:  # libp2p loads when the node runs
    from libp2p.abc import IHost
    from libp2p.kad_dht.kad_dht import KadDHT

log = logging.getLogger(__name__)
DEFAULT_REPROVIDE_SECONDS = settings().reprovide_interval
RECONNECT_CHECK = 1.0
"""How often a node checks that it is connected to each of its bootstrap peers (a look at its connection table:
cheap). One it is not connected to is dialled, at most every RECONNECT_BACKOFF_MAX seconds while it stays away
(RECONNECT_CHECK, doubling): a bootstrap peer that comes back is reconnected within that time."""
RECONNECT_BACKOFF_MAX = 4.0


@dataclass
class NodeConfig:
    home: Path
    listen: list[str]
    bootstrap: list[str]
    server: bool = True
    data_listen: tuple[str, int] | None = None
    """Where the data port listens (node/dataport.py; a server-mode node only), None for no data port."""
    reprovide_interval: float = DEFAULT_REPROVIDE_SECONDS
    read_timeout: float = settings().read_timeout


class Node:
    host: IHost
    """This node's libp2p host, from the start of run()."""
    dht: KadDHT
    """Its Kademlia DHT, from the start of run()."""
    swarm: Swarm
    """Its fetch service (on this node's store), from the start of run()."""
    lookup_deadline = LOOKUP_DEADLINE

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.store = ContentStore(config.home)
        self.server = DataServer(self.store)
        self.dataport = DataPort(self.server)
        self._stop = trio.Event()
        self._announce_now = trio.Event()
        self.lookup_timings = Timings(LOOKUP_BUCKETS)
        """How long each provider lookup took, by outcome (found, none): node/metrics.py."""
        self.metrics_url = ""
        """Where the metrics and the status page are served (node/status_page.py), "" when they are not."""
        self.jobs = Jobs(self)
        self._announced: set[str] = set()
        """Datasets announced since the node started, on their first shard (`_stored`)."""

    @property
    def peer_id(self) -> str:
        return str(self.host.get_id())

    def addresses(self) -> list[str]:
        return [str(a) for a in self.host.get_addrs()]

    def stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.custom_types import TProtocol
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
        from libp2p.tools.anyio_service import background_trio_service
        from multiaddr import Multiaddr

        self.seed = load_identity_seed(self.config.home)
        self.host = new_kogitune_host(self.seed)
        try:
            async with self.host.run([Multiaddr(a) for a in self.config.listen]):
                if self.config.server:
                    self.host.set_stream_handler(TProtocol(wire.PROTOCOL_ID), self.server.handle)
                self.dht = KadDHT(self.host, DHTMode.SERVER if self.config.server else DHTMode.CLIENT)
                keep_dht_clients_out(self.host, self.dht)
                names.install(self.dht)
                locks.install(self.dht)
                async with background_trio_service(self.dht), trio.open_nursery() as nursery:
                    self.nursery = nursery
                    self.swarm = Swarm(self.store, self._this_node, nursery, self.config.read_timeout)
                    self.swarm.on_stored = self._stored
                    if self.config.server and self.config.data_listen is not None:
                        self.dataport.tls = ServerTls(self.seed)
                        _, self.server.data_port = await nursery.start(self.dataport.serve, *self.config.data_listen)
                    await self.connect_bootstrap()
                    if self.config.bootstrap:
                        nursery.start_soon(self._reconnect_loop)
                    if self.config.server:
                        nursery.start_soon(self._reprovide_loop)
                    task_status.started(self)
                    await self.wait_stopped()
                    nursery.cancel_scope.cancel()
        finally:
            await self.host.close()

    async def connect_bootstrap(self) -> None:
        """Connect to every bootstrap peer at once (a hung one costs one timeout, not one each)."""

        async def connect(address: str, info) -> None:
            try:
                await self.dial_bootstrap(info)
            except Exception as exc:
                log.warning("bootstrap peer %s unreachable: %s", address, exc)

        async with trio.open_nursery() as nursery:
            for address, info in self.bootstrap_infos().items():
                nursery.start_soon(connect, address, info)

    def bootstrap_infos(self) -> dict:
        """address -> PeerInfo of each bootstrap peer but this node (an address that does not parse is logged)."""
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from multiaddr import Multiaddr

        peers = {}
        for address in self.config.bootstrap:
            try:
                info = info_from_p2p_addr(Multiaddr(address))
            except Exception as exc:  # a daemon refuses these before it starts (service.check_start)
                log.warning("bootstrap peer %s unreachable: %s", address, exc)
                continue
            if str(info.peer_id) != self.peer_id:
                peers[address] = info
        return peers

    async def dial_bootstrap(self, info) -> None:
        """Connect to a bootstrap peer and add it to the DHT. py-libp2p refuses for 60 s to dial a peer whose
        addresses all failed (its negative cache); the callers' own backoff replaces that one, or a bootstrap peer
        that restarts would wait a minute."""
        self.host.get_network().unblock_peer(info.peer_id)  # type: ignore[attr-defined]  # libp2p's Swarm has it
        await self.connect(info)
        await self.dht.add_peer(info.peer_id)

    async def connect(self, info) -> None:
        with trio.fail_after(min(CONNECT_TIMEOUT, self.config.read_timeout)):
            await self.host.connect(info)

    async def _reconnect_loop(self) -> None:
        """Every RECONNECT_CHECK seconds, dial the bootstrap peers this node is not connected to (each with its own
        backoff, up to RECONNECT_BACKOFF_MAX, while it stays away); when the node had lost every peer and got one
        back, announce its datasets again at once."""
        peers = self.bootstrap_infos()
        backoff = dict.fromkeys(peers, RECONNECT_CHECK)
        next_try = dict.fromkeys(peers, 0.0)

        async def dial(address: str, info) -> None:
            try:
                await self.dial_bootstrap(info)
                backoff[address] = RECONNECT_CHECK
                log.info("reconnected to bootstrap peer %s", address)
            except Exception as exc:
                log.debug("bootstrap peer %s still unreachable: %s", address, exc)
                backoff[address] = min(2 * backoff[address], RECONNECT_BACKOFF_MAX)
            next_try[address] = trio.current_time() + backoff[address]

        while True:
            await trio.sleep(RECONNECT_CHECK)
            connected = set(self.host.get_connected_peers())
            missing = [(a, info) for a, info in peers.items() if info.peer_id not in connected]
            due = [(a, info) for a, info in missing if trio.current_time() >= next_try[a]]
            if not due:
                continue
            async with trio.open_nursery() as nursery:
                for address, info in due:
                    nursery.start_soon(dial, address, info)
            if not connected and self.host.get_connected_peers():
                self._announce_now.set()

    async def _reprovide_loop(self) -> None:
        """Announce now, every `reprovide_interval`, and again when the reconnect loop asks (the node had lost
        every peer and got one back)."""
        while True:
            await self.announce_all()
            with trio.move_on_after(self.config.reprovide_interval):
                await self._announce_now.wait()
            self._announce_now = trio.Event()

    async def announce_all(self) -> None:
        for dataset_id in await trio.to_thread.run_sync(self.served_datasets):
            self._announced.add(dataset_id)
            await self.announce(dataset_id)
        await names.announce_names(self)
        await locks.announce_locks(self)

    async def announce(self, dataset_id: str) -> None:
        try:
            with trio.fail_after(CONNECT_TIMEOUT * 3):
                await providers.provide(self.dht, dataset_id)
        except Exception as exc:
            log.warning("announcing %s failed: %s", dataset_id, exc)

    def _stored(self, opened: OpenDataset) -> None:
        """A shard of `opened` is in the store: announce the dataset now if this node serves it (server mode, a
        signed copy) and has not announced it since it started."""
        if self.config.server and opened.publisher is not None and opened.dataset_id not in self._announced:
            self._announced.add(opened.dataset_id)
            self.nursery.start_soon(self.announce, opened.dataset_id)

    async def _this_node(self, optional: bool = False) -> Node:
        """The libp2p side the fetch service asks for peers: this node."""
        return self

    async def remove(self, dataset_id: str, force: bool = False) -> str:
        """Stop serving and announcing a dataset and remove it from the store (ContentStore.remove: refused while
        a process reads or fetches it, unless `force`). Its provider records in the DHT expire by themselves (48 h;
        Kademlia has no withdrawal); a peer that asks meanwhile is told it is not held. Returns its directory."""
        removed = await trio.to_thread.run_sync(self.store.remove, dataset_id, force)
        self.swarm.forget(dataset_id)
        return str(removed)

    async def publish(self, tensor_path: str, allow: list[str] | None = None) -> str:
        """See node/publish.py, and node/collection.py for a collection directory."""
        from kogitune.collection import is_collection_dir

        if is_collection_dir(tensor_path):
            return await collection.publish_collection(self, tensor_path, allow)
        return await publish.publish(self, tensor_path, allow)

    async def find_providers(self, dataset_id: str, deadline: float = LOOKUP_DEADLINE) -> list:
        """See node/providers.py; timed (lookup_timings)."""
        started, found = trio.current_time(), []
        try:
            found = await providers.find_providers(self, dataset_id, deadline)
            return found
        finally:
            self.lookup_timings.observe("found" if found else "none", trio.current_time() - started)

    async def providers_status(self, dataset_id: str) -> list[dict]:
        """See node/providers.py (bounded by STATUS_ANSWER_SECONDS)."""
        return await providers.providers_status(self, dataset_id)

    async def get(self, dataset_id: str, mirrors=()) -> OpenDataset | OpenCollection:
        """Fetch a whole dataset into the store, then provide it too when this node can serve it (it holds the
        publisher's signature; an unsigned copy from web mirrors is not served). The announcement goes on after
        the return: the data is here, and a slow DHT must not hold up the caller. A collection: each of its parts
        so (node/collection.py), then the collection."""
        found = await self.swarm.open(dataset_id, mirrors)
        if isinstance(found, OpenCollection):
            await collection.get_collection(self, found)
            return found
        opened = await self.swarm.get(dataset_id, mirrors)
        if self.config.server and opened.publisher is not None:
            self.nursery.start_soon(self.announce, dataset_id)
        return opened

    @property
    def bytes_fetched(self) -> int:
        swarm = getattr(self, "swarm", None)
        return swarm.bytes_fetched if swarm is not None else 0

    def complete_datasets(self) -> list[str]:
        """The datasets of which the store holds every shard (and the signature), and the collections of them."""
        found = self._signed_datasets(all)
        return found + collection.complete_collections(self, set(found))

    def served_datasets(self) -> list[str]:
        """What this node announces: the datasets of which it holds the signature and at least one shard (it
        serves what it holds), and the complete collections."""
        complete = set(self._signed_datasets(all))
        return self._signed_datasets(any) + collection.complete_collections(self, complete)

    def _signed_datasets(self, enough) -> list[str]:
        """The signed datasets in the store for which `enough` (all, any) of the shards' tokens files exist."""
        found = []
        for directory in sorted(self.store.datasets.glob("kg1-*")):
            manifest = load_manifest(directory)
            if (
                manifest
                and (directory / SIGNATURE_FILE).exists()
                and enough((directory / s.tokens_path).exists() for s in manifest.shards)
            ):
                found.append(directory.name)
        return found

    async def status(self) -> dict:
        """What `kogitune node status` shows. The store is scanned (every manifest parsed, every shard's files
        stat'ed) on a worker thread: it must not hold the event loop that serves peers."""
        damaged = self.damaged_shards()
        damaged_files = {(entry["dataset"], entry["file"]) for entry in damaged}
        datasets, changed = await trio.to_thread.run_sync(self._scan_store, damaged_files)
        return {
            "peer_id": self.peer_id,
            "addresses": self.addresses(),
            "connected_peers": [str(p) for p in self.host.get_connected_peers()],
            "dht_peers": [str(p) for p in self.dht.routing_table.get_peer_ids()],
            "datasets": datasets,
            "bytes_served": self.server.stats.bytes_served + self.dataport.stats.bytes_served,
            "bytes_served_http": self.dataport.stats.bytes_served,
            "bytes_fetched": self.bytes_fetched,
            "requests": dict(self.server.stats.requests),
            "refused": dict(self.server.stats.refused),
            "damaged": damaged,
            "changed": changed,
            "metrics": self.metrics_url,
            "data_port": self.server.data_port,
        }

    def _scan_store(self, damaged: set[tuple[str, str]]) -> tuple[list[str], list[dict]]:
        """The datasets announced (served_datasets) and the changed shards (on a worker thread; `damaged`: the
        (dataset, file) pairs found damaged, taken on the event loop)."""
        return self.served_datasets(), self.changed_shards(damaged)

    def damaged_shards(self) -> list[dict]:
        """Files (of shards, and manifests) this node withholds from peers because a check found they do not match
        their dataset."""
        return [
            {"dataset": dataset, "shard": shard, "file": path, "problem": problem}
            for (dataset, path), (shard, problem) in sorted(self.server.guard.damaged.items())
        ]

    def changed_shards(self, damaged: set[tuple[str, str]]) -> list[dict]:
        """Shards whose files changed since they last passed a check and were not checked again yet (a chmod, a new
        hard link, an edit, or marks from before ctime was in them): withheld until the next request for them has
        them re-checked; not known to be damaged (not in `damaged`, (dataset, file) pairs)."""
        guard = self.server.guard
        found = []
        for directory in sorted(self.store.datasets.glob("kg1-*")):
            manifest = load_manifest(directory)
            if manifest is None or manifest.dataset_id != directory.name or not (directory / SIGNATURE_FILE).exists():
                continue
            for shard in guard.changed_shards(directory, manifest):
                if not any((directory.name, path) in damaged for path in shard_paths(shard)):
                    found.append({"dataset": directory.name, "shard": shard.name, "problem": CHANGED})
        return found
