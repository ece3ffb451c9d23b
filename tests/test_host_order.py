"""Host-aware reading: canonical partitions of the epoch order, what each rank reads and fetches, resume on
another world size (kogitune.mixing's partitions, TokenBlockDataset's `partitions`, `turn`, `shards_for_rank`)."""

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from conftest import store_quietly
from mirrors import mirrors
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler

from kogitune.content_store import ContentStore
from kogitune.dataset import STATE_FORMAT, TokenBlockDataset
from kogitune.errors import RecipeError
from kogitune.recipe import DatasetRecipe
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions

BLOCK = 32  # 64 samples per shard of 16 stored blocks of 128 tokens


@pytest.fixture(scope="module")
def shards(kjv_corpus, tmp_path_factory) -> DataTensor:
    """The KJV corpus in 102 small shards (4 KiB, 64 samples of 32 tokens each): 6,527 samples."""
    options = StoreOptions(block_size=128, shard_size=4 << 10, piece_size=64 << 10, workers=1)
    report = store_quietly(kjv_corpus, tmp_path_factory.mktemp("host_order") / "kjv", options)
    return DataTensor(report.path)


def rank_indices(dataset, world_size: int, rank: int, drop_last: bool = False) -> list[int]:
    return list(DistributedSampler(dataset, world_size, rank, shuffle=False, drop_last=drop_last))


