"""Denial of service against a running node (`kogitune node start` on 127.0.0.1) while an honest node fetches.

A handful of identities holding every serving slot with idle streams, hundreds of TCP connections that never start
their handshake, and a storm of hostile peers of every kind at once: each time, an honest node started during the
attack must bootstrap, find the dataset and `kogitune get` it whole, in about its normal time.

Hostile peers come from other loopback addresses (127.0.0.2, 127.0.0.3, ...: every 127.x.y.z is this machine), so
the node's per-IP limits see them apart from the honest node on 127.0.0.1: py-libp2p hosts in this process dial
from LOCAL_ADDRESS (a patch of its TCP dial, in this test process only), plain sockets bind it themselves.

Every wait is bounded; nothing synchronises by sleeping (the attackers pace their reconnects, as attackers that
do not want to be noticed as a flood would).
"""

from __future__ import annotations

import contextvars
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import trio
from netnodes import ENV, KOGITUNE, NodeProcess
from test_network_hostile import (
    CONNECT_TIMEOUT,
    STREAM_TIMEOUT,
    Outcome,
    _peer_info,
    _reset,
    noise_peer,
    open_stream,
    read_to_end,
    running,
)

from kogitune.client import DaemonClient
from kogitune.corpora import write_kjv_chapters
from kogitune.node.host import new_kogitune_host
from kogitune.node.server import ServerLimits
from kogitune.protocol import wire
from kogitune.protocol.ids import dataset_id_digest
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

LIMITS = ServerLimits()  # the node process runs with the defaults
HONEST_SECONDS = 20.0
"""How long the honest node's `get` may take under attack (about 1-2 s alone; main took it down at once)."""
READY_SECONDS = 20.0
"""How long an attack may take to reach full strength before the honest node starts."""
RECONNECT_PACE = 1.0
"""Seconds an attacker waits before it reconnects or reopens what the node ended."""
SLOW_READ_BYTES = 1024
SLOW_READ_PAUSE = 0.5
"""A slow reader takes SLOW_READ_BYTES every SLOW_READ_PAUSE seconds (2 KiB/s)."""
LOCAL_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar("local_address", default=None)


def hostile_ip(index: int) -> str:
    return f"127.0.0.{2 + index}"


# ---- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    """400 KJV chapters in shards of 256 KiB of tokens: bigger than a Yamux window, so a reader that stops holds
    the node's write."""
    root = tmp_path_factory.mktemp("dos")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=400)
    store(
        [corpus],
        "gpt2",
        root / "kjv",
        StoreOptions(block_size=64, piece_size=64 << 10, shard_size=384 << 10, workers=1),
        progress=False,
    )
    tensor = DataTensor(root / "kjv")
    assert len(tensor.shards) >= 2 and tensor.shards[0].size > 256 << 10
    return tensor


@pytest.fixture(scope="module", autouse=True)
def dial_from_local_address():
    """py-libp2p hosts of this process dial from LOCAL_ADDRESS when it is set (a contextvar: trio tasks inherit
    it from the task that starts them)."""
    from libp2p.transport.tcp.tcp import TCP

    original = TCP._dial_resolved

    async def dial(self, maddr, source=None):
        address = LOCAL_ADDRESS.get()
        if source is None and address is not None:
            source = (address, 0)
        return await original(self, maddr, source=source)

    TCP._dial_resolved = dial
    yield
    TCP._dial_resolved = original


@pytest.fixture
def publisher(tensor, tmp_path):
    node = NodeProcess(tmp_path / "publisher")
    try:
        assert node.cli("publish", str(tensor.path)).stdout.strip() == tensor.dataset_id
        yield node
    finally:
        node.close()


# ---- the honest side --------------------------------------------------------------------------------------------


