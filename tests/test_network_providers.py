"""Silent, slow and fake providers cost seconds, not minutes; a fetcher that looks too early still finds the dataset;
the minimum-rate and hedging rules alone, on trio's virtual clock.

Real node processes (`kogitune node start` on 127.0.0.1: a publisher A, a fetcher B) and, inside this test process,
py-libp2p hosts that play bad providers: each is a Kademlia server that announces the dataset like a replica, then
misbehaves on the data protocol (`wire.PROTOCOL_ID`):

- silent: accepts the stream and never answers (what a frozen node looks like once connected);
- mute: serves a valid signed manifest (signed with its own key: a trust list is not used here) and a full
  have-map, then never sends a byte of data;
- drip: the same, but sends the bytes of a file one a second;
- and, without a DHT, a host that speaks only an older data protocol.

The fetcher B runs with the default read timeout (30 s), so a rule that waited for a read timeout per bad provider
would show as minutes. Every wait here is bounded (subprocess timeouts, trio.fail_after).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import asynccontextmanager

import pytest
import trio
from netnodes import ENV, KOGITUNE
from trio.testing import MockClock

from kogitune.corpora import write_kjv_chapters
from kogitune.errors import SourceError
from kogitune.node.body import Body
from kogitune.node.host import new_kogitune_host
from kogitune.node.providers import provide
from kogitune.protocol import wire
from kogitune.protocol.signing import sign_dataset
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

LISTEN = "/ip4/127.0.0.1/tcp/0"
CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUTS = {k: v for k, v in ENV.items() if k != "KOGITUNE_READ_TIMEOUT"}  # read timeout 30 s
SILENT_PROVIDERS = 10
GET_BUDGET = 30.0  # issue 11: 10 silent providers beside an honest one cost at most 30 s for a whole `get`


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    """120 KJV chapters in a few 128 KiB shards of 64 KiB pieces."""
    root = tmp_path_factory.mktemp("providers")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=120)
    store(
        [corpus],
        "gpt2",
        root / "kjv",
        StoreOptions(block_size=64, piece_size=64 << 10, shard_size=128 << 10, workers=1),
        progress=False,
    )
    tensor = DataTensor(root / "kjv")
    assert len(tensor.shards) >= 2
    return tensor


# ---- bad providers in this process ------------------------------------------------------------------------------


def _peer_info(address: str):
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    return info_from_p2p_addr(Multiaddr(address))


class BadProvider:
    """A py-libp2p host with a Kademlia server that provides `tensor`'s ID and answers like `kind` says."""

    def __init__(self, kind: str, tensor: DataTensor) -> None:
        self.kind = kind
        self.tensor = tensor
        self.seed = os.urandom(32)
        self.host = new_kogitune_host(self.seed)
        self.dht = None

    @property
    def peer_id(self) -> str:
        return str(self.host.get_id())

    @property
    def address(self) -> str:
        return (
            f"{self.host.get_addrs()[0]}/p2p/{self.peer_id}"
            if "/p2p/" not in str(self.host.get_addrs()[0])
            else str(self.host.get_addrs()[0])
        )

    @asynccontextmanager
    async def running(self, bootstrap: str):
        """Listen, join the DHT through `bootstrap`, announce the dataset; stop on exit."""
        from libp2p.custom_types import TProtocol
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
        from libp2p.tools.anyio_service import background_trio_service
        from multiaddr import Multiaddr

        try:
            async with self.host.run([Multiaddr(LISTEN)]):
                self.host.set_stream_handler(TProtocol(wire.PROTOCOL_ID), self.handle)
                self.dht = KadDHT(self.host, DHTMode.SERVER)
                async with background_trio_service(self.dht):
                    info = _peer_info(bootstrap)
                    with trio.fail_after(CONNECT_TIMEOUT):
                        await self.host.connect(info)
                        await self.dht.add_peer(info.peer_id)
                        await provide(self.dht, self.tensor.dataset_id)
                    yield self
        finally:
            with trio.move_on_after(10):
                await self.host.close()

    async def handle(self, stream) -> None:
        if self.kind == "silent":
            await trio.sleep_forever()
        decoder = wire.FrameDecoder(wire.MAX_REQUEST_BYTES)
        while (frame := decoder.next_frame()) is None:
            decoder.feed(await stream.read(4096))
        request = wire.parse_request(frame)
        if isinstance(request, wire.ManifestRequest):
            signature, public_key = sign_dataset(self.seed, self.tensor.dataset_id)
            manifest = (self.tensor.path / "manifest.json").read_bytes()
            await stream.write(wire.encode_response(wire.ManifestResponse(manifest, signature, public_key)))
            await stream.close()
        elif isinstance(request, wire.HaveRequest):
            have = wire.have_bitmap([True] * len(self.tensor.shards))
            await stream.write(wire.encode_response(wire.HaveResponse(have)))
            await stream.close()
        else:
            await stream.write(wire.encode_response(wire.ReadResponse(request.length)))
            if self.kind == "mute":
                await trio.sleep_forever()
            shard = next(s for s in self.tensor.shards if s.name == request.shard)
            path = {"tokens": shard.tokens_path, "pieces": shard.pieces_path, "docs": shard.docs_path}[request.file]
            data = (self.tensor.path / path).read_bytes()[request.offset : request.offset + request.length]
            for byte in data:  # one byte a second: never slow enough for a per-read timeout
                await stream.write(bytes([byte]))
                await trio.sleep(1)


