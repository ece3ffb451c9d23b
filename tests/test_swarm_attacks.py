"""Attacks on the swarm of a training job (node/jobs.py, node/havemaps.py, node/peer_http.py), by a hostile peer in
the test process (py-libp2p, Noise + Yamux, a real DHT) against real node processes on 127.0.0.x.

The hostile peer announces itself under a job's DHT key (anyone who knows the job's name can), holds the honest
signed manifest and every byte of the dataset, and misbehaves in one way per test: it drips verified pieces just
fast enough that no piece is ever `job_peer_patience` late; it claims shards in its have-map and answers every read
"not found"; it names as its data port a port of another service. An honest node that joins the job must still get
each shard in seconds, from the origin when the job peer will not deliver, and never dial another host.

What was tried and needed no change is listed in docs/security.md ("Job peers, have-maps and one node per host").
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trio
from conftest import copy_tensor
from netnodes import ENV, NodeProcess
from test_dataport import NOT_FOUND, request
from test_dataport_private import tls_get
from test_network_hostile import CONNECT_TIMEOUT, LISTEN, _peer_info

from kogitune.client import DaemonClient
from kogitune.corpora import write_kjv_chapters
from kogitune.errors import SourceLacks
from kogitune.layout import IDENTITY_FILE, read_signature
from kogitune.node.peers import fetch_have
from kogitune.protocol import wire
from kogitune.protocol.ids import job_key
from kogitune.protocol.signing import peer_id_from_public_key, public_key_from_seed
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

JOB = "attack-job"
"""The job's name, with the hostile peer's ID after it: each test its own job (the origin is shared)."""
PIECE = 64 << 10
PIECES_PER_SHARD = 16
DRIP_SECONDS = 1.0
"""The dripping job peer's pause between two verified pieces: well within job_peer_patience (2 s), so that the
origin, standing by for the job peer, never joined before the fix."""
DEFAULTS = {k: v for k, v in ENV.items() if k != "KOGITUNE_READ_TIMEOUT"}
"""The product's timeouts (read timeout 30 s): what a trainer meets."""


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    root = tmp_path_factory.mktemp("published")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=600)
    options = StoreOptions(block_size=64, piece_size=PIECE, shard_size=PIECES_PER_SHARD * PIECE, workers=1)
    store([corpus], "gpt2", root / "kjv", options, progress=False)
    tensor = DataTensor(root / "kjv")
    assert len(tensor.shards) >= 2 and tensor.manifest.pieces_in(tensor.shards[0]) == PIECES_PER_SHARD
    return tensor


@pytest.fixture(scope="module")
def published(tensor, tmp_path_factory):
    """(the origin, a node process that published the tensor, and the dataset ID), shared by the tests of the
    module: each starts its own hostile peer and its own node V."""
    origin = NodeProcess(tmp_path_factory.mktemp("origin") / "home", env=DEFAULTS)
    try:
        yield origin, origin.cli("publish", str(tensor.path)).stdout.strip()
    finally:
        origin.close()


class HostileJobPeer:
    """A peer that serves the honest manifest, answers `have` with `have_map` (every shard by default) and a
    `data_port` (none by default), the small files at once, and reads of a tokens file through `read_tokens`."""

    def __init__(self, directory: Path, seed: bytes, *, data_port: int = 0, read_tokens=None) -> None:
        self.directory = directory
        self.manifest = DataTensor(directory).manifest
        self.seed = seed
        self.peer_id = peer_id_from_public_key(public_key_from_seed(seed))
        self.data_port = data_port
        self.read_tokens = read_tokens
        self.small_files = None
        """Like read_tokens, for reads of .pieces and .docs files (None: served honestly)."""
        self.have_map = [True] * len(self.manifest.shards)
        self.have_delay = 0.0
        """Seconds before each have answer."""
        self.reads: list[tuple[str, str, int, int]] = []

    def _bytes(self, request: wire.ReadRequest) -> bytes:
        shard = next(s for s in self.manifest.shards if s.name == request.shard)
        path = {"tokens": shard.tokens_path, "pieces": shard.pieces_path, "docs": shard.docs_path}[request.file]
        with open(self.directory / path, "rb") as f:
            f.seek(request.offset)
            return f.read(request.length)

    async def _answer(self, stream, request) -> None:
        if isinstance(request, wire.ManifestRequest):
            public_key, signature = read_signature(self.directory)
            manifest = (self.directory / "manifest.json").read_bytes()
            await stream.write(wire.encode_response(wire.ManifestResponse(manifest, signature, public_key)))
        elif isinstance(request, wire.HaveRequest):
            await trio.sleep(self.have_delay)
            have = wire.have_bitmap(self.have_map)
            await stream.write(wire.encode_response(wire.HaveResponse(have, self.data_port)))
        elif isinstance(request, wire.ReadRequest):
            self.reads.append((request.shard, request.file, request.offset, request.length))
            misbehave = self.read_tokens if request.file == "tokens" else self.small_files
            if misbehave is not None:
                await misbehave(self, stream, request)
            else:
                data = self._bytes(request)
                await stream.write(wire.encode_response(wire.ReadResponse(len(data))) + data)

    async def handle(self, stream) -> None:
        try:
            decoder = wire.FrameDecoder(wire.MAX_REQUEST_BYTES)
            with trio.fail_after(60):
                while (frame := decoder.next_frame()) is None:
                    decoder.feed(await stream.read(4096))
                await self._answer(stream, wire.parse_request(frame))
            await stream.close()
        except Exception:
            await stream.reset()


