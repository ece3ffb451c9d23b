"""A peer re-checking shards answers not_found for them for a moment: the fetcher asks it again soon, and a stalled
peer that also holds them cannot hold them back.

Real node processes on 127.0.0.1, the fetcher with the product's timeouts (read timeout 30 s, stall timeout 60 s):
A publishes a tensor and serves it over libp2p only (no data port: the path a peer behind a firewall takes), or
over libp2p and its data port; S publishes a copy of it; V, bootstrapped to both, fetches the last shard (both are
now in its pool, their have-maps saying they hold every shard). Then S freezes (SIGSTOP: its connections stay open,
nothing answers), and every other shard of A gets a new hard link (as a second publish of the same files makes;
their ctime moves), so A hashes each again before it serves it (node/integrity.py), answering the first reads of it
not_found (a 404 on its data port), and V gets the rest of the dataset, four shards at a time. Before the fix V
took a not_found for "A lacks this shard for this fetch" (on both of A's transports; four 404s at once failed its
data port out of the dataset) and waited for S's reads to time out until the stall timeout failed each shard (a
shard was seen waiting 92 s); now A is asked again for that shard after a short, growing pause
(SourcePool.not_found), and the shards arrive in seconds (a hedge of their small files past frozen S, then the
endgame takes S's runs over).

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
BUDGET = 10.0
"""Seconds the changed shards may take, four at a time: a hedge of each one's small files past frozen S (1 s), A
asked again after a pause, the endgame taking S's runs over, and room for a loaded machine. Before the fix they
waited for the stall timeout (60 s)."""


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    root = tmp_path_factory.mktemp("published")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=360)
    options = StoreOptions(block_size=64, piece_size=64 << 10, shard_size=128 << 10, workers=1)
    store([corpus], "gpt2", root / "kjv", options, progress=False)
    tensor = DataTensor(root / "kjv")
    assert len(tensor.shards) >= 5 and tensor.manifest.pieces_in(tensor.shards[0]) >= 2
    return tensor


@pytest.mark.parametrize("data_port", [False, True], ids=["libp2p", "data-port"])
def test_a_peer_that_is_re_checking_shards_is_asked_again_soon(tensor, nodes, tmp_path, data_port):
    a = nodes("a", env={**DEFAULT_TIMEOUTS, "KOGITUNE_DATA_PORT_ON": str(int(data_port))})
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    s = nodes("s", env=DEFAULT_TIMEOUTS)
    assert s.cli("publish", str(copy_tensor(tensor, tmp_path / "copy"))).stdout.strip() == dataset_id
    v = nodes("v", [a.address, s.address], env=DEFAULT_TIMEOUTS)
    client = DaemonClient(v.home)
    last = len(tensor.shards) - 1
    client.call("shard", 60, id=dataset_id, index=last)  # the open: A and S join V's pool with their have answers

    s.signal(signal.SIGSTOP)
    changed = tensor.shards[:last]
    for shard in changed:  # what a second publish of the same files does to A's store
        os.link(a.home / "datasets" / dataset_id / shard.tokens_path, tmp_path / f"second-link-{shard.name}")
    served_before = DaemonClient(a.home).call("status")["bytes_served"]
    started = time.monotonic()
    try:
        client.call("get", BUDGET + 5, id=dataset_id)
    except KogituneError as exc:
        pytest.fail(f"the changed shards did not arrive within {BUDGET + 5:.0f} s while A re-checked them: {exc}")
    took = time.monotonic() - started
    assert took < BUDGET, f"{len(changed)} shards took {took:.1f} s while A re-checked them and S hung"
    assert DaemonClient(a.home).call("status")["bytes_served"] >= served_before + sum(s.size for s in changed)
    assert DataTensor(v.home / "datasets" / dataset_id).verify() == []


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
