"""Only published bytes leave a node: a node process (`kogitune node start` on 127.0.0.1) against a user who edits,
links or replaces the files of a tensor it published, read by a py-libp2p peer in the test process; and a peer
that dies in the middle of a file is a failure for the fetcher, never a liar.

Every network wait is bounded (the helpers of test_network_hostile); nothing synchronises by sleeping.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from netnodes import NodeProcess
from test_network_hostile import (
    CONNECT_TIMEOUT,
    STREAM_TIMEOUT,
    Outcome,
    _peer_info,
    _reset,
    exchange,
    noise_peer,
    open_stream,
    read_request,
    read_to_end,
    running,
)

from kogitune.client import DaemonClient
from kogitune.corpora import write_kjv_chapters
from kogitune.errors import FetchError
from kogitune.files import write_atomic
from kogitune.layout import MANIFEST_FILE
from kogitune.node.fetch import ShardFetch
from kogitune.node.host import new_kogitune_host
from kogitune.node.peers import PeerSource
from kogitune.node.pool import SourcePool
from kogitune.protocol import wire
from kogitune.protocol.ids import dataset_id_digest
from kogitune.protocol.manifest import Manifest, canonical_encoding, parse_manifest
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, TensorWriter, store

SECRET = b"this was never published: it must not leave the node"
BIG_SHARD_BYTES = 16 << 20
"""A shard that takes many 1 MiB reads to serve, far more than the flow-control windows between node and peer hold:
while the peer does not read, the node waits with most of the file still unread."""


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """20 KJV chapters in a few small shards, stored once for the module."""
    root = tmp_path_factory.mktemp("integrity")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=20)
    store(
        [corpus],
        "gpt2",
        root / "kjv",
        StoreOptions(block_size=64, piece_size=64 << 10, shard_size=64 << 10, workers=1),
        progress=False,
    )
    return root / "kjv"


@pytest.fixture
def mine(stored, tmp_path) -> DataTensor:
    """The user's own copy of the tensor (fresh inodes, free to edit)."""
    shutil.copytree(stored, tmp_path / "mine")
    return DataTensor(tmp_path / "mine")


@pytest.fixture
def node(tmp_path):
    node = NodeProcess(tmp_path / "node")
    try:
        yield node
    finally:
        node.close()


def ask(node: NodeProcess, *requests: bytes) -> list[Outcome]:
    """Send each request on its own stream from a fresh peer; what the node answered to each."""

    async def main() -> list[Outcome]:
        async with noise_peer(node.address) as (host, peer):
            return [await exchange(host, peer, request) for request in requests]

    return trio.run(main)


def answer(outcome: Outcome, expected_type):
    frame, rest = outcome.frame()
    assert frame is not None, f"no response frame ({outcome.ended} after {len(outcome.data)} bytes)"
    return wire.parse_response(frame, expected_type), rest


def read_tokens(node: NodeProcess, tensor: DataTensor, index: int = 0) -> tuple[object, bytes]:
    shard = tensor.shards[index]
    [outcome] = ask(node, read_request(dataset_id_digest(tensor.dataset_id), shard.name, "tokens", 0, shard.size))
    return answer(outcome, wire.ReadResponse)


def damaged(node: NodeProcess) -> list[dict]:
    return DaemonClient(node.home).call("status", timeout=30).get("damaged", [])


def changed(node: NodeProcess) -> list[dict]:
    return DaemonClient(node.home).call("status", timeout=30).get("changed", [])


RECHECK_SECONDS = 20.0
"""How long a test waits for a node's background re-check of a changed shard (milliseconds alone, more under load)."""


def poll(condition, what: str, seconds: float = RECHECK_SECONDS):
    """Call `condition()` until it returns something true, and return that; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds:.0f} s: {what}", pytrace=False)
        time.sleep(0.05)
    return found


def served_again(node: NodeProcess, tensor: DataTensor, index: int = 0) -> bytes:
    """The shard's tokens, asked for until the node serves them again (once its background re-check passed)."""

    def served():
        response, data = read_tokens(node, tensor, index)
        return isinstance(response, wire.ReadResponse) and data

    return poll(served, f"shard {tensor.shards[index].name} served again")


