"""A training process's fetch progress: while it waits for a shard, one line on stderr every `progress_interval`
seconds (a setting, 10 by default; 0: none), from rank 0 only (`$RANK` unset or 0, as torchrun sets it), so that a
job of many ranks prints one voice. A wait shorter than the interval prints nothing: a warm store trains silently.

    kogitune: waiting for shard 3 of kg1-abcd... (64.0 MB): 150.2 MB of the dataset verified, 12.5 MB/s

`kogitune get` shows a progress bar instead (kogitune/cli/network.py); the node's metrics port shows the same
counters to Prometheus (kogitune.node.metrics).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .settings import settings


def reports_progress() -> bool:
    """Whether this process prints fetch progress: rank 0 (or no rank), with progress_interval above 0."""
    return os.environ.get("RANK", "0").strip() in ("", "0") and settings().progress_interval > 0


@contextmanager
def waiting_for(what: str, verified: Callable[[], int]) -> Iterator[None]:
    """While the body runs (a wait for `what`), print a line every progress_interval seconds with the bytes that
    `verified()` counts (bytes of the dataset verified so far; an error in it counts as no news) and their rate."""
    if not reports_progress():
        yield
        return
    interval = settings().progress_interval
    done = threading.Event()

    def report() -> None:
        started, first = time.monotonic(), _quietly(verified)
        while not done.wait(interval):
            now = _quietly(verified)
            rate = max(now - first, 0) / (time.monotonic() - started)
            print(
                f"kogitune: waiting for {what}: {now / 1e6:.1f} MB of the dataset verified, {rate / 1e6:.1f} MB/s",
                file=sys.stderr,
                flush=True,
            )

    reporter = threading.Thread(target=report, name="kogitune-progress", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        done.set()
        reporter.join()


def _quietly(count: Callable[[], int]) -> int:
    try:
        return count()
    except Exception:
        return 0
