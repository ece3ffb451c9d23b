"""The sources of one dataset and what the fetcher has learned about each (SourcePool), and the limits a source must
keep (FetchLimits, MinRateBody). Shared by every shard fetch of a dataset (node/fetch.py) and by the fetches of its
small files (node/small_files.py), so a source that lied is dropped for the whole dataset; a source may join a pool
that is in use (`SourcePool.add`: peers found after the dataset was opened).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from kogitune.errors import FetchError, SourceError, SourceLacks, SourceMissing
from kogitune.settings import settings

from .body import Body
from .sources import Source

log = logging.getLogger(__name__)
MIN_SOURCE_RATE = settings().min_rate
"""Bytes per second below which a source's stream counts as failed (`KOGITUNE_MIN_RATE`), measured over windows of
RATE_WINDOW_SECONDS of waiting for it: a peer that drips a byte a second is dropped from that stream after one
window, and its pieces go to the other sources. Low on purpose: many streams share one link, and a slow but honest
source still helps; the endgame already routes around a source that is merely slower than the others."""
RATE_WINDOW_SECONDS = settings().rate_window
"""The window over which a stream must deliver MIN_SOURCE_RATE (`KOGITUNE_RATE_WINDOW`)."""
STALL_SECONDS = settings().stall_timeout
"""A shard fetch with no verified byte (piece, .pieces or .docs file) for this long fails with a FetchError naming
what each source did (`KOGITUNE_STALL_TIMEOUT`): sources that all hang, drip or fail and back off cannot hold a
trainer for minutes."""
JOB_PEER_PATIENCE = settings().job_peer_patience
"""While a job peer that holds a shard is usable, the other sources (the origin, far peers, web mirrors) stand by
for that shard; they join its fetch once no verified piece arrived for this many seconds
(`KOGITUNE_JOB_PEER_PATIENCE`, SourcePool.standing_by): a job peer that hangs or drips costs a trainer this long,
not a stall timeout."""
JOB_PEER_MIN_RATE = settings().job_peer_min_rate * 1e6
"""Bytes/s a shard's fetch must average while the others stand by for a job peer (`KOGITUNE_JOB_PEER_MIN_RATE`, in
MB/s): one that falls `job_peer_patience` seconds behind is without progress (ShardFetch.quiet_for), so a job peer
dripping a verified piece just within each patience holds a 32 MiB shard about 10 s, not pieces x 2 s."""
DATA_PORT_PATIENCE_SECONDS = 0.5
"""How long a peer's libp2p source waits for its data port, just joined and untried, before it reads beside it
(SourcePool.standing_by; HTTP is faster): a data port that a firewall hides costs this long, once."""
NOT_FOUND_BACKOFF_SECONDS = 0.25
"""How long a peer that answered not_found for a shard it announced is left alone for that shard, doubling with each
not_found in a row (SourcePool.not_found): an honest node answers so for a moment while it re-checks the shard."""
NOT_FOUND_TRIES = 6
"""Not_found answers in a row for one shard after which a peer is taken to lack it (its have-map bit cleared): about
8 s of asking again (0.25 s doubling), 6 small requests per shard from a peer that claims it and never serves it."""


@dataclass(frozen=True)
class FetchLimits:
    """How long a fetch puts up with sources that do not deliver. Defaults above; a user changes them with the
    settings min_rate (bytes/s), rate_window and stall_timeout (seconds; kogitune.settings: config.json or
    KOGITUNE_MIN_RATE, KOGITUNE_RATE_WINDOW, KOGITUNE_STALL_TIMEOUT), read when a SourcePool is made."""

    min_rate: float = MIN_SOURCE_RATE
    rate_window: float = RATE_WINDOW_SECONDS
    stall_timeout: float = STALL_SECONDS
    job_peer_patience: float = JOB_PEER_PATIENCE
    job_peer_min_rate: float = JOB_PEER_MIN_RATE

    @classmethod
    def from_settings(cls) -> FetchLimits:
        current = settings()
        patience, min_rate = current.job_peer_patience, current.job_peer_min_rate * 1e6
        return cls(current.min_rate, current.rate_window, current.stall_timeout, patience, min_rate)


@dataclass
class SourceHealth:
    """What the fetcher has learned about one source during this fetch."""

    source: Source
    failures: int = 0
    banned: str = ""
    retry_at: float = 0.0
    last_error: str = ""
    bytes_verified: int = 0
    files_verified: int = 0
    pieces_verified: int = 0
    pieces_rejected: int = 0
    bytes_discarded: int = 0
    """Bytes of the tokens file received from this source and thrown away: a piece another stream had already
    delivered, or a piece cut off when its stream stopped (node/piece_board.py). Over-fetch as the fetcher sees
    it: what a source had sent past a closed request and was never read shows only in the source's own counter."""
    no_sidecars: bool = False
    """The source answered 404 for a compressed sidecar: it is not asked for others (node/sidecar_fetch.py)."""
    outrun: int = 0
    """Small files another source delivered while it had not answered for HEDGE_SECONDS (node/small_files.py), since
    it last delivered one: it is then asked after the others (a job peer that never sends them costs a hedge once, not
    one per shard)."""
    not_found: dict[int, tuple[int, float]] = field(default_factory=dict)
    """Shard index -> (not_found answers in a row of this peer's source for a file of that shard, when (trio clock)
    it may be asked for the shard again): SourcePool.not_found."""
    streams: int = 0
    """Workers reading from this source now, over all the shard fetches of the pool (`Source.connections`)."""
    joined_at: float = 0.0
    """When (trio clock) a peer's data port joined the pool (SourcePool.add; 0 for a pool's first sources)."""

    def asked_again_at(self, index: int | None) -> float:
        """When the source may be asked again for a file of shard `index` (None: a file of no shard): after its
        back-off, and after its pause for that shard when it answered not_found for it (SourcePool.not_found)."""
        paused = self.not_found.get(index, (0, 0.0))[1] if index is not None else 0.0
        return max(self.retry_at, paused)

    def describe(self) -> str:
        if self.banned:
            return f"{self.source.name}: dropped, {self.banned}"
        if self.last_error:
            return f"{self.source.name}: {self.failures} failure(s), last: {self.last_error}"
        if not self.bytes_verified and not self.files_verified:
            return f"{self.source.name}: nothing verified yet, no error"
        return f"{self.source.name}: ok, {self.bytes_verified} bytes"


