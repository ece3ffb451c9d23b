"""A trainer process for tests/test_cache.py: reads the shards of a mirrored data tensor in a random order, each read
through a fresh DataTensor (as a new process or DataLoader worker opens it), and checks every byte against a local
copy. Run as `python tests/cache_reader.py HOME URL REFERENCE_DIR READS SEED`, with `KOGITUNE_CACHE_LIMIT` set; it
prints `OK <reads>` when every read matched (an error's traceback goes to stderr, with exit status 1)."""

import random
import sys
from pathlib import Path

from kogitune.client import open_mirrors
from kogitune.content_store import ContentStore
from kogitune.tensor import DataTensor


def main(home: str, url: str, reference: str, reads: int, seed: int) -> None:
    local = DataTensor(reference)
    expected = [(Path(reference) / shard.tokens_path).read_bytes() for shard in local.shards]
    store = ContentStore(home)
    opened = open_mirrors([url], store)
    order = random.Random(seed)
    for _ in range(reads):
        index = order.randrange(len(expected))
        tensor = DataTensor(opened.path, remote=opened.remote, store=store)
        if tensor.shard_tokens(index).tobytes() != expected[index]:
            raise AssertionError(f"shard {index} read wrong bytes")
    print("OK", reads, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