def honest_get(home: Path, publisher: NodeProcess, dataset_id: str) -> float:
    """Start a node in `home` bootstrapped on the publisher, `kogitune get` the dataset with it, check the copy;
    return how long the get took (seconds)."""
    node = NodeProcess(home, [publisher.address])
    try:
        started = time.monotonic()
        result = subprocess.run(
            [KOGITUNE, "get", dataset_id, "--home", str(home), "--quiet"],
            capture_output=True,
            text=True,
            timeout=HONEST_SECONDS * 2,
            env=ENV,
        )
        seconds = time.monotonic() - started
        assert result.returncode == 0, f"the honest get failed after {seconds:.1f} s: {result.stderr[-2000:]}"
        assert DataTensor(home / "datasets" / dataset_id).verify() == []
        return seconds
    finally:
        node.close()


async def honest_get_under_attack(home: Path, publisher: NodeProcess, dataset_id: str) -> float:
    return await trio.to_thread.run_sync(honest_get, home, publisher, dataset_id)


TRAINER = """
import sys
import numpy as np
from kogitune.recipe import DatasetRecipe
dataset = DatasetRecipe([sys.argv[1]], shuffle=False).get_train_dataset(64)
np.save(sys.argv[2], np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))]))
"""


async def honest_get_and_trainer(tmp_path: Path, publisher: NodeProcess, tensor: DataTensor, result: dict) -> None:
    """During an attack: an honest node's get, then a training process by ID; their seconds go into `result`."""
    result["seconds"] = await honest_get_under_attack(tmp_path / "honest", publisher, tensor.dataset_id)
    result["trainer"] = await trio.to_thread.run_sync(honest_trainer, tmp_path / "trainer", publisher, tensor)


def honest_trainer(home: Path, publisher: NodeProcess, tensor: DataTensor) -> float:
    """A training process with no node of its own (it starts a client-mode node inside, bootstrapped on the
    publisher) reads every sample of the dataset by ID; check them against the local tensor; return its seconds."""
    from kogitune.recipe import DatasetRecipe

    out = home / "samples.npy"
    env = {**ENV, "KOGITUNE_HOME": str(home), "KOGITUNE_BOOTSTRAP": publisher.address}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", TRAINER, tensor.dataset_id, str(out)],
        capture_output=True,
        text=True,
        timeout=HONEST_SECONDS * 2,
        env=env,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, f"the honest trainer failed after {seconds:.1f} s: {result.stderr[-2000:]}"
    local = DatasetRecipe([str(tensor.path)], shuffle=False).get_train_dataset(64)
    assert np.array_equal(np.load(out), np.stack([local[i]["input_ids"].numpy() for i in range(len(local))]))
    return seconds


async def wait_for(condition, what: str, seconds: float = READY_SECONDS) -> None:
    """Poll `condition()` (cheap, in this process) until it holds; fail after `seconds`."""
    with trio.move_on_after(seconds):
        while not condition():
            await trio.sleep(0.05)
        return
    pytest.fail(f"the attack did not get ready within {seconds:.0f} s: {what}", pytrace=False)


def run_bounded(main) -> None:
    """trio.run(main), failing if the attack and the honest side (a get, a trainer) outlast their bounds."""

    async def bounded() -> None:
        with trio.fail_after(READY_SECONDS + HONEST_SECONDS * 3 + 10):
            await main()

    trio.run(bounded)


def node_stats(node: NodeProcess) -> dict:
    return DaemonClient(node.home).call("status", timeout=30)


# ---- attackers --------------------------------------------------------------------------------------------------


