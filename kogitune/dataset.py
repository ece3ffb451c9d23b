"""PyTorch datasets over data tensors, in a shard-aware shuffled order that streams, with sources mixed finely.

A sample is `block_size` consecutive tokens of one shard (samples never cross shards, so one sample is one slice
of one memory map). Each source of a recipe (a tensor with its budget) is a stream of its own, shard-aware: its
segments are shuffled and read a few shards at a time, and the next windows' shards are prefetched while the
current ones train. With `shuffle`, the streams are interleaved finely, each source at evenly spaced places of
the epoch (kogitune.mixing has the rule). The epoch's order is cut into canonical partitions (by default as many
as the job's ranks) that take turns, so that under `DistributedSampler(shuffle=False)` each rank reads its own
spans of the shard-aware order, about 1/W of the shards (host-aware reading; docs/datasets.md). `set_start` and
`state_dict`/`load_state_dict` resume mid-epoch, on any world size.

The trap this avoids: HF `Trainer` wraps a map-style dataset in a RandomSampler, so uniformly random indices touch
every shard at once and defeat streaming. Here the dataset owns the shuffle; use a sequential sampler
(`TrainingArguments(train_sampling_strategy="sequential")` with `turn=per_device_train_batch_size`, or
`DistributedSampler(shuffle=False)`) to stream. A RandomSampler still gives correct results (every sample once per
epoch), fetching shards in random order.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import RecipeError
from .mixing import MAX_PARTITIONS, EpochOrder
from .tensor import DataTensor

if TYPE_CHECKING:
    from .collection import DataCollection

DEFAULT_WINDOW = 4
DEFAULT_LOOKAHEAD = 2
STATE_FORMAT = "kogitune-dataset-state/2"
STATE_FORMAT_1 = "kogitune-dataset-state/1"
"""The state before partitions, still read: its order is the one of partitions=1."""


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
    `seed`, the epoch (`set_epoch`), `partitions`, `turn` and the inputs.

    `partitions` (None: the setting `partitions`, else the job's world size, see `job_world_size`) and `turn` (1
    for `DistributedSampler`; the per-device batch size for HF Trainer and accelerate) lay the epoch out for
    host-aware reading (kogitune.mixing): with W ranks and W dividing `partitions`, rank r reads the partitions
    p = r (mod W). A state (`state_dict`) carries both, so a resumed job keeps the order on any world size.
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
        partitions: int | None = None,
        turn: int = 1,
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
        self._total = sum(self.budgets)
        self._remote = [t.remote is not None for t in tensors]
        if partitions is None:
            from .settings import settings

            partitions = settings().partitions or job_world_size()
        # epoch, start, partitions, turn
        self._shared = torch.tensor([0, 0, _count(partitions, "partitions"), _count(turn, "turn")]).share_memory_()
        self._shared_view = self._shared.numpy()
        self._lay_out()

    def __getstate__(self) -> dict:
        """Pickled (by DataLoader workers) with the shared (epoch, start, ...) tensor, which torch passes as shared
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
        self._lay_out()

    def set_start(self, index: int) -> None:
        """Begin the current epoch at its global sample `index`: from now on `len(self)` is the rest of the epoch
        and item i is the epoch's sample `index + i`, so a sampler that starts at 0 resumes where a job stopped,
        on any world size, without reading or replaying what came before. Shared with DataLoader workers like the
        epoch; `set_epoch` to another epoch goes back to 0."""
        total = self._total
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index <= total:
            raise RecipeError(f"a start index is a sample of the epoch, 0 to {total}, not {index!r}")
        self._shared[1] = int(index)

    @property
    def start(self) -> int:
        return int(self._shared[1])

    @property
    def partitions(self) -> int:
        return int(self._shared[2])

    @property
    def turn(self) -> int:
        return int(self._shared[3])

    def state_dict(self, consumed: int = 0) -> dict:
        """Where an epoch stands, as a small JSON-able dict: the recipe's fingerprint, seed, epoch, partitions and
        turn (which fix the order with them), and `index`, the global sample index reached (the samples [0, index)
        of the epoch's order are used). `consumed` is how many items of this dataset as it stands (after
        `set_start`) the job has used, over all ranks: with `DistributedSampler(shuffle=False)` and world size W,
        W times the samples each rank took (at most `len(self)`: the sampler's padding is no new sample)."""
        index = self.start + int(consumed)
        if not 0 <= index <= self._total:
            raise RecipeError(f"consumed={consumed!r} is more than the {len(self)} samples left in the epoch")
        return {
            "format": STATE_FORMAT,
            "recipe": self.fingerprint(),
            "seed": self.seed,
            "epoch": self.epoch,
            "partitions": self.partitions,
            "turn": self.turn,
            "index": index,
            "samples": self._total,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s state: the same epoch, in the same order (the state's partitions and
        turn, which this dataset keeps from now on, whatever the world size), starting at its `index`. Refused
        (RecipeError) when the recipe, block size, shuffle or seed differ: the order would not be the one the state
        counts. A state of format /1 (before partitions) is an order of one partition."""
        form = state.get("format") if isinstance(state, dict) else None
        if form not in (STATE_FORMAT, STATE_FORMAT_1):
            raise RecipeError(f"not a dataset state of this version ({STATE_FORMAT}): {form!r}")
        if state["recipe"] != self.fingerprint() or state["seed"] != self.seed:
            raise RecipeError(
                f"the state was saved for recipe {state['recipe']} with seed {state['seed']}, but this dataset is "
                f"{self.fingerprint()} with seed {self.seed}: its order would differ"
            )
        if form == STATE_FORMAT:
            order = [_count(state.get("partitions"), "the state's partitions"), _count(state.get("turn"), "its turn")]
        else:
            order = [1, 1]
        self._shared[2:] = torch.tensor(order)
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

    def _epoch_order(self, epoch: int) -> EpochOrder:
        return EpochOrder(
            self.shard_samples,
            self.budgets,
            shuffle=self.shuffle,
            window=self.window,
            key=[self.seed, epoch],
            partitions=self.partitions,
            turn=self.turn,
        )

    def _lay_out(self) -> None:
        """The order of the epoch, partitions and turn in shared memory; prefetching starts afresh."""
        epoch, _, partitions, turn = self._shared_view.tolist()
        self._laid_out = (epoch, partitions, turn)
        self.epoch = epoch
        self._order = self._epoch_order(epoch)
        self._current_window: dict[tuple[int, int], int] = {}  # (partition, source) -> window prefetched from
        self._last_read = -1

    def __len__(self) -> int:
        return self._total - self.start

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        place = self._global_index(index)
        partition, source, position = self._order.locate(place)
        stream = self._order.streams[source]
        window, shard, sample = stream.locate(position)
        if self._remote[source] and place > self._last_read and window != self._current_window.get((partition, source)):
            self._prefetch(partition, source, window)
        self._last_read = place
        first = sample * self.block_size
        tokens = self.tensors[source].shard_tokens(shard)[first : first + self.block_size]
        return {"input_ids": torch.from_numpy(tokens.astype(np.int64))}

    def _prefetch(self, partition: int, source: int, window: int) -> None:
        """Fetch ahead what this process reads next: the source's window in this partition and the next
        `lookahead` ones, never past the partition's span (the next span is another rank's). Called on a read
        ahead of this process's previous one only: the padding a sampler adds at the end of an epoch (a jump back
        to its first samples, another rank's span) reads one sample and fetches nothing ahead."""
        self._current_window[(partition, source)] = window
        end = min(window + 1 + self.lookahead, self._order.last_window(partition, source) + 1)
        self.tensors[source].prefetch(self._order.streams[source].shards_of_windows(window, end))

    def source_of(self, index: int) -> int:
        """Which source (an index into the recipe's entries and `mixture`) item `index` comes from."""
        return self._order.locate(self._global_index(index))[1]

    def place_of(self, index: int) -> tuple[int, int, int]:
        """Where item `index` is read: (source, shard of that source's tensor, sample within the shard)."""
        _, source, position = self._order.locate(self._global_index(index))
        return source, *self._order.streams[source].locate(position)[1:]

    def shards_for_rank(self, rank: int, world_size: int, epoch: int | None = None) -> set[tuple[int, int]]:
        """The (source, shard) pairs that rank `rank` of `world_size` reads or prefetches in `epoch` (None: the
        current epoch, from its start; another: from its beginning) when its sampler gives it the blocks of
        `turn` items b = rank (mod world_size): `DistributedSampler(shuffle=False)` with turn 1, accelerate (HF
        Trainer) with turn = the per-device batch size. A pure function of the order: the shards of the windows
        its partitions reach, a superset of those it reads. The sampler's end-of-epoch padding (a few samples of
        the epoch's first spans, read again by the last ranks) is left out."""
        for name, value in (("rank", rank), ("world_size", world_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} is an integer, not {type(value).__name__}")
        start = self._sync()
        if epoch is None or epoch == self.epoch:
            return self._order.shards_for_rank(int(rank), int(world_size), start)
        return self._epoch_order(int(epoch)).shards_for_rank(int(rank), int(world_size), 0)

    def _global_index(self, index: int) -> int:
        """Item `index` of the dataset as it stands: its place in the epoch's order (after the start)."""
        if type(index) is not int:
            try:
                index = operator.index(index)
            except TypeError:
                raise TypeError(f"a sample index is an integer, not {type(index).__name__}") from None
        start = self._sync()
        size = self._total - start
        if not -size <= index < size:
            raise IndexError(f"sample {index} is out of range for a dataset of {size} samples")
        return start + index + (size if index < 0 else 0)

    def _sync(self) -> int:
        """The start, once the order is that of the epoch, partitions and turn in shared memory (which another
        process, the one that owns the DataLoader, may have changed)."""
        epoch, start, partitions, turn = self._shared_view.tolist()
        if (epoch, partitions, turn) != self._laid_out:
            self._lay_out()
        return start

    def describe_mixture(self) -> str:
        return "\n".join(entry.describe(len(self), self.block_size) for entry in self.mixture)


def job_world_size() -> int:
    """The number of ranks of this job: torch.distributed's world size once initialized, else $WORLD_SIZE (set by
    torchrun for every rank and inherited by its DataLoader workers), else 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    text = os.environ.get("WORLD_SIZE", "").strip()
    if not text:
        return 1
    if not text.isdecimal() or not 1 <= int(text) <= MAX_PARTITIONS:
        raise RecipeError(f"$WORLD_SIZE={text[:20]!r} is not a number of ranks (1 to {MAX_PARTITIONS})")
    return int(text)


def _count(value, what: str) -> int:
    """A number of partitions or samples per turn, 1 to MAX_PARTITIONS, else RecipeError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_PARTITIONS:
        raise RecipeError(f"{what} must be a whole number from 1 to {MAX_PARTITIONS}, got {value!r}")
    return int(value)