async def drip_pieces(peer: HostileJobPeer, stream, request: wire.ReadRequest) -> None:
    """Every asked piece, verified, one each DRIP_SECONDS: never `job_peer_patience` without progress."""
    data = peer._bytes(request)
    await stream.write(wire.encode_response(wire.ReadResponse(len(data))))
    for start in range(0, len(data), PIECE):
        await stream.write(data[start : start + PIECE])
        await trio.sleep(DRIP_SECONDS)


async def not_found(peer: HostileJobPeer, stream, request: wire.ReadRequest) -> None:
    """Claims every shard in its have-map, then has none of them."""
    await stream.write(wire.encode_response(wire.ErrorResponse("not_found", "no such shard")))


@asynccontextmanager
async def running_on(host, listen: str):
    from multiaddr import Multiaddr

    try:
        async with host.run([Multiaddr(listen)]):
            yield host
    finally:
        with trio.move_on_after(10):
            await host.close()


def in_job(nodes, origin, peer: HostileJobPeer, dataset_id: str, attack, listen: str = "") -> dict:
    """Run `peer` (listening on `listen`, else 127.0.0.1) announced under the job's key; start node V (bootstrapped to the origin and the peer), make it
    join the job and wait until the peer is one of its job peers; then `attack(v, client)` in a thread. Returns
    what `attack` returned."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    from kogitune.node.host import new_kogitune_host
    from kogitune.node.providers import provide

    outcome: dict = {}
    job = f"{JOB}-{peer.peer_id}"

    async def main() -> None:
        async with running_on(new_kogitune_host(peer.seed), listen or LISTEN) as host:
            host.set_stream_handler(TProtocol(wire.PROTOCOL_ID), peer.handle)
            dht = KadDHT(host, DHTMode.SERVER)
            async with background_trio_service(dht):
                with trio.fail_after(CONNECT_TIMEOUT):
                    await provide(dht, dataset_id, job_key(job, dataset_id))
                address = f"{host.get_addrs()[0]}/p2p/{host.get_id()}"
                v = await trio.to_thread.run_sync(lambda: nodes("v", [origin.address, address], env=DEFAULTS))
                client = DaemonClient(v.home)
                deadline = time.monotonic() + 30
                while str(peer.peer_id) not in client.call("job", 30, id=dataset_id, job=job)["peers"]:
                    assert time.monotonic() < deadline, "the hostile peer did not become a job peer"
                    await trio.sleep(0.1)
                outcome.update(await trio.to_thread.run_sync(lambda: attack(v, client)))

    trio.run(main)
    return outcome


def timed_shard(client: DaemonClient, dataset_id: str, index: int) -> float:
    started = time.monotonic()
    client.call("shard", 120, id=dataset_id, index=index)
    return time.monotonic() - started


def test_a_job_peer_that_drips_verified_pieces_cannot_hold_a_shard_back(tensor, published, nodes):
    """H, a job peer, claims every shard and sends each asked piece, verified, 1 s after the last: never
    job_peer_patience (2 s) without progress, so before the fix the origin stood by for H for most of the shard (16
    pieces of 64 KiB: 14-15 s; a 32 MiB shard of 1 MiB pieces dripped at 1.9 s: a minute, for every shard of the
    dataset). Now the origin joins once the fetch falls job_peer_patience behind job_peer_min_rate (4 MB/s), and
    takes H's run over: the shard in 2.3 s."""
    origin, dataset_id = published
    peer = HostileJobPeer(origin.home / "datasets" / dataset_id, bytes(range(32)), read_tokens=drip_pieces)

    def attack(v, client) -> dict:
        took = timed_shard(client, dataset_id, 0)
        fetched = DataTensor(v.home / "datasets" / dataset_id)
        return {"took": took, "problems": fetched.verify_shard(fetched.shards[0])}

    outcome = in_job(nodes, origin, peer, dataset_id, attack)
    assert any(read[1] == "tokens" for read in peer.reads), "the job peer was never asked: no attack"
    assert outcome["problems"] == []
    assert outcome["took"] < 6.0, f"a dripping job peer held the shard for {outcome['took']:.1f} s"


