"""PyTorch datasets over data tensors, in a shard-aware shuffled order that streams.

A sample is `block_size` consecutive tokens of one shard (samples never cross shards, so one sample is one slice
of one memory map). An epoch is a list of segments (runs of samples of one shard; a source with a token budget
contributes its shards repeated or cut to fit). With `shuffle`, the segments are shuffled, grouped into windows
of `window` segments (the first windows smaller: 1, 2, 4...), and the samples inside each window are shuffled: a
sampler that walks indices in order then touches a few shards at a time, and the next windows' shards are
prefetched while the current one trains.

The trap this avoids: HF `Trainer` wraps a map-style dataset in a RandomSampler, so uniformly random indices touch
every shard at once and defeat streaming. Here the dataset owns the shuffle; use a sequential sampler
(`TrainingArguments(train_sampling_strategy="sequential")`, or `DistributedSampler(shuffle=False)`) to stream.
A RandomSampler still gives correct results (every sample once per epoch), fetching shards in random order.
"""

from __future__ import annotations

import operator
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import RecipeError
from .tensor import DataTensor

if TYPE_CHECKING:
    from .collection import DataCollection

DEFAULT_WINDOW = 4
DEFAULT_LOOKAHEAD = 2
PERMUTATION_CACHE_ENTRIES = 1 << 23


@dataclass(frozen=True)
class MixEntry:
    """One source's share of an epoch, as realized."""

    name: str
    samples: int
    natural_samples: int

    def describe(self, total: int, block_size: int) -> str:
        share = self.samples / max(total, 1)
        ratio = self.samples / max(self.natural_samples, 1)
        return (
            f"{self.name}: {self.samples:,} samples ({self.samples * block_size:,} tokens, {share:.1%} of the "
            f"epoch, {ratio:.2f}x its data)"
        )