def places(dataset, indexes=None) -> list[tuple[int, int, int]]:
    return [dataset.place_of(i) for i in (range(len(dataset)) if indexes is None else indexes)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("fixed", [False, True])
def test_every_sample_once_and_each_rank_reads_its_own_shards(shards, world_size, fixed):
    """P = W, or P = 12 for every W: across the ranks of DistributedSampler(shuffle=False) every sample of the epoch
    once (plus the sampler's padding), each rank's shards about 1/W of them, each shard read by at most 2 ranks (a
    span boundary splits one shard), and all of it within `shards_for_rank`."""
    partitions = 12 if fixed else world_size
    dataset = TokenBlockDataset([shards], BLOCK, seed=3, partitions=partitions)
    dataset.set_epoch(1)
    epoch = Counter(places(dataset))
    assert len(epoch) == len(dataset) == 6_527
    read = [places(dataset, rank_indices(dataset, world_size, rank)) for rank in range(world_size)]
    padding = -len(dataset) % world_size
    assert sum(len(r) for r in read) == len(dataset) + padding
    assert set().union(*read) == set(epoch)
    assert sum((Counter(p for r in read for p in r) - epoch).values()) == padding
    mine = [{(source, shard) for source, shard, _ in r} for r in read]
    for rank, touched in enumerate(mine):
        planned = dataset.shards_for_rank(rank, world_size)
        assert touched <= planned | {dataset.place_of(0)[:2]}  # the padding reads the epoch's first samples again
        assert len(planned) <= 102 / world_size + partitions / world_size + 1
    readers = Counter(pair for rank in range(world_size) for pair in dataset.shards_for_rank(rank, world_size))
    assert len(readers) == 102 and max(readers.values()) <= (1 if world_size == 1 else 2)
    assert sum(readers.values()) <= 102 + partitions - 1


def test_the_order_depends_on_the_partitions_not_the_world_size(shards, monkeypatch):
    """The default P is the world size ($WORLD_SIZE, as torchrun sets it); a given P is the same order whatever the
    world size; another P is another order of the same samples; partitions=1 is the order before partitions."""
    orders = []
    for world_size in (1, 2, 3, 6):
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        assert TokenBlockDataset([shards], BLOCK).partitions == world_size
        orders.append(places(TokenBlockDataset([shards], BLOCK, seed=5, partitions=6)))
    assert all(order == orders[0] for order in orders)
    other = places(TokenBlockDataset([shards], BLOCK, seed=5, partitions=4))
    assert other != orders[0] and sorted(other) == sorted(orders[0])
    monkeypatch.setenv("KOGITUNE_PARTITIONS", "8")
    assert TokenBlockDataset([shards], BLOCK).partitions == 8


def test_one_partition_is_the_order_before_partitions(shards):
    """Pinned: the places of two epochs as main at 1b1cd72 (before partitions) laid them out."""

    def digest(dataset) -> str:
        return hashlib.sha256(repr(places(dataset)).encode()).hexdigest()[:16]

    mixed = TokenBlockDataset([shards] * 3, BLOCK, budgets=[4000, 2000, 60], seed=11, partitions=1)
    mixed.set_epoch(2)
    assert digest(mixed) == "26ea9e0f480be941"
    assert digest(TokenBlockDataset([shards], BLOCK, seed=4, partitions=1)) == "ce34f51a9d3fabc3"


def test_a_one_percent_source_is_in_every_window_of_the_partitioned_order(kjv_tensor):
    """F interleaves the spans row by row; each span is finely mixed, so F is too: 89 %, 10 %, 1 % over 30,000
    samples in 6 partitions, the 1 % source 30 +- 6 times in every window of 3,000 samples."""
    dataset = TokenBlockDataset([kjv_tensor] * 3, BLOCK, budgets=[26_700, 3_000, 300], seed=5, partitions=6)
    sources = np.array([dataset.source_of(i) for i in range(len(dataset))])
    assert np.bincount(sources).tolist() == [26_700, 3_000, 300]
    counts = np.convolve(sources == 2, np.ones(3000, dtype=int), mode="valid")
    assert counts.min() >= 24 and counts.max() <= 36
    assert np.diff(np.flatnonzero(sources == 2)).max() <= 6 * 103


def test_resume_on_another_world_size_reads_the_rest_once(shards, monkeypatch):
    """2 ranks (P = 2) take 300 samples each, the state goes through JSON; a job of 3 ranks (whose default P would be
    3) resumes it in the P = 2 order: both runs together read every sample of the epoch exactly once."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    before = TokenBlockDataset([shards], BLOCK, seed=9)
    before.set_epoch(1)
    epoch = places(before)
    first = [places(before, rank_indices(before, 2, rank)[:300]) for rank in range(2)]
    state = json.loads(json.dumps(before.state_dict(consumed=2 * 300)))
    assert state["format"] == STATE_FORMAT and (state["partitions"], state["turn"], state["index"]) == (2, 1, 600)
    monkeypatch.setenv("WORLD_SIZE", "3")
    after = TokenBlockDataset([shards], BLOCK, seed=9)
    assert after.partitions == 3
    after.load_state_dict(state)
    assert after.partitions == 2 and len(after) == len(epoch) - 600
    rest = [places(after, rank_indices(after, 3, rank, drop_last=True)) for rank in range(3)]
    dropped = (len(epoch) - 600) % 3
    together = Counter(p for part in first + rest for p in part)
    assert sum(together.values()) == len(epoch) - dropped and max(together.values()) == 1
    assert [p for p in epoch if p not in together] == epoch[len(epoch) - dropped :]
    # A state from before partitions (format /1) is an order of one partition.
    old = {**state, "format": "kogitune-dataset-state/1"}
    del old["partitions"], old["turn"]
    after.load_state_dict(old)
    one = TokenBlockDataset([shards], BLOCK, seed=9, partitions=1)
    one.set_epoch(1)
    assert after.partitions == 1 and places(after, range(5)) == places(one, range(600, 605))


def test_resume_on_a_divisor_of_the_partitions_keeps_locality(shards):
    """4 ranks of P = 4 stop at sample 1,000; 2 ranks resume: each reads the rest of 2 spans, shards apart."""
    dataset = TokenBlockDataset([shards], BLOCK, seed=2, partitions=4)
    dataset.set_start(1000)
    sets = [dataset.shards_for_rank(rank, 2) for rank in range(2)]
    assert len(sets[0] & sets[1]) <= 2 and all(len(s) <= 102 // 2 + 2 for s in sets)
    for rank in range(2):
        assert {p[:2] for p in places(dataset, rank_indices(dataset, 2, rank, drop_last=True))} <= sets[rank]


def test_hf_trainer_sharding_needs_turn_equal_to_the_batch_size(shards):
    """accelerate (so HF Trainer with train_sampling_strategy="sequential" under torchrun) gives rank r the
    batches r, r + W, ... of a SequentialSampler: with turn = the per-device batch size the ranks read apart."""
    from accelerate.data_loader import BatchSamplerShard

    def reads(dataset, rank: int) -> set[tuple[int, int]]:
        batches = BatchSampler(SequentialSampler(dataset), 16, drop_last=False)
        shard = BatchSamplerShard(batches, num_processes=3, process_index=rank)
        return {dataset.place_of(i)[:2] for batch in shard for i in batch}

    dataset = TokenBlockDataset([shards], BLOCK, seed=1, partitions=3, turn=16)
    sets = [reads(dataset, rank) for rank in range(3)]
    assert max(Counter(p for s in sets for p in s).values()) <= 2 and sum(map(len, sets)) <= 102 + 2 + 3
    assert all(s - dataset.shards_for_rank(rank, 3) <= {dataset.place_of(0)[:2]} for rank, s in enumerate(sets))
    mismatched = TokenBlockDataset([shards], BLOCK, seed=1, partitions=3)  # turn 1: every rank reads every span
    assert min(len(reads(mismatched, rank)) for rank in range(3)) > 90


def test_each_rank_prefetches_only_its_own_spans(shards, tmp_path):
    """Three "hosts" (a store each) read their ranks' shares from a web mirror through DataLoaders: what each asks
    to prefetch, and what its store holds afterwards, are the shards of its own spans (plus the one padded sample's
    shard), not the lookahead past its span's end nor the windows after the padding's jump back."""
    with mirrors(shards.path, "ok") as urls:
        for rank in range(3):
            store = ContentStore(tmp_path / f"host{rank}")
            dataset = DatasetRecipe([urls[0]], seed=6, store=store).get_train_dataset(BLOCK, partitions=3, window=2)
            asked: list[int] = []
            tensor = dataset.tensors[0]
            real = tensor.prefetch
            tensor.prefetch = lambda indexes, asked=asked, real=real: (asked.extend(indexes), real(indexes))
            sampler = DistributedSampler(dataset, 3, rank, shuffle=False)
            for _ in DataLoader(dataset, batch_size=64, sampler=sampler):
                pass
            planned = {shard for _, shard in dataset.shards_for_rank(rank, 3)}
            padding = {dataset.place_of(i)[1] for i in list(sampler)[len(dataset) // 3 :] if i < 3}
            assert asked and set(asked) <= planned
            held = {i for i, s in enumerate(tensor.shards) if (tensor.path / s.tokens_path).exists()}
            assert held <= planned | padding and len(held) <= 102 / 3 + 3


def test_partitions_turns_and_states_are_checked(shards, monkeypatch):
    for bad in (0, True, "2", 1 << 17, 2.0):
        with pytest.raises(RecipeError, match="partitions must be a whole number from 1 to 65536"):
            TokenBlockDataset([shards], BLOCK, partitions=bad)
    with pytest.raises(RecipeError, match="turn must be"):
        TokenBlockDataset([shards], BLOCK, turn=0)
    dataset = TokenBlockDataset([shards], BLOCK, partitions=3)
    state = dataset.state_dict(consumed=10)
    for key, value in (("partitions", 10**12), ("turn", -1), ("partitions", None)):
        with pytest.raises(RecipeError, match="the state's partitions|its turn"):
            dataset.load_state_dict({**state, key: value})
        assert (dataset.partitions, dataset.turn, dataset.start) == (3, 1, 0)
    with pytest.raises(ValueError, match="rank 3 is not one of a world of 3"):
        dataset.shards_for_rank(3, 3)
    monkeypatch.setenv("WORLD_SIZE", "many")
    with pytest.raises(RecipeError, match="WORLD_SIZE"):
        TokenBlockDataset([shards], BLOCK)


def test_hf_trainer_resumes_on_another_world_size_with_the_same_global_batch(shards):
    """HF Trainer's own resume counts optimizer steps: it skips steps x accumulation batches on each rank. With the
    order fixed (partitions and turn given) and the same samples per step (2 ranks x 8 x 3 accumulation, then
    3 ranks x 8 x 2), its skip lands exactly after what the first run used (accelerate's sharding, as Trainer
    builds it under torchrun; the step arithmetic is Trainer's, transformers 5.24)."""
    from accelerate.data_loader import BatchSamplerShard

    def rank_batches(world_size: int, rank: int) -> list[list[int]]:
        batches = BatchSampler(SequentialSampler(dataset), 8, drop_last=False)
        return list(BatchSamplerShard(batches, num_processes=world_size, process_index=rank))

    dataset = TokenBlockDataset([shards], BLOCK, seed=4, partitions=6, turn=8)
    steps = 50  # optimizer steps of the first run, within the first epoch
    first = [i for rank in range(2) for batch in rank_batches(2, rank)[: steps * 3] for i in batch]
    rest = [i for rank in range(3) for batch in rank_batches(3, rank)[steps * 2 :] for i in batch]
    assert sorted(first) == list(range(steps * 48))
    assert Counter(first + rest) - Counter(range(len(dataset))) == Counter(range(-len(dataset) % 24))  # the padding
    assert {dataset.place_of(i)[:2] for batch in rank_batches(3, 1)[steps * 2 :] for i in batch} <= (
        dataset.shards_for_rank(1, 3) | {dataset.place_of(i)[:2] for i in range(24)}
    )
