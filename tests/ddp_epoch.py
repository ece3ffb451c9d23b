"""Run under `torchrun`: one epoch of a recipe through DistributedSampler + DataLoader workers; each rank saves
the samples it saw to OUT/rank<r>.npy. Used by tests/test_distributed.py."""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from kogitune.content_store import ContentStore
from kogitune.recipe import DatasetRecipe


def main() -> None:
    source, home, out, block_size = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    dist.init_process_group("gloo")
    dataset = DatasetRecipe([source], seed=7, store=ContentStore(home)).get_train_dataset(block_size)
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=2)
    seen = torch.cat([batch["input_ids"] for batch in loader]).numpy()
    np.save(out / f"rank{dist.get_rank()}.npy", seen)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
