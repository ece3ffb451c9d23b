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

The partitions (host-aware reading): the interleave O is cut into P contiguous spans, one per canonical partition,
and the epoch's order F lets them take turns of `turn` samples: F's block b of `turn` samples is the next block of
partition b mod P. With P = 1, F is O. A sampler that gives rank r the blocks b = r (mod W) (DistributedSampler with
turn 1; accelerate, so HF Trainer, with turn = the per-device batch size) then reads, when W divides P, only the
partitions p = r (mod W): contiguous spans of the shard-aware order, so about 1/W of the shards.

All of it is computed piecewise, never for the whole epoch at once: a window's permutation when a stream enters it,
a slot of the interleave (about SLOT_SAMPLES samples) when an index falls in it, a partition's place by arithmetic.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections import OrderedDict
from math import gcd

import numpy as np

PERMUTATION_CACHE_ENTRIES = 1 << 23
MAX_PARTITIONS = 1 << 16
"""At most this many partitions, and samples per turn (65,536 ranks; a state file is an input)."""
SLOT_SAMPLES = 4096
SLOTS_CACHED = 8
"""Slots of the interleave a process keeps sorted, besides one per partition it reads (at most SPAN_SLOTS_CACHED
more): a rank reading several spans at once moves through as many slots."""
SPAN_SLOTS_CACHED = 256


class SourceStream:
    """One source's samples of one epoch in its shard-aware order: `locate(position)` gives (window, shard,
    sample within the shard) of its `position`-th sample. `cuts` are positions where a partition's span begins: a
    segment is split there, and windows start again there (1, 2, 4... segments), so no window crosses a span and
    each span's reading starts with one shard."""

    def __init__(
        self, shard_samples: list[int], budget: int, *, shuffle: bool, window: int, key: list[int], cuts=()
    ) -> None:
        rng = np.random.default_rng(key)
        self.key, self.shuffle = key, shuffle
        segments = _segments(shard_samples, budget, rng if shuffle else None)
        if shuffle:
            segments = [segments[i] for i in rng.permutation(len(segments))]
        self.segments, restarts = _cut(segments, cuts)
        self.segment_start = np.cumsum([0] + [count for *_, count in self.segments]).tolist()
        self.window_bounds = _window_bounds(len(self.segments), window, restarts)
        self.window_start = [self.segment_start[b] for b in self.window_bounds]
        self.cache_limit = PERMUTATION_CACHE_ENTRIES
        self._perms: OrderedDict[int, array] = OrderedDict()
        self._perm_entries = 0

    def __len__(self) -> int:
        return self.segment_start[-1]

    def locate(self, position: int) -> tuple[int, int, int]:
        window = self.window_of(position)
        if self.shuffle:
            window_start = self.window_start[window]
            position = window_start + self._permutation(window)[position - window_start]
        segment = bisect_right(self.segment_start, position) - 1
        shard, first, _ = self.segments[segment]
        return window, shard, first + position - self.segment_start[segment]

    def window_of(self, position: int) -> int:
        return bisect_right(self.window_start, position) - 1

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


def _cut(segments: list[tuple[int, int, int]], cuts) -> tuple[list[tuple[int, int, int]], list[int]]:
    """The segments split at the sample positions `cuts`, and the indexes of the segments that begin at a cut (and
    0), where windows start again."""
    result: list[tuple[int, int, int]] = []
    restarts = [0]
    pending = iter(sorted(set(cuts)))
    cut = next(pending, None)
    position = 0
    for shard, first, count in segments:
        while cut is not None and cut < position + count:
            if cut > position:
                result.append((shard, first, cut - position))
                first, count, position = first + cut - position, count - (cut - position), cut
            restarts.append(len(result))
            cut = next(pending, None)
        result.append((shard, first, count))
        position += count
    return result, sorted(set(restarts))


def _window_bounds(segments: int, window: int, restarts: list[int]) -> list[int]:
    """Segment indexes where windows begin, and the end. From each restart (0, and where a span begins) the first
    windows hold 1, 2, 4... segments up to `window`, so the first batch waits for one shard, not a whole window."""
    bounds = [0]
    for end in [*restarts[1:], segments]:
        size = 1
        while bounds[-1] < end:
            bounds.append(min(end, bounds[-1] + size))
            size = min(window, size * 2)
    return bounds