@asynccontextmanager
async def bad_providers(kinds: list[str], tensor: DataTensor, bootstrap: str):
    """One BadProvider of each kind, all announcing the dataset through `bootstrap`; started and stopped at once."""
    providers = [BadProvider(kind, tensor) for kind in kinds]
    ready, stop = trio.Semaphore(0), trio.Event()

    async def serve(provider: BadProvider) -> None:
        async with provider.running(bootstrap):
            ready.release()
            await stop.wait()

    async with trio.open_nursery() as nursery:
        for provider in providers:
            nursery.start_soon(serve, provider)
        with trio.fail_after(60):
            for _ in providers:
                await ready.acquire()
        try:
            yield providers
        finally:
            stop.set()


async def run(args: list[str], env: dict, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """A CLI command in a thread (the trio loop keeps serving the bad providers); (result, seconds)."""
    started = time.monotonic()
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run([KOGITUNE, *args], capture_output=True, text=True, timeout=timeout, env=env)
    )
    return result, time.monotonic() - started


# ---- tests ------------------------------------------------------------------------------------------------------


def test_silent_and_dripping_providers_beside_an_honest_one_cost_seconds(tensor, nodes):
    """A publishes; R1 and R2 replicate it and are then frozen (SIGSTOP: TCP connects, nothing answers); 8 silent
    providers and a dripping one announce the same ID. B, connected to all of them before (they are its bootstrap
    peers, so they come first), gets the whole dataset within GET_BUDGET seconds, byte-identical, and `kogitune
    status ID` answers within seconds, naming the silent ones."""
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    frozen = [nodes(name, [a.address]) for name in ("r1", "r2")]
    for replica in frozen:
        replica.cli("get", dataset_id)
    outcome = {}

    async def main() -> None:
        kinds = ["silent"] * (SILENT_PROVIDERS - len(frozen)) + ["drip"]
        async with bad_providers(kinds, tensor, a.address) as bad:
            bootstrap = [p.address for p in bad] + [r.address for r in frozen] + [a.address]
            b = await trio.to_thread.run_sync(lambda: nodes("b", bootstrap, DEFAULT_TIMEOUTS))
            for replica in frozen:
                replica.signal(signal.SIGSTOP)
            outcome["get"] = await run(
                ["get", dataset_id, "--quiet", "--home", str(b.home)], DEFAULT_TIMEOUTS, GET_BUDGET * 3
            )
            outcome["status"] = await run(["status", dataset_id, "--home", str(b.home)], DEFAULT_TIMEOUTS, 60)
            outcome["b"] = b

    trio.run(main)
    got, seconds = outcome["get"]
    assert got.returncode == 0, got.stderr
    assert seconds <= GET_BUDGET, f"`get` took {seconds:.1f} s beside {SILENT_PROVIDERS} silent providers"
    assert DataTensor(outcome["b"].home / "datasets" / dataset_id).verify() == []
    status, seconds = outcome["status"]
    assert status.returncode == 0, status.stderr
    assert seconds <= 20, f"`status` took {seconds:.1f} s"
    assert f"{a.peer_id}  {len(tensor.shards)}/{len(tensor.shards)} shards" in status.stdout
    silent = [line for line in status.stdout.splitlines() if "error: " in line]
    assert len(silent) >= SILENT_PROVIDERS - len(frozen), status.stdout


