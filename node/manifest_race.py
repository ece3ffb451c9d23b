"""Where the fetch service (node/swarm.py) gets a dataset's manifest when its store has none it can use.

- From peers alone (`from_peers`): the bootstrap peers this node is connected to first (in a small swarm they hold
  it; the DHT lookup joins after NEIGHBOURS_HEAD_START_SECONDS), else the providers of the ID on the DHT
  (node/providers.py), connected at once; the signed manifest of the first that serves a valid one:
  MANIFEST_AT_ONCE asked at once, more as they fail or are slow (small_files.first_answer's hedging). A provider that fails is named in `failed` and left out of the sources.
- From mirrors and peers (`from_mirrors_and_peers`): both sides race and the first valid copy wins (`_Race`). The
  mirrors' manifest must hash to the ID (node/collection.mirrors_manifest: a mirror serving another is banned);
  their `signature` file (a published directory has one) gives the publisher when it verifies, and is required
  when `trusted` is given. Whatever fails on the peers' side (no bootstrap peer, no provider, a DHT error) only
  loses the peers' side: the mirrors may still answer.

A copy is a ManifestCopy (a dataset) or a CollectionCopy (a collection: its providers answer the manifest request
with the signed collection manifest, its mirrors serve collection.json); node/copies.py says what each holds.
Nothing here writes to the store: the swarm stores the copy it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from kogitune.errors import FetchError, KogituneError, SourceError
from kogitune.layout import SIGNATURE_FILE, split_signature
from kogitune.protocol.manifest import Manifest
from kogitune.protocol.signing import SIGNATURE_FILE_BYTES, check_signed

from .collection import mirrors_manifest
from .copies import CollectionCopy, ManifestCopy
from .peers import fetch_signed_manifest
from .pool import SourcePool
from .providers import connect_providers
from .small_files import first_answer

MANIFEST_AT_ONCE = 3
"""Providers asked for the signed manifest at once; one more is asked each time one fails, and each time
HEDGE_SECONDS go by without an answer as many more as are waiting (small_files.first_answer). The first valid
manifest wins and the other requests are cancelled. A provider that failed is not asked again while the dataset is
opened, and is left out of its sources."""
NEIGHBOURS_HEAD_START_SECONDS = 0.25
"""How long an open by ID asks only the bootstrap peers it is connected to for the manifest before the DHT
lookup starts too (at once when they have all failed): in a small swarm they hold it, and a lookup beside them
costs the open CPU time."""


def connected_bootstrap_peers(network) -> list:
    """The bootstrap peers `network` (the libp2p node) is connected to: those an open by ID asks at once."""
    bootstrap = {info.peer_id for info in network.bootstrap_infos().values()}
    return [peer for peer in network.host.get_connected_peers() if peer in bootstrap]


@dataclass
class _Race:
    """The mirrors' and the peers' answers to one open: the first valid copy wins; `why` says what each side did."""

    sides: int
    copy: ManifestCopy | CollectionCopy | None = None
    why: list[str] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)

    def won(self, copy: ManifestCopy | CollectionCopy) -> None:
        if self.copy is None:
            self.copy = copy
            self.done.set()

    def lost(self, why: str) -> None:
        self.why.append(why)
        self.sides -= 1
        if self.sides <= 0:
            self.done.set()


class ManifestFinder:
    """Finds signed (or, from mirrors, hash-checked) manifests. `network(optional)` is the swarm's: the libp2p
    node that finds and reaches peers, or None when there is none to ask and `optional` is true."""

    def __init__(self, network, read_timeout: float) -> None:
        self.network = network
        self.read_timeout = read_timeout

    async def from_peers(self, dataset_id: str, trusted):
        """(the network, the signed manifest from the first peer that serves a valid one, the providers connected,
        why the others failed, whether more providers are still to be looked for). The bootstrap peers this node is
        connected to (often providers themselves) are asked for it at once; the DHT lookup (`_from_providers`)
        starts when they have all failed, or after NEIGHBOURS_HEAD_START_SECONDS (a silent one holds nothing up);
        the first valid copy wins. When a bootstrap peer's wins, the lookup is left to the caller (the swarm's
        background search), and the bootstrap peers that failed are named in `failed`. The lookup's FetchError (no
        provider, none gave a valid manifest) ends the search as it did before bootstrap peers were asked."""
        network = await self.network(optional=False)
        neighbours = connected_bootstrap_peers(network)
        neighbours_failed: dict[str, str] = {}
        neighbours_all_failed = trio.Event()
        answers: list = []

        async def from_neighbours(done: trio.CancelScope) -> None:
            copy = await self._first_signed_manifest(network, dataset_id, neighbours, trusted, neighbours_failed)
            if copy is None:
                neighbours_all_failed.set()
            elif not answers:
                answers.append((network, copy, [copy.peer], neighbours_failed, True))
                done.cancel()

        async def from_providers(done: trio.CancelScope) -> None:
            if neighbours:
                with trio.move_on_after(NEIGHBOURS_HEAD_START_SECONDS):
                    await neighbours_all_failed.wait()
            try:
                answers.append((network, *await self._from_providers(network, dataset_id, trusted), False))
            except Exception as exc:  # raised below as it is, not in the nursery's ExceptionGroup
                errors.append(exc)
            done.cancel()

        errors: list[Exception] = []
        async with trio.open_nursery() as nursery:
            if neighbours:
                nursery.start_soon(from_neighbours, nursery.cancel_scope)
            nursery.start_soon(from_providers, nursery.cancel_scope)
        if not answers:
            raise errors[0]
        return answers[0]

    async def _from_providers(self, network, dataset_id: str, trusted):
        """(the signed manifest from the first provider that serves a valid one, the providers connected, why the
        others failed): providers from the DHT, connected at once. FetchError if none does."""
        providers = await network.find_providers(dataset_id)
        if not providers:
            raise FetchError(
                f"no peer provides {dataset_id} (asked the DHT through {len(network.host.get_connected_peers())}"
                f" connected peer(s) for {network.lookup_deadline:.0f} s); is a node that holds it running and "
                "bootstrapped?"
            )
        failed: dict[str, str] = {}
        reachable = await connect_providers(network, providers, failed)
        copy = await self._first_signed_manifest(network, dataset_id, reachable, trusted, failed)
        if copy is None:
            raise FetchError(f"no provider of {dataset_id} gave a valid manifest: {'; '.join(failed.values())}")
        return copy, reachable, failed

    async def from_mirrors_and_peers(
        self, dataset_id: str, pool: SourcePool, trusted, peers: bool
    ) -> ManifestCopy | CollectionCopy:
        """The first valid copy from the mirrors of `pool` or (with `peers`) the providers; FetchError saying what
        each side did if neither gives one."""
        race = _Race(sides=2 if peers else 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._manifest_from_mirrors, race, dataset_id, pool, trusted)
            if peers:
                nursery.start_soon(self._manifest_from_peers, race, dataset_id, trusted)
            await race.done.wait()
            nursery.cancel_scope.cancel()
        if race.copy is None:
            raise FetchError(f"no source gave a valid manifest of {dataset_id}: {'; '.join(race.why)}")
        return race.copy

    async def _first_signed_manifest(self, network, dataset_id: str, peers: list, trusted, failed: dict[str, str]):
        """The copy from the first provider that serves a valid, trusted, signed manifest, asking MANIFEST_AT_ONCE
        at a time (`first_answer`); None if none does. What each failed provider did goes into `failed`."""

        async def ask(peer):
            try:
                copy = await fetch_signed_manifest(network.host, peer, dataset_id, self.read_timeout)
            except Exception as exc:
                failed[str(peer)] = str(exc) if isinstance(exc, SourceError) else f"{peer}: {exc}"
                return None
            if trusted is not None and copy.publisher not in trusted:
                failed[str(peer)] = f"{peer}: serves a copy signed by {copy.publisher}, who is not trusted"
                return None
            return copy

        return await first_answer(peers, ask, at_once=MANIFEST_AT_ONCE)

    async def _manifest_from_mirrors(self, race: _Race, dataset_id: str, pool: SourcePool, trusted) -> None:
        try:
            data, manifest = await mirrors_manifest(pool, dataset_id)
        except FetchError as exc:
            race.lost(str(exc))
            return
        public_key, signature = await self._mirror_signature(pool, dataset_id, data)
        kind = ManifestCopy if isinstance(manifest, Manifest) else CollectionCopy
        copy = kind(data, manifest, public_key, signature)  # type: ignore[arg-type]
        if trusted is not None and copy.publisher not in trusted:
            why = f"signed by {copy.publisher}" if copy.publisher else "with no valid signature file"
            race.lost(f"the web mirrors serve {dataset_id} {why}, and trusted_publishers does not name it")
            return
        race.won(copy)

    async def _mirror_signature(self, pool: SourcePool, dataset_id: str, data: bytes) -> tuple[bytes, bytes]:
        """(public key, signature) from the `signature` file the mirrors serve beside the manifest (a published
        directory has one), if one verifies; (b"", b"") if none does: the copy is then unsigned. Each mirror is
        asked once, without counting against its health (a tensor directory from `kogitune store` has no
        signature: a 404 here is no fault)."""

        async def ask(health):
            try:
                with trio.fail_after(self.read_timeout):
                    signed = await health.source.read_all(SIGNATURE_FILE, SIGNATURE_FILE_BYTES)
                check_signed(dataset_id, data, *split_signature(signed))
            except (SourceError, KogituneError, ValueError, trio.TooSlowError):
                return None
            return signed

        signed = await first_answer(pool.usable(), ask)
        return split_signature(signed) if signed else (b"", b"")

    async def _manifest_from_peers(self, race: _Race, dataset_id: str, trusted) -> None:
        """The peers' side of the race: providers, then the first valid signed manifest (MANIFEST_AT_ONCE)."""
        try:
            network = await self.network(optional=True)
            if network is None:
                race.lost("no peer to ask (no bootstrap peer)")
                return
            providers = await network.find_providers(dataset_id)
            failed: dict[str, str] = {}
            reachable = await connect_providers(network, providers, failed) if providers else []
            copy = await self._first_signed_manifest(network, dataset_id, reachable, trusted, failed)
        except Exception as exc:  # whatever the peers' side meets, the mirrors may still answer
            race.lost(f"peers: {type(exc).__name__}: {exc}")
            return
        if copy is None:
            race.lost(f"no provider gave a valid manifest ({'; '.join(failed.values()) or 'none found'})")
        else:
            race.won(copy)