def test_a_job_peer_that_claims_every_shard_and_has_none_costs_seconds(tensor, published, nodes):
    """H claims every shard in each have answer (asked again before each shard: its map flips back to full) and
    answers every read "not found", small files included. Each shard V fetches arrives within seconds from the
    origin: a "not found" is a failure of H at once, and the others never stand by for a job peer for more than
    job_peer_patience."""
    origin, dataset_id = published
    peer = HostileJobPeer(origin.home / "datasets" / dataset_id, bytes(range(1, 33)), read_tokens=not_found)
    peer.small_files = not_found

    def attack(v, client) -> dict:
        took = [timed_shard(client, dataset_id, index) for index in range(len(tensor.shards))]
        return {"took": took, "problems": DataTensor(v.home / "datasets" / dataset_id).verify()}

    outcome = in_job(nodes, origin, peer, dataset_id, attack)
    assert peer.reads, "the job peer was never asked: no attack"
    assert outcome["problems"] == []
    assert max(outcome["took"]) < 5.0, f"a job peer that has nothing held shards for {outcome['took']} s"


@contextmanager
def listening(ip: str, port: int, answer):
    """A TCP service on ip:port (port 0: any) that records each connection and calls `answer(connection)` in a
    thread; yields (port, the list of connections' peer addresses)."""
    server = socket.create_server((ip, port))
    seen: list = []

    def accept() -> None:
        while True:
            try:
                connection, address = server.accept()
            except OSError:
                return
            seen.append(address)
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1], seen
    finally:
        server.close()


def ssh_banner(connection: socket.socket) -> None:
    """What port 22 says first, then nothing: not an HTTP response."""
    with connection:
        try:
            connection.sendall(b"SSH-2.0-OpenSSH_9.6p1\r\n")
            connection.recv(1)  # until the fetcher hangs up
        except OSError:
            pass


def test_a_data_port_named_by_a_peer_is_dialled_only_at_that_peers_address(tensor, published, nodes):
    """H, on 127.0.0.2, names as its data port the port of a service that another host runs on 127.0.0.1 (the
    victim's own host, here); 127.0.0.2 runs an SSH-like service on that port. V dials only 127.0.0.2 (the IP of
    its libp2p connection to H): the service on 127.0.0.1 sees no connection, the SSH banner is a failure of H's
    data port (not an HTTP response), and every shard arrives in seconds, verified."""
    origin, dataset_id = published
    with listening("127.0.0.1", 0, ssh_banner) as (port, on_victims_host):
        with listening("127.0.0.2", port, ssh_banner) as (_, on_peers_host):
            peer = HostileJobPeer(origin.home / "datasets" / dataset_id, bytes(range(2, 34)), data_port=port)

            def attack(v, client) -> dict:
                took = [timed_shard(client, dataset_id, index) for index in range(len(tensor.shards))]
                return {"took": took, "problems": DataTensor(v.home / "datasets" / dataset_id).verify()}

            outcome = in_job(nodes, origin, peer, dataset_id, attack, listen="/ip4/127.0.0.2/tcp/0")
    assert outcome["problems"] == []
    assert on_victims_host == [], f"a peer's announcement made the fetcher dial {on_victims_host}"
    assert on_peers_host, "the fetcher never dialled the named data port: no attack"
    assert max(outcome["took"]) < 5.0, f"shards took {outcome['took']} s"


HOLD_HOST_NODE_LOCK = """
import sys
from pathlib import Path
from kogitune import hostnode
from kogitune.layout import HOST_NODE_LOCK_FILE
with hostnode._locked(Path(sys.argv[1]) / HOST_NODE_LOCK_FILE, hostnode.fcntl.LOCK_EX):
    print("locked", flush=True)
    sys.stdin.readline()
"""
START_HOST_NODE = """
import sys, time
from pathlib import Path
from kogitune import hostnode
from kogitune.client import DaemonClient
home = Path(sys.argv[1])
started = time.monotonic()
assert hostnode.start_for(home, DaemonClient(home).running)
print(time.monotonic() - started, DaemonClient(home).call("status")["peer_id"], flush=True)
"""


