"""The multi-source fetcher: verified pieces of a shard from every source at once, with failover.

Each source gets one worker per shard. A worker streams the shard's tokens file from a starting piece and claims
pieces one by one as the bytes arrive; it stops where another worker has already claimed or finished the next
piece, and then starts again at the longest run of missing pieces. Every piece is checked against the manifest
before it is written (on a worker thread, while the stream goes on), so a source can only waste time, never put a
wrong byte on disk:

- a piece whose hash does not match bans its source for the rest of the fetch (it lied);
- an error, a timeout, a short read or a 404 counts as a failure: the source backs off exponentially and is
  dropped after `max_failures`; its claimed piece goes back to the others at once;
- a piece claimed STALE_CLAIM_SECONDS ago and still not received may be read from another source too; when no
  piece is left unclaimed, idle workers take those (endgame), so a hung source delays a shard by a fraction of a
  second, not a timeout: the first verified copy wins;
- a stream slower than `FetchLimits.min_rate` over a window (a source that drips a byte a second never trips a
  read timeout) counts as a failure, and a small file (.pieces, .docs) that a source is slow to send is asked of
  more sources after HEDGE_SECONDS (`first_answer`): the first valid copy wins;
- a shard that gets no verified byte for `FetchLimits.stall_timeout` seconds fails with a FetchError that says
  what each source did, whatever the sources are doing.

Verified pieces are written in place into `<shard>.tokens.partial`; a later fetch re-hashes that file and keeps
every piece that matches, so an interrupted download resumes. The finished file is renamed into place, then
fsynced and recorded as verified.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import math
import os
import threading
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from kogitune.errors import FetchError, SourceError
from kogitune.files import file_mode_in, opener_like_folder, write_atomic
from kogitune.layout import MANIFEST_FILE, SHARDS_DIR, partial_path, shard_lock_path
from kogitune.marks import record_checked, record_verified
from kogitune.protocol.errors import IntegrityError, ManifestError
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, Manifest, ShardInfo, parse_manifest
from kogitune.protocol.pieces import check_pieces_file
from kogitune.settings import settings

from .body import Body
from .sources import Source

log = logging.getLogger("kogitune.fetch")
LOCK_POLL_SECONDS = 0.05
MAX_PIECES_CHECKING = 4
"""Received pieces waiting for their hash check per shard: bounds memory to (this + sources) pieces."""
STALE_CLAIM_SECONDS = 0.25
"""A piece claimed this long ago and still not received whole may be streamed from a second source too (endgame):
a hung or slow source then holds up a shard by at most this long, and sources that keep up never send a piece twice."""
SYNC_THREADS = 2
"""Threads of one trio run that fsync finished shards: on a slow disk, syncing shards wait their turn instead of
taking the threads that check pieces."""
_sync_limiter: trio.lowlevel.RunVar = trio.lowlevel.RunVar("kogitune_sync_limiter")
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
HEDGE_SECONDS = 1.0
"""How long the sources asked for a small file (a manifest, a .pieces or .docs file) may leave it unanswered before
as many more are asked the same, without cancelling the first (`first_answer`): a silent or slow source costs about
this long, not a read timeout. The first valid answer wins; the others are cancelled."""


@dataclass(frozen=True)
class FetchLimits:
    """How long a fetch puts up with sources that do not deliver. Defaults above; a user changes them with the
    settings min_rate (bytes/s), rate_window and stall_timeout (seconds; kogitune.settings: config.json or
    KOGITUNE_MIN_RATE, KOGITUNE_RATE_WINDOW, KOGITUNE_STALL_TIMEOUT), read when a SourcePool is made."""

    min_rate: float = MIN_SOURCE_RATE
    rate_window: float = RATE_WINDOW_SECONDS
    stall_timeout: float = STALL_SECONDS

    @classmethod
    def from_settings(cls) -> FetchLimits:
        current = settings()
        return cls(current.min_rate, current.rate_window, current.stall_timeout)


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

    def __post_init__(self) -> None:
        if not self.sources:
            raise FetchError("no sources to fetch from")
        self.health = [SourceHealth(s) for s in self.sources]

    def usable(self) -> list[SourceHealth]:
        return [h for h in self.health if not h.banned and h.failures < self.max_failures]

    def failed(self, health: SourceHealth, error: str) -> None:
        health.failures += 1
        health.last_error = error
        health.retry_at = trio.current_time() + min(self.backoff_seconds * 2 ** (health.failures - 1), 10.0)
        log.info("source failed (%d/%d): %s", health.failures, self.max_failures, error)

    def ban(self, health: SourceHealth, reason: str) -> None:
        health.banned = reason
        log.warning("dropping source %s: %s", health.source.name, reason)

    def succeeded(self, health: SourceHealth) -> None:
        health.failures = 0

    def report(self) -> str:
        return "; ".join(h.describe() for h in self.health)

    def in_order_of_health(self) -> list[SourceHealth]:
        """The usable sources: ready now first, then those that have delivered verified bytes, fewer failures and
        more bytes first (a source that has never delivered anything may be one that never answers)."""
        now = trio.current_time()
        return sorted(
            self.usable(),
            key=lambda h: (h.retry_at > now, not (h.bytes_verified or h.files_verified), h.failures, -h.bytes_verified),
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


async def first_answer(candidates: list, ask, *, at_once: int = 1, hedge_after: float = HEDGE_SECONDS):
    """`await ask(candidate)` for the first `at_once` candidates at once; each time one of them fails (returns None
    or raises SourceError: `ask` records why) the next is asked, and each time `hedge_after` seconds go by with no
    answer, as many more are asked as are already waiting (so ten silent candidates ahead of a good one cost about
    four hedges, not ten). The first answer that is not None wins and every other request is cancelled; None when
    every candidate failed."""
    answers: list = []
    finished = 0  # attempts that ended (counted, not signalled: several may end in one scheduler turn)
    progress = trio.Event()

    async def attempt(candidate, nursery: trio.Nursery) -> None:
        nonlocal finished, progress
        try:
            answer = await ask(candidate)
        except SourceError:
            answer = None
        if answer is not None and not answers:
            answers.append(answer)
            nursery.cancel_scope.cancel()
        finished += 1
        progress.set()
        progress = trio.Event()

    async with trio.open_nursery() as nursery:
        allowed, seen = at_once, 0
        for started, candidate in enumerate(candidates, 1):
            nursery.start_soon(attempt, candidate, nursery)
            if started >= allowed:
                if finished == seen:
                    with trio.move_on_after(hedge_after) as hedge:
                        await progress.wait()
                    if hedge.cancelled_caught:
                        allowed = 2 * started
                allowed += finished - seen  # each attempt that ended makes room for the next candidate
                seen = finished
    return answers[0] if answers else None


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


async def fetch_small_file(pool: SourcePool, path: str, limit: int, problem, exact: bool = False) -> bytes:
    """A small whole file (manifest, .pieces, .docs) from the first source whose bytes have no `problem`:
    `problem(data)` says what is wrong with them (naming the file), or None. The healthiest source is asked first,
    more when it fails or is slow (`first_answer`); a source that failed is asked again after its backoff, until
    it has failed `max_failures` times (one busy or overloaded provider is not the end of a fetch). A source that
    sends a wrong file is dropped, and the error, when no source is left, says what each one sent. With `exact`,
    the file has `limit` bytes: a shorter one was cut off (a source that died), a failure rather than a lie."""

    async def ask(health: SourceHealth) -> bytes | None:
        await trio.sleep_until(health.retry_at)
        try:
            async with health.source.stream(path, 0) as (_, body):
                data = await MinRateBody(body, pool.limits, health.source.name).read_all(
                    limit, f"{health.source.name}: {path}"
                )
        except SourceError as exc:
            pool.failed(health, str(exc))
            return None
        if exact and len(data) < limit:
            pool.failed(health, f"{health.source.name}: {path} ended after {len(data)} of {limit} bytes")
            return None
        wrong = problem(data)
        if wrong is not None:
            pool.ban(health, wrong)
            return None
        pool.succeeded(health)
        health.files_verified += 1
        return data

    while candidates := pool.in_order_of_health():
        data = await first_answer(candidates, ask)
        if data is not None:
            return data
    raise FetchError(f"no source could deliver a valid {path}: {pool.report()}")


async def fetch_manifest(pool: SourcePool, dataset_id: str | None = None) -> tuple[bytes, Manifest]:
    """The manifest from the first source that serves a valid one (hashing to `dataset_id` when given)."""
    parsed: dict[bytes, Manifest] = {}

    def problem(data: bytes) -> str | None:
        try:
            manifest = parse_manifest(data)
        except ManifestError as exc:
            return f"{MANIFEST_FILE} is not a valid manifest: {exc}"
        if dataset_id is not None and manifest.dataset_id != dataset_id:
            return f"{MANIFEST_FILE} is the manifest of {manifest.dataset_id}, not of {dataset_id}"
        parsed[data] = manifest
        return None

    data = await fetch_small_file(pool, MANIFEST_FILE, MAX_MANIFEST_BYTES, problem)
    return data, parsed[data]


class PieceBoard:
    """Which pieces of a shard are done or being checked, and which streams are reading each one (pure state; the
    caller gives the time).

    A piece is open when it is neither done, nor received and being checked, nor claimed. Workers start at the
    longest run of open pieces (in its middle when a stream is already flowing into it). A piece whose latest claim
    is `stale_after` seconds old may be claimed again: when nothing is open, idle workers take those (endgame), and
    the first verified copy wins. A piece that fails its check opens again.
    """

    def __init__(self, count: int, stale_after: float = STALE_CLAIM_SECONDS) -> None:
        self.done = bytearray(count)
        self.checking = bytearray(count)
        self.claims = [0] * count
        self.claimed_at = [0.0] * count
        self.stale_after = stale_after

    def __len__(self) -> int:
        return len(self.done)

    @property
    def complete(self) -> bool:
        return all(self.done)

    @property
    def remaining(self) -> int:
        return len(self.done) - sum(self.done)

    def is_open(self, index: int) -> bool:
        return not self.done[index] and not self.checking[index] and not self.claims[index]

    def claimable(self, index: int, now: float) -> bool:
        """Open, or claimed `stale_after` seconds ago and still not received."""
        return (
            index < len(self.done)
            and not self.done[index]
            and not self.checking[index]
            and (not self.claims[index] or now - self.claimed_at[index] >= self.stale_after)
        )

    def claim(self, index: int, now: float) -> bool:
        if not self.claimable(index, now):
            return False
        self.claims[index] += 1
        self.claimed_at[index] = now
        return True

    def release(self, index: int) -> None:
        self.claims[index] -= 1

    def hand_over(self, index: int) -> bool:
        """A stream received piece `index` whole: release its claim; True if it is the copy to check."""
        self.claims[index] -= 1
        if self.done[index] or self.checking[index]:
            return False
        self.checking[index] = 1
        return True

    def checked(self, index: int, ok: bool) -> None:
        self.checking[index] = 0
        if ok:
            self.done[index] = 1

    def finish(self, index: int) -> None:
        self.done[index] = 1

    def any_claimable_from(self, index: int, now: float) -> bool:
        """Whether a stream that cannot seek should read on from `index`: a piece ahead is claimable."""
        return any(self.claimable(i, now) for i in range(index, len(self.done)))

    def pick_start(self, now: float) -> int | None:
        """The first piece to stream: in the longest open run, else the first stale claim; None when there is none
        (every piece done, checking, or claimed by a stream that keeps up)."""
        best, best_len, index = None, 0, 0
        while index < len(self.done):
            if self.is_open(index):
                end = index
                while end < len(self.done) and self.is_open(end):
                    end += 1
                if end - index > best_len:
                    best, best_len = index, end - index
                index = end
            else:
                index += 1
        if best is not None:
            if best > 0 and self.claims[best - 1]:
                best += best_len // 2
            return best
        return next((i for i in range(len(self.done)) if self.claimable(i, now)), None)

    def next_stale_at(self) -> float:
        """When the oldest claim of a piece not yet received turns stale (infinity when there is none)."""
        return min(
            (
                self.claimed_at[i] + self.stale_after
                for i in range(len(self.done))
                if self.claims[i] and not self.done[i] and not self.checking[i]
            ),
            default=math.inf,
        )


class ShardFetch:
    """Brings one shard of a dataset into `directory` (a data tensor directory), verified piece by piece."""

    def __init__(self, directory: Path, manifest: Manifest, shard: ShardInfo, pool: SourcePool) -> None:
        self.directory = directory
        self.manifest = manifest
        self.shard = shard
        self.pool = pool
        self.piece_size = manifest.piece_size
        self.board = PieceBoard(manifest.pieces_in(shard), STALE_CLAIM_SECONDS)
        self.expected = b""
        self.bytes_by_source: Counter = Counter()
        self.bytes_received = 0
        self._fd = -1
        self._checks = trio.Semaphore(MAX_PIECES_CHECKING)
        self._write_lock = threading.Lock()
        self._progress = trio.Event()
        self._spare: list[bytearray] = []
        self._nursery: trio.Nursery | None = None
        self._installed_as: list | None = None
        self._write_error: OSError | None = None
        self._stall: trio.CancelScope | None = None

    @property
    def target(self) -> Path:
        return self.directory / self.shard.tokens_path

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Fetch the shard and put it in place; with `nursery.start(fetch.run)`, the caller goes on as soon as the
        shard is usable (every piece checked, files renamed into place) while this task makes it durable (fsync)
        and only then records it as verified: after a crash before that, the next open re-checks it. A shard
        waiting for its fsync holds no lock and no file open, so a long `get` onto a slow disk piles up nothing
        but these tasks."""
        async with self._locked():
            if self.target.exists():
                task_status.started()
                return
            await self._fetch_and_install()
        task_status.started()
        try:
            limiter = _sync_limiter.get()
        except LookupError:
            limiter = trio.CapacityLimiter(SYNC_THREADS)
            _sync_limiter.set(limiter)
        await trio.to_thread.run_sync(self._make_durable, limiter=limiter)

    async def _fetch_and_install(self) -> None:
        started = trio.current_time()
        partial = partial_path(self.target)
        with trio.CancelScope() as self._stall:
            self._progressed()
            self.expected = await fetch_small_file(
                self.pool, self.shard.pieces_path, len(self.board) * 32, self._pieces_problem, exact=True
            )
            self._progressed()
            docs = await fetch_small_file(
                self.pool, self.shard.docs_path, self.shard.docs_size, self._docs_problem, exact=True
            )
            self._fd = os.open(partial, os.O_RDWR | os.O_CREAT, file_mode_in(partial.parent))
            try:
                self._stall.deadline = math.inf  # re-hashing a partial file is local work, however long
                await trio.to_thread.run_sync(self._resume)
                self._progressed()
                await self._download()
                self._stall.deadline = math.inf
                await trio.to_thread.run_sync(self._install, partial, docs)
            except OSError as exc:  # a full or failing disk: say where, and what is kept for the next try
                where = exc.filename or partial
                raise FetchError(
                    f"shard {self.shard.name}: cannot write {where}: {exc.strerror or exc}; "
                    f"{sum(self.board.done)} of {len(self.board)} verified pieces are kept in "
                    f"{'it' if where == partial else partial}, and fetching again (once there is room) "
                    "resumes from them"
                ) from None
            finally:
                os.close(self._fd)
        if self._stall.cancelled_caught:
            raise self._stalled()
        sources = ", ".join(f"{name} {count / 2**20:.1f} MiB" for name, count in self.bytes_by_source.items())
        log.info(
            "fetched shard %s (%.1f MiB) in %.2f s from %s",
            self.shard.name,
            self.shard.size / 2**20,
            trio.current_time() - started,
            sources or "the partial file",
        )

    def _progressed(self) -> None:
        """A verified byte arrived: the shard has `stall_timeout` more seconds to make progress again."""
        assert self._stall is not None  # pieces arrive only inside the shard's stall scope
        if self.pool.limits.stall_timeout > 0:
            self._stall.deadline = trio.current_time() + self.pool.limits.stall_timeout

    def _stalled(self) -> FetchError:
        done = len(self.board) - self.board.remaining
        return FetchError(
            f"shard {self.shard.name}: no verified data from any source for "
            f"{self.pool.limits.stall_timeout:.0f} s ({done} of {len(self.board)} pieces done; "
            f"KOGITUNE_STALL_TIMEOUT); sources: {self.pool.report()}"
        )

    def _install(self, partial: Path, docs: bytes) -> None:
        """Put the checked shard in place, the tokens file last (its presence means complete)."""
        write_atomic(self.directory / self.shard.pieces_path, self.expected, durable=False)
        write_atomic(self.directory / self.shard.docs_path, docs, durable=False)
        os.replace(partial, self.target)
        self._installed_as = record_checked(self.directory, self.shard)

    def _make_durable(self) -> None:
        """fsync the shard's files and directory, then record the shard as verified if its files are still as
        installed (on a thread: fsyncs take as long as the disk needs, and must not stall other fetches). Failing
        here loses only the record."""
        try:
            for name in (self.shard.tokens_path, self.shard.pieces_path, self.shard.docs_path, SHARDS_DIR):
                fd = os.open(self.directory / name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            record_verified(self.directory, self.manifest, [self.shard], checked_as=self._installed_as)
        except FileNotFoundError:
            log.debug("shard %s was removed (cache eviction) before it was synced", self.shard.name)
        except OSError as exc:
            log.warning(
                "shard %s is in place but could not be synced to disk (%s); it will be re-checked on open",
                self.shard.name,
                exc,
            )

    def _pieces_problem(self, data: bytes) -> str | None:
        try:
            check_pieces_file(self.shard, data, self.piece_size)
        except IntegrityError as exc:
            return f"{exc} ({len(data)} bytes)"
        return None

    def _docs_problem(self, data: bytes) -> str | None:
        if hashlib.sha256(data).hexdigest() != self.shard.docs_sha256:
            return (
                f"shard {self.shard.name}: {self.shard.docs_path} does not match docs_sha256 in the manifest "
                f"({len(data)} bytes)"
            )
        return None

    @asynccontextmanager
    async def _locked(self):
        """One process per shard at a time (ranks and DataLoader workers share the cache)."""
        lock_path = shard_lock_path(self.directory, self.shard.name)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+b", opener=opener_like_folder) as lock:
            while True:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await trio.sleep(LOCK_POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _resume(self) -> None:
        """Keep the pieces of an earlier, interrupted fetch that still match their hashes: one pass over the file,
        one piece at a time into one buffer (a shard may be larger than memory)."""
        fresh = os.fstat(self._fd).st_size == 0
        os.ftruncate(self._fd, self.shard.size)
        if fresh:  # nothing to keep: reading and hashing the zeros would cost ~0.1 s per 32 MiB shard
            return
        piece = bytearray(self.piece_size)
        for index in range(len(self.board)):
            view = memoryview(piece)[: self._piece_length(index)]
            if (
                os.preadv(self._fd, [view], index * self.piece_size) == len(view)
                and hashlib.sha256(view).digest() == self.expected[index * 32 : (index + 1) * 32]
            ):
                self.board.finish(index)

    async def _download(self) -> None:
        if self.board.complete:
            return
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for health in self.pool.usable():
                nursery.start_soon(self._worker, health)
        if self._write_error is not None:
            raise self._write_error
        if not self.board.complete:
            raise FetchError(
                f"shard {self.shard.name}: {self.board.remaining} of {len(self.board)} pieces could not "
                "be fetched "
                f"from any source: {self.pool.report()}"
            )

    async def _worker(self, health: SourceHealth) -> None:
        while not self.board.complete:
            if health.banned or health.failures >= self.pool.max_failures:
                return
            await trio.sleep_until(health.retry_at)
            start = self.board.pick_start(trio.current_time())
            if start is None:
                with trio.move_on_at(self.board.next_stale_at()):
                    await self._progress.wait()
                continue
            self.board.claim(start, trio.current_time())
            try:
                await self._stream_from(health, start)
                self.pool.succeeded(health)
            except SourceError as exc:
                self.pool.failed(health, str(exc))

    async def _stream_from(self, health: SourceHealth, start: int) -> None:
        """Stream the tokens file from piece `start` (claimed by the caller before the request, so that the next
        worker starts elsewhere), receiving each piece this worker claims straight into a buffer that is checked
        and written in the background while the stream goes on. A source that cannot seek sends the pieces before
        `start` too: they are read past, and taken if they are still wanted."""
        path = self.shard.tokens_path
        holding: int | None = start
        piece = self._spare.pop() if self._spare else bytearray(self.piece_size)
        try:
            async with health.source.stream(path, start * self.piece_size) as (offset, raw):
                body = MinRateBody(raw, self.pool.limits, health.source.name)
                if offset % self.piece_size or offset > start * self.piece_size:
                    raise SourceError(
                        f"{health.source.name}: {path} starts at byte {offset}, asked for {start * self.piece_size}"
                    )
                seekable = offset == start * self.piece_size
                index = offset // self.piece_size
                if index != start:
                    self.board.release(start)
                    holding = index if self.board.claim(index, trio.current_time()) else None
                while True:
                    view, filled = memoryview(piece)[: self._piece_length(index)], 0
                    while filled < len(view):
                        count = await body.receive_into(view[filled:])
                        if not count:
                            raise SourceError(
                                f"{health.source.name}: {path} ended at byte "
                                f"{index * self.piece_size + filled} of {self.shard.size}"
                            )
                        filled += count
                    self.bytes_received += filled
                    if holding is not None:
                        holding = None
                        if self.board.hand_over(index):
                            await self._checks.acquire()
                            assert self._nursery is not None  # workers run in it
                            self._nursery.start_soon(self._check, health, index, piece)
                            piece = self._spare.pop() if self._spare else bytearray(self.piece_size)
                    index += 1
                    if index >= len(self.board) or health.banned:
                        return
                    holding = index if self.board.claim(index, trio.current_time()) else None
                    if holding is None and (seekable or not self.board.any_claimable_from(index, trio.current_time())):
                        return
        finally:
            if holding is not None:
                self.board.release(holding)
            self._spare.append(piece)

    def _piece_length(self, index: int) -> int:
        return min(self.piece_size, self.shard.size - index * self.piece_size)

    async def _check(self, health: SourceHealth, index: int, piece: bytearray) -> None:
        """Hash and write a received piece on a worker thread (hashlib and pwrite release the GIL), so that
        checking overlaps receiving; a wrong hash bans the source that sent it."""
        length = self._piece_length(index)
        assert self._nursery is not None  # checks run in the download nursery
        expected = self.expected[index * 32 : (index + 1) * 32]
        try:
            ok = await trio.to_thread.run_sync(self._check_and_write, piece, length, expected, index * self.piece_size)
        except OSError as exc:  # no source can help: stop the shard (_download raises it once, not in a group)
            self._write_error = self._write_error or exc
            self._nursery.cancel_scope.cancel()
            return
        finally:
            self._checks.release()
        self.board.checked(index, ok)
        self._spare.append(piece)
        if ok:
            health.bytes_verified += length
            self.bytes_by_source[health.source.name] += length
            self._progressed()
        else:
            self.pool.ban(health, f"sent shard {self.shard.name} piece {index} with a wrong hash")
        self._progress.set()
        self._progress = trio.Event()
        if self.board.complete:
            self._nursery.cancel_scope.cancel()

    def _check_and_write(self, piece: bytearray, length: int, expected: bytes, offset: int) -> bool:
        """Hashes run in parallel, writes one at a time: writes to one file serialize on its inode lock in the
        kernel anyway, where waiters spin (4 threads writing at once cost ~1.5x the CPU of one)."""
        data = memoryview(piece)[:length]
        if hashlib.sha256(data).digest() != expected:
            return False
        with self._write_lock:
            self._write(data, offset)
        return True

    def _write(self, data: memoryview, offset: int) -> None:
        while data:  # a regular file may take part of a write (e.g. a disk filling up) without an error
            written = os.pwrite(self._fd, data, offset)
            if not written:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data, offset = data[written:], offset + written
