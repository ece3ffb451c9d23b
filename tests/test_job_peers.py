"""Job peers (node/jobs.py) are asked first, and one that hangs costs a trainer seconds, not a stall timeout.

Real node processes on 127.0.0.1 with the product's read timeout (30 s): an origin O publishes; host B gets the
whole dataset; B and host A join one job. A fetches a shard: B (a job peer that holds it) serves it, the origin
nothing, and A announces the dataset and answers `have` with its one shard. Then B freezes (SIGSTOP) and A fetches another shard: the origin joins once no verified piece came for
job_peer_patience seconds, so the shard arrives in seconds; without that rule A would wait for B's reads to time
out (30 s each) until the stall timeout failed the fetch."""

import signal
import time

from netnodes import ENV, NodeProcess

from kogitune.client import DaemonClient
from kogitune.corpora import write_kjv_chapters
from kogitune.write import StoreOptions, store

DEFAULT_TIMEOUTS = {k: v for k, v in ENV.items() if k != "KOGITUNE_READ_TIMEOUT"}
HUNG_JOB_PEER_BUDGET = 12.0
"""Seconds a shard may take while the job peer that holds it hangs: job_peer_patience (2 s), a hedge per small
file (1 s each), and room for a loaded machine; the read timeout is 30 s."""


def wait_for_job_peer(client: DaemonClient, dataset_id: str, peer_id: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while peer_id not in client.call("job", 30, id=dataset_id, job="test-job")["peers"]:
        assert time.monotonic() < deadline, f"{peer_id} did not become a job peer within {within:.0f} s"
        time.sleep(0.1)


def test_a_job_peer_serves_first_and_a_hung_one_costs_seconds(tmp_path):
    corpus = write_kjv_chapters(tmp_path / "kjv.jsonl", limit=120)
    options = StoreOptions(block_size=64, piece_size=64 << 10, shard_size=128 << 10, workers=1)
    store([corpus], "gpt2", tmp_path / "kjv", options, progress=False)
    origin = NodeProcess(tmp_path / "origin", env=DEFAULT_TIMEOUTS)
    nodes = []
    try:
        dataset_id = origin.cli("publish", str(tmp_path / "kjv")).stdout.strip()
        a, b = nodes = [NodeProcess(tmp_path / h, [origin.address], env=DEFAULT_TIMEOUTS) for h in ("a", "b")]
        b.cli("get", dataset_id, "--quiet")
        host_a, host_b, at_origin = DaemonClient(a.home), DaemonClient(b.home), DaemonClient(origin.home)
        host_b.call("job", 30, id=dataset_id, job="test-job")
        wait_for_job_peer(host_a, dataset_id, b.peer_id)

        served = at_origin.call("status")["bytes_served"]
        host_a.call("shard", 60, id=dataset_id, index=0)
        assert at_origin.call("status")["bytes_served"] == served  # B, the job peer, served it all
        assert dataset_id in host_a.call("status")["datasets"]  # A announces what it holds: 1 shard, and serves it
        deadline = time.monotonic() + 30
        while {"peer": a.peer_id, "shards": 1, "of": 2} not in at_origin.call("providers", 30, id=dataset_id)[
            "providers"
        ]:
            assert time.monotonic() < deadline, "A's provider record and have-map did not show its one shard"
            time.sleep(0.2)

        b.signal(signal.SIGSTOP)
        started = time.monotonic()
        host_a.call("shard", 60, id=dataset_id, index=1)
        took = time.monotonic() - started
        assert took < HUNG_JOB_PEER_BUDGET, f"a hung job peer held the shard for {took:.1f} s"
        assert at_origin.call("status")["bytes_served"] > served
    finally:
        for node in [origin, *nodes]:
            node.close()
