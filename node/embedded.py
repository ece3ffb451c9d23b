"""An embedded node: a trio event loop in a background thread that fetches shards for a sync process.

Training code is synchronous; the fetcher is trio. This thread owns one trio loop per process; sync callers
submit work with `trio.from_thread`. It keeps one SourcePool per dataset (so a source that lied is dropped for
every shard of that dataset), runs at most one fetch per shard at a time, and bounds how many shards download
at once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from kogitune.errors import FetchError
from kogitune.protocol.manifest import Manifest
from kogitune.settings import settings

from .fetch import ShardFetch, SourcePool, fetch_manifest, prefetch_in_order
from .sources import HttpSource

if TYPE_CHECKING:
    from .daemon import Node

log = logging.getLogger("kogitune.fetch")
PREFETCH_SHARDS = settings().mirror_prefetch_shards
"""Mirror shards fetched ahead of need at once. One shard already streams from every mirror; a second would only
halve the bandwidth of the shard a trainer waits for (at a cold start the first shard is prefetched first, so
the first batch waits for one shard, not four)."""


class EmbeddedNode:
    """Runs the fetcher in a daemon thread; all public methods are called from ordinary (sync) threads."""

    def __init__(
        self,
        max_shards_in_flight: int = settings().shards_at_once,
        read_timeout: float = settings().read_timeout,
        home: Path | None = None,
    ) -> None:
        self.read_timeout = read_timeout
        self.home = home
        self._p2p: Node | None = None
        self._max_shards = max_shards_in_flight
        self._pools: dict[tuple[str, ...], SourcePool] = {}
        self._in_flight: dict[Path, trio.Event] = {}
        self._started = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), name="kogitune-node", daemon=True)
        self._thread.start()
        self._started.wait()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._limiter = trio.CapacityLimiter(self._max_shards)
        self._prefetch_limiter = trio.CapacityLimiter(PREFETCH_SHARDS)
        self._p2p_lock = trio.Lock()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._started.set()
            await trio.sleep_forever()

    def _pool(self, urls: tuple[str, ...]) -> SourcePool:
        pool = self._pools.get(urls)
        if pool is None:
            pool = self._pools[urls] = SourcePool([HttpSource(u, self.read_timeout) for u in urls])
        return pool

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _pool_of(self, key) -> SourcePool:
        """The sources of a dataset: `key` is its ID (peers) or the tuple of its mirror URLs."""
        if isinstance(key, str):
            assert self._p2p is not None  # a dataset ID is opened through the libp2p node
            return self._p2p._open[key].pool
        return self._pool(tuple(key))

    def source_bytes(self, key) -> dict[str, int]:
        """Verified bytes fetched from each source of a dataset."""
        return trio.from_thread.run_sync(
            lambda: {h.source.name: h.bytes_verified for h in self._pool_of(key).health}, trio_token=self._token
        )

    def fetch_manifest(self, urls: tuple[str, ...], timeout: float) -> tuple[bytes, Manifest]:
        async def run():
            with trio.fail_after(timeout):
                return await fetch_manifest(self._pool(urls))

        try:
            return trio.from_thread.run(run, trio_token=self._token)
        except trio.TooSlowError:
            raise FetchError(f"no manifest from {', '.join(urls)} within {timeout:.0f} s") from None

    def ensure_shard(
        self, directory: Path, manifest: Manifest, index: int, urls: tuple[str, ...], timeout: float
    ) -> None:
        """Block until shard `index` is complete in `directory`, fetching it if needed."""

        async def run():
            with trio.move_on_after(timeout) as scope:
                await self._fetch(directory, manifest, index, urls)
            if scope.cancelled_caught:
                shard = manifest.shards[index]
                raise FetchError(
                    f"shard {shard.name} of {manifest.dataset_id} did not arrive within {timeout:.0f} s "
                    f"(sources: {self._pool(urls).report()})"
                )

        trio.from_thread.run(run, trio_token=self._token)

    def prefetch(self, directory: Path, manifest: Manifest, indexes: list[int], urls: tuple[str, ...]) -> None:
        """Start fetching these shards in the background, in this order (trio may run tasks started together in any
        order); errors surface when a shard is needed."""
        trio.from_thread.run_sync(
            self._nursery.start_soon,
            self._prefetch_in_order,
            directory,
            manifest,
            list(indexes),
            urls,
            trio_token=self._token,
        )

    def open_dataset_id(self, dataset_id: str, timeout: float, trusted=None) -> tuple[Path, str]:
        """Resolve a dataset ID on the network (a client-mode libp2p node, started on first use); return the
        store directory holding its checked manifest and the publisher's peer ID."""

        async def run():
            with trio.fail_after(timeout):
                opened = await (await self._p2p_node()).open_dataset(
                    dataset_id, frozenset(trusted) if trusted is not None else None
                )
                return opened.directory, opened.signed.publisher

        try:
            return trio.from_thread.run(run, trio_token=self._token)
        except trio.TooSlowError:
            raise FetchError(f"{dataset_id} could not be resolved within {timeout:.0f} s") from None

    def fetch_id_shard(self, dataset_id: str, index: int, timeout: float) -> None:
        async def run():
            with trio.fail_after(timeout):
                await (await self._p2p_node()).fetch_shard(dataset_id, index)

        try:
            trio.from_thread.run(run, trio_token=self._token)
        except trio.TooSlowError:
            raise FetchError(f"shard {index} of {dataset_id} did not arrive within {timeout:.0f} s") from None

    def prefetch_id(self, dataset_id: str, indexes: list[int]) -> None:
        async def prefetch():
            try:
                node = await self._p2p_node()
            except Exception as exc:
                log.warning("prefetch failed: %s", exc)
                return
            await node.prefetch_shards(dataset_id, list(indexes))

        trio.from_thread.run_sync(self._nursery.start_soon, prefetch, trio_token=self._token)

    async def _p2p_node(self) -> Node:
        """The client-mode libp2p node of this process, started on first use with the configured bootstrap."""
        assert self.home is not None, "peers need a Kogitune home: EmbeddedNode(home=...)"
        async with self._p2p_lock:
            if self._p2p is None:
                from .daemon import Node, NodeConfig
                from .service import bootstrap_peers

                config = NodeConfig(
                    home=self.home,
                    listen=["/ip4/127.0.0.1/tcp/0"],
                    bootstrap=bootstrap_peers(self.home),
                    server=False,
                    read_timeout=self.read_timeout,
                )
                node = Node(config)
                await self._nursery.start(node.run)  # runs until this process ends
                self._p2p = node
        return self._p2p

    async def _prefetch_in_order(self, directory, manifest, indexes, urls) -> None:
        async def fetch(index: int) -> None:
            await self._fetch(directory, manifest, index, urls)

        await prefetch_in_order(self._nursery, self._prefetch_limiter, indexes, fetch)

    async def _fetch(self, directory: Path, manifest: Manifest, index: int, urls: tuple[str, ...]) -> None:
        shard = manifest.shards[index]
        target = directory / shard.tokens_path
        if target.exists():
            return
        event = self._in_flight.get(target)
        if event is not None:
            await event.wait()
            if target.exists():
                return
        event = self._in_flight[target] = trio.Event()
        try:
            async with self._limiter:
                await self._nursery.start(ShardFetch(directory, manifest, shard, self._pool(urls)).run)
        finally:
            del self._in_flight[target]
            event.set()
