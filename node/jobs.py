"""Job peers: the nodes of the other hosts of one training job, found on the DHT and preferred as sources.

A training process names its job (kogitune.client.job_of_environment: by default from what torchrun sets on every
host, MASTER_ADDR, MASTER_PORT and TORCHELASTIC_RUN_ID) when its host's node daemon opens a dataset (control op
"job"). The node then announces itself under the job's key for that dataset (`ids.job_key`: a provider record,
like a dataset's, under another key) and looks up the others, again and again with backoff while the job runs:
each one found is connected and joins the dataset's pool as a job peer (Source.job_peer). The scheduler asks job
peers first for a shard they hold (have-maps, node/havemaps.py) and the origin only for what none of them holds or
when they stop delivering (SourcePool.standing_by), so in epoch 2 a host gets its new shards from the job's hosts.

A job peer is preferred, never trusted: anyone who knows the job's name can announce under its key, and every byte
it sends is checked like any other peer's; one that lies is banned, one that hangs or drips costs
`job_peer_patience` seconds per shard before the other sources join. Bounded: at most MAX_JOB_PEERS peers per job
and MAX_JOBS jobs per node (the oldest is dropped), each lookup JOB_LOOKUP_SECONDS; a provider that could not be
reached or did not answer `have` is not tried again for JOB_LOOKUP_MAX, and each round picks at random among the
others (`to_try`), so fake providers under a job's key cannot keep its real hosts out.
"""

from __future__ import annotations

import logging
import random

import trio

from kogitune.protocol.ids import job_key

from . import providers
from .havemaps import refresh
from .peer_http import join_data_port
from .peers import PeerSource

log = logging.getLogger(__name__)
JOB_LOOKUP_SECONDS = 2.0
"""How long one lookup of a job's peers goes on (the first host of a job finds nobody: it must not wait long)."""
JOB_LOOKUP_FIRST = 0.5
"""The pause after the first lookup of a job's peers, doubling after each, up to JOB_LOOKUP_MAX: the hosts of a
job start within seconds of each other, and one that comes late is found within JOB_LOOKUP_MAX."""
JOB_LOOKUP_MAX = 30.0
JOB_REANNOUNCE_SECONDS = 3600.0
"""How often a node announces itself again under a job's key while it takes part in it."""
MAX_JOB_PEERS = 64
"""Job peers of one dataset at most (the first found)."""
MAX_JOBS = 16
"""Jobs (job, dataset) a node takes part in at once; joining one more drops the oldest."""


class Jobs:
    """The jobs a node (node/daemon.py) takes part in, each a task that announces it and finds its peers."""

    def __init__(self, node) -> None:
        self.node = node
        self.running: dict[tuple[str, str], trio.CancelScope] = {}

    def join(self, dataset_id: str, job: str) -> bool:
        """Take part in `job` for `dataset_id` (opened by the node already); False if it does so already."""
        job_key(job, dataset_id)  # refuses a bad name here, not in the task
        if (dataset_id, job) in self.running:
            return False
        if len(self.running) >= MAX_JOBS:
            oldest = next(iter(self.running))
            self.running.pop(oldest).cancel()
        scope = self.running[dataset_id, job] = trio.CancelScope()
        self.node.nursery.start_soon(self._run, dataset_id, job, scope)
        return True

    def peers(self, dataset_id: str) -> list[str]:
        """The job peers in the pool of `dataset_id` (peer IDs)."""
        opened = self.node.swarm.opened.get(dataset_id)
        return sorted({str(h.source.identity) for h in opened.pool.health if h.source.job_peer}) if opened else []

    async def _run(self, dataset_id: str, job: str, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await self._take_part(dataset_id, job)
        except Exception as exc:  # the dataset could not be opened, the node is stopping: the job goes on without
            log.warning("looking for the peers of job %r of %s failed: %s", job, dataset_id, exc)
        finally:
            if self.running.get((dataset_id, job)) is scope:
                del self.running[dataset_id, job]

    async def _take_part(self, dataset_id: str, job: str) -> None:
        node, key = self.node, job_key(job, dataset_id)
        opened = await node.swarm.open_dataset(dataset_id)
        known: set[str] = set()
        failed_until: dict[str, float] = {}
        pause, announced_at = JOB_LOOKUP_FIRST, -JOB_REANNOUNCE_SECONDS
        while True:
            if trio.current_time() - announced_at >= JOB_REANNOUNCE_SECONDS:
                with trio.move_on_after(providers.CONNECT_TIMEOUT):
                    await providers.provide(node.dht, dataset_id, key)
                    announced_at = trio.current_time()
            found = await providers.find_providers(node, dataset_id, JOB_LOOKUP_SECONDS, key)
            new = to_try(found, known, failed_until, trio.current_time(), MAX_JOB_PEERS - len(known))
            failed: dict[str, str] = {}
            for peer in await providers.connect_providers(node, new, failed) if new else []:
                in_pool = {h.source.name: h.source for h in opened.pool.health}
                source = PeerSource(node.host, peer, dataset_id, opened.manifest, node.config.read_timeout)
                source = in_pool.get(source.name, source)
                if source.have is None:  # it joins knowing what it holds, or not yet
                    await refresh(source, len(opened.manifest.shards))
                if source.have is None or not isinstance(source, PeerSource):
                    continue
                opened.pool.add(source)
                for health in opened.pool.health:  # its libp2p source, and its data port if it joined already
                    if health.source.identity == source.identity:
                        health.source.job_peer = True
                seed = node.seed if opened.manifest.access is not None else None  # a private dataset: over TLS
                node.nursery.start_soon(
                    join_data_port, opened.pool, node.host, peer, dataset_id, node.config.read_timeout, seed
                )
                known.add(str(peer))
                log.info("job peer %s joined the sources of %s", peer, dataset_id)
            for info in new:  # unreachable, or no have-map: not asked again for a while
                if str(info.peer_id) not in known:
                    failed_until[str(info.peer_id)] = trio.current_time() + JOB_LOOKUP_MAX
            await trio.sleep(pause)
            pause = min(2 * pause, JOB_LOOKUP_MAX)


def to_try(found: list, known: set[str], failed_until: dict[str, float], now: float, room: int) -> list:
    """The providers found under a job's key to connect to in this round: at most `room`, none that joined already
    (`known`) or failed within JOB_LOOKUP_MAX (`failed_until`, pruned here), picked at random. Anyone can announce
    under a job's key, and a hostile DHT neighbour can answer a lookup with any list of providers: were the first
    `room` of the list tried every round, fakes listed first would keep the job's real hosts out for ever."""
    for peer in [peer for peer, until in failed_until.items() if until <= now]:
        del failed_until[peer]
    fresh = [info for info in found if str(info.peer_id) not in known and str(info.peer_id) not in failed_until]
    return random.sample(fresh, min(max(room, 0), len(fresh)))
