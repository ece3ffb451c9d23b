"""A training job as a swarm (issue 13): an origin node and 3 hosts, each its own node home and node daemon, on
127.0.0.1; `torchrun --nproc-per-node 3` (gloo), rank r reading through host r's node. Two epochs by dataset ID
with DistributedSampler(shuffle=False): every sample exactly once per epoch, the samples of a 1-process run, and
the origin serves at most 1.2 copies of the dataset over both epochs (host-aware reading makes each host fetch its
share; in epoch 2 the hosts get their new shards from each other, job peers, not from the origin). Every node runs
at its defaults: the origin serves over libp2p and its data port."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from netnodes import NodeProcess

from kogitune.client import DaemonClient
from kogitune.corpora import write_kjv_chapters
from kogitune.recipe import DatasetRecipe
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

BLOCK = 64
HOSTS = 3
MAX_ORIGIN_COPIES = 1.2


def rows(samples) -> Counter:
    return Counter(row.tobytes() for row in np.asarray(samples, dtype=np.int64))


def test_three_hosts_two_epochs_cost_the_origin_one_copy(tmp_path):
    corpus = write_kjv_chapters(tmp_path / "kjv.jsonl")
    tensor = tmp_path / "kjv"
    options = StoreOptions(block_size=BLOCK, piece_size=64 << 10, shard_size=256 << 10, workers=1)
    store([corpus], "gpt2", tensor, options, progress=False)
    manifest = DataTensor(tensor).manifest
    copy_bytes = sum(s.size + manifest.pieces_in(s) * 32 + s.docs_size for s in manifest.shards)
    origin = NodeProcess(tmp_path / "origin")
    hosts = []
    try:
        dataset_id = origin.cli("publish", str(tensor)).stdout.strip()
        hosts = [NodeProcess(tmp_path / f"host{h}", [origin.address]) for h in range(HOSTS)]
        torchrun = Path(sys.executable).with_name("torchrun")
        homes = ",".join(str(host.home) for host in hosts)
        subprocess.run(
            [
                str(torchrun),
                "--standalone",
                "--nproc-per-node",
                str(HOSTS),
                str(Path(__file__).with_name("swarm_job_epochs.py")),
                dataset_id,
                homes,
                str(tmp_path),
                str(BLOCK),
            ],
            check=True,
            timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        served = DaemonClient(origin.home).call("status")["bytes_served"]
    finally:
        for node in [origin, *hosts]:
            node.close()
    for epoch in range(2):
        alone = DatasetRecipe([str(tensor)], seed=7).get_train_dataset(BLOCK)
        alone.set_epoch(epoch)
        expected = rows([alone[i]["input_ids"].numpy() for i in range(len(alone))])
        ranks = [np.load(tmp_path / f"epoch{epoch}-rank{r}.npy") for r in range(HOSTS)]
        seen = sum((rows(rank) for rank in ranks), Counter())
        padding = -len(alone) % HOSTS
        assert set(seen) == set(expected)
        assert sum(seen.values()) == len(alone) + padding
        assert sum((seen - expected).values()) == padding  # every sample once, and DistributedSampler's padding
    assert served / copy_bytes <= MAX_ORIGIN_COPIES, f"the origin served {served / copy_bytes:.2f} copies"
