"""The small files of a dataset (its manifest, each shard's .pieces and .docs files), each asked of several of its
sources at once: the healthiest first, more when it fails or is slow (`first_answer`'s hedging), and the first
valid answer wins. What each source did goes into its health in the dataset's SourcePool (node/pool.py): a source
that sends a wrong file is dropped for the whole dataset, one that fails backs off, one outrun on a small file is
asked after the others, and a peer that answers that it does not hold a shard's file is asked again for that shard
after a pause (SourcePool.not_found).
"""

from __future__ import annotations

import trio

from kogitune.errors import FetchError, SourceError
from kogitune.layout import MANIFEST_FILE
from kogitune.protocol.errors import ManifestError
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest

from .pool import MinRateBody, SourceHealth, SourcePool

HEDGE_SECONDS = 1.0
"""How long the sources asked for a small file (a manifest, a .pieces or .docs file) may leave it unanswered before
as many more are asked the same, without cancelling the first (`first_answer`): a silent or slow source costs about
this long, not a read timeout. The first valid answer wins; the others are cancelled."""


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


async def fetch_small_file(
    pool: SourcePool, path: str, limit: int, problem, exact: bool = False, index: int | None = None
) -> bytes:
    """A small whole file (manifest, .pieces, .docs) from the first source whose bytes have no `problem`:
    `problem(data)` says what is wrong with them (naming the file), or None. The healthiest source is asked first,
    more when it fails or is slow (`first_answer`); a source that failed is asked again after its backoff, until
    it has failed `max_failures` times (one busy or overloaded provider is not the end of a fetch). A source that
    sends a wrong file is dropped, and the error, when no source is left, says what each one sent. With `exact`,
    the file has `limit` bytes: a shorter one was cut off (a source that died), a failure rather than a lie. A file
    of shard `index` is asked only of the sources that hold it, job peers first; one that answers that it does not
    hold the shard is asked again after a pause, a few times (SourcePool.not_found)."""

    async def ask(health: SourceHealth) -> bytes | None:
        await trio.sleep_until(health.asked_again_at(index))
        asked = trio.current_time()
        try:
            async with health.source.stream(path, 0) as (_, body):
                data = await MinRateBody(body, pool.limits, health.source.name).read_all(
                    limit, f"{health.source.name}: {path}"
                )
        except SourceError as exc:
            pool.failed_on(health, index, exc)
            return None
        except trio.Cancelled:  # another source answered first (or the fetch ended)
            if trio.current_time() - asked >= HEDGE_SECONDS:
                health.outrun += 1
            raise
        if exact and len(data) < limit:
            pool.failed(health, f"{health.source.name}: {path} ended after {len(data)} of {limit} bytes")
            return None
        wrong = problem(data)
        if wrong is not None:
            pool.ban(health, wrong)
            return None
        pool.succeeded(health, index)
        health.files_verified += 1
        health.outrun = 0
        return data

    while True:
        candidates = pool.in_order_of_health(index)
        if candidates:
            data = await first_answer(candidates, ask)
            if data is not None:
                return data
        elif not await pool.more_sources():
            break
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
