"""A peer re-checking a shard answers not_found for a moment: the fetcher asks it again soon, and a stalled peer
that also holds the shard cannot hold it back.

Real node processes on 127.0.0.1, the fetcher with the product's timeouts (read timeout 30 s, stall timeout 60 s):
A publishes a tensor and serves it over libp2p only (no data port: the path a peer behind a firewall takes), or
over libp2p and its data port; S publishes a copy of it; V, bootstrapped to both, fetches shard 1 (both are now in
its pool, their have-maps saying they hold every shard). Then S freezes (SIGSTOP: its connections stay open,
nothing answers), and A's shard 0 gets a new hard link (as a second publish of the same files makes; its ctime
moves), so A hashes it again before it serves it (node/integrity.py) and answers V's first read of it not_found
(a 404 on its data port). Before the fix V took a not_found for "A lacks shard 0 for this fetch", on both of A's
transports, and waited for S's reads to time out until the stall timeout failed the shard (a shard was seen
waiting 92 s); now A is asked again after a short, growing pause (SourcePool.not_found) and the shard arrives in
about 2 s (a hedge of its small files past frozen S, then the endgame takes S's run over).

A peer that claims a shard and answers not_found for ever is asked again a bounded number of times, after growing
pauses, and costs no shard a wait while another source holds it (tests/test_swarm_attacks.py: a job peer that
claims every shard and has none).
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import asynccontextmanager

import pytest
import trio
from conftest import copy_tensor
from netnodes import ENV
from trio.testing import MockClock

from kogitune.client import DaemonClient
from kogitune.corpora import write_kjv_chapters
from kogitune.errors import FetchError, KogituneError, SourceLacks
from kogitune.node.body import Body
from kogitune.node.fetch import ShardFetch
from kogitune.node.peers import PeerSource
from kogitune.node.pool import NOT_FOUND_BACKOFF_SECONDS, NOT_FOUND_TRIES, SourcePool
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

DEFAULT_TIMEOUTS = {k: v for k, v in ENV.items() if k != "KOGITUNE_READ_TIMEOUT"}
"""The product's timeouts (read 30 s, stall 60 s): what a trainer meets."""
BUDGET = 8.0
"""Seconds shard 0 may take: the hedge of its small files past frozen S (1 s), A asked again, the endgame taking
S's run over, and room for a loaded machine. Before the fix it waited for the stall timeout (60 s)."""


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    root = tmp_path_factory.mktemp("published")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=120)
    options = StoreOptions(block_size=64, piece_size=64 << 10, shard_size=128 << 10, workers=1)
    store([corpus], "gpt2", root / "kjv", options, progress=False)
    tensor = DataTensor(root / "kjv")
    assert len(tensor.shards) >= 2 and tensor.manifest.pieces_in(tensor.shards[0]) >= 2
    return tensor


@pytest.mark.parametrize("data_port", [False, True], ids=["libp2p", "data-port"])
def test_a_peer_that_is_re_checking_a_shard_is_asked_again_soon(tensor, nodes, tmp_path, data_port):
    a = nodes("a", env={**DEFAULT_TIMEOUTS, "KOGITUNE_DATA_PORT_ON": str(int(data_port))})
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    s = nodes("s", env=DEFAULT_TIMEOUTS)
    assert s.cli("publish", str(copy_tensor(tensor, tmp_path / "copy"))).stdout.strip() == dataset_id
    v = nodes("v", [a.address, s.address], env=DEFAULT_TIMEOUTS)
    client = DaemonClient(v.home)
    client.call("shard", 60, id=dataset_id, index=1)  # the open: A and S join V's pool with their have answers

    s.signal(signal.SIGSTOP)
    shard = tensor.shards[0]
    os.link(a.home / "datasets" / dataset_id / shard.tokens_path, tmp_path / "second-link")
    served_before = DaemonClient(a.home).call("status")["bytes_served"]
    started = time.monotonic()
    try:
        client.call("shard", BUDGET + 2, id=dataset_id, index=0)
    except KogituneError as exc:
        pytest.fail(f"shard 0 did not arrive within {BUDGET + 2:.0f} s while A re-checked it and S hung: {exc}")
    took = time.monotonic() - started
    assert took < BUDGET, f"shard 0 took {took:.1f} s while A re-checked it and S hung"
    assert DaemonClient(a.home).call("status")["bytes_served"] >= served_before + shard.size
    fetched = DataTensor(v.home / "datasets" / dataset_id)
    assert fetched.verify_shard(fetched.shards[0]) == []


class _Bytes(Body):
    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = data

    async def _next_chunk(self) -> bytes:
        data, self._data = self._data, b""
        return data


class ClaimsAndLacks(PeerSource):
    """A peer whose have-map shows every shard, that serves a shard's .pieces and .docs files and answers every read
    of a tokens file not_found; it notes when (trio clock) each one came."""

    def __init__(self, tensor: DataTensor) -> None:
        super().__init__(None, "claims-and-lacks", tensor.manifest.dataset_id, tensor.manifest, 3.0)
        self.have = [True] * len(tensor.shards)
        self.directory = tensor.path
        self.tokens_asked: list[float] = []

    @asynccontextmanager
    async def stream(self, path: str, start: int, end: int | None = None):
        if path.endswith(".tokens"):
            self.tokens_asked.append(trio.current_time())
            raise SourceLacks(f"{self.name}: not_found: this node does not hold {path}")
        yield 0, _Bytes((self.directory / path).read_bytes())


def test_a_peer_that_claims_a_shard_and_never_serves_it_is_asked_again_a_bounded_number_of_times(tensor, tmp_path):
    """The only source of a shard claims it and answers not_found for ever: it is asked NOT_FOUND_TRIES times, the
    pauses between doubling from NOT_FOUND_BACKOFF_SECONDS (no tight loop), then taken to lack that shard (its other
    shards still shown), and the fetch fails saying so (a trainer's clock: the MockClock jumps over the pauses)."""
    peer = ClaimsAndLacks(tensor)
    directory = tmp_path / "fetched"
    (directory / "shards").mkdir(parents=True)

    async def main() -> None:
        pool = SourcePool([peer])
        with pytest.raises(FetchError, match="could not be fetched"):  # bounded by the stall timeout
            await ShardFetch(directory, tensor.manifest, tensor.shards[0], pool).run()

    trio.run(main, clock=MockClock(autojump_threshold=0))
    asked = peer.tokens_asked
    assert len(asked) == NOT_FOUND_TRIES, f"asked {len(asked)} times"
    pauses = [later - earlier for earlier, later in zip(asked, asked[1:])]
    expected = [NOT_FOUND_BACKOFF_SECONDS * 2**n for n in range(NOT_FOUND_TRIES - 1)]
    assert pauses == pytest.approx(expected, abs=0.05), pauses
    assert not peer.holds(0) and peer.holds(1)