async def idle_streams(address: str, ip: str, streams: int, held: Counter, payload: bytes = b"") -> None:
    """One identity from `ip` holding `streams` streams: each sends `payload` (nothing: an idle stream; a read
    request: a reader that takes SLOW_READ_BYTES every SLOW_READ_PAUSE) and waits; a stream that the node cuts is
    opened again at once, one it refused after a pause."""
    LOCAL_ADDRESS.set(ip)

    async def hold() -> None:
        while True:
            try:
                stream = await open_stream(host, node)
            except Exception:
                await trio.sleep(RECONNECT_PACE)
                continue
            held[ip] += 1
            first = b""
            try:
                if payload:
                    await stream.write(payload)
                    while chunk := await stream.read(SLOW_READ_BYTES):
                        first = first or chunk
                        await trio.sleep(SLOW_READ_PAUSE)
                else:
                    first = (await read_to_end(stream)).data  # until the node ends it
            except Exception:
                pass
            finally:
                held[ip] -= 1
                await _reset(stream)
            frame, _ = Outcome(first, "eof").frame()
            if frame is not None and frame.get("op") == "error":
                await trio.sleep(RECONNECT_PACE)

    async with noise_peer(address) as (host, node), trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(hold)


async def stalled_handshakes(port: int, ip: str, sockets: int, connects: Counter, garbage: bool = False) -> None:
    """`sockets` TCP connections from `ip` that never start (or, with `garbage`, only garble) the Noise handshake;
    one the node closes is opened again. `connects` counts the connections made."""
    rng = random.Random(ip)

    async def hold() -> None:
        while True:
            try:
                with trio.fail_after(5):
                    conn = await trio.open_tcp_stream("127.0.0.1", port, local_address=ip)
            except (OSError, trio.TooSlowError):
                await trio.sleep(RECONNECT_PACE)
                continue
            connects[ip] += 1
            try:
                if garbage:
                    await conn.send_all(rng.randbytes(rng.randint(1, 300)))
                while await conn.receive_some(4096):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                await trio.aclose_forcefully(conn)
            await trio.sleep(RECONNECT_PACE)

    async with trio.open_nursery() as nursery:
        for _ in range(sockets):
            nursery.start_soon(hold)


async def garbage_requests(address: str, ip: str, seed: int, sent: Counter) -> None:
    """One identity sending random bytes as requests, one stream after another, as fast as the node answers."""
    LOCAL_ADDRESS.set(ip)
    rng = random.Random(seed)
    async with noise_peer(address) as (host, node):
        while True:
            try:
                stream = await open_stream(host, node)
                try:
                    with trio.fail_after(LIMITS.request_timeout + 5):
                        await stream.write(rng.randbytes(rng.randint(1, 600)))
                        await stream.close()
                        await read_to_end(stream)
                finally:
                    await _reset(stream)
                sent[ip] += 1
            except Exception:
                await trio.sleep(RECONNECT_PACE)


def port_of(address: str) -> int:
    return int(address.split("/tcp/")[1].split("/")[0])


# ---- 0. fair sharing, alone -------------------------------------------------------------------------------------


def test_fair_slots_push_the_heaviest_address_back_to_its_share():
    from kogitune.node.host import FairSlots, ip_key  # imported here: the network tests also run against main

    slots = FairSlots(total=6, per_key=4)
    assert [slots.take("a", f"a{i}")[0] for i in range(5)] == [True] * 4 + [False]  # per key
    assert slots.take("b", "b0") == (True, None) and slots.take("b", "b1") == (True, None)  # full now
    assert slots.take("c", "c0") == (True, "a0")  # the newcomer takes the heaviest key's oldest slot
    assert slots.take("c", "c1") == (True, "a1")  # a: 2, b: 2, c: 2, and then nobody gains by taking
    assert slots.take("c", "c2") == (False, None)
    assert slots.take("d", "d0", rank=lambda holder: holder != "a3") == (True, "a3")  # the least worth keeping
    slots.release("a", "a0")  # an evicted holder's own release is a no-op
    assert len(slots) == 6 and [slots.count(key) for key in "abcd"] == [1, 2, 2, 1]
    assert ip_key(("127.0.0.2", 1)) == "127.0.0.2" and ip_key(("::ffff:10.0.0.1", 1)) == "10.0.0.1"
    assert ip_key(("2001:db8::1", 1)) == ip_key(("2001:db8::2", 9)) == "2001:db8::/64"