def test_a_shard_edited_through_the_users_hard_link_is_withheld(mine, node):
    dataset_id = node.cli("publish", str(mine.path)).stdout.strip()
    shard = mine.shards[0]
    users_file = mine.path / shard.tokens_path
    stored_file = node.home / "datasets" / dataset_id / shard.tokens_path
    if not os.path.samefile(users_file, stored_file):
        pytest.skip("the store copied the tensor (another file system): no shared inode to edit")
    original = users_file.read_bytes()
    response, data = read_tokens(node, mine)
    assert isinstance(response, wire.ReadResponse) and data == original
    assert damaged(node) == []

    with open(users_file, "r+b") as f:  # an edit in place: same inode, same size
        f.write(SECRET)
    response, data = read_tokens(node, mine)
    assert SECRET not in data, "the node sent bytes written into a published file after it was published"
    assert isinstance(response, wire.ErrorResponse) and response.code == "not_found", response
    [entry] = poll(lambda: damaged(node), "the re-check failed")
    assert changed(node) == []
    assert (entry["dataset"], entry["shard"]) == (dataset_id, shard.name)
    assert "does not match its hash" in entry["problem"]
    shown = node.cli("node", "status").stdout
    assert f"{dataset_id} shard {shard.name}" in shown and "damaged" in shown
    response, data = read_tokens(node, mine)  # asked again: still withheld, and not hashed or logged again
    assert isinstance(response, wire.ErrorResponse) and response.code == "not_found"
    log_lines = [line for line in (node.home / "node.log").read_text().splitlines() if "damaged" in line]
    assert len(log_lines) == 1 and shard.name in log_lines[0], log_lines

    with open(users_file, "r+b") as f:  # undone: the next request checks the shard again, then it is served
        f.write(original[: len(SECRET)])
    assert served_again(node, mine) == original
    assert damaged(node) == []


def test_a_changed_shard_is_checked_again_in_the_background_not_while_the_request_waits(mine, node):
    """An edit and its undo: the shard must be hashed again before it is served, but the request that finds it
    changed is answered not_found at once (a re-hash of a big shard, or of many, outlasts a fetcher's wait for an
    answer; main held every such request until its shard was hashed, one shard at a time); a later one gets it."""
    dataset_id = node.cli("publish", str(mine.path)).stdout.strip()
    shard = mine.shards[0]
    stored_file = node.home / "datasets" / dataset_id / shard.tokens_path
    original = stored_file.read_bytes()
    with open(stored_file, "r+b") as f:  # edited and undone: the same bytes, a new ctime
        f.write(SECRET)
    with open(stored_file, "r+b") as f:
        f.write(original[: len(SECRET)])

    response, data = read_tokens(node, mine)
    assert isinstance(response, wire.ErrorResponse) and response.code == "not_found", (
        "the request waited for the re-check of the changed shard"
    )
    assert served_again(node, mine) == original
    assert damaged(node) == []


