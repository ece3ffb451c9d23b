"""The multi-source fetcher: verified pieces of a shard from every source at once, with failover.

Each source gets one worker per shard, and an HTTP source more while few shards are in flight (`Source.connections`:
one TCP stream is bounded by its window over a long path). A worker asks the board (piece_board.py) for a run of
pieces, reserved for its stream alone (its share of the longest open run: the workers waiting for one split it), and
requests the shard's tokens file over exactly that run. No other stream starts inside a reserved run, so a source
sends only bytes the fetcher keeps; a run is cut only when its stream is slow or stuck, and the stream then closes
its request at the cut (what it read and threw away is counted in `SourceHealth.bytes_discarded`). Every piece is
checked against the manifest before it is written (on a check thread while the stream goes on, or between receives:
the setting `check_threads`), so a source can only waste time, never put a wrong byte on disk:

- a piece whose hash does not match bans its source for the rest of the fetch (it lied);
- an error, a timeout, a short read or a 404 counts as a failure: the source backs off exponentially and is
  dropped after `max_failures`; the rest of its run goes back to the others at once (a peer's not_found, or its
  data port's 404, for the shard is a pause for that shard instead: SourcePool.not_found);
- a stream that has received no byte for STALE_CLAIM_SECONDS (or whose piece takes longer than STEAL_SECONDS) has
  its run taken over by an idle worker once no piece is left unreserved (endgame), so a hung source delays a shard
  by a fraction of a second, not a timeout: the first verified copy of the piece it was receiving wins; a stream
  that would need more than STEAL_SECONDS for the rest of its run gives its back half to an idle worker;
- a stream slower than `FetchLimits.min_rate` over a window (a source that drips a byte a second never trips a
  read timeout) counts as a failure, and a small file (.pieces, .docs) that a source is slow to send is asked of
  more sources after HEDGE_SECONDS (`first_answer`): the first valid copy wins;
- a shard that gets no verified byte for `FetchLimits.stall_timeout` seconds fails with a FetchError that says
  what each source did, whatever the sources are doing.

A source that offers the shard's compressed sidecar (`shards/<name>.tokens.zst`: one zstd frame per piece, see
node/sidecar_fetch.py) is streamed frames instead of pieces, when the setting compressed_transfer is on: each frame
is decoded on the checking thread with its piece's length as a hard bound, then hashed like any piece, so a lying
frame or index bans its source exactly as a wrong piece does, and what lands on disk is always the flat, verified
tokens.

Verified pieces are written in place into `<shard>.tokens.partial`; a later fetch re-hashes that file and keeps
every piece that matches, so an interrupted download resumes. The finished file is renamed into place, then
fsynced and recorded as verified.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections import Counter
from pathlib import Path

import trio

from kogitune.errors import FetchError, SourceError
from kogitune.files import file_mode_in, write_atomic
from kogitune.layout import partial_path
from kogitune.marks import record_checked
from kogitune.protocol.compression import SidecarIndex, compress_bound, decode_piece, sidecar_path
from kogitune.protocol.errors import IntegrityError
from kogitune.protocol.manifest import Manifest, ShardInfo
from kogitune.protocol.pieces import check_pieces_file
from kogitune.settings import settings

from .piece_board import STALE_CLAIM_SECONDS, PieceBoard, Run
from .pool import MinRateBody, SourceHealth, SourcePool
from .shard_files import kept_pieces, make_durable, shard_lock, write_all
from .sidecar_fetch import SidecarIndexes, first_piece_at, read_past
from .small_files import fetch_small_file

log = logging.getLogger(__name__)
MAX_PIECES_CHECKING = 4
"""Received pieces waiting for their hash check per shard: bounds memory to (this + sources) pieces."""
_check_limiter: trio.lowlevel.RunVar = trio.lowlevel.RunVar("kogitune_check_limiter")


class ShardFetch:
    """Brings one shard of a dataset into `directory` (a data tensor directory), verified piece by piece."""

    def __init__(self, directory: Path, manifest: Manifest, shard: ShardInfo, pool: SourcePool) -> None:
        self.directory = directory
        self.manifest = manifest
        self.shard = shard
        self.index = next(i for i, s in enumerate(manifest.shards) if s.name == shard.name)
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
        self.sidecars = SidecarIndexes(pool, shard, self.piece_size)
        self._buffer_size = compress_bound(self.piece_size)  # a piece, or a frame of one
        self._check_threads = settings().check_threads
        self._last_progress = 0.0
        self._download_started, self._bytes_verified = 0.0, 0  # by this fetch (not kept from a partial file)
        self._workers = 0
        self._streaming = 0
        self._standing = 0
        """Workers of this shard, those streaming a run, and those standing by for a job peer: the others share
        the open pieces (PieceBoard.take)."""

    @property
    def target(self) -> Path:
        return self.directory / self.shard.tokens_path

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Fetch the shard and put it in place; with `nursery.start(fetch.run)`, the caller goes on as soon as the
        shard is usable (every piece checked, files renamed into place) while this task makes it durable (fsync)
        and only then records it as verified: after a crash before that, the next open re-checks it. A shard
        waiting for its fsync holds no lock and no file open, so a long `get` onto a slow disk piles up nothing
        but these tasks."""
        async with shard_lock(self.directory, self.shard.name):
            if self.target.exists():
                task_status.started()
                return
            await self._fetch_and_install()
        task_status.started()
        await make_durable(self.directory, self.manifest, self.shard, self._installed_as)

    async def _fetch_and_install(self) -> None:
        started = trio.current_time()
        partial = partial_path(self.target)
        with trio.CancelScope() as self._stall:
            self._progressed()
            self.expected, docs = await self._small_files()
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

    async def _small_files(self) -> tuple[bytes, bytes]:
        """The shard's .pieces and .docs files, asked for at once (one round trip before the first token byte,
        not two); each arrival counts as progress. A FetchError of either is raised as itself."""
        files: dict[str, bytes | FetchError] = {}

        async def fetch(path: str, limit: int, problem) -> None:
            try:
                files[path] = await fetch_small_file(self.pool, path, limit, problem, True, self.index)
                self._progressed()
            except FetchError as exc:
                files[path] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch, self.shard.pieces_path, len(self.board) * 32, self._pieces_problem)
            nursery.start_soon(fetch, self.shard.docs_path, self.shard.docs_size, self._docs_problem)
        pieces, docs = files[self.shard.pieces_path], files[self.shard.docs_path]
        for answer in (pieces, docs):
            if isinstance(answer, FetchError):
                raise answer
        assert isinstance(pieces, bytes) and isinstance(docs, bytes)
        return pieces, docs

    def _progressed(self) -> None:
        """A verified byte arrived: the shard has `stall_timeout` more seconds to make progress again."""
        assert self._stall is not None  # pieces arrive only inside the shard's stall scope
        self._last_progress = trio.current_time()
        if self.pool.limits.stall_timeout > 0:
            self._stall.deadline = trio.current_time() + self.pool.limits.stall_timeout

    def quiet_for(self, now: float) -> float:
        """Seconds without progress for the job-peer rule (SourcePool.standing_by): since the last verified piece, or
        how far the download fell behind JOB_PEER_MIN_RATE since it began (a job peer that drips pieces), if longer."""
        since_piece = now - self._last_progress
        min_rate = self.pool.limits.job_peer_min_rate
        if min_rate <= 0:
            return since_piece
        return max(since_piece, now - self._download_started - self._bytes_verified / min_rate)

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

    def _resume(self) -> None:
        """Keep the pieces of an earlier, interrupted fetch that still match their hashes."""
        for index in kept_pieces(self._fd, self.shard.size, self.piece_size, self.expected):
            self.board.finish(index)

    async def _download(self) -> None:
        if self.board.complete:
            return
        self._download_started = trio.current_time()

        def joined(health: SourceHealth) -> None:  # a source that joins the pool gets workers at once
            if health.source.holds(self.index):
                self._start_workers(health)

        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for health in self.pool.usable(self.index):
                    self._start_workers(health)
                self.pool.joined.add(joined)
                nursery.start_soon(self._wait_for_lookups)
        finally:  # no checkpoint since the nursery closed: nothing was added to it closed
            self.pool.joined.discard(joined)
        if self._write_error is not None:
            raise self._write_error
        if not self.board.complete:
            raise FetchError(
                f"shard {self.shard.name}: {self.board.remaining} of {len(self.board)} pieces could not "
                "be fetched "
                f"from any source: {self.pool.report()}"
            )

    async def _wait_for_lookups(self) -> None:
        """Keep the shard open while a lookup for more sources runs (a dataset whose mirrors all failed before
        its peers were found): the sources it finds join through `pool.joined`."""
        while await self.pool.more_sources():
            pass

    def _start_workers(self, health: SourceHealth) -> None:
        """A worker for the source, and more while it has fewer than `connections` over all shards (a trainer
        waiting for one shard: one TCP stream is bounded by its window over a long path; with more shards in
        flight, each already streams from every source, and more would only split the same bytes)."""
        self._spawn(health)
        self._top_up(health)

    def _top_up(self, health: SourceHealth) -> None:
        while health.streams < health.source.connections:
            self._spawn(health)

    def _spawn(self, health: SourceHealth) -> None:
        assert self._nursery is not None  # workers run in the download nursery
        health.streams += 1
        self._workers += 1
        self._nursery.start_soon(self._worker, health)

    async def _worker(self, health: SourceHealth) -> None:
        try:
            await self._work(health)
        finally:
            health.streams -= 1
            self._workers -= 1

    async def _work(self, health: SourceHealth) -> None:
        while not self.board.complete:
            if not self.pool.is_usable(health) or not health.source.holds(self.index):
                return  # banned, failed out, standing by for the peer's data port, or it lacks this shard
            await trio.sleep_until(health.retry_at)
            quiet_for = self.quiet_for(trio.current_time())
            wait = self.pool.standing_by(health, self.index, quiet_for)  # for a job peer, or the peer's data port
            if wait > 0:
                self._standing += 1
                with trio.move_on_after(wait):
                    await self._progress.wait()
                self._standing -= 1
                continue
            try:
                sidecar = await self.sidecars.of(health)  # read once per source, before a run is reserved
            except SourceError as exc:
                self.pool.failed(health, str(exc))
                continue
            run = self.board.take(trio.current_time(), self._workers - self._streaming - self._standing)
            if run is None:
                with trio.move_on_at(self.board.next_change_at(trio.current_time())):
                    await self._progress.wait()
                continue
            self._streaming += 1
            try:
                await self._stream_run(health, run, sidecar)
                self.pool.succeeded(health, self.index)
                self._top_up(health)  # other shards finished: this one may take their connections
            except SourceError as exc:  # a peer's not_found: it stands by for a pause (SourcePool.not_found)
                self.pool.failed_on(health, self.index, exc)
            finally:
                self._streaming -= 1
                self.board.end(run)
                self._progress.set()  # what it leaves unreceived is open again: waiting workers look
                self._progress = trio.Event()

    async def _stream_run(self, health: SourceHealth, run: Run, sidecar: SidecarIndex | None) -> None:
        """Stream the pieces of `run` (reserved for this worker by the board, so no other stream asks for them)
        from the tokens file (or the source's `sidecar`, frame by frame), receiving each one straight into a buffer
        that is checked and written in the background while the stream goes on. The stream stops where the board
        cuts the run (a slow or stuck stream: `PieceBoard.take`), or where the source stops being usable (banned,
        or a peer's libp2p stream whose data port has just delivered: SourcePool.usable), and closes its request
        there rather than reading on. A source that cannot seek sends the pieces before the run too: they are read
        past, and taken if they are still open."""
        path = self.shard.tokens_path if sidecar is None else sidecar_path(self.shard)
        span = self._piece_span if sidecar is None else sidecar.frame
        piece = self._spare.pop() if self._spare else bytearray(self._buffer_size)
        filled = 0
        try:
            end = sum(span(run.end - 1))  # the end of the run's last piece (or frame)
            async with health.source.stream(path, span(run.start)[0], end) as (offset, raw):
                body = MinRateBody(raw, self.pool.limits, health.source.name)
                name = f"{health.source.name}: {path}"
                self.board.heard(run, trio.current_time())  # the source answered: it is sending the run
                index, seekable = first_piece_at(offset, run.start, self.piece_size, sidecar, name)
                if sidecar is not None and not seekable:  # read past the sidecar's index, to frame 0
                    await read_past(body, sidecar.offsets[0], name)
                while index < run.end and self.pool.is_usable(health):  # banned, or its data port stands in
                    view, filled = memoryview(piece)[: span(index)[1]], 0
                    while filled < len(view):
                        count = await body.receive_into(view[filled:])
                        if not count:
                            raise SourceError(f"{name} ended at byte {span(index)[0] + filled}")
                        filled += count
                        self.board.heard(run, trio.current_time())
                    self.bytes_received += filled
                    if self.board.received(run, index, trio.current_time()):
                        await self._checks.acquire()
                        assert self._nursery is not None  # workers run in it
                        frame = None if sidecar is None else filled
                        self._nursery.start_soon(self._check, health, index, piece, frame)
                        piece = self._spare.pop() if self._spare else bytearray(self._buffer_size)
                    else:
                        health.bytes_discarded += filled
                    filled = 0
                    index += 1
        finally:
            health.bytes_discarded += filled  # a piece cut off mid-way
            self._spare.append(piece)

    def _piece_length(self, index: int) -> int:
        return min(self.piece_size, self.shard.size - index * self.piece_size)

    def _piece_span(self, index: int) -> tuple[int, int]:
        return index * self.piece_size, self._piece_length(index)

    async def _check(self, health: SourceHealth, index: int, piece: bytearray, frame: int | None) -> None:
        """Decode (a sidecar's `frame` bytes), hash and write a received piece on a worker thread (zstandard,
        hashlib and pwrite release the GIL), so that checking overlaps receiving; a wrong hash, or a frame that
        does not decode to exactly the piece's length, bans the source that sent it."""
        length = self._piece_length(index)
        assert self._nursery is not None  # checks run in the download nursery
        expected = self.expected[index * 32 : (index + 1) * 32]
        try:
            ok = await self._check_and_write_soon(piece, length, expected, index * self.piece_size, frame)
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
            health.pieces_verified += 1
            self._bytes_verified += length
            self.bytes_by_source[health.source.name] += length
            self._progressed()
        else:
            health.pieces_rejected += 1
            how = "with a wrong hash" if frame is None else "as a compressed frame that does not decode to it"
            self.pool.ban(health, f"sent shard {self.shard.name} piece {index} {how}")
        self._progress.set()
        self._progress = trio.Event()
        if self.board.complete:
            self._nursery.cancel_scope.cancel()

    async def _check_and_write_soon(self, *args) -> bool:
        """_check_and_write on a check thread (the setting check_threads: threads shared by every fetch of this trio
        run), or here, between receives, when it is 0. Hashing is most of a fetcher's CPU (SHA-256: ~0.6 s per GiB
        here), and hashlib and pwrite release Python's lock, so threads let a fetch go past what one core can check.
        Each release and reacquire is a handoff between threads, though: on the 2-core benchmark machine, with 3
        serving nodes beside it, 2 threads made the fetching node's `get` ~4% faster than none, for ~18% more CPU
        (1.76 against 1.49 s per GiB, docs/benchmarks.md)."""
        threads = self._check_threads
        if not threads:
            return self._check_and_write(*args)
        try:
            limiter = _check_limiter.get()
        except LookupError:
            limiter = trio.CapacityLimiter(threads)
            _check_limiter.set(limiter)
        limiter.total_tokens = threads  # (the setting may change while a node runs)
        return await trio.to_thread.run_sync(self._check_and_write, *args, limiter=limiter)

    def _check_and_write(self, piece: bytearray, length: int, expected: bytes, offset: int, frame: int | None) -> bool:
        """Hashes run in parallel, writes one at a time: writes to one file serialize on its inode lock in the
        kernel anyway, where waiters spin (4 threads writing at once cost ~1.5x the CPU of one). A `frame` is
        decoded first, into at most `length` bytes (kogitune.protocol.compression.decode_piece)."""
        if frame is None:
            data = memoryview(piece)[:length]
        else:
            try:
                data = memoryview(decode_piece(memoryview(piece)[:frame], length))
            except IntegrityError:
                return False
        if hashlib.sha256(data).digest() != expected:
            return False
        with self._write_lock:
            write_all(self._fd, data, offset)
        return True