def test_a_peer_that_answers_busy_is_asked_again(publisher, tensor):
    """A fetcher whose identity already holds every stream it may have at the node asks for the manifest: the node
    answers busy; once those streams end, a retry gets it (main gave up at the first busy answer)."""
    from kogitune.node.peers import fetch_signed_manifest

    result = {}

    async def busy_answers() -> int:
        return (await trio.to_thread.run_sync(node_stats, publisher))["refused"].get("busy", 0)

    async def main() -> None:
        async with noise_peer(publisher.address) as (host, node):
            held = [await open_stream(host, node) for _ in range(LIMITS.streams_per_peer)]

            async def fetch() -> None:
                result["signed"] = await fetch_signed_manifest(host, node, tensor.dataset_id, STREAM_TIMEOUT)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch)
                with trio.fail_after(STREAM_TIMEOUT):
                    while not await busy_answers():
                        await trio.sleep(0.05)
                for stream in held:
                    await _reset(stream)

    run_bounded(main)
    assert result["signed"].manifest.dataset_id == tensor.dataset_id


# ---- 1. a few identities holding every serving slot ------------------------------------------------------------

IDLE_IPS = 4
IDLE_IDENTITIES = 16
"""16 identities x streams_per_peer (8) idle streams = streams_total (128): every serving slot on main."""


def test_identities_holding_every_slot_with_idle_streams_leave_an_honest_get_its_speed(publisher, tensor, tmp_path):
    baseline = honest_get(tmp_path / "baseline", publisher, tensor.dataset_id)
    result = {}

    async def main() -> None:
        held: Counter = Counter()
        async with trio.open_nursery() as attack:
            for i in range(IDLE_IDENTITIES):
                attack.start_soon(
                    idle_streams, publisher.address, hostile_ip(i % IDLE_IPS), LIMITS.streams_per_peer, held
                )
            await wait_for(
                lambda: sum(held.values()) >= LIMITS.streams_total,
                f"{sum(held.values())} of {LIMITS.streams_total} idle streams open",
            )
            result["held"] = sum(held.values())
            result["seconds"] = await honest_get_under_attack(tmp_path / "honest", publisher, tensor.dataset_id)
            attack.cancel_scope.cancel()

    run_bounded(main)
    assert result["held"] >= LIMITS.streams_total
    assert result["seconds"] <= max(3 * baseline, baseline + 5), (
        f"the honest get took {result['seconds']:.1f} s under attack, {baseline:.1f} s alone"
    )
    refused = node_stats(publisher)["refused"]
    assert refused.get("evicted", 0) > 0, refused  # the honest node took attackers' slots, not free ones
    assert publisher.proc.poll() is None


# ---- 2. hundreds of connections that never finish the handshake ------------------------------------------------

STALL_IPS = 10
STALLED_SOCKETS = 300
"""More than py-libp2p's 250 incoming-connection slots (max_connections - min_connections)."""


