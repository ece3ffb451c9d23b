"""Origin egress per copy: how many copies of a dataset the publisher serves when H hosts of one job train on it.

Network (separate processes on 127.0.0.1, each in its own home): an origin node publishes a tensor (the KJV twice
over, in 16 shards of 256 KiB); H host nodes (`kogitune node start`) bootstrap through it and join one job for the dataset (control
op "job", what a trainer under torchrun sends). Epoch 1: host h fetches its 1/H share of the shards (contiguous
spans of the shard order, as host-aware reading assigns them); all hosts at once, then a barrier. Epoch 2: the
shards are reshuffled (seeded) and each host fetches its new share. A host fetches through its node's control op
"shard", as a trainer's RemoteShards does.

Reported per H: the origin's served bytes (its `status` "bytes_served", the counter behind
kogitune_served_bytes_total) divided by the dataset's bytes (tokens, .pieces and .docs files), after epoch 1 and
after epoch 2, and the wall time. With `--no-job` the hosts join no job (no job peers, have-maps only), the
baseline: every host's epoch-2 share comes from wherever the scheduler reads it.

    python scripts/bench_swarm.py [--hosts 1 2 4 8] [--chapters 1189] [--times 2] [--no-job]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netnodes import NodeProcess  # noqa: E402

from kogitune.client import DaemonClient  # noqa: E402
from kogitune.tensor import DataTensor  # noqa: E402


def make_tensor(root: Path, chapters: int, times: int) -> Path:
    """The first `chapters` chapters of the KJV, `times` over, in shards of 256 KiB (4 pieces of 64 KiB)."""
    from kogitune.corpora import write_kjv_chapters
    from kogitune.write import StoreOptions, store

    text = write_kjv_chapters(root / "kjv.jsonl", limit=chapters).read_text()
    corpus = root / "corpus.jsonl"
    corpus.write_text(text * times)
    store(
        [corpus],
        "gpt2",
        root / "kjv",
        StoreOptions(block_size=64, piece_size=64 << 10, shard_size=256 << 10, workers=1),
        progress=False,
    )
    return root / "kjv"


def shares(order: list[int], hosts: int) -> list[list[int]]:
    """Contiguous spans of `order`, one per host (the first ones one longer when it does not divide)."""
    size, extra = divmod(len(order), hosts)
    spans, start = [], 0
    for host in range(hosts):
        end = start + size + (host < extra)
        spans.append(order[start:end])
        start = end
    return spans


def fetch_shares(clients: list[DaemonClient], dataset_id: str, spans: list[list[int]]) -> None:
    """Every host fetches its span at once (a thread per host); raises the first failure."""
    errors: list[BaseException] = []

    def run(client: DaemonClient, span: list[int]) -> None:
        try:
            for index in span:
                client.call("shard", 120, id=dataset_id, index=index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c, s)) for c, s in zip(clients, spans)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def wait_for_job_peers(clients: list[DaemonClient], dataset_id: str, count: int, within: float = 60.0) -> None:
    """Until each host's node has found `count` job peers (a real epoch takes minutes: the lookups are done long
    before epoch 2; here an epoch takes a second)."""
    deadline = time.monotonic() + within
    while any(len(c.call("job", 60, id=dataset_id, job="bench-swarm")["peers"]) < count for c in clients):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the hosts did not find their {count} job peers within {within:.0f} s")
        time.sleep(0.2)


def run(root: Path, tensor: Path, hosts: int, job: bool) -> dict:
    """One origin and `hosts` host nodes; two epochs; the origin's served bytes per copy after each."""
    dataset = DataTensor(tensor)
    manifest = dataset.manifest
    copy_bytes = sum(s.size + manifest.pieces_in(s) * 32 + s.docs_size for s in manifest.shards)
    origin = NodeProcess(root / "origin")
    nodes = []
    try:
        dataset_id = origin.cli("publish", str(tensor)).stdout.strip()
        nodes = [NodeProcess(root / f"host{h}", [origin.address]) for h in range(hosts)]
        clients = [DaemonClient(n.home) for n in nodes]
        if job:
            for client in clients:
                client.call("job", 60, id=dataset_id, job="bench-swarm")
            wait_for_job_peers(clients, dataset_id, hosts - 1)
        started = time.monotonic()
        order = list(range(len(manifest.shards)))
        fetch_shares(clients, dataset_id, shares(order, hosts))  # epoch 2 starts as soon as every host is done
        served_1 = DaemonClient(origin.home).call("status")["bytes_served"]
        random.Random(2).shuffle(order)
        fetch_shares(clients, dataset_id, shares(order, hosts))
        served_2 = DaemonClient(origin.home).call("status")["bytes_served"]
        return {
            "hosts": hosts,
            "shards": len(manifest.shards),
            "epoch1": served_1 / copy_bytes,
            "epoch2": served_2 / copy_bytes,
            "seconds": time.monotonic() - started,
        }
    finally:
        for node in [origin, *nodes]:
            node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--chapters", type=int, default=1189)
    parser.add_argument("--times", type=int, default=2, help="the chapters this many times over (more shards)")
    parser.add_argument("--no-job", action="store_true", help="the hosts join no job (the baseline)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tensor = make_tensor(root, args.chapters, args.times)
        print("hosts  shards  origin copies after epoch 1  after epoch 2  seconds")
        for hosts in args.hosts:
            result = run(root / f"h{hosts}", tensor, hosts, not args.no_job)
            print(
                f"{result['hosts']:5d}  {result['shards']:6d}  {result['epoch1']:27.2f}  {result['epoch2']:13.2f}"
                f"  {result['seconds']:7.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