def test_a_host_node_killed_mid_start_or_while_serving_is_restarted_at_once(tmp_path):
    """kill -9 of the process that holds <home>/host-node.lock while it starts the host's node, and kill -9 of
    the host's node itself (its control socket and lock files left behind): the next training process of the host
    starts a node at once (the kernel drops flock locks with their process; nothing waits for a stale file)."""
    home = tmp_path / "home"
    env = {**DEFAULTS, "KOGITUNE_HOME": str(home), "LOCAL_WORLD_SIZE": "2"}
    env.pop("KOGITUNE_BOOTSTRAP", None)
    home.mkdir()

    def start_host_node() -> tuple[float, str]:
        done = subprocess.run(
            [sys.executable, "-c", START_HOST_NODE, str(home)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        seconds, peer_id = done.stdout.split()
        return float(seconds), peer_id

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_HOST_NODE_LOCK, str(home)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
    finally:
        holder.kill()
        holder.wait(timeout=30)
    seconds, peer_id = start_host_node()
    assert seconds < 15, f"the host's node took {seconds:.1f} s to start after a starter was killed"
    DaemonClient(home).stop()  # (that it stops by itself once unused is tests/test_host_node.py's)

    node = NodeProcess(home, env=env)  # the host's node as a daemon of the home, killed -9 while it serves
    assert node.peer_id == peer_id  # the home's identity
    node.proc.kill()
    node.close()
    seconds, _ = start_host_node()
    assert seconds < 15, f"the host's node took {seconds:.1f} s to start after the last one was killed -9"
    DaemonClient(home).stop()


def test_fake_providers_listed_first_under_a_job_key_do_not_keep_the_jobs_hosts_out():
    """A hostile DHT neighbour answers the lookup of a job's key with 100 fake providers (unreachable, or never
    answering `have`), listed before the job's one real host. Before the fix each round tried the first 64 of the
    list, so the real host was never tried (the job's hosts then all read from the origin); now a round skips the
    providers that failed within JOB_LOOKUP_MAX and picks at random, so the real host joins within two rounds."""
    from types import SimpleNamespace

    from kogitune.node.jobs import JOB_LOOKUP_MAX, MAX_JOB_PEERS, to_try

    found = [SimpleNamespace(peer_id=f"fake-{i}") for i in range(100)] + [SimpleNamespace(peer_id="real-host")]
    known: set[str] = set()
    failed_until: dict[str, float] = {}
    now = 0.0
    for _ in range(2):
        for info in to_try(found, known, failed_until, now, MAX_JOB_PEERS - len(known)):
            if info.peer_id == "real-host":
                known.add(info.peer_id)
            else:
                failed_until[info.peer_id] = now + JOB_LOOKUP_MAX
        now += 3.0  # a round: the lookup (2 s) and the pause after it
    assert known == {"real-host"}
    assert len(to_try(found, known, failed_until, now + JOB_LOOKUP_MAX, MAX_JOB_PEERS)) == MAX_JOB_PEERS  # retried


def test_a_job_peer_that_answers_have_late_and_holds_nothing_does_not_delay_every_shard(tensor, published, nodes):
    """H, a job peer, holds nothing (an empty have-map) and answers each have request 0.8 s late, just within the
    1 s a shard fetch waits for the have-maps it asked. Before the fix V asked H again before each shard (H's map
    does not show it, and H answers: no backoff) and waited for the answer, though the origin was known to hold the
    shard: 0.91 s and 0.83 s for two shards of 1 MiB and 256 KiB. Now a late answer backs H off (from the answer)
    like a failure: 0.40 s and 0.08 s."""
    origin, dataset_id = published
    peer = HostileJobPeer(origin.home / "datasets" / dataset_id, bytes(range(3, 35)))
    peer.have_map = [False] * len(peer.have_map)
    peer.have_delay = 0.8

    def attack(v, client) -> dict:
        took = [timed_shard(client, dataset_id, index) for index in range(len(tensor.shards))]
        return {"took": took, "problems": DataTensor(v.home / "datasets" / dataset_id).verify()}

    outcome = in_job(nodes, origin, peer, dataset_id, attack)
    assert outcome["problems"] == []
    assert sum(outcome["took"]) < 1.0, f"a late have answer delayed each shard: {outcome['took']} s"


def test_a_partial_copy_of_a_private_dataset_is_served_to_its_allow_list_only(tensor, nodes, tmp_path):
    """B, on the allow-list, fetches one shard of a private dataset, and so announces it and serves what it holds
    (a server-mode node serves a dataset from its first verified shard). To C, off the list, B's copy is the
    dataset it does not hold: its `have` over libp2p is `not_found`, and B's data port answers the 404 of a
    missing dataset over plain HTTP and over TLS signed by C; only an identity on the list is served over TLS."""
    a = nodes("a")
    b = nodes("b", [a.address])
    # a copy: publishing hard-links the files, and a new link moves their ctime, which makes the module's origin
    # withhold the shards it published from them until it has checked them again
    private_id = a.cli("publish", str(copy_tensor(tensor, tmp_path / "copy")), "--allow", b.peer_id).stdout.strip()
    DaemonClient(b.home).call("shard", 60, id=private_id, index=0)
    shard = tensor.shards[0]
    port = b.data_port()
    c_seed, b_seed = bytes(range(4, 36)), (b.home / IDENTITY_FILE).read_bytes()  # C: any identity off the list
    for path in ("manifest.json", "signature", shard.tokens_path, shard.pieces_path):
        target = f"/{private_id}/{path}"
        assert request(port, target)[::2] == NOT_FOUND, path  # plain HTTP: never
        assert tls_get(port, target, b.peer_id, c_seed) == NOT_FOUND, path  # TLS, not on the list
    assert tls_get(port, f"/{private_id}/{shard.tokens_path}", b.peer_id, b_seed)[0] == 200  # B holds it

    async def ask_b_as_c() -> Exception | None:
        from kogitune.node.host import new_kogitune_host

        info = _peer_info(b.address)
        async with running_on(new_kogitune_host(c_seed), LISTEN) as host:  # C's identity, from the test process
            with trio.fail_after(CONNECT_TIMEOUT):
                await host.connect(info)
            try:
                await fetch_have(host, info.peer_id, private_id, len(tensor.shards), 10)
            except SourceLacks as exc:
                return exc
        return None

    refused = trio.run(ask_b_as_c)
    assert refused is not None and "does not hold" in str(refused), refused


async def never_answer(peer: HostileJobPeer, stream, request: wire.ReadRequest) -> None:
    await trio.sleep(60)


def test_a_job_peer_that_never_sends_the_small_files_does_not_delay_every_shard(tensor, published, nodes):
    """H, a job peer, claims every shard, serves the tokens honestly and never answers a read of a .pieces or .docs
    file. A shard's small files are asked of the job peers first and of the others a hedge (1 s) later; H, never
    failing (its requests are cancelled once the origin answers), was asked first again for every shard: 1.04 s
    and 1.03 s for two shards. Now a source outrun on a small file is asked after the others until it delivers
    one (SourceHealth.outrun): 1.04 s, then 0.04 s."""
    origin, dataset_id = published
    peer = HostileJobPeer(origin.home / "datasets" / dataset_id, bytes(range(5, 37)))
    peer.small_files = never_answer

    def attack(v, client) -> dict:
        took = [timed_shard(client, dataset_id, index) for index in range(len(tensor.shards))]
        return {"took": took, "problems": DataTensor(v.home / "datasets" / dataset_id).verify()}

    outcome = in_job(nodes, origin, peer, dataset_id, attack)
    assert outcome["problems"] == []
    assert outcome["took"][1] < 0.7, f"shards took {outcome['took']} s"


async def stall_after_the_first_piece(peer: HostileJobPeer, stream, request: wire.ReadRequest) -> None:
    """The response head and the first piece asked, verified, then nothing (until the fetcher gives up)."""
    data = peer._bytes(request)
    await stream.write(wire.encode_response(wire.ReadResponse(len(data))) + data[:PIECE])
    await trio.sleep(60)


def test_a_job_peer_that_stalls_after_the_first_piece_costs_about_its_patience_per_shard(tensor, published, nodes):
    """H, a job peer, claims every shard and answers each tokens request with its head and one verified piece, then
    stalls (its reads never time out within the test; its delivered piece resets its failures, so it never fails
    out). Each shard waits job_peer_patience (2 s) for it, then the origin takes its run over: seconds per shard,
    never the 30 s read timeout."""
    origin, dataset_id = published
    peer = HostileJobPeer(
        origin.home / "datasets" / dataset_id, bytes(range(6, 38)), read_tokens=stall_after_the_first_piece
    )

    def attack(v, client) -> dict:
        took = [timed_shard(client, dataset_id, index) for index in range(len(tensor.shards))]
        return {"took": took, "problems": DataTensor(v.home / "datasets" / dataset_id).verify()}

    outcome = in_job(nodes, origin, peer, dataset_id, attack)
    assert any(read[1] == "tokens" for read in peer.reads), "the job peer was never asked: no attack"
    assert outcome["problems"] == []
    assert max(outcome["took"]) < 6.0, f"shards took {outcome['took']} s"