@dataclass
class SourcePool:
    """The sources of one dataset and their health, shared by all shard fetches of that dataset."""

    sources: list[Source]
    max_failures: int = 4
    backoff_seconds: float = 0.25
    limits: FetchLimits = field(default_factory=FetchLimits.from_settings)
    health: list[SourceHealth] = field(init=False)

    searching: int = field(init=False, default=0)
    _change: trio.Event = field(init=False, default_factory=trio.Event)
    joined: set = field(init=False, default_factory=set)
    """Callbacks `joined(health)` of the shard fetches running now, told of each source that joins."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise FetchError("no sources to fetch from")
        self.health = [SourceHealth(s) for s in self.sources]

    def add(self, source: Source) -> SourceHealth:
        """A source found after the pool was made (a peer whose provider record or dial came late, a mirror that
        a later open names): it takes part in the shard fetches running now and in every later one. A source whose
        name is in the pool already is not added twice (a banned one stays banned). Returns its health."""
        for health in self.health:
            if health.source.name == source.name:
                return health
        self.sources.append(source)
        health = SourceHealth(source)
        if source.preferred:  # a peer's data port, added by the fetch service's trio tasks
            health.joined_at = trio.current_time()
        self.health.append(health)
        banned = [h for h in self.health if h.banned and source.identity and h.source.identity == source.identity]
        if banned:  # a peer banned on one of its sources is banned on every other
            health.banned = banned[0].banned
        for joined in list(self.joined):
            joined(health)
        self._changed()
        return health

    def names(self) -> set[str]:
        return {h.source.name for h in self.health}

    def search_started(self) -> None:
        """A lookup for more sources (peers on the DHT) is running: a fetch that has no usable source left waits
        for it (`more_sources`) instead of failing."""
        self.searching += 1

    def search_ended(self) -> None:
        self.searching -= 1
        self._changed()

    async def more_sources(self) -> bool:
        """Wait until a source joins or a lookup ends; False at once when no lookup is running."""
        if not self.searching:
            return False
        await self._change.wait()
        return True

    def _changed(self) -> None:
        self._change.set()
        self._change = trio.Event()

    def usable(self, index: int | None = None) -> list[SourceHealth]:
        """The sources neither banned nor failed out, less a peer's sources that its `preferred` one (its data
        port) stands in for: once it has delivered verified bytes, and while it is usable (a data port that a
        firewall hides never holds up the peer's libp2p source); with `index`, those that may serve shard `index`
        (Source.holds)."""
        working = [h for h in self.health if self._working(h)]
        standing_in = {
            h.source.identity for h in working if h.source.preferred and (h.bytes_verified or h.files_verified)
        }
        return [
            h
            for h in working
            if (h.source.preferred or h.source.identity not in standing_in) and (index is None or h.source.holds(index))
        ]

    def is_usable(self, health: SourceHealth) -> bool:
        return health in self.usable()

    def _working(self, health: SourceHealth) -> bool:
        return not health.banned and health.failures < self.max_failures

    def standing_by(self, health: SourceHealth, index: int, quiet_for: float) -> float:
        """Seconds `health`'s source should wait for progress rather than read shard `index` now (0: read now);
        `quiet_for`: seconds the fetch is without progress (ShardFetch.quiet_for: since its last verified piece, or
        behind JOB_PEER_MIN_RATE). A peer that answered not_found for the shard waits out its pause (`not_found`).
        A peer's libp2p source waits while its data port is usable, untried (once it delivers, it stands in:
        `usable`) and joined within DATA_PORT_PATIENCE_SECONDS.
        A source that is no job peer waits while a usable job peer holds the shard (and has not answered not_found
        for it), within `job_peer_patience` of quiet (a host reads from its job's hosts what they hold, from the
        origin what they lack or fail at)."""
        paused = health.not_found.get(index, (0, 0.0))[1] - trio.current_time()
        if paused > 0:
            return paused
        source = health.source
        if not source.preferred and source.identity:
            for port in self.usable(index):
                if port.source.preferred and port.source.identity == source.identity and not port.failures:
                    left = port.joined_at + DATA_PORT_PATIENCE_SECONDS - trio.current_time()
                    if left > 0:
                        return left
        if source.job_peer or quiet_for >= self.limits.job_peer_patience:
            return 0.0
        job_peers = [h for h in self.usable(index) if h.source.job_peer and index not in h.not_found]
        return self.limits.job_peer_patience - quiet_for if job_peers else 0.0

    def failed(self, health: SourceHealth, error: str) -> None:
        health.failures += 1
        health.last_error = error
        health.retry_at = trio.current_time() + min(self.backoff_seconds * 2 ** (health.failures - 1), 10.0)
        log.info("source failed (%d/%d): %s", health.failures, self.max_failures, error)
        if health.source.preferred and health.failures == self.max_failures:
            self._fall_back(health)

    def failed_on(self, health: SourceHealth, index: int | None, error: SourceError) -> None:
        """A request of `health` for a file of shard `index` (None: of no shard) failed with `error`: a peer's answer
        that it does not hold that shard (SourceLacks over libp2p, a 404 from its data port) is `not_found`, anything
        else a failure (`failed`; a web mirror's 404 too: a mirror serves every shard)."""
        lacks = isinstance(error, SourceLacks) or (
            isinstance(error, SourceMissing) and health.source.identity is not None
        )
        if index is not None and lacks:
            self.not_found(health, index, str(error))
        else:
            self.failed(health, str(error))

    def not_found(self, health: SourceHealth, index: int, error: str) -> None:
        """`health`'s source, a peer that its have-map (or its provider record) says holds shard `index`, answered
        that it does not. No failure: an honest node answers so for a moment while it re-checks a shard whose files
        changed (node/integrity.py), and one shard says nothing of the others (four shards fetched at once from a
        node that re-checks them must not fail it out of the dataset). So it is asked for that shard again after
        NOT_FOUND_BACKOFF_SECONDS, doubling with each not_found in a row (its workers stand by: `standing_by`;
        answers to requests sent before the pause began count once), and after NOT_FOUND_TRIES in a row it is taken
        to lack the shard (Source.lacks: until a have answer shows it again). A read of the shard that succeeds
        (`succeeded`) starts the count again."""
        health.last_error = error
        answers, until = health.not_found.get(index, (0, 0.0))
        if trio.current_time() < until:  # sent with the one that began this pause (.pieces and .docs together)
            return
        answers += 1
        if answers < NOT_FOUND_TRIES:
            pause = NOT_FOUND_BACKOFF_SECONDS * 2 ** (answers - 1)
            health.not_found[index] = (answers, trio.current_time() + pause)
            log.info("%s; asked again for that shard in %.2f s", error, pause)
        else:
            health.not_found.pop(index, None)
            health.source.lacks(index)
            log.info("%s (%d times in a row): taken to lack shard %d", error, answers, index)

    def ban(self, health: SourceHealth, reason: str) -> None:
        """Drop a source that lied, and every other source of the same peer (its libp2p streams, its data port)."""
        identity = health.source.identity
        for dropped in [h for h in self.health if h is health or (identity and h.source.identity == identity)]:
            if not dropped.banned:
                dropped.banned = reason
                log.warning("dropping source %s: %s", dropped.source.name, reason)

    def _fall_back(self, preferred: SourceHealth) -> None:
        """A peer's preferred source failed out: its other sources take part again (running fetches get workers)."""
        for health in self.health:
            if (
                health is not preferred
                and health.source.identity == preferred.source.identity
                and self._working(health)
            ):
                for joined in list(self.joined):
                    joined(health)
        self._changed()

    def succeeded(self, health: SourceHealth, index: int | None = None) -> None:
        """A request of `health` (for a file of shard `index`) succeeded: its failures start again from 0, unless it
        has failed out already (a small file in flight when a data port failed out must not bring it back: its
        peer's libp2p source, which took over, would stand by again while no worker reads from the data port), and
        so do its not_found answers for that shard."""
        if index is not None:
            health.not_found.pop(index, None)
        if self._working(health):
            health.failures = 0

    def report(self) -> str:
        return "; ".join(h.describe() for h in self.health)

    def in_order_of_health(self, index: int | None = None) -> list[SourceHealth]:
        """The usable sources (of shard `index`, when given: job peers first), those outrun on a small file last:
        ready now first (past their back-off, and their pause after a not_found for that shard), then those that have
        delivered verified bytes, then a peer's data port before its libp2p stream (a data port that delivers stands
        in for it: `usable`), fewer failures and more bytes first (a source that has never delivered anything may be
        one that never answers)."""
        now = trio.current_time()
        return sorted(
            self.usable(index),
            key=lambda h: (
                h.outrun > 0,
                index is not None and not h.source.job_peer,
                h.asked_again_at(index) > now,
                not (h.bytes_verified or h.files_verified),
                not h.source.preferred,
                h.failures,
                -h.bytes_verified,
            ),
        )


class MinRateBody(Body):
    """A source's body that must deliver `limits.min_rate` bytes/s over each window of `limits.rate_window` seconds
    spent waiting for it (time the fetcher spends elsewhere, e.g. waiting for hash checks, does not count against
    the source). A stream that falls below ends with a SourceError when its window closes short: a peer that drips a
    byte a second, which never trips a per-read timeout, costs one window. (A read that blocks outright is the
    source's read timeout's business; this check costs two clock reads per receive, no cancel scope.)"""

    def __init__(self, body: Body, limits: FetchLimits, name: str) -> None:
        super().__init__()
        self._body, self._name = body, name
        self._window = limits.rate_window
        self._need = limits.min_rate * limits.rate_window
        self._waited = 0.0
        self._in_window = 0

    async def receive_into(self, buffer: memoryview) -> int:
        if self._need <= 0:  # KOGITUNE_MIN_RATE=0 (or a zero window) turns the rule off
            return await self._body.receive_into(buffer)
        started = trio.current_time()
        count = await self._body.receive_into(buffer)
        self._waited += trio.current_time() - started
        self._in_window += count  # before the check: a read that ends a long wait with data counts
        if self._waited >= self._window:
            if self._in_window < self._need:
                raise SourceError(
                    f"{self._name}: sent {self._in_window} bytes in {self._waited:.0f} s, below the "
                    f"minimum rate of {self._need / self._window:.0f} B/s (KOGITUNE_MIN_RATE)"
                )
            self._waited, self._in_window = 0.0, 0
        return count


async def prefetch_in_order(nursery: trio.Nursery, limiter: trio.CapacityLimiter, indexes, fetch) -> None:
    """`await fetch(index)` for each shard index, started in this order (the order they will be needed: trio may
    run tasks started together in any order), at most `limiter`'s total at a time. Prefetch failures only log;
    the wait for the shard reports them."""

    async def one(index: int, slot: object) -> None:
        try:
            await fetch(index)
        except Exception as exc:
            log.warning("prefetch of shard %d failed: %s", index, exc)
        finally:
            limiter.release_on_behalf_of(slot)

    for index in indexes:
        slot = object()
        await limiter.acquire_on_behalf_of(slot)
        nursery.start_soon(one, index, slot)
