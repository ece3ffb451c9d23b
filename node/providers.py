"""Providers of a dataset on the DHT: announcing this node as one, finding them (asking the neighbours directly
while the Kademlia lookup runs, with backoff, within a deadline), dialing them at once, and asking each which shards
it holds (`kogitune status ID`). `node` is a running Node (node/daemon.py): its host, DHT, configuration and
bootstrap peers.

Provider records are keyed by `ids.provider_key` (the dataset digest as a SHA2-256 multihash, what any Kademlia
client derives from a CID). py-libp2p's `KadDHT.provide` and `find_providers` take a str and guess its encoding (CID
text, else hex, else UTF-8), so the key goes to its provider store as bytes, exactly as it goes on the wire.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from kogitune.errors import SourceError
from kogitune.files import read_limited
from kogitune.layout import MANIFEST_FILE, SIGNATURE_FILE
from kogitune.protocol.ids import provider_key
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from kogitune.settings import settings

from .copies import CollectionCopy
from .peers import fetch_have

log = logging.getLogger(__name__)
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
STATUS_ANSWER_SECONDS = 5.0
"""How long `kogitune status ID` (control op "providers") waits for the providers' have-maps, all asked at once;
a provider that has not answered by then is listed as silent."""
LATE_PROVIDER_SECONDS = 0.5
"""Once one provider is connected, how much longer the others may take: a stale provider record (a node that
left) must not hold up the open for a whole connect timeout."""


async def provide(dht, dataset_id: str, key: bytes | None = None) -> bool:
    """Announce the DHT's own node as a provider of `dataset_id` (under `key` instead, when given: a job's key,
    node/jobs.py) to the peers closest to the key (and store the record locally); False when no peer took it.
    `dht`: a py-libp2p KadDHT."""
    return await dht.provider_store.provide(key or provider_key(dataset_id))


async def find_providers(node, dataset_id: str, deadline: float = LOOKUP_DEADLINE, key: bytes | None = None) -> list:
    """Providers of a dataset: each connected peer is asked directly (fast in a small swarm, and when a
    bootstrap peer holds the record; peers the lookup connects to are asked too) while the full Kademlia lookup
    runs; each of them is asked again with backoff while nothing names a provider, never with two requests at
    once (an overloaded peer that answers late still answers; cancelled requests would be work thrown away).
    Once anything (neighbours, lookup, local records) has named a provider, the neighbours that have not
    answered yet get LATE_PROVIDER_SECONDS more; after `deadline` seconds, none is found, and at once when
    there is nobody to ask (no connected peer and no bootstrap peer). (py-libp2p's
    lookup alone returns only local records when there are any.) `key`: another key to look up (a job's)."""
    key = key or provider_key(dataset_id)
    found: dict = {}
    asked: set = set()
    answered: set = set()
    changed = trio.Event()

    def add(infos) -> None:
        for info in infos or []:
            if str(info.peer_id) != node.peer_id:
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
            add(await node.dht.provider_store.find_providers(key))
        except Exception as exc:
            log.debug("provider lookup failed: %s", exc)

    def neighbour(peer):
        async def ask() -> None:
            # py-libp2p 0.8.1 has no public one-peer GET_PROVIDERS; this is the call its own lookup makes.
            with trio.move_on_after(CONNECT_TIMEOUT):
                try:
                    providers, _ = await node.dht.provider_store._get_providers_from_peer_with_closers(peer, key)
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
                if not node.host.get_connected_peers():
                    if not node.config.bootstrap:  # nobody to ask, and none to call
                        nursery.cancel_scope.cancel()
                        break
                    await node.connect_bootstrap()
                for peer in node.host.get_connected_peers():
                    if peer not in asked:
                        asked.add(peer)
                        nursery.start_soon(again_with_backoff, neighbour(peer))
                add(node.dht.provider_store.get_providers(key))
                if found and answered >= asked:
                    nursery.cancel_scope.cancel()
                elif found:
                    lookup_scope.deadline = min(lookup_scope.deadline, trio.current_time() + LATE_PROVIDER_SECONDS)
                elif asked and answered >= asked and not logged:
                    log.info("no provider of %s found yet; asking again for up to %.0f s", dataset_id, deadline)
                    logged = True
                with trio.move_on_after(LOOKUP_BACKOFF_SECONDS):  # or sooner, when an answer came
                    await changed.wait()
    add(node.dht.provider_store.get_providers(key))
    return list(found.values())


async def connect_providers(node, providers: list, failed: dict[str, str]) -> list:
    """The providers this node could connect to, in the order they connected; once one has, the others get
    LATE_PROVIDER_SECONDS more."""
    reachable = []

    async def connect(info, dialing: trio.CancelScope) -> None:
        try:
            await node.connect(info)
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


async def providers_status(node, dataset_id: str) -> list[dict]:
    """Each provider and which shards it holds (its have-map); this node first when it serves at least one shard.
    Writes nothing into the store: the manifest of a dataset this node does not hold is looked at (Swarm.peek),
    not stored. Bounded: the lookup takes at most STATUS_ANSWER_SECONDS, and so do the have-maps, asked of every
    provider at once."""
    report = []
    local = node.store.dataset_dir(dataset_id)
    manifest = load_manifest(local)
    if manifest is not None and manifest.dataset_id == dataset_id and (local / SIGNATURE_FILE).exists():
        held = sum((local / shard.tokens_path).exists() for shard in manifest.shards)
        if held:
            report.append({"peer": node.peer_id, "this_node": True, "shards": held, "of": len(manifest.shards)})
    else:
        copy = await node.swarm.peek(dataset_id)
        if isinstance(copy, CollectionCopy):  # a collection: its providers, then each part's (node/collection.py)
            from .collection import collection_status

            return await collection_status(node, dataset_id, copy.collection.parts)
        manifest = copy.manifest
    count = len(manifest.shards)
    answers: dict[str, dict] = {}

    async def ask(peer_id) -> None:
        try:
            have = await fetch_have(node.host, peer_id, dataset_id, count, STATUS_ANSWER_SECONDS)
            answers[str(peer_id)] = {"peer": str(peer_id), "shards": sum(have), "of": count}
        except SourceError as exc:
            answers[str(peer_id)] = {"peer": str(peer_id), "error": str(exc)}

    providers = [info.peer_id for info in await node.find_providers(dataset_id, STATUS_ANSWER_SECONDS)]
    with trio.move_on_after(STATUS_ANSWER_SECONDS):  # a silent peer holds no one up
        async with trio.open_nursery() as nursery:
            for peer_id in providers:
                nursery.start_soon(ask, peer_id)
    silent = {"error": f"no answer within {STATUS_ANSWER_SECONDS:.0f} s"}
    return report + [answers.get(str(peer_id), {"peer": str(peer_id), **silent}) for peer_id in providers]


def load_manifest(directory: Path) -> Manifest | None:
    """The manifest of a dataset directory in the store, None if it is missing or invalid."""
    try:
        return parse_manifest(read_limited(directory / MANIFEST_FILE, MAX_MANIFEST_BYTES))
    except Exception:
        return None