def big_tensor(stored: Path, out: Path) -> DataTensor:
    """One shard of BIG_SHARD_BYTES: the module's tokens repeated, one document."""
    small = DataTensor(stored)
    manifest = small.manifest
    tokens = np.resize(np.asarray(small.tokens()), BIG_SHARD_BYTES // manifest.itemsize)
    out.mkdir()
    writer = TensorWriter(out, manifest.dtype, manifest.block_size, BIG_SHARD_BYTES, 1 << 20, manifest.tokenizer.eos_id)
    writer.add(tokens, np.array([len(tokens)]))
    shards = writer.finish()
    big = Manifest(
        tokenizer=manifest.tokenizer,
        dtype=manifest.dtype,
        block_size=manifest.block_size,
        piece_size=1 << 20,
        documents=writer.documents,
        tokens=writer.tokens,
        blocks=sum(s.blocks for s in shards),
        shards=shards,
        provenance={"test": "big shard"},
    )
    write_atomic(out / MANIFEST_FILE, canonical_encoding(big.to_dict()))
    return DataTensor(out)


def test_a_shard_edited_while_it_is_being_served_is_cut_before_the_edit(stored, node, tmp_path):
    tensor = big_tensor(stored, tmp_path / "big")
    dataset_id = node.cli("publish", str(tensor.path)).stdout.strip()
    shard = tensor.shards[0]
    users_file = tensor.path / shard.tokens_path
    if not os.path.samefile(users_file, node.home / "datasets" / dataset_id / shard.tokens_path):
        pytest.skip("the store copied the tensor (another file system): no shared inode to edit")

    async def main() -> Outcome:
        async with noise_peer(node.address) as (host, peer):
            stream = await open_stream(host, peer)
            try:
                with trio.fail_after(STREAM_TIMEOUT):
                    await stream.write(read_request(dataset_id_digest(dataset_id), shard.name, "tokens", 0, shard.size))
                    await stream.close()
                    first = await read_to_end(stream, cap=256 << 10)
                assert first.ended == "cap"
                with open(users_file, "r+b") as f:  # the end of the file, not read by the node yet
                    f.seek(shard.size - len(SECRET))
                    f.write(SECRET)
                with trio.fail_after(STREAM_TIMEOUT):
                    rest = await read_to_end(stream, cap=2 * BIG_SHARD_BYTES)
                return Outcome(first.data + rest.data, rest.ended)
            finally:
                await _reset(stream)

    outcome = trio.run(main)
    response, data = answer(outcome, wire.ReadResponse)
    assert isinstance(response, wire.ReadResponse)
    assert SECRET not in data, "the node sent bytes written into the file while it was serving it"
    assert len(data) < shard.size, "the stream was not cut"  # py-libp2p may show the reset as an EOF
    assert data == users_file.read_bytes()[: len(data)]
    assert damaged(node) == []  # not known to be damaged: changed, and not checked again yet
    [entry] = changed(node)
    assert entry["shard"] == shard.name
    shown = node.cli("node", "status").stdout
    assert "changed     1 shards changed since verified" in shown and "\ndamaged " not in shown, shown
    response, _ = read_tokens(node, tensor)
    assert isinstance(response, wire.ErrorResponse) and response.code == "not_found", response
    [entry] = poll(lambda: damaged(node), "the re-check failed")  # the request had it checked again
    assert entry["shard"] == shard.name and changed(node) == []


@pytest.mark.parametrize("linked", ["tokens", "docs", "manifest"])
def test_a_tensor_with_a_symlink_is_refused_and_the_target_never_served(mine, node, tmp_path, linked):
    shard = mine.shards[0]
    name = {"tokens": shard.tokens_path, "docs": shard.docs_path, "manifest": "manifest.json"}[linked]
    target = tmp_path / "elsewhere"
    shutil.copyfile(mine.path / name, target)  # the same bytes, so the tensor still verifies through the link
    (mine.path / name).unlink()
    (mine.path / name).symlink_to(target)
    assert DataTensor(mine.path).verify() == []

    result = node.cli("publish", str(mine.path), check=False)
    assert result.returncode != 0, "a tensor holding a symbolic link was published"
    assert "symbolic link" in result.stderr and str(mine.path / name) in result.stderr, result.stderr
    links = [p for p in (node.home / "datasets").rglob("*") if p.is_symlink()]
    assert links == [], f"the store holds symbolic links: {links}"
    target.write_bytes(SECRET)
    digest = dataset_id_digest(mine.dataset_id)
    outcomes = ask(
        node,
        read_request(digest, shard.name, "tokens", 0, shard.size),
        read_request(digest, shard.name, "docs", 0, shard.docs_size),
        wire.encode_request(wire.ManifestRequest(digest)),
    )
    for outcome in outcomes:
        assert SECRET not in outcome.data
        response, _ = answer(outcome, wire.ErrorResponse)
        assert isinstance(response, wire.ErrorResponse) and response.code == "not_found", response


def test_a_replaced_manifest_is_not_served(mine, node):
    dataset_id = node.cli("publish", str(mine.path)).stdout.strip()
    manifest_path = node.home / "datasets" / dataset_id / "manifest.json"
    other = json.loads(manifest_path.read_bytes())
    other["tokenizer"]["name"] = SECRET.decode()
    replaced = canonical_encoding(other)
    assert parse_manifest(replaced).dataset_id != dataset_id
    write_atomic(manifest_path, replaced)

    digest = dataset_id_digest(dataset_id)
    shard = mine.shards[0]
    for outcome in ask(
        node,
        wire.encode_request(wire.ManifestRequest(digest)),
        read_request(digest, shard.name, "tokens", 0, shard.size),
    ):
        assert SECRET not in outcome.data
        response, _ = answer(outcome, wire.ErrorResponse)
        assert isinstance(response, wire.ErrorResponse) and response.code == "not_found", response
    assert {
        "dataset": dataset_id,
        "shard": "manifest.json",
        "file": "manifest.json",
        "problem": "it does not hash to the dataset ID",
    } in damaged(node)


def test_a_damaged_docs_file_is_named_by_status_and_cleared_once_repaired(mine, node):
    """Damage is noted per file (not per shard, where a .docs record was never cleared by a good read of it, and a
    re-check of the tokens cleared it); a good read of the repaired file clears it, without a restart."""
    dataset_id = node.cli("publish", str(mine.path)).stdout.strip()
    shard = mine.shards[0]
    stored_docs = node.home / "datasets" / dataset_id / shard.docs_path
    original = stored_docs.read_bytes()
    digest = dataset_id_digest(dataset_id)
    read_docs = read_request(digest, shard.name, "docs", 0, shard.docs_size)

    stored_docs.write_bytes(bytes([original[0] ^ 1]) + original[1:])  # bit rot, or a careless hand
    [outcome] = ask(node, read_docs)
    response, _ = answer(outcome, wire.ErrorResponse)
    assert isinstance(response, wire.ErrorResponse) and response.code == "not_found", response
    entries = [e for e in damaged(node) if e["file"] == shard.docs_path]
    assert [e["problem"] for e in entries] == [f"{shard.docs_path} does not match the manifest"], damaged(node)
    assert (
        f"{dataset_id} shard {shard.name} ({shard.docs_path}): {shard.docs_path} does not match"
        in node.cli("node", "status").stdout
    )

    stored_docs.write_bytes(original)  # repaired
    [outcome] = ask(node, read_docs)
    response, data = answer(outcome, wire.ReadResponse)
    assert isinstance(response, wire.ReadResponse) and data == original
    assert [e for e in damaged(node) if "does not match" in e["problem"]] == [], damaged(node)
    [outcome] = ask(node, read_request(digest, shard.name, "docs", 8, 16))  # a range, read from the file
    response, data = answer(outcome, wire.ReadResponse)
    assert isinstance(response, wire.ReadResponse) and data == original[8:24]


@pytest.mark.parametrize("cut", ["pieces", "docs"])
def test_a_peer_that_dies_in_the_middle_of_a_file_is_a_failure_not_a_liar(mine, tmp_path, cut):
    """The peer sends half of a .pieces or .docs file and ends the stream: what py-libp2p shows the reader when
    the peer process is killed mid-transfer (a clean EOF, measured in the libp2p notes)."""
    from libp2p.custom_types import TProtocol

    manifest = mine.manifest
    shard = mine.shards[0]
    paths = {"tokens": shard.tokens_path, "pieces": shard.pieces_path, "docs": shard.docs_path}

    async def serve(stream) -> None:
        decoder = wire.FrameDecoder(wire.MAX_REQUEST_BYTES)
        while (frame := decoder.next_frame()) is None:
            decoder.feed(await stream.read(4096))
        request = wire.parse_request(frame)
        data = (mine.path / paths[request.file]).read_bytes()[request.offset : request.offset + request.length]
        if request.file == cut:
            data = data[: len(data) // 2]
        await stream.write(wire.encode_response(wire.ReadResponse(request.length)) + data)
        await stream.close()

    async def main() -> SourcePool:
        async with (
            running(new_kogitune_host(os.urandom(32))) as dying,
            running(new_kogitune_host(os.urandom(32))) as fetcher,
        ):
            dying.set_stream_handler(TProtocol(wire.PROTOCOL_ID), serve)
            with trio.fail_after(CONNECT_TIMEOUT):
                await fetcher.connect(_peer_info(f"{dying.get_addrs()[0]}/p2p/{dying.get_id()}"))
            pool = SourcePool([PeerSource(fetcher, dying.get_id(), mine.dataset_id, manifest, 3.0)])
            directory = tmp_path / "fetched"
            (directory / "shards").mkdir(parents=True)
            with trio.fail_after(30), pytest.raises(FetchError):
                await ShardFetch(directory, manifest, shard, pool).run()
            return pool

    [health] = trio.run(main).health
    assert not health.banned, f"a peer that died mid-transfer was banned as a liar: {health.banned}"
    # a failure (asked again after its backoff, up to max_failures: one cut stream is not the end of a fetch)
    assert health.failures >= 1 and "short" in health.last_error, health.last_error


SLOW_READER_RATE = 256 << 10
"""Bytes per second of the honest slow reader below: four times the server's floor in this test (WRITE_BYTES per
SLOW_WRITE_TIMEOUT, 64 KiB/s), as 60 KiB/s a stream is about twice the 32 KiB/s floor in production."""
SLOW_WRITE_TIMEOUT = 16.0
SLOW_READ_BYTES = 3 << 19


def test_a_slow_but_honest_reader_is_not_cut(stored, node, tmp_path):
    """A reader well above the server's floor (MIN_READER_RATE: WRITE_BYTES per write timeout) gets its bytes. A
    DataServer in this process (its write timeout shortened, so that the test is quick) serves the store of a node
    process. (With main's 10 s per 1 MiB write, a reader at a quarter of the floor would have been cut.)"""
    from libp2p.custom_types import TProtocol

    from kogitune.content_store import ContentStore
    from kogitune.node.server import WRITE_BYTES, DataServer, ServerLimits

    tensor = big_tensor(stored, tmp_path / "big")
    dataset_id = node.cli("publish", str(tensor.path)).stdout.strip()
    shard = tensor.shards[0]
    server = DataServer(ContentStore(node.home), ServerLimits(write_timeout=SLOW_WRITE_TIMEOUT))
    assert SLOW_READER_RATE >= 4 * WRITE_BYTES / SLOW_WRITE_TIMEOUT

    async def main() -> tuple[bytes, str]:
        async with (
            running(new_kogitune_host(os.urandom(32))) as serving,
            running(new_kogitune_host(os.urandom(32))) as reader,
        ):
            serving.set_stream_handler(TProtocol(wire.PROTOCOL_ID), server.handle)
            with trio.fail_after(CONNECT_TIMEOUT):
                await reader.connect(_peer_info(f"{serving.get_addrs()[0]}/p2p/{serving.get_id()}"))
            stream = await open_stream(reader, serving.get_id())
            data, ended = bytearray(), "cap"
            try:
                with trio.fail_after(STREAM_TIMEOUT + SLOW_READ_BYTES / SLOW_READER_RATE):
                    await stream.write(read_request(dataset_id_digest(dataset_id), shard.name, "tokens", 0, shard.size))
                    await stream.close()
                    started = trio.current_time()
                    while len(data) < SLOW_READ_BYTES:  # paced: never ahead of SLOW_READER_RATE
                        await trio.sleep_until(started + len(data) / SLOW_READER_RATE)
                        try:
                            chunk = await stream.read(16 << 10)
                        except Exception as exc:
                            ended = type(exc).__name__
                            break
                        if not chunk:
                            ended = "eof"
                            break
                        data += chunk
            finally:
                await _reset(stream)
            return bytes(data), ended

    data, ended = trio.run(main)
    response, body = answer(Outcome(data, ended), wire.ReadResponse)
    assert isinstance(response, wire.ReadResponse)
    assert ended == "cap", f"the server cut a reader at {SLOW_READER_RATE >> 10} KiB/s after {len(body)} bytes: {ended}"
    assert body == (tensor.path / shard.tokens_path).read_bytes()[: len(body)]
