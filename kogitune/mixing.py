"""The order of an epoch's samples: one shard-aware stream per source, and a fine interleave of the streams.

A source's stream: its segments (runs of samples of one shard; a budget repeats whole shards, then takes a seeded
choice of shards for the rest, or cuts a seeded choice to fit) are shuffled, grouped into windows of `window`
segments (the first windows hold 1, 2, 4... segments, so the first batch waits for one shard per source), and the
samples inside each window are shuffled. Walking a stream in order reads a few shards of that source at a time.

The interleave: a source with n samples in the epoch puts its k-th sample at the time (k + u) / n, with u in [0, 1)
drawn from (seed, epoch) per source; the epoch is all samples sorted by time (ties in recipe order). So a source
with a share p of the epoch comes back every 1/p samples, give or take the number of sources: a source of 1 % in a
recipe of 3 is in every run of 103 samples, and a window of L samples holds about L * p of it. Without shuffle,
sources follow each other in recipe order and each keeps its stored order.

Both are computed piecewise, never for the whole epoch at once: a window's permutation when a stream enters it,
and a slot of the interleave (about SLOT_SAMPLES samples) when an index falls in it.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections import OrderedDict

import numpy as np

PERMUTATION_CACHE_ENTRIES = 1 << 23
SLOT_SAMPLES = 4096
SLOTS_CACHED = 8


class SourceStream:
    """One source's samples of one epoch in its shard-aware order: `locate(position)` gives (window, shard,
    sample within the shard) of its `position`-th sample."""

    def __init__(self, shard_samples: list[int], budget: int, *, shuffle: bool, window: int, key: list[int]) -> None:
        rng = np.random.default_rng(key)
        self.key, self.shuffle = key, shuffle
        segments = _segments(shard_samples, budget, rng if shuffle else None)
        if shuffle:
            segments = [segments[i] for i in rng.permutation(len(segments))]
        self.segments = segments
        self.segment_start = np.cumsum([0] + [count for *_, count in segments]).tolist()
        self.window_bounds = _window_bounds(len(segments), window)
        self.window_start = [self.segment_start[b] for b in self.window_bounds]
        self.cache_limit = PERMUTATION_CACHE_ENTRIES
        self._perms: OrderedDict[int, array] = OrderedDict()
        self._perm_entries = 0

    def __len__(self) -> int:
        return self.segment_start[-1]

    def locate(self, position: int) -> tuple[int, int, int]:
        window = bisect_right(self.window_start, position) - 1
        if self.shuffle:
            window_start = self.window_start[window]
            position = window_start + self._permutation(window)[position - window_start]
        segment = bisect_right(self.segment_start, position) - 1
        shard, first, _ = self.segments[segment]
        return window, shard, first + position - self.segment_start[segment]

    def shards_of_windows(self, first: int, end: int) -> list[int]:
        """The shards of windows [first, end), in the order they are needed, each once."""
        last = min(end, len(self.window_bounds) - 1)
        segments = self.segments[self.window_bounds[first] : self.window_bounds[last]]
        return list(dict.fromkeys(shard for shard, _, _ in segments))

    def _permutation(self, window: int) -> array:
        """The sample order inside a window (uint32), kept in a least-recently-used cache of at most
        `cache_limit` samples: in-order access builds each once, random access rarely more."""
        perm = self._perms.pop(window, None)
        if perm is None:
            size = self.window_start[window + 1] - self.window_start[window]
            order = np.random.default_rng([*self.key, window]).permutation(size).astype(np.uint32)
            perm = array("I", order.tobytes())
            self._perm_entries += size
            while self._perm_entries > self.cache_limit and self._perms:
                self._perm_entries -= len(self._perms.popitem(last=False)[1])
        self._perms[window] = perm
        return perm


def _segments(shard_samples: list[int], budget: int, rng) -> list[tuple[int, int, int]]:
    """(shard, first sample, samples) runs that make up `budget` samples: whole shards as often as they fit, then
    a choice of shards (seeded, or in order without `rng`) for the rest, the last one cut."""
    whole = [(shard, 0, n) for shard, n in enumerate(shard_samples) if n]
    repeats, rest = divmod(budget, sum(shard_samples))
    segments = whole * repeats
    for i in rng.permutation(len(whole)) if rng is not None else range(len(whole)):
        if rest <= 0:
            break
        shard, first, n = whole[i]
        segments.append((shard, first, min(n, rest)))
        rest -= n
    return segments


def _window_bounds(segments: int, window: int) -> list[int]:
    """Segment indexes where windows begin, and the end. The first windows hold 1, 2, 4... segments up to
    `window`, so the first batch waits for one shard, not a whole window."""
    bounds, size = [0], 1
    while bounds[-1] < segments:
        bounds.append(min(segments, bounds[-1] + size))
        size = min(window, size * 2)
    return bounds


class Interleave:
    """Sources of `counts` samples each, interleaved by time (see the module docstring): `locate(index)` gives
    (source, position in that source's stream) of the epoch's `index`-th sample.

    Time is cut into `slots` equal slots; source s puts its k-th sample at time (k + a_s / slots) / n_s, so the
    number of its samples before slot j is ceil((j * n_s - a_s) / slots), exactly, in integers. A slot's samples
    are sorted by time when an index falls in it (the last SLOTS_CACHED slots are kept)."""

    def __init__(self, counts: list[int], key: list[int]) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        total = int(self.counts.sum())
        self.slots = max(1, total // SLOT_SAMPLES)
        self.offsets = np.random.default_rng(key).integers(0, self.slots, size=len(counts), dtype=np.int64)
        j = np.arange(self.slots + 1, dtype=np.int64)
        numerator = j[None, :] * self.counts[:, None] - self.offsets[:, None]
        self.before = np.clip(-(-numerator // self.slots), 0, self.counts[:, None])  # (sources, slots + 1)
        self.slot_start = self.before.sum(axis=0).tolist()
        self._cache: OrderedDict[int, tuple[list[int], list[int]]] = OrderedDict()

    def locate(self, index: int) -> tuple[int, int]:
        slot = bisect_right(self.slot_start, index) - 1
        sources, positions = self._slot(slot)
        offset = index - self.slot_start[slot]
        return sources[offset], positions[offset]

    def _slot(self, slot: int) -> tuple[list[int], list[int]]:
        found = self._cache.pop(slot, None)
        if found is None:
            first, end = self.before[:, slot], self.before[:, slot + 1]
            positions = np.concatenate([np.arange(a, b) for a, b in zip(first, end)])
            sources = np.repeat(np.arange(len(self.counts)), end - first)
            times = (positions * self.slots + self.offsets[sources]) / (self.counts[sources] * self.slots)
            order = np.lexsort((sources, times))
            found = (sources[order].tolist(), positions[order].tolist())
            if len(self._cache) >= SLOTS_CACHED:
                self._cache.popitem(last=False)
        self._cache[slot] = found
        return found


class Concatenation:
    """Sources one after another, in recipe order: the epoch's order without shuffle."""

    def __init__(self, counts: list[int]) -> None:
        self.starts = np.cumsum([0, *counts]).tolist()

    def locate(self, index: int) -> tuple[int, int]:
        source = bisect_right(self.starts, index) - 1
        return source, index - self.starts[source]
