"""torchrun ranks (gloo, CPU) with DataLoader workers, streaming from a web mirror into one shared store."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from mirrors import mirrors

from kogitune.corpora import write_kjv_chapters
from kogitune.recipe import DatasetRecipe
from kogitune.write import StoreOptions, store

BLOCK = 64


def test_torchrun_two_ranks_two_workers_cover_the_epoch_once(tmp_path):
    """2 ranks x 2 workers see every sample of the epoch once (plus DistributedSampler's padding to equal shares)."""
    corpus = write_kjv_chapters(tmp_path / "kjv.jsonl", limit=200)
    tensor = tmp_path / "tensor"
    store(
        [corpus],
        "gpt2",
        tensor,
        StoreOptions(block_size=BLOCK, piece_size=64 << 10, shard_size=128 << 10, workers=1),
        progress=False,
    )
    expected = DatasetRecipe([str(tensor)], shuffle=False).get_train_dataset(BLOCK)
    expected_rows = Counter(expected[i]["input_ids"].numpy().tobytes() for i in range(len(expected)))
    torchrun = Path(sys.executable).with_name("torchrun")
    with mirrors(tensor, "ok") as urls:
        subprocess.run(
            [
                str(torchrun),
                "--standalone",
                "--nproc-per-node",
                "2",
                str(Path(__file__).with_name("ddp_epoch.py")),
                urls[0],
                str(tmp_path / "home"),
                str(tmp_path),
                str(BLOCK),
            ],
            check=True,
            timeout=180,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    ranks = [np.load(tmp_path / f"rank{r}.npy") for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    seen = Counter(row.tobytes() for rank in ranks for row in rank.astype(np.int64))
    padding = -len(expected) % 2
    assert set(seen) == set(expected_rows)
    assert sum(seen.values()) == len(expected) + padding
    assert sum((seen - expected_rows).values()) == padding
