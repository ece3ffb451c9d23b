"""Hostile peers against a running node process (`kogitune node start` on 127.0.0.1).

The test process runs its own py-libp2p hosts inside trio (Noise + Yamux, like a real peer) and speaks
the data protocol (`wire.PROTOCOL_ID`) to the node: thousands of malformed and hostile requests, a plaintext dialer, a peer over
its stream limit. After each attack the node must still be alive, bounded in memory, and serve correct bytes.

Every network wait is bounded (trio.fail_after, or move_on_after where running out of time is recorded as a
failure); nothing synchronises by sleeping. The node's stream handler frees a stream's slot right after it ends
the stream, a few scheduler turns before the multi-round-trip negotiation of a peer's next stream can reach it.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgpack
import pytest
import trio
from netnodes import NodeProcess

from kogitune.client import DaemonClient
from kogitune.corpora import write_kjv_chapters
from kogitune.node.host import new_kogitune_host
from kogitune.node.server import ServerLimits
from kogitune.protocol import wire
from kogitune.protocol.ids import dataset_id_digest
from kogitune.protocol.manifest import parse_manifest
from kogitune.protocol.signing import peer_id_from_public_key, verify_dataset
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

SEED = 20240917
FUZZ_STREAMS = 2000
FUZZ_PEERS = 4
STREAMS_PER_FUZZ_PEER = 4  # 16 in flight in all; each peer stays under ServerLimits.streams_per_peer
HANGING_STREAMS = 4
CONNECT_TIMEOUT = 10.0
STREAM_TIMEOUT = 5.0  # the node answers every complete or ended request at once; 5 s is the "hang" bound
RSS_GROWTH_LIMIT = 200 << 20
LIMITS = ServerLimits()  # the node process runs with the defaults
LISTEN = "/ip4/127.0.0.1/tcp/0"


# ---- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    """40 KJV chapters in two shards (64 KiB and 10 KiB of tokens)."""
    root = tmp_path_factory.mktemp("hostile")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=40)
    store(
        [corpus],
        "gpt2",
        root / "kjv",
        StoreOptions(block_size=64, piece_size=64 << 10, shard_size=64 << 10, workers=1),
        progress=False,
    )
    tensor = DataTensor(root / "kjv")
    assert len(tensor.shards) >= 2
    return tensor


@dataclass
class Published:
    node: NodeProcess
    tensor: DataTensor
    dataset_id: str

    @property
    def digest(self) -> bytes:
        return dataset_id_digest(self.dataset_id)

    def status(self) -> dict:
        return DaemonClient(self.node.home).call("status", timeout=30)

    def rss(self) -> int:
        with open(f"/proc/{self.node.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")


@pytest.fixture
def published(tensor, tmp_path):
    node = NodeProcess(tmp_path / "node")
    try:
        dataset_id = node.cli("publish", str(tensor.path)).stdout.strip()
        assert dataset_id == tensor.dataset_id
        yield Published(node, tensor, dataset_id)
    finally:
        node.close()


# ---- a peer in the test process ---------------------------------------------------------------------------------


def _peer_info(address: str):
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    return info_from_p2p_addr(Multiaddr(address))


@asynccontextmanager
async def running(host):
    from multiaddr import Multiaddr

    try:
        async with host.run([Multiaddr(LISTEN)]):
            yield host
    finally:
        with trio.move_on_after(10):
            await host.close()


@asynccontextmanager
async def noise_peer(address: str):
    """A fresh identity speaking Noise + Yamux, connected to the node at `address`; yields (host, node peer ID)."""
    info = _peer_info(address)
    async with running(new_kogitune_host(os.urandom(32))) as host:
        with trio.fail_after(CONNECT_TIMEOUT):
            await host.connect(info)
        yield host, info.peer_id


@dataclass
class Outcome:
    data: bytes  # everything the node sent on the stream
    ended: str  # how the stream ended for us: "eof", "reset", "error", or "cap" (we stopped reading)

    def frame(self) -> tuple[dict | None, bytes]:
        """The first frame the node sent (None if it sent no whole frame) and the bytes after it."""
        decoder = wire.FrameDecoder(wire.MAX_HEADER_BYTES)
        if not self.data:
            return None, b""
        decoder.feed(self.data)
        frame = decoder.next_frame()
        return frame, decoder.unused() if frame is not None else self.data


async def open_stream(host, peer):
    from libp2p.custom_types import TProtocol

    with trio.fail_after(STREAM_TIMEOUT):
        return await host.new_stream(peer, [TProtocol(wire.PROTOCOL_ID)])


async def read_to_end(stream, cap: int = 4 << 20) -> Outcome:
    """Read until the node ends the stream (EOF or reset) or `cap` bytes arrived. The caller bounds the time."""
    from libp2p.network.stream.exceptions import StreamEOF, StreamError, StreamReset

    data = bytearray()
    while len(data) < cap:
        try:
            chunk = await stream.read(1 << 16)
        except StreamEOF:
            return Outcome(bytes(data), "eof")
        except StreamReset:
            return Outcome(bytes(data), "reset")
        except StreamError:
            return Outcome(bytes(data), "error")
        if not chunk:
            return Outcome(bytes(data), "eof")
        data += chunk
    return Outcome(bytes(data), "cap")


async def _reset(stream) -> None:
    try:
        await stream.reset()
    except Exception:
        pass


async def exchange(host, peer, payload: bytes, *, half_close: bool = True, timeout: float = STREAM_TIMEOUT) -> Outcome:
    """One stream: send `payload`, end our side (unless told not to), read what the node answers."""
    from libp2p.network.stream.exceptions import StreamError

    stream = await open_stream(host, peer)
    try:
        with trio.fail_after(timeout):
            try:
                if payload:
                    await stream.write(payload)
                if half_close:
                    await stream.close()
            except StreamError:
                pass  # the node may refuse before reading everything; what it sent is still readable
            return await read_to_end(stream)
    finally:
        await _reset(stream)


def request(obj: dict) -> bytes:
    """A frame of any map, valid or not (encode_frame refuses non-string keys, msgpack does not)."""
    body = msgpack.packb(obj, use_bin_type=True)
    return wire.encode_varint(len(body)) + body


def expect_error(outcome: Outcome, code: str, what: str) -> None:
    frame, rest = outcome.frame()
    assert frame is not None, (
        f"{what}: no response frame, the stream ended by {outcome.ended} after {len(outcome.data)} bytes"
    )
    assert frame.get("op") == "error", f"{what}: the node answered a bad request with success: {frame!r:.300}"
    response = wire.parse_response(frame, wire.ErrorResponse)
    assert response.code == code, f"{what}: expected {code}, got {response.code}: {response.message}"
    assert rest == b"", f"{what}: {len(rest)} bytes followed the error frame"
    assert outcome.ended in ("eof", "reset"), f"{what}: the stream did not end after the error ({outcome.ended})"


def expect_manifest(outcome: Outcome, published: Published, what: str) -> None:
    frame, rest = outcome.frame()
    assert frame is not None, f"{what}: no response frame ({outcome.ended} after {len(outcome.data)} bytes)"
    response = wire.parse_response(frame, wire.ManifestResponse)
    assert isinstance(response, wire.ManifestResponse), f"{what}: {response}"
    assert parse_manifest(response.manifest).dataset_id == published.dataset_id
    verify_dataset(published.dataset_id, response.public_key, response.signature)
    assert peer_id_from_public_key(response.public_key) == published.node.peer_id
    assert rest == b""


def expect_bytes(outcome: Outcome, expected: bytes, what: str) -> None:
    frame, rest = outcome.frame()
    assert frame is not None, f"{what}: no response frame ({outcome.ended} after {len(outcome.data)} bytes)"
    response = wire.parse_response(frame, wire.ReadResponse)
    assert isinstance(response, wire.ReadResponse), f"{what}: {response}"
    assert response.length == len(expected), f"{what}: offered {response.length} bytes, asked {len(expected)}"
    assert rest == expected, f"{what}: {len(rest)} bytes differ from the {len(expected)} bytes of the file"


def read_request(digest: bytes, shard: str, file: str, offset: int, length: int) -> bytes:
    return wire.encode_request(wire.ReadRequest(digest, shard, file, offset, length))


def file_sizes(tensor: DataTensor) -> dict[tuple[str, str], tuple[str, int]]:
    """(shard, kind) -> (path, size as the manifest says)."""
    manifest = tensor.manifest
    sizes = {}
    for shard in tensor.shards:
        sizes[shard.name, "tokens"] = (shard.tokens_path, shard.size)
        sizes[shard.name, "pieces"] = (shard.pieces_path, manifest.pieces_in(shard) * 32)
        sizes[shard.name, "docs"] = (shard.docs_path, shard.docs_size)
    return sizes


# ---- hostile payloads -------------------------------------------------------------------------------------------


@dataclass
class Case:
    label: str
    payload: bytes
    expect: str  # an error code, or "ok" for a valid request (checked against the files)
    half_close: bool = True
    valid: tuple | None = None  # ("manifest",) or ("read", path, offset, length)


class Payloads:
    """Malformed and hostile requests, drawn from random.Random(seed)."""

    def __init__(self, rng: random.Random, tensor: DataTensor) -> None:
        self.rng = rng
        self.digest = dataset_id_digest(tensor.dataset_id)
        self.sizes = file_sizes(tensor)
        self.shards = [s.name for s in tensor.shards]
        self.kinds = [
            self.random_bytes,
            self.truncated_varint,
            self.huge_announcement,
            self.bad_varint,
            self.truncated_frame,
            self.not_a_map,
            self.wrong_type,
            self.extra_or_missing_key,
            self.unknown_op,
            self.oversized,
            self.bad_encoding,
            self.huge_read,
            self.beyond_file,
            self.unknown_shard,
            self.not_held,
            self.nothing,
        ]

    def valid_read(self) -> dict:
        shard, kind = self.rng.choice([key for key, (_, size) in self.sizes.items() if size])
        size = self.sizes[shard, kind][1]
        offset = self.rng.randrange(size)
        return {
            "v": wire.WIRE_VERSION,
            "op": "read",
            "dataset": self.digest,
            "shard": shard,
            "file": kind,
            "offset": offset,
            "length": self.rng.randint(1, size - offset),
        }

    def valid_request(self) -> dict:
        op = self.rng.choice(["manifest", "have", "read"])
        return self.valid_read() if op == "read" else {"v": wire.WIRE_VERSION, "op": op, "dataset": self.digest}

    def case(self) -> Case:
        if self.rng.random() < 0.05:
            return self.control()
        return self.rng.choice(self.kinds)()

    def control(self) -> Case:
        """A valid request among the hostile ones: the node keeps serving, and a success can be seen."""
        if self.rng.random() < 0.3:
            return Case(
                "valid manifest", wire.encode_request(wire.ManifestRequest(self.digest)), "ok", valid=("manifest",)
            )
        obj = self.valid_read()
        path = self.sizes[obj["shard"], obj["file"]][0]
        return Case("valid read", request(obj), "ok", valid=("read", path, obj["offset"], obj["length"]))

    def random_bytes(self) -> Case:
        return Case("random bytes", self.rng.randbytes(self.rng.randint(1, 600)), "bad_request")

    def truncated_varint(self) -> Case:
        data = bytes(0x80 | self.rng.randrange(128) for _ in range(self.rng.randint(1, 9)))
        return Case("truncated varint", data, "bad_request")

    def huge_announcement(self) -> Case:
        """A length far above the limit, then silence: refused as soon as the varint is complete."""
        length = self.rng.choice([1 << 30, wire.MAX_REQUEST_BYTES + 1, (1 << 64) - 1, 1 << 40])
        return Case("huge announced length", wire.encode_varint(length), "bad_request", half_close=False)

    def bad_varint(self) -> Case:
        data = self.rng.choice(
            [b"\x80" * 10 + b"\x01", b"\xff" * 12, b"\x83\x00" + b"\x00" * 3, b"\x80\x80\x00" + b"\x00" * 200]
        )
        return Case("overlong or redundant varint", data, "bad_request", half_close=self.rng.random() < 0.5)

    def truncated_frame(self) -> Case:
        frame = request(self.valid_request())
        return Case("truncated frame", frame[: self.rng.randrange(1, len(frame))], "bad_request")

    def not_a_map(self) -> Case:
        value = self.rng.choice(
            [
                0,
                -1,
                1 << 63,
                1.5,
                None,
                True,
                "manifest",
                b"\x00" * 32,
                [1, 2, 3],
                [],
                [{"v": 1}],
                {"v": 1, "op": "manifest", "dataset": [self.digest]},
            ]
        )
        body = msgpack.packb(value, use_bin_type=True)
        if self.rng.random() < 0.3:  # an empty frame, or a deeply nested map
            body = self.rng.choice([b"", b"\x81\xa1a" * 1200 + b"\xc0"])
        return Case("not a map", wire.encode_varint(len(body)) + body, "bad_request")

    def wrong_type(self) -> Case:
        obj = (
            self.valid_read()
            if self.rng.random() < 0.7
            else {"v": wire.WIRE_VERSION, "op": "have", "dataset": self.digest}
        )
        key = self.rng.choice(list(obj))
        wrong = {
            "v": [0, 1, 3, "2", 2.0, True, None, -1, (1 << 64) - 1, b"\x02"],
            "op": [1, b"read", "READ", "", "read\x00", "x" * 100, None],
            "dataset": [self.digest.hex(), self.digest[:31], self.digest + b"\x00", b"", 0, None, {"a": 1}],
            "shard": [12345, "1234", "1234567890", "abcde", "00000\n", "../00000", "０００００", b"00000", None],
            "file": ["TOKENS", "manifest.json", "../signature", "tokens\x00", b"tokens", "", "identity", None],
            "offset": [-1, 1 << 53, 1 << 63, (1 << 64) - 1, 1.0, "0", None, True, b"\x00"],
            "length": [0, -1, wire.MAX_READ_BYTES + 1, (1 << 64) - 1, 1.5, "1", True, None],
        }[key]
        obj[key] = self.rng.choice(wrong)
        return Case(f"wrong type of {key}", request(obj), "bad_request")

    def extra_or_missing_key(self) -> Case:
        obj = self.valid_request()
        if self.rng.random() < 0.5:
            del obj[self.rng.choice(list(obj))]
            return Case("missing key", request(obj), "bad_request")
        for _ in range(self.rng.randint(1, 14)):
            obj[self.rng.choice(["x", "ok", "code", "path", "len", "V", "op ", ""]) + str(self.rng.randrange(99))] = 1
        return Case("extra keys", request(obj), "bad_request")

    def unknown_op(self) -> Case:
        op = self.rng.choice(["delete", "write", "publish", "list", "Manifest", "have ", "stop", "status"])
        return Case("unknown op", request({"v": wire.WIRE_VERSION, "op": op, "dataset": self.digest}), "bad_request")

    def oversized(self) -> Case:
        """Frames above the 4096-byte request limit, sent whole; or maps of more than 16 keys."""
        obj = self.valid_request()
        choice = self.rng.randrange(3)
        if choice == 0:
            obj["dataset"] = self.rng.randbytes(self.rng.randint(4097, 9000))
        elif choice == 1:
            obj["shard"] = "0" * self.rng.randint(4097, 9000)
        else:
            obj.update({f"k{i}": i for i in range(17)})
        return Case("oversized field or map", request(obj), "bad_request")

    def bad_encoding(self) -> Case:
        """Bodies that break the msgpack rules: non-string keys, extension types, invalid UTF-8, trailing bytes, a
        repeated key."""
        v = wire.WIRE_VERSION
        choice = self.rng.randrange(6)
        if choice == 0:
            body = msgpack.packb({1: 1, "op": "manifest", "dataset": self.digest}, use_bin_type=True)
        elif choice == 1:
            body = msgpack.packb({b"v": v, b"op": "manifest", b"dataset": self.digest}, use_bin_type=True)
        elif choice == 2:
            body = msgpack.packb({"v": v, "op": "manifest", "dataset": msgpack.ExtType(5, self.digest)})
        elif choice == 3:  # "op" as a str of invalid UTF-8
            body = b"\x83\xa1v" + bytes([v]) + b"\xa2op\xa8\xff\xfeanifest\xa7dataset\xc4\x20" + self.digest
        elif choice == 4:  # "op" twice: "read" (invalid without its keys), then "manifest"
            body = b"\x84\xa1v" + bytes([v]) + b"\xa2op\xa4read\xa2op\xa8manifest\xa7dataset\xc4\x20" + self.digest
        else:  # a valid request with one more msgpack value after it, inside the frame
            body = msgpack.packb({"v": v, "op": "manifest", "dataset": self.digest}, use_bin_type=True) + b"\xc0"
        return Case("bad msgpack", wire.encode_varint(len(body)) + body, "bad_request")

    def huge_read(self) -> Case:
        obj = self.valid_read()
        obj["offset"], obj["length"] = 0, self.rng.choice([wire.MAX_READ_BYTES, 1 << 29, 10 << 20])
        return Case("huge read length", request(obj), "bad_request")

    def beyond_file(self) -> Case:
        obj = self.valid_read()
        size = self.sizes[obj["shard"], obj["file"]][1]
        choice = self.rng.randrange(3)
        if choice == 0:  # starts at or past the end
            obj["offset"], obj["length"] = self.rng.choice([size, size + 1, 1 << 40, wire.MAX_OFFSET]), 1
        elif choice == 1:  # ends one byte past the end
            obj["length"] = size - obj["offset"] + 1
        else:  # offset + length overflows 64 bits
            obj["offset"], obj["length"] = wire.MAX_OFFSET, wire.MAX_READ_BYTES
        return Case("read beyond the file", request(obj), "bad_request")

    def unknown_shard(self) -> Case:
        obj = self.valid_read()
        names = {"99999", "000000", f"{len(self.shards):05d}", "123456789", f"0{self.shards[0]}"} - set(self.shards)
        obj["shard"] = self.rng.choice(sorted(names))
        return Case("unknown shard", request(obj), "bad_request")

    def not_held(self) -> Case:
        obj = self.valid_request()
        obj["dataset"] = self.rng.randbytes(32)
        return Case(f"dataset not held ({obj['op']})", request(obj), "not_found")

    def nothing(self) -> Case:
        return Case("nothing, then end of stream", b"", "bad_request")


def check_case(case: Case, outcome: Outcome, published: Published) -> None:
    what = f"{case.label} {case.payload[:64].hex()}{'...' if len(case.payload) > 64 else ''}"
    if case.expect != "ok":
        expect_error(outcome, case.expect, what)
    elif case.valid[0] == "manifest":
        expect_manifest(outcome, published, what)
    else:
        _, path, offset, length = case.valid
        expected = (published.tensor.path / path).read_bytes()[offset : offset + length]
        expect_bytes(outcome, expected, what)


# ---- 1. fuzzing a running node ----------------------------------------------------------------------------------


def test_fuzzed_requests_are_refused_and_the_node_keeps_serving(published):
    rng = random.Random(SEED)
    payloads = Payloads(rng, published.tensor)
    cases = [payloads.case() for _ in range(FUZZ_STREAMS)]
    assert sum(case.expect == "ok" for case in cases) >= 20  # the checker sees successes too
    datasets_before = sorted(p.name for p in (published.node.home / "datasets").iterdir())
    address = published.node.address
    rss = {}
    hanging: list[tuple[float, Outcome]] = []
    failures: list[str] = []

    async def hang(host, peer, prefix: bytes) -> None:
        """Send nothing or part of a request, then wait: the node must end the stream after its request timeout."""
        stream = await open_stream(host, peer)
        started = trio.current_time()
        try:
            if prefix:
                with trio.fail_after(STREAM_TIMEOUT):
                    await stream.write(prefix)
            with trio.move_on_after(LIMITS.request_timeout + 10):
                outcome = await read_to_end(stream)
                hanging.append((trio.current_time() - started, outcome))
                return
            failures.append(f"hanging stream: the node did not end it within {LIMITS.request_timeout + 10:.0f} s")
        finally:
            await _reset(stream)

    async def fuzz(host, peer, limiter, case: Case) -> None:
        """One hostile stream; a failure is recorded (with its payload) rather than raised, to report them all."""
        try:
            async with limiter:
                outcome = await exchange(host, peer, case.payload, half_close=case.half_close)
            check_case(case, outcome, published)
        except trio.TooSlowError:
            failures.append(f"{case.label}: no answer within {STREAM_TIMEOUT} s to {case.payload[:64].hex()}")
        except Exception as exc:  # an AssertionError of check_case, or a stream that could not be opened
            failures.append(f"{case.label}: {type(exc).__name__}: {exc}")

    async def main() -> None:
        async with noise_peer(address) as (checker, peer), noise_peer(address) as (hanger, _):
            full = wire.encode_request(wire.ManifestRequest(published.digest))
            expect_manifest(await exchange(checker, peer, full), published, "warm-up manifest")
            rss["before"] = published.rss()
            async with trio.open_nursery() as hangs:
                for i in range(HANGING_STREAMS):
                    hangs.start_soon(hang, hanger, peer, full[: i * len(full) // HANGING_STREAMS])
                # the hanging streams do not block the peer that holds them, nor anyone else
                expect_manifest(await exchange(hanger, peer, full), published, "manifest next to hanging streams")
                async with (
                    noise_peer(address) as (a, _),
                    noise_peer(address) as (b, _),
                    noise_peer(address) as (c, _),
                    noise_peer(address) as (d, _),
                ):
                    fuzzers = [(host, trio.CapacityLimiter(STREAMS_PER_FUZZ_PEER)) for host in (a, b, c, d)]
                    assert len(fuzzers) == FUZZ_PEERS
                    async with trio.open_nursery() as nursery:
                        for i, case in enumerate(cases):
                            host, limiter = fuzzers[i % FUZZ_PEERS]
                            nursery.start_soon(fuzz, host, peer, limiter, case)
                # after the storm: the manifest, the have-map, then every file of every shard, whole and identical
                expect_manifest(await exchange(checker, peer, full), published, "manifest after fuzzing")
                have_request = wire.encode_request(wire.HaveRequest(published.digest))
                frame, _ = (await exchange(checker, peer, have_request)).frame()
                have = wire.parse_response(frame, wire.HaveResponse)
                assert isinstance(have, wire.HaveResponse), have
                count = len(published.tensor.shards)
                assert wire.have_shards(have.shards, count) == [True] * count
                for (shard, kind), (path, size) in file_sizes(published.tensor).items():
                    if size:
                        outcome = await exchange(checker, peer, read_request(published.digest, shard, kind, 0, size))
                        expect_bytes(outcome, (published.tensor.path / path).read_bytes(), f"whole {path}")
                rss["after"] = published.rss()
                # the node has not ended the hanging streams early: they are still waiting (or timed out)
                assert all(elapsed >= LIMITS.request_timeout / 2 for elapsed, _ in hanging), hanging

    trio.run(main)
    if failures:
        kinds = Counter(failure.split(":")[0] for failure in failures)
        examples = {failure.split(":")[0]: failure for failure in failures}
        pytest.fail(
            f"{len(failures)} hostile streams misbehaved: {dict(kinds)}\n" + "\n".join(examples.values()), pytrace=False
        )
    assert published.node.proc.poll() is None, "the node process died"
    # the node timed out every hanging stream: no response, no earlier than its request timeout, and not much later
    assert len(hanging) == HANGING_STREAMS
    for elapsed, outcome in hanging:
        assert outcome.data == b"" and outcome.ended in ("eof", "reset"), outcome
        assert LIMITS.request_timeout / 2 <= elapsed <= LIMITS.request_timeout + 5, elapsed
    growth = rss["after"] - rss["before"]
    assert growth < RSS_GROWTH_LIMIT, f"node RSS grew by {growth >> 20} MiB during {FUZZ_STREAMS} hostile streams"
    status = published.node.cli("node", "status").stdout
    assert published.node.peer_id in status and published.dataset_id in status
    stats = published.status()
    refused = stats["refused"]
    # the node's own account: every payload reached the parser (none was refused as busy), each was refused
    # once for what it was, and only the hanging streams were aborted (by the node's timeout)
    assert refused.get("busy", 0) == 0, refused
    assert refused.get("bad_request", 0) == sum(case.expect == "bad_request" for case in cases), refused
    assert refused.get("not_found", 0) == sum(case.expect == "not_found" for case in cases), refused
    assert refused.get("aborted", 0) == HANGING_STREAMS, refused
    # nothing was created for the unknown datasets that were asked for
    assert sorted(p.name for p in (published.node.home / "datasets").iterdir()) == datasets_before


# ---- 2. plaintext ------------------------------------------------------------------------------------------------


def plaintext_host():
    """A py-libp2p host whose only security transport is plaintext (/plaintext/2.0.0)."""
    import logging

    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    logging.getLogger("libp2p").addHandler(logging.NullHandler())
    key_pair = create_new_key_pair(os.urandom(32))
    return new_host(
        key_pair=key_pair, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)}, muxer_preference="YAMUX"
    )


def test_plaintext_dialer_is_refused(published):
    def full_address(host) -> str:
        address = str(host.get_addrs()[0])
        return address if "/p2p/" in address else f"{address}/p2p/{host.get_id()}"

    result = {}

    async def main() -> None:
        async with running(plaintext_host()) as dialer, running(plaintext_host()) as control:
            # the plaintext dialer works: it connects to a peer that speaks plaintext
            with trio.fail_after(CONNECT_TIMEOUT):
                await dialer.connect(_peer_info(full_address(control)))
            assert control.get_id() in dialer.get_connected_peers()
            # ... but not to the node, and the node says so at once rather than letting it hang
            started = trio.current_time()
            with pytest.raises(Exception) as refused:
                with trio.fail_after(CONNECT_TIMEOUT):
                    await dialer.connect(_peer_info(published.node.address))
            assert not isinstance(refused.value, trio.TooSlowError), "the node let a plaintext dialer hang"
            result["seconds"] = trio.current_time() - started
            assert _peer_info(published.node.address).peer_id not in dialer.get_connected_peers()
            status = await trio.to_thread.run_sync(published.status)
            assert str(dialer.get_id()) not in status["connected_peers"]
            # a Noise peer is served as usual, while the plaintext one is still around
            async with noise_peer(published.node.address) as (host, peer):
                outcome = await exchange(host, peer, wire.encode_request(wire.ManifestRequest(published.digest)))
                expect_manifest(outcome, published, "manifest after the plaintext dial")

    trio.run(main)
    assert result["seconds"] < CONNECT_TIMEOUT
    assert published.node.proc.poll() is None


# ---- 3. per-peer stream limit -----------------------------------------------------------------------------------


def test_streams_over_the_per_peer_limit_are_busy_while_other_peers_are_served(published):
    limit = LIMITS.streams_per_peer
    excess = 3
    full = wire.encode_request(wire.ManifestRequest(published.digest))
    split = len(full) // 2
    shard = published.tensor.shards[0]
    shard_bytes = (published.tensor.path / shard.tokens_path).read_bytes()

    async def main() -> None:
        async with (
            noise_peer(published.node.address) as (greedy, peer),
            noise_peer(published.node.address) as (other, _),
        ):
            # the greedy peer holds `limit` streams, each with half a request sent
            holders = []
            try:
                for _ in range(limit):
                    stream = await open_stream(greedy, peer)
                    holders.append(stream)
                    with trio.fail_after(STREAM_TIMEOUT):
                        await stream.write(full[:split])
                # more streams from it are refused as busy, whatever they ask
                for i in range(excess):
                    expect_error(await exchange(greedy, peer, full, half_close=i % 2 == 0), "busy", f"excess {i}")
                # another peer is served meanwhile: the manifest and a whole shard
                expect_manifest(await exchange(other, peer, full), published, "other peer's manifest")
                outcome = await exchange(
                    other, peer, read_request(published.digest, shard.name, "tokens", 0, shard.size)
                )
                expect_bytes(outcome, shard_bytes, "other peer's shard")
                # the held streams were not dropped: they finish their requests and get their answers
                for stream in holders:
                    with trio.fail_after(STREAM_TIMEOUT):
                        await stream.write(full[split:])
                        expect_manifest(await read_to_end(stream), published, "held stream")
            finally:
                for stream in holders:
                    await _reset(stream)
            # with its streams done, the greedy peer is served again
            expect_manifest(await exchange(greedy, peer, full), published, "greedy peer after its streams ended")

    trio.run(main)
    refused = published.status()["refused"]
    assert refused.get("busy", 0) == excess, refused
    assert published.node.proc.poll() is None
