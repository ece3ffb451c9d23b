"""Have-maps of a dataset's peers: which shards each one holds, asked before a shard is fetched, so that the
scheduler reads each shard only from sources that hold it (Source.holds) and a node can serve a dataset while it
still fetches the rest.

A node announces a dataset as soon as it holds the signed manifest and one verified shard (node/daemon.py), so a
provider may hold part of a dataset; its answer to the wire's `have` request (one bit per shard) says which part.
Before a shard is fetched (`refresh_for`), the peers whose map is unknown or does not show the shard are asked
again when no source is known to hold it, and the job peers (node/jobs.py) when none of them is (so a host learns
what its job's other hosts fetched since it last asked: a job peer is asked at each such shard fetch, since it may
have finished that very shard a moment ago, and a map a quarter second old would send the fetch to the origin).
Bounded: one request to a peer at a time (fetches that need its map meanwhile await that answer); a peer that is no
job peer is asked at most once every HAVE_REFRESH_SECONDS; one that does not answer, or answers late, at most once
every HAVE_REFRESH_SECONDS doubling up to HAVE_BACKOFF_MAX; a shard waits at most HAVE_ANSWER_SECONDS for the
answers; and a map is one bit per shard of a manifest (wire.have_shards checks it).
"""

from __future__ import annotations

import logging

import trio

from kogitune.errors import SourceError

from .peers import PeerSource, fetch_have
from .pool import SourcePool

log = logging.getLogger(__name__)
HAVE_REFRESH_SECONDS = 0.25
"""A peer's have-map is asked again at most this often (a peer fetching the same dataset fills in over time), a job
peer's whenever a shard fetch needs it (`_due`)."""
HAVE_BACKOFF_MAX = 60.0
"""The longest wait before asking again a peer whose have request failed (doubling from HAVE_REFRESH_SECONDS)."""
HAVE_ANSWER_SECONDS = 1.0
"""How long a shard fetch waits for the have-maps it asked for; a peer that has not answered by then is taken as
its last map says (a silent peer delays a shard by this, at most once per its backoff)."""
HAVE_LATE_SECONDS = 0.5
"""A have answer later than this backs its peer off as a failure does (its map is still taken): a job peer that
answered each request just within HAVE_ANSWER_SECONDS, holding nothing, was asked again before every shard and
delayed each by that long (an honest node answers in milliseconds)."""


async def refresh_for(pool: SourcePool, shard_count: int, index: int) -> None:
    """Ask for the have-maps that may change who serves shard `index`: none when a usable job peer is known to hold
    it; else those of the usable peers whose map is unknown or does not show it, that are due (all at once,
    within HAVE_ANSWER_SECONDS), only the job peers among them when another source is known to hold it."""
    usable = [h.source for h in pool.health if not h.banned and h.failures < pool.max_failures]  # a libp2p source
    # standing by for its peer's data port (SourcePool.usable) still speaks for what the peer holds
    if any(s.job_peer and isinstance(s, PeerSource) and s.have is not None and s.holds(index) for s in usable):
        return
    now = trio.current_time()
    due = [s for s in usable if isinstance(s, PeerSource) and not _shows(s, index) and _due(s, now)]
    if any(_shows(s, index) for s in usable):  # someone serves it: only a job peer's map could change who
        due = [s for s in due if s.job_peer]
    if not due:
        return
    with trio.move_on_after(HAVE_ANSWER_SECONDS):
        async with trio.open_nursery() as nursery:
            for source in due:
                nursery.start_soon(refresh, source, shard_count)


async def refresh(source: PeerSource, shard_count: int) -> None:
    """Ask one peer for its have-map (within HAVE_ANSWER_SECONDS); a failure keeps the last map and backs off, and
    so does an answer later than HAVE_LATE_SECONDS (its map is taken). While a request to the peer is on its way,
    its answer is awaited instead of asking again (shard fetches that start together ask a job peer once)."""
    if source.have_asking is not None:
        await source.have_asking.wait()
        return
    source.have_asking = asking = trio.Event()
    asked = trio.current_time()
    source.have_due = asked + min(HAVE_REFRESH_SECONDS * 2**source.have_failures, HAVE_BACKOFF_MAX)
    try:
        source.have = await fetch_have(source.host, source.peer_id, source.dataset_id, shard_count, HAVE_ANSWER_SECONDS)
    except SourceError as exc:
        source.have_failures += 1
        log.debug("have-map of %s: %s", source.name, exc)
        return
    finally:
        source.have_asking = None
        asking.set()
    answered = trio.current_time()
    if answered - asked <= HAVE_LATE_SECONDS:
        source.have_failures = 0
    else:  # the backoff runs from the answer: asked at once again, a late answer would delay every shard
        source.have_failures += 1
        source.have_due = answered + min(HAVE_REFRESH_SECONDS * 2**source.have_failures, HAVE_BACKOFF_MAX)


def _due(source: PeerSource, now: float) -> bool:
    """Whether `source`'s have-map may be asked now: a job peer that answered its last request in time, at every
    shard fetch that no job peer is known to hold (it may have finished that shard a moment ago: waiting out
    HAVE_REFRESH_SECONDS would send the fetch to the origin); any other peer once its last map is due."""
    return now >= source.have_due or (source.job_peer and not source.have_failures)


def _shows(source, index: int) -> bool:
    """Whether `source` is known to hold shard `index`: a web mirror holds every shard, a peer as its map says."""
    if not isinstance(source, PeerSource):  # a web mirror; a peer's data port counts as its peer (PeerSource)
        return source.identity is None and source.holds(index)
    return source.have is not None and index < len(source.have) and source.have[index]