class TokenBlockDataset(torch.utils.data.Dataset):
    """Map-style dataset over one or more tensors: item i is `{"input_ids": LongTensor[block_size]}`.

    `block_size` must divide the stored block size (512 from tensors stored with 2048 gives 4 samples per stored
    block). `budgets` gives each tensor's samples per epoch (None keeps its natural size). Deterministic given
    `seed`, the epoch (`set_epoch`) and the inputs.
    """

    def __init__(
        self,
        tensors: list[DataTensor | DataCollection],
        block_size: int | None = None,
        *,
        budgets=None,
        names: list[str] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        window: int = DEFAULT_WINDOW,
        lookahead: int = DEFAULT_LOOKAHEAD,
    ) -> None:
        if not tensors:
            raise RecipeError("a dataset needs at least one data tensor")
        if block_size is not None and (
            isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1
        ):
            raise RecipeError(f"block_size must be a positive integer (tokens per sample), got {block_size!r}")
        self.tensors = tensors
        self.block_size = int(block_size or tensors[0].manifest.block_size)
        self.names = names or [str(t.path) for t in tensors]
        self.shuffle, self.seed, self.window, self.lookahead = shuffle, seed, max(1, window), lookahead
        self.shard_samples = [self._samples_per_shard(t) for t in tensors]
        natural = [sum(counts) for counts in self.shard_samples]
        self.budgets = list(budgets) if budgets is not None else natural
        self.budgets = [natural[i] if b is None else int(b) for i, b in enumerate(self.budgets)]
        self.mixture = [MixEntry(self.names[i], self.budgets[i], natural[i]) for i in range(len(tensors))]
        self._shared_epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._epoch_view = self._shared_epoch.numpy()
        self._lay_out(0)

    def __getstate__(self) -> dict:
        """Pickled (by DataLoader workers) with the shared epoch tensor, which torch passes as shared memory; the
        numpy view of it, which is faster to read in `__getitem__`, is made again on the other side."""
        return {key: value for key, value in self.__dict__.items() if key != "_epoch_view"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._epoch_view = self._shared_epoch.numpy()

    def _samples_per_shard(self, tensor: DataTensor | DataCollection) -> list[int]:
        stored = tensor.manifest.block_size
        if stored % self.block_size:
            raise RecipeError(
                f"block size {self.block_size} does not divide the stored block size {stored} of "
                f"{tensor.path}; choose a divisor of {stored}"
            )
        return [-(-real // self.block_size) for real in tensor.shard_token_counts()]

    def set_epoch(self, epoch: int) -> None:
        """Lay out epoch `epoch` (HF Trainer and accelerate call this at each epoch). The epoch sits in shared
        memory: persistent DataLoader workers hold copies of this dataset made before the call, and they see it
        at their next item."""
        self._shared_epoch.fill_(epoch)
        self._lay_out(epoch)

    def _lay_out(self, epoch: int) -> None:
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        segments = []
        for tensor_index, budget in enumerate(self.budgets):
            segments.extend(self._segments_of(tensor_index, budget, rng))
        if self.shuffle:
            segments = [segments[i] for i in rng.permutation(len(segments))]
        self._segments = segments
        self._segment_start = np.cumsum([0] + [count for *_, count in segments]).tolist()
        self._window_bounds = _window_bounds(len(segments), self.window)
        self._window_start = [self._segment_start[b] for b in self._window_bounds]
        self._perms: dict[int, array] = {}
        self._perm_entries = 0
        self._current_window = -1
        self._streams = any(t.remote is not None for t in self.tensors)

    def _segments_of(self, tensor_index: int, budget: int, rng) -> list[tuple[int, int, int, int]]:
        counts = self.shard_samples[tensor_index]
        whole = [(tensor_index, shard, 0, n) for shard, n in enumerate(counts) if n]
        repeats, rest = divmod(budget, sum(counts))
        segments = whole * repeats
        order = rng.permutation(len(whole)) if self.shuffle else range(len(whole))
        for i in order:
            if rest <= 0:
                break
            tensor, shard, first, n = whole[i]
            segments.append((tensor, shard, first, min(n, rest)))
            rest -= n
        return segments

    def __len__(self) -> int:
        return self._segment_start[-1]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if type(index) is not int:
            try:
                index = operator.index(index)
            except TypeError:
                raise TypeError(f"a sample index is an integer, not {type(index).__name__}") from None
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} is out of range for a dataset of {len(self)} samples")
        if index < 0:
            index += len(self)
        epoch = self._epoch_view.item()
        if epoch != self.epoch:
            self._lay_out(epoch)
        window = bisect_right(self._window_start, index) - 1
        window_start = self._window_start[window]
        if window != self._current_window and self._streams:
            self._current_window = window
            self._prefetch(window, window + 1 + self.lookahead)
        position = window_start + self._permutation(window)[index - window_start] if self.shuffle else index
        segment = bisect_right(self._segment_start, position) - 1
        tensor_index, shard, first, _ = self._segments[segment]
        start = (first + position - self._segment_start[segment]) * self.block_size
        tokens = self.tensors[tensor_index].shard_tokens(shard)[start : start + self.block_size]
        return {"input_ids": torch.from_numpy(tokens.astype(np.int64))}

    def _permutation(self, window: int) -> array:
        """The sample order inside a window (uint32), kept in a least-recently-used cache of at most
        PERMUTATION_CACHE_ENTRIES samples: in-order access builds each once, random access rarely more."""
        perm = self._perms.pop(window, None)
        if perm is None:
            size = self._window_start[window + 1] - self._window_start[window]
            order = np.random.default_rng([self.seed, self.epoch, window]).permutation(size).astype(np.uint32)
            perm = array("I", order.tobytes())
            self._perm_entries += size
            while self._perm_entries > PERMUTATION_CACHE_ENTRIES and self._perms:
                self._perm_entries -= len(self._perms.pop(next(iter(self._perms))))
        self._perms[window] = perm
        return perm

    def _prefetch(self, first_window: int, end_window: int) -> None:
        """Ask remote tensors for the shards of these windows (no-op for local tensors)."""
        last = min(end_window, len(self._window_bounds) - 1)
        wanted: dict[int, list[int]] = {}
        for tensor_index, shard, _, _ in self._segments[self._window_bounds[first_window] : self._window_bounds[last]]:
            if self.tensors[tensor_index].remote is not None:
                wanted.setdefault(tensor_index, []).append(shard)
        for tensor_index, shards in wanted.items():
            self.tensors[tensor_index].prefetch(list(dict.fromkeys(shards)))  # in the order they are needed

    def describe_mixture(self) -> str:
        return "\n".join(entry.describe(len(self), self.block_size) for entry in self.mixture)


def _window_bounds(segments: int, window: int) -> list[int]:
    """Segment indexes where windows begin, and the end. The first windows hold 1, 2, 4... segments up to
    `window`, so the first batch waits for one shard, not a whole window."""
    bounds, size = [0], 1
    while bounds[-1] < segments:
        bounds.append(min(segments, bounds[-1] + size))
        size = min(window, size * 2)
    return bounds
