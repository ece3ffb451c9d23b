"""Run under `torchrun`: rank r is host r of a job, using the node daemon of its own home (argv: dataset ID, the
homes, OUT, block size). Two epochs of the dataset by ID through DistributedSampler(shuffle=False); each rank saves
the samples it saw to OUT/epoch<e>-rank<r>.npy. Used by tests/test_swarm_job.py."""

import os
import sys
import time
from pathlib import Path

dataset_id, homes, out, block_size = sys.argv[1], sys.argv[2].split(","), Path(sys.argv[3]), int(sys.argv[4])
os.environ["KOGITUNE_HOME"] = homes[int(os.environ["RANK"])]  # before kogitune reads it

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from kogitune.client import DaemonClient  # noqa: E402
from kogitune.hostnode import job_of_environment  # noqa: E402
from kogitune.recipe import DatasetRecipe  # noqa: E402

FIND_PEERS_SECONDS = 30.0


def wait_for_job_peers(count: int) -> None:
    """Until this host's node has found the job's other hosts (a real epoch takes minutes, far longer than they
    take to find each other; this one takes a second). Bounded."""
    deadline = time.monotonic() + FIND_PEERS_SECONDS
    while len(DaemonClient().call("job", 30, id=dataset_id, job=job_of_environment())["peers"]) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the node of {os.environ['KOGITUNE_HOME']} found no {count} job peers")
        time.sleep(0.1)


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dataset = DatasetRecipe([dataset_id], seed=7).get_train_dataset(block_size)
    assert dataset.tensors[0].remote.daemon_home == os.environ["KOGITUNE_HOME"]  # this host's node
    wait_for_job_peers(world - 1)
    dist.barrier()
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=0)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        seen = torch.cat([batch["input_ids"] for batch in loader]).numpy()
        np.save(out / f"epoch{epoch}-rank{rank}.npy", seen)
        dist.barrier()  # the end of an epoch (a training step's all-reduce keeps the ranks this close anyway)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
