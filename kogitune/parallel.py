"""Ordered, bounded work on an executor, for `store` and `filter`."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from .errors import KogituneError

Key = TypeVar("Key")
Result = TypeVar("Result")


def in_order(
    pool: Executor, fn: Callable[..., Result], jobs: Iterable[tuple[Key, tuple]], in_flight: int
) -> Iterator[tuple[Key, Result]]:
    """Yield (key, fn(*args)) for each (key, args) of `jobs`, in input order, with at most `in_flight` jobs
    submitted and not yet yielded (bounded memory)."""
    pending: deque = deque()
    for key, args in jobs:
        pending.append((key, pool.submit(fn, *args)))
        if len(pending) >= in_flight:
            key, future = pending.popleft()
            yield key, future.result()
    while pending:
        key, future = pending.popleft()
        yield key, future.result()


def ordered_map(
    fn: Callable[..., Result], jobs: Iterable[tuple[Key, tuple]], workers: int, initializer: Callable, initargs: tuple
) -> Iterator[tuple[Key, Result]]:
    """`in_order` on `workers` spawned processes, 2 jobs per worker in flight. A worker that dies (killed, out of
    memory, or a script without an `if __name__ == "__main__":` guard) raises instead of hanging, provided
    `initargs` stay small: multiprocessing writes them to the new process through a pipe while it still holds the
    pipe's read end itself, so a process that dies before reading more than the pipe's buffer (64 KiB) would
    block that write forever. Pass big things (a tokenizer) as files."""
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(initializer, *initargs)
        ) as pool:
            yield from in_order(pool, fn, jobs, 2 * workers)
    except BrokenProcessPool:
        raise KogituneError(
            'a worker process died. If this runs from a script, put the call under `if __name__ == "__main__":` '
            "(worker processes are spawned and import the script); else pass --workers 1 to see the error"
        ) from None


def _start_worker(initializer: Callable, *initargs) -> None:
    """First thing in each worker: exit when the parent process dies (a SIGKILLed store would otherwise leave its
    workers blocked on a full pipe forever), then the caller's initializer."""
    follow_parent()
    initializer(*initargs)


def follow_parent() -> None:
    """In a process that multiprocessing started: exit as soon as the parent process dies."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True).start()


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)
