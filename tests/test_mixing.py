"""Fine mixing of recipe sources, and resuming an epoch from a dataset state on another world size."""

import json
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader, DistributedSampler

from kogitune.dataset import TokenBlockDataset
from kogitune.errors import RecipeError
from kogitune.recipe import DatasetRecipe

BLOCK = 32


def rows(dataset, indexes=None) -> list[bytes]:
    indexes = range(len(dataset)) if indexes is None else indexes
    return [dataset[i]["input_ids"].numpy().tobytes() for i in indexes]


@pytest.fixture(scope="module")
def mixed(kjv_tensor):
    """A recipe of three sources of one tensor: 89 %, 10 % and 1 % of an epoch of 30,000 samples (the big ones
    cut, the small one repeated), so the 1 % source's samples are spread or clumped for all to see."""

    def make(**options) -> TokenBlockDataset:
        return TokenBlockDataset(
            [kjv_tensor] * 3, BLOCK, budgets=[26_700, 3_000, 300], names=["big", "mid", "small"], **options
        )

    return make


def test_a_one_percent_source_is_in_every_window_of_3000_samples(mixed):
    dataset = mixed(seed=5)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        sources = np.array([dataset.source_of(i) for i in range(len(dataset))])
        assert np.bincount(sources).tolist() == [26_700, 3_000, 300]
        small = np.flatnonzero(sources == 2)
        assert small[0] < 103 and np.diff(small).max() <= 103 and len(dataset) - small[-1] <= 103
        counts = np.convolve(sources == 2, np.ones(3000, dtype=int), mode="valid")
        assert counts.min() >= 28 and counts.max() <= 32


def test_the_order_is_a_function_of_recipe_seed_and_epoch(mixed):
    first, again, other_seed = mixed(seed=1), mixed(seed=1), mixed(seed=2)
    indexes = range(0, 30_000, 7)
    assert rows(first, indexes) == rows(again, indexes)
    assert rows(first, indexes) != rows(other_seed, indexes)
    again.set_epoch(1)
    assert rows(first, indexes) != rows(again, indexes)


def test_every_budgeted_sample_once_per_epoch(kjv_tensor):
    """Each source's samples appear as its budget says (whole copies, then a cut), whatever the interleave."""
    natural = TokenBlockDataset([kjv_tensor], BLOCK, shuffle=False)
    n = len(natural)
    each = Counter(rows(natural))
    budgets = [2 * n + 100, n // 3]
    dataset = TokenBlockDataset([kjv_tensor, kjv_tensor], BLOCK, budgets=budgets, seed=3)
    dataset.set_epoch(4)
    by_source: list[Counter] = [Counter(), Counter()]
    for i in range(len(dataset)):
        by_source[dataset.source_of(i)][dataset[i]["input_ids"].numpy().tobytes()] += 1
    assert [sum(c.values()) for c in by_source] == budgets
    assert all(2 * each[r] <= k <= 3 * each[r] for r, k in by_source[0].items()) and by_source[0].keys() == each.keys()
    assert all(k <= each[r] for r, k in by_source[1].items())


def test_without_shuffle_sources_follow_each_other(mixed):
    dataset = mixed(shuffle=False)
    sources = [dataset.source_of(i) for i in range(len(dataset))]
    assert sources == [0] * 26_700 + [1] * 3_000 + [2] * 300


def rank_rows(dataset, world_size: int, rank: int, limit: int | None = None) -> list[bytes]:
    """What one rank of a DistributedSampler(shuffle=False) job reads through a DataLoader with 2 workers."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
    loader = DataLoader(dataset, batch_size=50, sampler=sampler, num_workers=2)
    seen: list[bytes] = []
    for batch in loader:
        seen.extend(row.tobytes() for row in batch["input_ids"].numpy())
        if limit is not None and len(seen) >= limit:
            break
    return seen[:limit]


def test_resume_on_another_world_size_reads_the_rest_of_the_epoch_once(mixed):
    """Two ranks take 4 batches of 50 each, the state is saved (as JSON); three ranks resume from it and read
    the rest: together, the epoch exactly once, in the same global order as an uninterrupted run."""
    full = mixed(seed=9)
    full.set_epoch(1)
    epoch = rows(full)
    before = mixed(seed=9)
    before.set_epoch(1)
    first_part = [rank_rows(before, 2, rank, limit=200) for rank in range(2)]
    state = json.loads(json.dumps(before.state_dict(consumed=2 * 200)))
    assert state["index"] == 400 and state["epoch"] == 1
    after = mixed(seed=9)
    after.load_state_dict(state)
    assert len(after) == len(epoch) - 400 == 29_600
    rest = [rank_rows(after, 3, rank) for rank in range(3)]
    assert [len(part) for part in rest] == [9_867] * 3  # DistributedSampler pads 29,600 to 3 x 9,867
    padding = 3 * 9_867 - 29_600
    global_order = [part[i] for i in range(200) for part in first_part]
    global_order += [part[i] for i in range(9_867) for part in rest][:29_600]
    assert global_order == epoch
    assert sum(len(part) for part in rest) - padding + 400 == len(epoch)
    after.set_epoch(2)
    assert after.start == 0 and len(after) == len(epoch)


def test_a_state_resumes_only_the_dataset_it_was_taken_from(mixed, kjv_tensor):
    state = mixed(seed=9).state_dict(consumed=10)
    with pytest.raises(RecipeError, match="with seed 9, but this dataset"):
        mixed(seed=8).load_state_dict(state)
    other = TokenBlockDataset([kjv_tensor] * 3, BLOCK, budgets=[26_700, 3_000, 301], seed=9)
    with pytest.raises(RecipeError, match="its order would differ"):
        other.load_state_dict(state)
    with pytest.raises(RecipeError, match="more than the"):
        mixed().state_dict(consumed=30_001)
    with pytest.raises(RecipeError, match="a start index"):
        mixed().set_start(-1)


def test_a_recipe_state_names_datasets_not_paths(kjv_tensor, tmp_path):
    """A job that moves to another machine (the tensor at another path) resumes from its state."""
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(kjv_tensor.path, moved)
    state = DatasetRecipe([str(kjv_tensor.path), f"{kjv_tensor.path}?weight=0.1"]).get_train_dataset(BLOCK)
    dataset = DatasetRecipe([str(moved), f"{moved}?weight=0.1"]).get_train_dataset(BLOCK)
    dataset.load_state_dict(state.state_dict(consumed=123))
    assert rows(dataset, range(5)) == rows(state, range(123, 128))
