"""PyTorch datasets over data tensors, in a shard-aware shuffled order that streams, with sources mixed finely.

A sample is `block_size` consecutive tokens of one shard (samples never cross shards, so one sample is one slice
of one memory map). Each source of a recipe (a tensor with its budget) is a stream of its own, shard-aware: its
segments are shuffled and read a few shards at a time, and the next windows' shards are prefetched while the
current ones train. With `shuffle`, the streams are interleaved finely, each source at evenly spaced places of
the epoch (kogitune.mixing has the rule). `set_start` and `state_dict`/`load_state_dict` resume mid-epoch.

The trap this avoids: HF `Trainer` wraps a map-style dataset in a RandomSampler, so uniformly random indices touch
every shard at once and defeat streaming. Here the dataset owns the shuffle; use a sequential sampler
(`TrainingArguments(train_sampling_strategy="sequential")`, or `DistributedSampler(shuffle=False)`) to stream.
A RandomSampler still gives correct results (every sample once per epoch), fetching shards in random order.
"""

from __future__ import annotations

import hashlib
import json
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import RecipeError
from .mixing import PERMUTATION_CACHE_ENTRIES, Concatenation, Interleave, SourceStream
from .tensor import DataTensor

if TYPE_CHECKING:
    from .collection import DataCollection

DEFAULT_WINDOW = 4
DEFAULT_LOOKAHEAD = 2
STATE_FORMAT = "kogitune-dataset-state/1"


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
        self._shared = torch.zeros(2, dtype=torch.int64).share_memory_()  # epoch, start
        self._shared_view = self._shared.numpy()
        self._lay_out(0)

    def __getstate__(self) -> dict:
        """Pickled (by DataLoader workers) with the shared (epoch, start) tensor, which torch passes as shared
        memory; the numpy view of it, which is faster to read in `__getitem__`, is made again on the other side."""
        return {key: value for key, value in self.__dict__.items() if key != "_shared_view"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._shared_view = self._shared.numpy()

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
        at their next item. Another epoch than the current one starts at its first sample (see `set_start`)."""
        if epoch != int(self._shared[0]):
            self._shared[1] = 0
        self._shared[0] = epoch
        self._lay_out(epoch)

    def set_start(self, index: int) -> None:
        """Begin the current epoch at its global sample `index`: from now on `len(self)` is the rest of the epoch
        and item i is the epoch's sample `index + i`, so a sampler that starts at 0 resumes where a job stopped,
        on any world size, without reading or replaying what came before. Shared with DataLoader workers like the
        epoch; `set_epoch` to another epoch goes back to 0."""
        total = self._streams_total
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index <= total:
            raise RecipeError(f"a start index is a sample of the epoch, 0 to {total}, not {index!r}")
        self._shared[1] = int(index)

    @property
    def start(self) -> int:
        return int(self._shared[1])

    def state_dict(self, consumed: int = 0) -> dict:
        """Where an epoch stands, as a small JSON-able dict: the recipe's fingerprint, seed, epoch, and `index`,
        the global sample index reached (the samples [0, index) of the epoch's order are used). `consumed` is how
        many items of this dataset as it stands (after `set_start`) the job has used, over all ranks: with
        `DistributedSampler(shuffle=False)` and world size W, W times the samples each rank took."""
        index = self.start + int(consumed)
        if not 0 <= index <= self._streams_total:
            raise RecipeError(f"consumed={consumed!r} is more than the {len(self)} samples left in the epoch")
        return {
            "format": STATE_FORMAT,
            "recipe": self.fingerprint(),
            "seed": self.seed,
            "epoch": self.epoch,
            "index": index,
            "samples": self._streams_total,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s state: the same epoch, starting at its `index`. Refused (RecipeError)
        when the recipe, block size, shuffle or seed differ: the order would not be the one the state counts."""
        if state.get("format") != STATE_FORMAT:
            raise RecipeError(f"not a dataset state of this version ({STATE_FORMAT}): {state.get('format')!r}")
        if state["recipe"] != self.fingerprint() or state["seed"] != self.seed:
            raise RecipeError(
                f"the state was saved for recipe {state['recipe']} with seed {state['seed']}, but this dataset is "
                f"{self.fingerprint()} with seed {self.seed}: its order would differ"
            )
        self.set_epoch(int(state["epoch"]))
        self.set_start(int(state["index"]))

    def fingerprint(self) -> str:
        """What fixes the order besides seed and epoch: each source's dataset ID and budget, block size, shuffle
        and window (not paths, so a job may move to another machine)."""
        facts = {
            "sources": [[t.dataset_id, budget] for t, budget in zip(self.tensors, self.budgets)],
            "block_size": self.block_size,
            "shuffle": self.shuffle,
            "window": self.window,
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]

    def _lay_out(self, epoch: int) -> None:
        self.epoch = epoch
        self._streams = [
            SourceStream(counts, budget, shuffle=self.shuffle, window=self.window, key=[self.seed, epoch, source_index])
            for source_index, (counts, budget) in enumerate(zip(self.shard_samples, self.budgets))
        ]
        for stream in self._streams:
            stream.cache_limit = PERMUTATION_CACHE_ENTRIES // len(self._streams)
        self._streams_total = sum(self.budgets)
        # The interleave's key ends in the number of sources, which no stream's key does; one source needs none.
        mixed = self.shuffle and len(self.budgets) > 1
        self._order = (
            Interleave(self.budgets, [self.seed, epoch, len(self.budgets)]) if mixed else Concatenation(self.budgets)
        )
        self._current_window = [-1] * len(self._streams)
        self._remote = [t.remote is not None for t in self.tensors]

    def __len__(self) -> int:
        return self._streams_total - self.start

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        source, position = self._order.locate(self._global_index(index))
        stream = self._streams[source]
        window, shard, sample = stream.locate(position)
        if window != self._current_window[source] and self._remote[source]:
            self._current_window[source] = window
            self.tensors[source].prefetch(stream.shards_of_windows(window, window + 1 + self.lookahead))
        first = sample * self.block_size
        tokens = self.tensors[source].shard_tokens(shard)[first : first + self.block_size]
        return {"input_ids": torch.from_numpy(tokens.astype(np.int64))}

    def source_of(self, index: int) -> int:
        """Which source (an index into the recipe's entries and `mixture`) item `index` comes from."""
        return self._order.locate(self._global_index(index))[0]

    def _global_index(self, index: int) -> int:
        """Item `index` of the dataset as it stands: its place in the epoch's order (after the start)."""
        if type(index) is not int:
            try:
                index = operator.index(index)
            except TypeError:
                raise TypeError(f"a sample index is an integer, not {type(index).__name__}") from None
        epoch, start = self._shared_view.tolist()
        if epoch != self.epoch:
            self._lay_out(epoch)
        size = self._streams_total - start
        if not -size <= index < size:
            raise IndexError(f"sample {index} is out of range for a dataset of {size} samples")
        return start + index + (size if index < 0 else 0)

    def describe_mixture(self) -> str:
        return "\n".join(entry.describe(len(self), self.block_size) for entry in self.mixture)
