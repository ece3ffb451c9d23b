"""A cold open by dataset ID (issue 16's cold first batch): the bootstrap peers' have answers are asked beside the
manifest, so every bootstrap peer that holds the dataset is in its pool with its data port when the open returns
(node/have_answers.py), and a peer's libp2p source waits for its untried data port for a bounded time only
(SourcePool.standing_by, DATA_PORT_PATIENCE_SECONDS). Real node processes on 127.0.0.1 and a real training process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio
import trio.testing
from netnodes import ENV

from kogitune.corpora import write_kjv_chapters
from kogitune.node.pool import DATA_PORT_PATIENCE_SECONDS, SourcePool
from kogitune.node.sources import Source
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

OPEN_SCRIPT = r"""
import sys
from kogitune.client import embedded_node
from kogitune.content_store import ContentStore

node = embedded_node()
node.open(ContentStore().home, sys.argv[1], (), None, True, 60)
print(node.report(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    root = tmp_path_factory.mktemp("published")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=60)
    options = StoreOptions(block_size=64, piece_size=64 << 10, shard_size=128 << 10, workers=1)
    store([corpus], "gpt2", root / "kjv", options, progress=False)
    return DataTensor(root / "kjv")


def test_an_open_by_id_has_every_bootstrap_peers_data_port_when_it_returns(tensor, nodes, tmp_path):
    """A publishes, B and C replicate; a training process bootstrapped to all three opens the dataset by ID: when the
    open returns, each of the three is a source over libp2p and over its data port (before, only the data port of
    the peer that gave the manifest was; the others joined after the DHT lookup, while the first shard ran on their
    libp2p streams)."""
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    peers = [a]
    for name in ("b", "c"):
        peers.append(nodes(name, [a.address]))
        peers[-1].cli("get", dataset_id, "--quiet")
    env = {**ENV, "KOGITUNE_HOME": str(tmp_path / "trainer"), "KOGITUNE_BOOTSTRAP": ",".join(p.address for p in peers)}
    report = subprocess.run(
        [sys.executable, "-c", OPEN_SCRIPT, dataset_id], env=env, capture_output=True, text=True, timeout=120
    )
    assert report.returncode == 0, report.stderr[-3000:]
    for peer in peers:
        assert f"peer {peer.peer_id}: " in report.stdout, report.stdout
        assert f"http://127.0.0.1:{peer.data_port()}/{dataset_id}: " in report.stdout, report.stdout


class PeerTransport(Source):
    """One of a peer's two sources as the pool sees it (the pool's rules only, no transfer)."""

    def __init__(self, name: str, preferred: bool) -> None:
        self.name, self.identity, self.preferred = name, "peer P", preferred


def test_a_libp2p_source_waits_for_its_untried_data_port_a_bounded_time():
    """P's data port has just joined the pool: P's libp2p source stands by for what is left of
    DATA_PORT_PATIENCE_SECONDS, and reads at once when the data port has failed once or that time has gone by (a data
    port that a firewall hides costs this long, once); another peer's libp2p source never waits for it."""

    async def main() -> None:
        other = PeerTransport("libp2p of Q", False)
        other.identity = "peer Q"
        libp2p = PeerTransport("libp2p of P", False)
        pool = SourcePool([libp2p, other])
        libp2p_health, other_health = pool.health
        assert pool.standing_by(libp2p_health, 0, 0.0) == 0  # no data port yet
        port_health = pool.add(PeerTransport("data port of P", True))
        assert 0 < pool.standing_by(libp2p_health, 0, 0.0) <= DATA_PORT_PATIENCE_SECONDS
        assert pool.standing_by(other_health, 0, 0.0) == 0
        assert pool.standing_by(port_health, 0, 0.0) == 0
        await trio.sleep(DATA_PORT_PATIENCE_SECONDS)
        assert pool.standing_by(libp2p_health, 0, 0.0) == 0  # patience ran out: it reads beside the data port
        late = PeerTransport("a second data port of P", True)
        pool.add(late)
        assert pool.standing_by(libp2p_health, 0, 0.0) > 0
        pool.failed(pool.health[-1], "connection refused")
        assert pool.standing_by(libp2p_health, 0, 0.0) == 0  # it failed: no more waiting for it

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