class Interleave:
    """Sources of `counts` samples each, interleaved by time (see the module docstring): `locate(index)` gives
    (source, position in that source's stream) of the epoch's `index`-th sample.

    Time is cut into `slots` equal slots; source s puts its k-th sample at time (k + a_s / slots) / n_s, so the
    number of its samples before slot j is ceil((j * n_s - a_s) / slots), exactly, in integers. A slot's samples
    are sorted by time when an index falls in it (the last `cached_slots` slots are kept, as compact arrays)."""

    def __init__(self, counts: list[int], key: list[int], cached_slots: int = SLOTS_CACHED) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        total = int(self.counts.sum())
        self.slots = max(1, total // SLOT_SAMPLES)
        self.offsets = np.random.default_rng(key).integers(0, self.slots, size=len(counts), dtype=np.int64)
        j = np.arange(self.slots + 1, dtype=np.int64)
        numerator = j[None, :] * self.counts[:, None] - self.offsets[:, None]
        self.before = np.clip(-(-numerator // self.slots), 0, self.counts[:, None])  # (sources, slots + 1)
        self.slot_start = self.before.sum(axis=0).tolist()
        self.cached_slots = cached_slots
        self._cache: OrderedDict[int, tuple[array, array]] = OrderedDict()

    def locate(self, index: int) -> tuple[int, int]:
        slot = bisect_right(self.slot_start, index) - 1
        sources, positions = self._slot(slot)
        offset = index - self.slot_start[slot]
        return sources[offset], positions[offset]

    def counts_before(self, index: int) -> np.ndarray:
        """How many samples of each source come before the epoch's `index`-th (0 <= index <= the total)."""
        slot = bisect_right(self.slot_start, index) - 1
        counts = self.before[:, slot].copy()
        if index > self.slot_start[slot]:
            sources = self._slot(slot)[0][: index - self.slot_start[slot]]
            counts += np.bincount(sources, minlength=len(self.counts))
        return counts

    def _slot(self, slot: int) -> tuple[array, array]:
        found = self._cache.pop(slot, None)
        if found is None:
            first, end = self.before[:, slot], self.before[:, slot + 1]
            positions = np.concatenate([np.arange(a, b) for a, b in zip(first, end)])
            sources = np.repeat(np.arange(len(self.counts)), end - first)
            times = (positions * self.slots + self.offsets[sources]) / (self.counts[sources] * self.slots)
            order = np.lexsort((sources, times))
            found = (array("i", sources[order].astype(np.int32).tobytes()), array("q", positions[order].tobytes()))
            if len(self._cache) >= self.cached_slots:
                self._cache.popitem(last=False)
        self._cache[slot] = found
        return found


class Concatenation:
    """Sources one after another, in recipe order: the epoch's order without shuffle."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.cumsum([0, *counts]).tolist()

    def locate(self, index: int) -> tuple[int, int]:
        source = bisect_right(self.starts, index) - 1
        return source, index - self.starts[source]

    def counts_before(self, index: int) -> np.ndarray:
        return np.clip(index - np.asarray(self.starts[:-1], dtype=np.int64), 0, self.counts)


class Partitions:
    """F, the epoch's order, from O, the interleave's: O cut into `count` contiguous spans that take turns of `turn`
    samples (module docstring). Span p is as long as the samples F gives partition p: with turn 1, the spans' sizes
    differ by at most 1 (the longer ones first), and every place in F is one of O, for any total."""

    def __init__(self, total: int, count: int, turn: int) -> None:
        self.total, self.count, self.turn = total, count, turn
        self.cycles, self.rest = divmod(total, count * turn)

    def span(self, partition: int) -> tuple[int, int]:
        """[first, end) of the partition's samples in O."""
        turn = self.turn
        first = partition * self.cycles * turn + min(self.rest, partition * turn)
        return first, first + self.cycles * turn + min(max(self.rest - partition * turn, 0), turn)

    def locate(self, index: int) -> tuple[int, int]:
        """(partition, index in O) of F's sample `index`: its block of `turn` samples is the row-th of partition
        block mod count, row = block // count."""
        if self.count == 1:
            return 0, index
        block, offset = divmod(index, self.turn)
        row, partition = divmod(block, self.count)
        return partition, self.span(partition)[0] + row * self.turn + offset


class EpochOrder:
    """One epoch's order F (module docstring), from the sources' samples per shard, their budgets, and `key` (seed,
    epoch): `locate(index)` gives the (partition, source, position in that source's stream) of F's sample `index`."""

    def __init__(
        self,
        shard_samples: list[list[int]],
        budgets: list[int],
        *,
        shuffle: bool,
        window: int,
        key: list[int],
        partitions: int = 1,
        turn: int = 1,
    ) -> None:
        # The interleave's key ends in the number of sources, which no stream's key does; one source needs none.
        mixed = shuffle and len(budgets) > 1
        cached = SLOTS_CACHED + min(partitions, SPAN_SLOTS_CACHED)
        self.interleave = Interleave(budgets, [*key, len(budgets)], cached) if mixed else Concatenation(budgets)
        self.total = sum(budgets)
        self.partitions = Partitions(self.total, partitions, turn)
        # Where each span begins, in each source's stream (empty spans of a small source give repeated positions).
        cuts = [self.interleave.counts_before(self.partitions.span(p)[0]) for p in range(1, partitions)]
        self.streams = [
            SourceStream(
                counts, budget, shuffle=shuffle, window=window, key=[*key, source], cuts=[c[source] for c in cuts]
            )
            for source, (counts, budget) in enumerate(zip(shard_samples, budgets))
        ]
        for stream in self.streams:
            stream.cache_limit = PERMUTATION_CACHE_ENTRIES // len(self.streams)
        self._last_windows: OrderedDict[int, list[int]] = OrderedDict()

    def locate(self, index: int) -> tuple[int, int, int]:
        partition, mixed_index = self.partitions.locate(index)
        return partition, *self.interleave.locate(mixed_index)

    def last_window(self, partition: int, source: int) -> int:
        """The last window of `source`'s stream that `partition`'s span reaches (-1: none); where a prefetch of
        the partition stops, since the next window belongs to the next span (another rank's, as a rule)."""
        found = self._last_windows.pop(partition, None)
        if found is None:
            first, end = self.partitions.span(partition)
            ranges = zip(self.interleave.counts_before(first).tolist(), self.interleave.counts_before(end).tolist())
            found = [stream.window_of(b - 1) if b > a else -1 for stream, (a, b) in zip(self.streams, ranges)]
            if len(self._last_windows) >= SLOTS_CACHED + SPAN_SLOTS_CACHED:
                self._last_windows.popitem(last=False)
        self._last_windows[partition] = found
        return found[source]

    def shards_for_rank(self, rank: int, world_size: int, start: int = 0) -> set[tuple[int, int]]:
        """The (source, shard) pairs that rank `rank` of `world_size` reads or prefetches from F's sample `start`
        on, when its sampler gives it the blocks of `turn` samples b = rank (mod world_size) (module docstring):
        the shards of every window its partitions' spans reach, the end-of-epoch padding of samplers left out."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of a world of {world_size}")
        count, turn = self.partitions.count, self.partitions.turn
        first_block, misaligned = divmod(start, turn)
        # The rank's blocks of the dataset as it stands begin at F's block first_block + c (c = rank mod world), and
        # straddle into the next when `start` is not a multiple of `turn`. Their partitions repeat after
        # count / gcd steps; note the first block of each partition, where the rank's reading of it begins.
        first_of: dict[int, int] = {}
        for c in [rank, rank + 1] if misaligned else [rank]:
            for step in range(count // gcd(count, world_size)):
                block = first_block + c + step * world_size
                first_of[block % count] = min(first_of.get(block % count, block), block)
        shards: set[tuple[int, int]] = set()
        for partition, block in first_of.items():
            first, end = self.partitions.span(partition)
            first += block // count * turn
            if first >= end:
                continue
            ranges = zip(self.interleave.counts_before(first).tolist(), self.interleave.counts_before(end).tolist())
            for source, (stream, (a, b)) in enumerate(zip(self.streams, ranges)):
                if b > a:
                    windows = stream.shards_of_windows(stream.window_of(a), stream.window_of(b - 1) + 1)
                    shards.update((source, shard) for shard in windows)
        return shards
