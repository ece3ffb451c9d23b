"""The Kogitune node: a libp2p host, a Kademlia DHT, the data server, and what the control API asks of them.

A node in server mode (the daemon, `kogitune node start`) serves its store and announces one provider record per
dataset (its ID digest), again every `reprovide_interval` and after connecting to bootstrap peers. A node in
client mode (embedded in a training process when no daemon runs) only fetches: it neither serves nor announces.
Everything fetched goes through the verified multi-source fetcher of kogitune.node.fetch.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from kogitune.content_store import ContentStore
from kogitune.errors import FetchError, NodeError, SourceError
from kogitune.files import read_limited, write_atomic
from kogitune.layout import MANIFEST_FILE, SHARDS_DIR, SIGNATURE_FILE, write_signature
from kogitune.protocol import wire
from kogitune.protocol.ids import dataset_id_digest, is_peer_id
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from kogitune.protocol.signing import allowed_peers, sign_allow_list, sign_dataset
from kogitune.settings import settings

from .fetch import ShardFetch, SourcePool, first_answer, prefetch_in_order
from .host import keep_dht_clients_out, load_identity_seed, new_kogitune_host
from .integrity import CHANGED, shard_paths
from .peers import PeerSource, SignedManifest, fetch_have, fetch_signed_manifest
from .server import DataServer, write_allow_files

if TYPE_CHECKING:  # libp2p loads when the node runs
    from libp2p.abc import IHost
    from libp2p.kad_dht.kad_dht import KadDHT

log = logging.getLogger("kogitune.node")
DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/4011"
DEFAULT_REPROVIDE_SECONDS = settings().reprovide_interval
CONNECT_TIMEOUT = settings().connect_timeout
LOOKUP_DEADLINE = settings().lookup_deadline
"""How long `find_providers` keeps looking before it returns none (then: "no peer provides"). Meanwhile it asks the
connected peers again and again, after LOOKUP_BACKOFF_SECONDS, doubling up to LOOKUP_BACKOFF_MAX, reconnecting to
the bootstrap peers when none is connected: when many fetchers start at once, a busy publisher or bootstrap node
answers some of them late, and a fetcher that asked once would give up on a dataset that is there."""
LOOKUP_BACKOFF_SECONDS = 0.25
"""The first wait before a peer that named no provider is asked again (doubling each time)."""
LOOKUP_BACKOFF_MAX = 4.0
"""The longest wait between two provider queries to one peer."""
RECONNECT_CHECK = 60.0
MANIFEST_AT_ONCE = 3
"""Providers asked for the signed manifest at once; one more is asked each time one fails, and each time
HEDGE_SECONDS go by without an answer as many more as are waiting (fetch.first_answer). The first valid manifest
wins and the other requests are cancelled. A provider that failed is not asked again while the dataset is opened,
and is left out of its sources."""
STATUS_ANSWER_SECONDS = 5.0
"""How long `kogitune status ID` (control op "providers") waits for the providers' have-maps, all asked at once;
a provider that has not answered by then is listed as silent."""
LATE_PROVIDER_SECONDS = 0.5
"""Once one provider is connected, how much longer the others may take: a stale provider record (a node that
left) must not hold up the open for a whole connect timeout."""
PREFETCH_SHARDS = settings().peer_prefetch_shards


@dataclass
class NodeConfig:
    home: Path
    listen: list[str]
    bootstrap: list[str]
    server: bool = True
    reprovide_interval: float = DEFAULT_REPROVIDE_SECONDS
    read_timeout: float = settings().read_timeout


@dataclass
class OpenDataset:
    """A dataset being fetched: its checked manifest and the shared health of its sources."""

    directory: Path
    signed: SignedManifest
    pool: SourcePool


class Node:
    host: IHost
    """This node's libp2p host, from the start of run()."""
    dht: KadDHT
    """Its Kademlia DHT, from the start of run()."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.store = ContentStore(config.home)
        self.server = DataServer(self.store)
        self.bytes_fetched = 0
        self._open: dict[str, OpenDataset] = {}
        self._fetching: dict[tuple[str, int], trio.Event] = {}
        self._stop = trio.Event()
        self._opening = trio.Lock()
        self._prefetch_limiter = trio.CapacityLimiter(PREFETCH_SHARDS)

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
                async with background_trio_service(self.dht), trio.open_nursery() as nursery:
                    self.nursery = nursery
                    await self.connect_bootstrap()
                    if self.config.server:
                        nursery.start_soon(self._reprovide_loop)
                    task_status.started(self)
                    await self.wait_stopped()
                    nursery.cancel_scope.cancel()
        finally:
            await self.host.close()

    async def connect_bootstrap(self) -> None:
        """Connect to every bootstrap peer at once (a hung one costs one timeout, not one each)."""
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from multiaddr import Multiaddr

        async def connect(address: str) -> None:
            try:
                info = info_from_p2p_addr(Multiaddr(address))
                if str(info.peer_id) == self.peer_id:
                    return
                await self.connect(info)
                await self.dht.add_peer(info.peer_id)
            except Exception as exc:
                log.warning("bootstrap peer %s unreachable: %s", address, exc)

        async with trio.open_nursery() as nursery:
            for address in self.config.bootstrap:
                nursery.start_soon(connect, address)

    async def connect(self, info) -> None:
        with trio.fail_after(min(CONNECT_TIMEOUT, self.config.read_timeout)):
            await self.host.connect(info)

    async def _reprovide_loop(self) -> None:
        """Announce now, every `reprovide_interval`, and again whenever the node had lost every peer and got
        one back through its bootstrap peers (checked every RECONNECT_CHECK seconds)."""
        next_announce = trio.current_time()
        while True:
            if not self.host.get_connected_peers() and self.config.bootstrap:
                await self.connect_bootstrap()
                if self.host.get_connected_peers():
                    next_announce = trio.current_time()
            if trio.current_time() >= next_announce:
                await self.announce_all()
                next_announce = trio.current_time() + self.config.reprovide_interval
            await trio.sleep(min(RECONNECT_CHECK, max(0.0, next_announce - trio.current_time())))

    async def announce_all(self) -> None:
        for dataset_id in await trio.to_thread.run_sync(self.complete_datasets):
            await self.announce(dataset_id)

    async def announce(self, dataset_id: str) -> None:
        try:
            with trio.fail_after(CONNECT_TIMEOUT * 3):
                # py-libp2p types the key str (hex or CID text, re-encoded); bytes pass through as they are, so the DHT
                # key stays the raw digest that every Kogitune node uses.
                await self.dht.provide(dataset_id_digest(dataset_id))  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("announcing %s failed: %s", dataset_id, exc)

    def complete_datasets(self) -> list[str]:
        found = []
        for directory in sorted(self.store.datasets.glob("kg1-*")):
            manifest = _load_manifest(directory)
            if (
                manifest
                and (directory / SIGNATURE_FILE).exists()
                and all((directory / s.tokens_path).exists() for s in manifest.shards)
            ):
                found.append(directory.name)
        return found

    async def publish(self, tensor_path: str, allow: list[str] | None = None) -> str:
        """Verify a tensor, add it to the store (hard links where possible), sign and announce it. With `allow`,
        what is published is the private dataset of this tensor (published_manifest): a new ID, whose manifest names
        this node as its publisher, served only to the peers of `allow` (signed by this node)."""
        from kogitune.tensor import DataTensor

        bad = [peer for peer in allow or () if not is_peer_id(peer)]
        if bad:
            raise NodeError(f"--allow {bad[0]!r} is not a peer ID; `kogitune node status` prints a node's peer id")
        allow = sorted(set(allow or ()))
        if len(" ".join(allow)) > wire.MAX_ALLOW_CHARS:
            raise NodeError(
                f"--allow lists {len(allow)} peers, more than fit in a manifest response "
                f"({wire.MAX_ALLOW_CHARS} characters, about 1,200 peer IDs)"
            )
        tensor = await trio.to_thread.run_sync(DataTensor, tensor_path)
        manifest = published_manifest(tensor_path, tensor.manifest, self.peer_id, allow)
        dataset_id = manifest.dataset_id
        directory = self.store.make_dataset_dir(dataset_id, manifest.is_private)
        problems = await trio.to_thread.run_sync(_add_to_store, tensor, directory, manifest)
        if problems:
            raise NodeError(f"{tensor_path} is damaged ({problems[0]}); store it again before publishing")
        if allow:  # before the signature: a node serves a dataset once its manifest and signature are there
            write_allow_files(directory, allow, sign_allow_list(self.seed, dataset_id, allow))
        signature, public_key = sign_dataset(self.seed, dataset_id)
        write_signature(directory, public_key, signature)
        self.store.pin(dataset_id)
        await self.announce(dataset_id)
        return dataset_id

    async def find_providers(self, dataset_id: str, deadline: float = LOOKUP_DEADLINE) -> list:
        """Providers of a dataset: each connected peer is asked directly (fast in a small swarm, and when a
        bootstrap peer holds the record; peers the lookup connects to are asked too) while the full Kademlia lookup
        runs; each of them is asked again with backoff while nothing names a provider, never with two requests at
        once (an overloaded peer that answers late still answers; cancelled requests would be work thrown away).
        Once anything (neighbours, lookup, local records) has named a provider, the neighbours that have not
        answered yet get LATE_PROVIDER_SECONDS more; after `deadline` seconds, none is found, and at once when
        there is nobody to ask (no connected peer and no bootstrap peer). (py-libp2p's
        lookup alone returns only local records when there are any.)"""
        key = dataset_id_digest(dataset_id)
        found: dict = {}
        asked: set = set()
        answered: set = set()
        changed = trio.Event()

        def add(infos) -> None:
            for info in infos or []:
                if str(info.peer_id) != self.peer_id:
                    found.setdefault(str(info.peer_id), info)

        async def again_with_backoff(ask_once) -> None:
            nonlocal changed
            backoff = LOOKUP_BACKOFF_SECONDS
            while True:
                await ask_once()
                changed.set()
                changed = trio.Event()
                await trio.sleep(backoff)
                backoff = min(2 * backoff, LOOKUP_BACKOFF_MAX)

        async def lookup() -> None:  # bounded by the deadline below
            try:
                add(await self.dht.find_providers(key))  # type: ignore[arg-type]  # raw digest, as in announce()
            except Exception as exc:
                log.debug("provider lookup failed: %s", exc)

        def neighbour(peer):
            async def ask() -> None:
                # py-libp2p 0.8.1 has no public one-peer GET_PROVIDERS; this is the call its own lookup makes.
                with trio.move_on_after(CONNECT_TIMEOUT):
                    try:
                        providers, _ = await self.dht.provider_store._get_providers_from_peer_with_closers(peer, key)
                        add(providers)
                    except Exception as exc:
                        log.debug("provider query to %s failed: %s", peer, exc)
                answered.add(peer)

            return ask

        with trio.move_on_after(deadline) as lookup_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(again_with_backoff, lookup)
                logged = False
                while True:
                    if not self.host.get_connected_peers():
                        if not self.config.bootstrap:  # nobody to ask, and none to call
                            nursery.cancel_scope.cancel()
                            break
                        await self.connect_bootstrap()
                    for peer in self.host.get_connected_peers():
                        if peer not in asked:
                            asked.add(peer)
                            nursery.start_soon(again_with_backoff, neighbour(peer))
                    add(self.dht.provider_store.get_providers(key))
                    if found and answered >= asked:
                        nursery.cancel_scope.cancel()
                    elif found:
                        lookup_scope.deadline = min(lookup_scope.deadline, trio.current_time() + LATE_PROVIDER_SECONDS)
                    elif asked and answered >= asked and not logged:
                        log.info("no provider of %s found yet; asking again for up to %.0f s", dataset_id, deadline)
                        logged = True
                    with trio.move_on_after(LOOKUP_BACKOFF_SECONDS):  # or sooner, when an answer came
                        await changed.wait()
        add(self.dht.provider_store.get_providers(key))
        return list(found.values())

    async def open_dataset(self, dataset_id: str, trusted: frozenset[str] | None = None) -> OpenDataset:
        """Resolve providers, fetch and check the manifest, and keep the sources for the shard fetches."""
        async with self._opening:
            opened = self._open.get(dataset_id)
            if opened is None or not self._trusted(opened.signed, trusted):
                opened = self._open[dataset_id] = await self._resolve(dataset_id, trusted)
            return opened

    @staticmethod
    def _trusted(signed: SignedManifest, trusted: frozenset[str] | None) -> bool:
        return trusted is None or signed.publisher in trusted

    async def _first_valid_manifest(self, dataset_id: str, peers: list, trusted, failed: dict[str, str]):
        """(signed manifest, peer) from the first provider that serves a valid, trusted one, asking MANIFEST_AT_ONCE
        at a time (`first_answer`); None if none does. What each failed provider did goes into `failed`."""

        async def ask(peer):
            try:
                signed = await fetch_signed_manifest(self.host, peer, dataset_id, self.config.read_timeout)
            except Exception as exc:
                failed[str(peer)] = str(exc) if isinstance(exc, SourceError) else f"{peer}: {exc}"
                return None
            if not self._trusted(signed, trusted):
                failed[str(peer)] = f"{peer}: serves a copy signed by {signed.publisher}, who is not trusted"
                return None
            return signed, peer

        return await first_answer(peers, ask, at_once=MANIFEST_AT_ONCE)

    async def _connect_providers(self, providers: list, failed: dict[str, str]) -> list:
        """The providers this node could connect to, in the order they connected; once one has, the others get
        LATE_PROVIDER_SECONDS more."""
        reachable = []

        async def connect(info, dialing: trio.CancelScope) -> None:
            try:
                await self.connect(info)
            except Exception as exc:
                failed[str(info.peer_id)] = f"{info.peer_id}: cannot connect ({type(exc).__name__})"
                return
            reachable.append(info.peer_id)
            dialing.deadline = min(dialing.deadline, trio.current_time() + LATE_PROVIDER_SECONDS)

        async with trio.open_nursery() as nursery:
            for info in providers:
                nursery.start_soon(connect, info, nursery.cancel_scope)
        for info in providers:
            if info.peer_id not in reachable and str(info.peer_id) not in failed:
                failed[str(info.peer_id)] = f"{info.peer_id}: too slow to connect"
        return reachable

    async def _resolve(self, dataset_id: str, trusted: frozenset[str] | None) -> OpenDataset:
        providers = await self.find_providers(dataset_id)
        if not providers:
            raise FetchError(
                f"no peer provides {dataset_id} (asked the DHT through {len(self.host.get_connected_peers())}"
                f" connected peer(s) for {LOOKUP_DEADLINE:.0f} s); is a node that holds it running and "
                "bootstrapped?"
            )
        failed: dict[str, str] = {}
        reachable = await self._connect_providers(providers, failed)
        answer = await self._first_valid_manifest(dataset_id, reachable, trusted, failed)
        if answer is None:
            raise FetchError(f"no provider of {dataset_id} gave a valid manifest: {'; '.join(failed.values())}")
        signed, first = answer
        sources = [first] + [peer for peer in reachable if peer != first and str(peer) not in failed]
        directory = self.store.make_dataset_dir(dataset_id, signed.manifest.is_private)
        self._keep_allow_list(dataset_id, directory, signed)
        write_atomic(directory / MANIFEST_FILE, signed.data)
        write_signature(directory, signed.public_key, signed.signature)
        pool = SourcePool(
            [PeerSource(self.host, peer, dataset_id, signed.manifest, self.config.read_timeout) for peer in sources]
        )
        return OpenDataset(directory, signed, pool)

    def _keep_allow_list(self, dataset_id: str, directory: Path, signed: SignedManifest) -> None:
        """Store the allow-list of a private dataset when the publisher its manifest names signed it (written
        before the manifest and signature, as in publish, so the copy is never served without it). Any other list
        is dropped: a public dataset has none, whoever signed one, and a replica never inherits a list its publisher
        did not sign. A list held already is not dropped because another provider sent none."""
        if not signed.allow or signed.publisher == self.peer_id:
            return
        if allowed_peers(dataset_id, signed.manifest, signed.allow, signed.allow_signature):
            write_allow_files(directory, signed.allow, signed.allow_signature)
        else:
            log.warning(
                "%s: a provider sent an allow-list with a public manifest, or one that the publisher the "
                "manifest names did not sign; ignored",
                dataset_id,
            )

    async def fetch_shard(self, dataset_id: str, index: int) -> Path:
        opened = await self.open_dataset(dataset_id)
        shard = opened.signed.manifest.shards[index]
        key = (dataset_id, index)
        while key in self._fetching:
            await self._fetching[key].wait()
        if not (opened.directory / shard.tokens_path).exists():
            self._fetching[key] = trio.Event()
            try:
                fetch = ShardFetch(opened.directory, opened.signed.manifest, shard, opened.pool)
                await self.nursery.start(fetch.run)
                self.bytes_fetched += sum(fetch.bytes_by_source.values())
            finally:
                self._fetching.pop(key).set()
        return opened.directory

    async def prefetch_shards(self, dataset_id: str, indexes: list[int]) -> None:
        """Fetch shards ahead of need, in this order, at most PREFETCH_SHARDS at a time, so that a shard someone is
        waiting for (fetch_shard, not limited) is not starved by look-ahead."""

        async def fetch(index: int) -> None:
            await self.fetch_shard(dataset_id, index)

        await prefetch_in_order(self.nursery, self._prefetch_limiter, indexes, fetch)

    async def get(self, dataset_id: str) -> OpenDataset:
        """Fetch a whole dataset into the store, then provide it too (the announcement goes on after the return)."""
        opened = await self.open_dataset(dataset_id)
        limiter = trio.CapacityLimiter(settings().shards_at_once)

        async def one(index: int) -> None:
            async with limiter:
                await self.fetch_shard(dataset_id, index)

        async with trio.open_nursery() as nursery:
            for index in range(len(opened.signed.manifest.shards)):
                nursery.start_soon(one, index)
        if self.config.server:  # in the background: the data is here, and a slow DHT must not hold up the caller
            self.nursery.start_soon(self.announce, dataset_id)
        return opened

    def bytes_verified(self, dataset_id: str) -> int:
        """Bytes of `dataset_id` this node has fetched and verified since it opened it (0 if it has not): counted
        piece by piece, so a progress bar moves while a shard arrives."""
        opened = self._open.get(dataset_id)
        return sum(health.bytes_verified for health in opened.pool.health) if opened else 0

    async def providers_status(self, dataset_id: str) -> list[dict]:
        """Each provider and which shards it holds (its have-map); this node first when it holds the dataset.
        Bounded: a dataset this node holds is not opened from the network, the lookup takes at most
        STATUS_ANSWER_SECONDS, and so do the have-maps, asked of every provider at once."""
        report = []
        local = self.store.dataset_dir(dataset_id)
        manifest = _load_manifest(local)
        if manifest is not None and manifest.dataset_id == dataset_id and (local / SIGNATURE_FILE).exists():
            held = sum((local / shard.tokens_path).exists() for shard in manifest.shards)
            report.append({"peer": self.peer_id, "this_node": True, "shards": held, "of": len(manifest.shards)})
        else:
            manifest = (await self.open_dataset(dataset_id)).signed.manifest
        count = len(manifest.shards)
        answers: dict[str, dict] = {}

        async def ask(peer_id) -> None:
            try:
                have = await fetch_have(self.host, peer_id, dataset_id, count, STATUS_ANSWER_SECONDS)
                answers[str(peer_id)] = {"peer": str(peer_id), "shards": sum(have), "of": count}
            except SourceError as exc:
                answers[str(peer_id)] = {"peer": str(peer_id), "error": str(exc)}

        providers = [info.peer_id for info in await self.find_providers(dataset_id, STATUS_ANSWER_SECONDS)]
        with trio.move_on_after(STATUS_ANSWER_SECONDS):  # a silent peer holds no one up
            async with trio.open_nursery() as nursery:
                for peer_id in providers:
                    nursery.start_soon(ask, peer_id)
        silent = {"error": f"no answer within {STATUS_ANSWER_SECONDS:.0f} s"}
        return report + [answers.get(str(peer_id), {"peer": str(peer_id), **silent}) for peer_id in providers]

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
            "bytes_served": self.server.stats.bytes_served,
            "bytes_fetched": self.bytes_fetched,
            "requests": dict(self.server.stats.requests),
            "refused": dict(self.server.stats.refused),
            "damaged": damaged,
            "changed": changed,
        }

    def _scan_store(self, damaged: set[tuple[str, str]]) -> tuple[list[str], list[dict]]:
        """The complete datasets and the changed shards (on a worker thread; `damaged`: the (dataset, file) pairs
        found damaged, taken on the event loop)."""
        return self.complete_datasets(), self.changed_shards(damaged)

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
            manifest = _load_manifest(directory)
            if manifest is None or manifest.dataset_id != directory.name or not (directory / SIGNATURE_FILE).exists():
                continue
            for shard in guard.changed_shards(directory, manifest):
                if not any((directory.name, path) in damaged for path in shard_paths(shard)):
                    found.append({"dataset": directory.name, "shard": shard.name, "problem": CHANGED})
        return found


def published_manifest(tensor_path: str, manifest: Manifest, publisher: str, allow: list[str]) -> Manifest:
    """The manifest that `publisher` publishes for a tensor: the tensor's own (public) one without `allow`, with it
    the tensor's private dataset (Manifest.made_private: a different ID, naming `publisher`). Only a dataset's
    publisher may publish it again, to change its allow-list."""
    if manifest.access is None:
        return manifest.made_private(publisher) if allow else manifest
    if manifest.access.publisher != publisher:
        raise NodeError(
            f"{tensor_path} is a private dataset of {manifest.access.publisher}: only that node can "
            "publish it (publish the public tensor it was made from to publish your own copy)"
        )
    if not allow:
        raise NodeError(
            f"{tensor_path} is a private dataset: give --allow PEER_ID ... (its new allow-list), or "
            "publish the public tensor it was made from to publish it for everyone (another ID)"
        )
    return manifest


def _load_manifest(directory: Path) -> Manifest | None:
    try:
        return parse_manifest(read_limited(directory / MANIFEST_FILE, MAX_MANIFEST_BYTES))
    except Exception:
        return None


def _add_to_store(tensor, directory: Path, manifest: Manifest) -> list:
    """Put a tensor's files into its store directory and check them there (on a worker thread); returns the
    problems found. Tokens files are hard links where the file system allows it (no second copy), the small files
    copies; nothing is a symbolic link. Each shard is hashed as it is in the store and marked verified
    (`check_and_mark`), so that the server can tell when a file changes later, e.g. by an edit through the user's
    hard link."""
    from kogitune.tensor import DataTensor

    if manifest is tensor.manifest:
        manifest_bytes = _read_published(tensor.path / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        if parse_manifest(manifest_bytes).dataset_id != tensor.dataset_id:
            raise NodeError(f"{tensor.path / MANIFEST_FILE} changed while it was being published; publish it again")
    else:  # the tensor's private dataset: its own manifest (published_manifest)
        manifest_bytes = manifest.canonical_bytes()
    (directory / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    for shard in tensor.shards:
        _link_or_copy(tensor.path / shard.tokens_path, directory / shard.tokens_path)
        for name, size in (
            (shard.pieces_path, tensor.manifest.pieces_in(shard) * 32),
            (shard.docs_path, shard.docs_size),
        ):
            write_atomic(directory / name, _read_published(tensor.path / name, size), durable=False)
    write_atomic(directory / MANIFEST_FILE, manifest_bytes)
    stored = DataTensor(directory)
    return [problem for shard in stored.shards for problem in stored.check_and_mark(shard)]


def _refuse_link(path: Path) -> NodeError:
    return NodeError(
        f"{path} is a symbolic link: a published tensor must hold its own files (a node would otherwise "
        "serve whatever the link points to later). Replace the link by a copy of its target "
        f'(cp --remove-destination "$(readlink -f {path})" {path}), then publish again'
    )


def _read_published(path: Path, limit: int) -> bytes:
    """A small file of a tensor being published (at most `limit` + 1 bytes: a longer one fails its check)."""
    try:
        return read_limited(path, limit, follow_links=False)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse_link(path) from None
        raise NodeError(f"cannot read {path}: {exc.strerror}") from None


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link to `source` (no second copy) where the file system allows it, else a copy; atomic either way.
    A symbolic link is refused, never linked or followed."""
    try:
        if os.path.samestat(os.lstat(source), os.lstat(target)):
            return
    except FileNotFoundError:
        pass
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp, follow_symlinks=False)
    except FileNotFoundError:
        raise NodeError(f"{source} is missing; store the tensor again") from None
    except OSError:
        _copy_no_links(source, tmp)
    if tmp.is_symlink():
        tmp.unlink()
        raise _refuse_link(source)
    os.replace(tmp, target)


def _copy_no_links(source: Path, target: Path) -> None:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse_link(source) from None
        raise
    with open(fd, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