def test_providers_that_never_send_data_fail_the_fetch_in_seconds_naming_each(tensor, nodes):
    """No honest provider: six providers serve a valid manifest, then never send a byte (and one drips). `get`
    fails within the stall timeout, and the error says what each provider did."""
    d = nodes("d")  # a bootstrap node that holds nothing
    env = {**DEFAULT_TIMEOUTS, "KOGITUNE_STALL_TIMEOUT": "4"}
    outcome = {}

    async def main() -> None:
        async with bad_providers(["mute"] * 5 + ["drip"], tensor, d.address) as bad:
            b = await trio.to_thread.run_sync(lambda: nodes("b", [d.address], env))
            outcome["get"] = await run(["get", tensor.dataset_id, "--quiet", "--home", str(b.home)], env, 60)
            outcome["bad"] = [p.peer_id for p in bad]

    trio.run(main)
    got, seconds = outcome["get"]
    assert got.returncode != 0
    assert "no verified data from any source for 4 s" in got.stderr, got.stderr
    assert all(peer in got.stderr for peer in outcome["bad"]), got.stderr
    assert seconds <= 15, f"`get` took {seconds:.1f} s to give up"


def test_a_fetch_started_before_the_dataset_is_announced_finds_it(tensor, nodes):
    """Many fetchers started at once meet a publisher that answers some lookups late; the same race, made
    deterministic: B asks for the ID before A has published it, and the lookup, retried with backoff, finds A."""
    a = nodes("a")
    b = nodes("b", [a.address])
    getting = subprocess.Popen(
        [KOGITUNE, "get", tensor.dataset_id, "--quiet", "--home", str(b.home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        log = b.home / "node.log"
        deadline = time.monotonic() + 30
        while (
            getting.poll() is None
            and time.monotonic() < deadline
            and "no provider of" not in (log.read_text() if log.exists() else "")
        ):
            time.sleep(0.05)  # polling B's log (bounded) for its first lookup that found nothing
        assert a.cli("publish", str(tensor.path)).stdout.strip() == tensor.dataset_id
        out, err = getting.communicate(timeout=60)
    finally:
        if getting.poll() is None:
            getting.kill()
            getting.communicate()
    assert getting.returncode == 0, err
    assert DataTensor(b.home / "datasets" / tensor.dataset_id).verify() == []


# ---- the rules alone, on trio's virtual clock -------------------------------------------------------------------


class Drip(Body):
    """A body that sends `total` bytes, one every `every` seconds (of trio's clock)."""

    def __init__(self, total: int, every: float) -> None:
        super().__init__()
        self.left, self.every = total, every

    async def receive_into(self, buffer: memoryview) -> int:
        if not self.left:
            return 0
        await trio.sleep(self.every)
        self.left -= 1
        buffer[0] = 0
        return 1


def test_a_peer_that_speaks_an_older_protocol_is_named_as_such(tensor):
    """A Kogitune 1.1.0 node answers "na" to this version's data protocol; the fetcher's error says which version
    the peer speaks rather than "cannot open a stream"."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import PeerInfo
    from multiaddr import Multiaddr

    from kogitune.node.peers import fetch_signed_manifest

    async def main() -> None:
        old, fetcher = new_kogitune_host(os.urandom(32)), new_kogitune_host(os.urandom(32))
        try:
            async with old.run([Multiaddr(LISTEN)]), fetcher.run([Multiaddr(LISTEN)]):

                async def old_handler(stream) -> None:  # a 1.1.0 server waits for a request
                    with trio.move_on_after(CONNECT_TIMEOUT):
                        try:
                            await stream.read(4096)
                        except Exception:
                            pass
                    await stream.reset()

                old.set_stream_handler(TProtocol("/kogitune/data/1.1.0"), old_handler)
                with trio.fail_after(CONNECT_TIMEOUT):
                    await fetcher.connect(PeerInfo(old.get_id(), old.get_addrs()))
                    with pytest.raises(SourceError) as caught:
                        await fetch_signed_manifest(fetcher, old.get_id(), tensor.dataset_id, CONNECT_TIMEOUT)
                assert f"{old.get_id()} runs an older Kogitune: it speaks /kogitune/data/1.1.0, this node " in str(
                    caught.value
                )
        finally:
            with trio.move_on_after(10):
                await old.close()
                await fetcher.close()

    trio.run(main)


def test_a_stream_below_the_minimum_rate_fails_after_one_window():
    from kogitune.node.pool import FetchLimits, MinRateBody  # here: on the code before the rule, only this fails

    limits = FetchLimits(min_rate=100, rate_window=10, stall_timeout=60)
    seen = {}

    async def main() -> None:
        with pytest.raises(SourceError, match="below the minimum rate of 100 B/s"):
            await MinRateBody(Drip(10_000, 1.0), limits, "dripper").read_all(10_000, "dripper")
        seen["drip"] = trio.current_time()
        data = await MinRateBody(Drip(2_000, 0.001), limits, "steady").read_all(10_000, "steady")  # 1000 B/s
        seen["steady"] = len(data)
        off = FetchLimits(min_rate=0, rate_window=10, stall_timeout=60)
        seen["off"] = len(await MinRateBody(Drip(30, 1.0), off, "slow, rule off").read_all(100, "off"))

    trio.run(main, clock=MockClock(autojump_threshold=0))
    assert 10 <= seen["drip"] <= 11
    assert seen["steady"] == 2_000 and seen["off"] == 30


def test_first_answer_reaches_a_good_candidate_behind_ten_silent_ones_in_a_few_hedges():
    from kogitune.node.small_files import first_answer

    asked = []

    async def ask(candidate: str):
        asked.append(candidate)
        if candidate == "silent":
            await trio.sleep_forever()
        if candidate == "fails":
            raise SourceError("refused")
        if candidate == "late":
            await trio.sleep(0.5)
        return candidate

    async def main() -> tuple[str, float]:
        answer = await first_answer(["silent"] * 10 + ["fails", "good", "late"], ask, at_once=1, hedge_after=1.0)
        return answer, trio.current_time()

    answer, seconds = trio.run(main, clock=MockClock(autojump_threshold=0))
    assert answer == "good"
    assert seconds <= 4.01  # 1, 2, 4, 8 waiting after each silent second: the good one is asked after 4 s at most
    assert asked.count("silent") == 10


class OneLateRead(Body):
    """Nothing for `wait` seconds, then `size` bytes at once, then the end."""

    def __init__(self, size: int, wait: float) -> None:
        super().__init__()
        self.size, self.wait = size, wait

    async def receive_into(self, buffer: memoryview) -> int:
        if not self.size:
            return 0
        await trio.sleep(self.wait)
        count, self.size = min(self.size, len(buffer)), 0
        return count


def test_a_read_that_ends_a_long_wait_with_data_counts_toward_the_rate():
    """The bytes of the read that closes a window count in it: otherwise every read slower than the window (10 s)
    failed as "sent 0 bytes", making the window the read timeout."""
    from kogitune.node.pool import FetchLimits, MinRateBody

    limits = FetchLimits(min_rate=100, rate_window=10, stall_timeout=60)

    async def main() -> int:
        return len(await MinRateBody(OneLateRead(1 << 20, 12.0), limits, "late").read_all(2 << 20, "late"))

    assert trio.run(main, clock=MockClock(autojump_threshold=0)) == 1 << 20


def test_first_answer_asks_the_next_at_once_when_several_fail_together():
    """Three candidates failing in one scheduler turn make room for three more at once (one wake-up was lost, and
    the good candidate behind a silent one waited for a hedge)."""
    from kogitune.node.small_files import first_answer

    async def ask(candidate: str):
        if candidate == "fails":
            raise SourceError("refused")
        if candidate == "silent":
            await trio.sleep_forever()
        return candidate

    async def main() -> tuple[str, float]:
        answer = await first_answer(["fails"] * 3 + ["silent", "good"], ask, at_once=3, hedge_after=1.0)
        return answer, trio.current_time()

    answer, seconds = trio.run(main, clock=MockClock(autojump_threshold=0))
    assert answer == "good" and seconds < 0.5