def test_connections_that_never_finish_the_handshake_leave_an_honest_node_its_lookup(publisher, tensor, tmp_path):
    result = {}

    async def main() -> None:
        connects: Counter = Counter()
        port = port_of(publisher.address)
        async with trio.open_nursery() as attack:
            for i in range(STALL_IPS):
                attack.start_soon(stalled_handshakes, port, hostile_ip(i), STALLED_SOCKETS // STALL_IPS, connects)
            await wait_for(
                lambda: sum(connects.values()) >= STALLED_SOCKETS,
                f"{sum(connects.values())} of {STALLED_SOCKETS} sockets connected",
            )
            await honest_get_and_trainer(tmp_path, publisher, tensor, result)
            attack.cancel_scope.cancel()

    run_bounded(main)
    assert result["seconds"] <= HONEST_SECONDS and result["trainer"] <= HONEST_SECONDS
    assert publisher.proc.poll() is None


# ---- 3. connections that come and go ---------------------------------------------------------------------------

CHURN_IPS = 6
CHURN_PEERS_PER_IP = 5
CHURN_CONNECTIONS = 260
"""More than py-libp2p's 250 incoming-connection slots, which 0.8.1 never gave back."""


async def churn(address: str, ip: str, count: int, done: Counter) -> None:
    """One identity from `ip` connecting to the node and disconnecting, `count` times in a row."""
    LOCAL_ADDRESS.set(ip)
    info = _peer_info(address)
    async with running(new_kogitune_host(os.urandom(32))) as host:
        for _ in range(count):
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    await host.connect(info)
            except Exception as exc:
                pytest.fail(
                    f"the node refused a connection after {sum(done.values())} came and went: {type(exc).__name__}",
                    pytrace=False,
                )
            await host.disconnect(info.peer_id)
            done[ip] += 1


def test_connections_that_come_and_go_do_not_use_up_the_node(publisher, tensor, tmp_path):
    done: Counter = Counter()
    peers = CHURN_IPS * CHURN_PEERS_PER_IP

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(peers):
                nursery.start_soon(
                    churn, publisher.address, hostile_ip(i % CHURN_IPS), -(-CHURN_CONNECTIONS // peers), done
                )

    run_bounded(main)
    assert sum(done.values()) >= CHURN_CONNECTIONS
    assert honest_get(tmp_path / "honest", publisher, tensor.dataset_id) <= HONEST_SECONDS


# ---- 4. the stress test: every kind of hostile peer at once ----------------------------------------------------


def test_stress_many_hostile_peers_against_one_node_while_an_honest_node_and_a_trainer_fetch(
    publisher, tensor, tmp_path
):
    """Idle-stream identities and slow readers holding every serving slot, garbage requests, garbage and silent TCP
    connections beyond py-libp2p's 250 slots, all at once from 10 addresses against one node; an honest node
    started in the middle of it gets the dataset, and then a training process reads every sample by ID."""
    shard = tensor.shards[0]
    read_shard = wire.encode_request(
        wire.ReadRequest(dataset_id_digest(tensor.dataset_id), shard.name, "tokens", 0, shard.size)
    )
    identities = LIMITS.streams_total // LIMITS.streams_per_peer // 2
    result = {}

    async def main() -> None:
        held, connects, garbage = Counter(), Counter(), Counter()
        address, port = publisher.address, port_of(publisher.address)
        async with trio.open_nursery() as attack:
            for i in range(identities):  # half the serving slots held by idle streams, from two addresses
                attack.start_soon(idle_streams, address, hostile_ip(i % 2), LIMITS.streams_per_peer, held)
            for i in range(identities):  # the other half by slow readers of a whole shard, from two others
                attack.start_soon(
                    idle_streams, address, hostile_ip(2 + i % 2), LIMITS.streams_per_peer, held, read_shard
                )
            for i in range(2):
                attack.start_soon(garbage_requests, address, hostile_ip(4), i, garbage)
            attack.start_soon(stalled_handshakes, port, hostile_ip(4), 20, connects, True)
            for i in range(5, 10):  # 300 silent connections
                attack.start_soon(stalled_handshakes, port, hostile_ip(i), 60, connects)
            await wait_for(
                lambda: sum(held.values()) >= LIMITS.streams_total - 8 and sum(connects.values()) >= 320 and garbage,
                f"{sum(held.values())} of {LIMITS.streams_total} streams, "
                f"{sum(connects.values())} of 320 sockets, {sum(garbage.values())} garbage requests",
            )
            await honest_get_and_trainer(tmp_path, publisher, tensor, result)
            attack.cancel_scope.cancel()

    run_bounded(main)
    assert result["seconds"] <= HONEST_SECONDS and result["trainer"] <= HONEST_SECONDS
    assert publisher.proc.poll() is None
    stats = node_stats(publisher)
    assert tensor.dataset_id in stats["datasets"]
