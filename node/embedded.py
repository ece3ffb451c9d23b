"""An embedded node: the fetch service (node/swarm.py) on a trio loop in a background thread of a sync process.

Training code is synchronous; the fetcher is trio. This thread owns one trio loop per process; sync callers
(kogitune/client.py) submit work with `trio.from_thread`. It runs one Swarm per content store it is asked to fill
(a recipe may name its own store), all sharing one libp2p client-mode node, started only when a dataset needs
peers: a dataset named by ID alone at once, one with web mirrors too in the background and only when a bootstrap
peer is configured (with none, it would find nobody). Datasets of mirror URLs alone never start it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from kogitune.content_store import ContentStore
from kogitune.errors import FetchError
from kogitune.settings import settings

from .collection import OpenCollection
from .swarm import Swarm

if TYPE_CHECKING:
    from .daemon import Node


class EmbeddedNode:
    """Runs the fetch service in a daemon thread; all public methods are called from ordinary (sync) threads.
    `store_home` names the content store (ContentStore(store_home)) a dataset is fetched into."""

    def __init__(self, read_timeout: float = settings().read_timeout, home: Path | None = None) -> None:
        self.read_timeout = read_timeout
        self.home = home
        self._p2p: Node | None = None
        self._p2p_starting: trio.Event | None = None
        self._p2p_error = ""
        self._swarms: dict[Path, Swarm] = {}
        self._started = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), name="kogitune-node", daemon=True)
        self._thread.start()
        self._started.wait()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._started.set()
            await trio.sleep_forever()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _swarm(self, store_home) -> Swarm:
        store_home = Path(store_home)
        swarm = self._swarms.get(store_home)
        if swarm is None:
            swarm = self._swarms[store_home] = Swarm(
                ContentStore(store_home), self._p2p_node, self._nursery, self.read_timeout
            )
        return swarm

    def _run(self, work, timeout: float, too_slow) -> Any:
        """`await work()` on the node's loop within `timeout` seconds; FetchError(too_slow()) after that."""

        async def run():
            with trio.move_on_after(timeout) as scope:
                return await work()
            if scope.cancelled_caught:
                raise FetchError(too_slow())

        return trio.from_thread.run(run, trio_token=self._token)

    def open(self, store_home, dataset_id: str, mirrors, trusted, peers: bool, timeout: float):
        """Open a dataset or collection by ID (see Swarm.open); (its store directory, its publisher or None, a
        collection's parts or None, a collection's web mirrors kept: OpenCollection.mirrors)."""

        async def work():
            opened = await self._swarm(store_home).open(
                dataset_id, mirrors, frozenset(trusted) if trusted is not None else None, peers
            )
            if isinstance(opened, OpenCollection):
                return opened.directory, opened.publisher, list(opened.parts), list(opened.mirrors)
            return opened.directory, opened.publisher, None, []

        return self._run(work, timeout, lambda: f"{dataset_id} could not be resolved within {timeout:.0f} s")

    def peek(self, store_home, dataset_id: str, timeout: float) -> tuple[bytes, str | None]:
        """The signed manifest of a dataset and its publisher, written nowhere (see Swarm.peek)."""

        async def work():
            copy = await self._swarm(store_home).peek(dataset_id)
            return copy.data, copy.publisher

        return self._run(work, timeout, lambda: f"no manifest of {dataset_id} within {timeout:.0f} s")

    def open_mirrors(self, store_home, mirrors, timeout: float) -> tuple[Path, str]:
        """Open the dataset that these web mirrors serve; (its store directory, its ID)."""

        async def work():
            opened = await self._swarm(store_home).open_mirrors(mirrors)
            return opened.directory, opened.dataset_id

        return self._run(work, timeout, lambda: f"no manifest from {', '.join(mirrors)} within {timeout:.0f} s")

    def resolve(self, name: str, timeout: float) -> bytes:
        """The newest valid record of a dataset name from the DHT, as bytes (see node/names.py)."""
        from .names import resolve

        async def work():
            return (await resolve(await self._p2p_node(), name)).to_bytes()

        return self._run(work, timeout, lambda: f"no record of the name {name} within {timeout:.0f} s")

    def fetch_lock(self, recipe_id: str, timeout: float) -> bytes:
        """The published bytes of a recipe lock from the DHT (see node/locks.py)."""
        from .locks import fetch_lock

        async def work():
            return await fetch_lock(await self._p2p_node(), recipe_id)

        return self._run(work, timeout, lambda: f"no published lock {recipe_id} within {timeout:.0f} s")

    def fetch_shard(self, store_home, dataset_id: str, index: int, mirrors, peers: bool, timeout: float) -> None:
        """Block until shard `index` is verified in the store, fetching it if needed."""
        swarm = self._swarm(store_home)

        def too_slow() -> str:
            opened = swarm.opened.get(dataset_id)
            sources = f" (sources: {opened.pool.report()})" if opened else ""
            return f"shard {index} of {dataset_id} did not arrive within {timeout:.0f} s{sources}"

        self._run(lambda: swarm.fetch_shard(dataset_id, index, mirrors, peers), timeout, too_slow)

    def prefetch(self, store_home, dataset_id: str, indexes: list[int], mirrors, peers: bool) -> None:
        """Start fetching these shards in the background, in this order; errors surface when a shard is needed."""
        swarm = self._swarm(store_home)
        trio.from_thread.run_sync(
            self._nursery.start_soon, swarm.prefetch, dataset_id, list(indexes), mirrors, peers, trio_token=self._token
        )

    def source_bytes(self, key) -> dict[str, int]:
        """Verified bytes fetched from each source of a dataset: `key` is its ID, or the list of its mirror URLs."""

        def find() -> dict[str, int]:
            for swarm in self._swarms.values():
                for dataset_id, opened in swarm.opened.items():
                    named = opened.pool.names()
                    if key == dataset_id or (not isinstance(key, str) and {u.rstrip("/") for u in key} <= named):
                        return swarm.source_bytes(dataset_id)
            return {}

        return trio.from_thread.run_sync(find, trio_token=self._token)

    def report(self, dataset_id: str) -> str:
        """What each source of a dataset did (SourcePool.report: bytes verified, failures, why it was dropped)."""

        def find() -> str:
            return "; ".join(
                s.opened[dataset_id].pool.report() for s in self._swarms.values() if dataset_id in s.opened
            )

        return trio.from_thread.run_sync(find, trio_token=self._token)

    async def _p2p_node(self, optional: bool = False):
        """The client-mode libp2p node of this process, started on first use with the configured bootstrap; None
        when `optional` and no bootstrap peer is configured (it would find nobody). It starts in a task of its own:
        a caller that stops waiting (the mirrors answered first) does not stop the start."""
        from .service import bootstrap_peers

        assert self.home is not None, "peers need a Kogitune home: EmbeddedNode(home=...)"
        if self._p2p is None and self._p2p_starting is None:
            bootstrap = bootstrap_peers(self.home)
            if optional and not bootstrap:
                return None
            self._p2p_starting = trio.Event()
            self._nursery.start_soon(self._start_p2p, self.home, bootstrap, self._p2p_starting)
        if self._p2p is None and self._p2p_starting is not None:
            await self._p2p_starting.wait()
        if self._p2p is None:
            raise FetchError(f"the libp2p client node did not start: {self._p2p_error}")
        return self._p2p

    async def _start_p2p(self, home: Path, bootstrap: list[str], started: trio.Event) -> None:
        from .daemon import Node, NodeConfig

        config = NodeConfig(
            home=home,
            listen=["/ip4/127.0.0.1/tcp/0"],
            bootstrap=bootstrap,
            server=False,
            read_timeout=self.read_timeout,
        )
        try:
            self._p2p = await self._nursery.start(Node(config).run)
        except Exception as exc:
            self._p2p_error = f"{type(exc).__name__}: {exc}"
        finally:
            if self._p2p is None:
                self._p2p_starting = None  # the next caller tries again
            started.set()
