"""Conformance: a second implementation of the peer-to-peer protocol, written from docs/protocol.md alone, drives
running node processes.

This file imports nothing from Kogitune (checked by the last test): it makes its data with the `kogitune` command,
starts nodes with tests/netnodes.py, and speaks to them with py-libp2p's host (TCP, Noise, Yamux), msgpack,
hashlib and cryptography, as a client in any language would with its own libp2p. What it relies on is the
specification: the DHT protocol ID and key, the frames and messages of the data protocol, the canonical encoding
of a manifest and its ID, the signature payload, the piece rules, the half-close and the error answers.

Every network wait is bounded (trio.fail_after); nothing synchronises by sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

import msgpack
import pytest
import trio
from netnodes import ENV, KOGITUNE, NodeProcess

DATA_PROTOCOL = "/kogitune/data/2.0.0"
DHT_PROTOCOL = "/kogitune/kad/1.0.0"
OLD_PROTOCOLS = ["/kogitune/data/1.1.0", "/ipfs/kad/1.0.0"]
WIRE_VERSION = 2
TIMEOUT = 10.0
GET_TIMEOUT = 60


# ---- what docs/protocol.md says, written out here ---------------------------------------------------------------


def digest_of(dataset_id: str) -> bytes:
    """`kg1-` + unpadded lowercase base32 of the 32-byte digest."""
    assert dataset_id.startswith("kg1-") and len(dataset_id) == 56
    return base64.b32decode(dataset_id[4:].upper() + "====")


def dataset_id_of(digest: bytes) -> str:
    return "kg1-" + base64.b32encode(digest).decode().rstrip("=").lower()


def provider_key(dataset_id: str) -> bytes:
    """The DHT key: the SHA2-256 multihash (0x12, length 0x20) of the digest."""
    return bytes([0x12, 0x20]) + digest_of(dataset_id)


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, at: int = 0) -> tuple[int, int]:
    """(value, position after it)."""
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def frame(message: dict) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return varint(len(body)) + body


def base58btc(data: bytes) -> str:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    number, text = int.from_bytes(data, "big"), ""
    while number:
        number, rest = divmod(number, 58)
        text = alphabet[rest] + text
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + text


def peer_id_of_ed25519_key(key: bytes) -> str:
    return base58btc(bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]) + key)


def canonical_id(manifest_bytes: bytes) -> str:
    """The dataset ID of a manifest file's bytes: SHA-256 of JSON with sorted keys, no spaces, UTF-8."""
    value = json.loads(manifest_bytes)
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return dataset_id_of(hashlib.sha256(canonical).digest())


def protobuf_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message, for the varint and length-delimited fields the Kademlia
    messages use."""
    fields, at = [], 0
    while at < len(data):
        tag, at = read_varint(data, at)
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            value, at = read_varint(data, at)
            fields.append((number, value))
        elif kind == 2:
            length, at = read_varint(data, at)
            fields.append((number, data[at : at + length]))
            at += length
        else:
            raise AssertionError(f"protobuf wire type {kind} is not used by the Kademlia messages")
    return fields


# ---- fixtures ---------------------------------------------------------------------------------------------------


def make_tensor(root: Path, name: str, seed: int) -> Path:
    """A data tensor of ~60,000 tokens (two pieces of 64 KiB), made by the `kogitune store` command."""
    rng = random.Random(seed)
    words = "fox den kit moon rice field shrine lantern river stone path bell".split()
    corpus = root / f"{name}.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": " ".join(rng.choices(words, k=200))}) + "\n" for _ in range(300)),
        encoding="utf-8",
    )
    args = ["store", str(corpus), "-o", str(root / name), "--block-size", "64", "--piece-size", "64", "--workers", "1"]
    done = subprocess.run([KOGITUNE, *args, "--quiet"], capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr
    return root / name


@pytest.fixture(scope="module")
def publisher(tmp_path_factory):
    """A node process that published one dataset: (node, dataset ID, tensor directory)."""
    root = tmp_path_factory.mktemp("conformance")
    tensor = make_tensor(root, "first", 1)
    node = NodeProcess(root / "node")
    try:
        dataset_id = node.cli("publish", str(tensor)).stdout.strip()
        yield node, dataset_id, tensor
    finally:
        node.close()


# ---- a client host ----------------------------------------------------------------------------------------------


@asynccontextmanager
async def client(address: str):
    """A fresh libp2p identity speaking Noise and Yamux, connected to the node at `address`: (host, its peer ID)."""
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport
    from multiaddr import Multiaddr

    key_pair = create_new_key_pair(os.urandom(32))
    noise = Transport(key_pair, noise_privkey=new_x25519_pair().private_key)
    host = new_host(key_pair=key_pair, sec_opt={NOISE: noise}, muxer_preference="YAMUX")
    info = info_from_p2p_addr(Multiaddr(address))
    try:
        async with host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            with trio.fail_after(TIMEOUT):
                await host.connect(info)
            yield host, info.peer_id
    finally:
        with trio.move_on_after(TIMEOUT):
            await host.close()


async def open_stream(host, peer, protocol: str):
    from libp2p.custom_types import TProtocol

    with trio.fail_after(TIMEOUT):
        return await host.new_stream(peer, [TProtocol(protocol)])


async def read_until_end(stream) -> bytes:
    """Everything the node sends until it closes its side (EOF); a reset is a failure."""
    from libp2p.network.stream.exceptions import StreamEOF

    data = bytearray()
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                chunk = await stream.read(1 << 20)
            except StreamEOF:
                return bytes(data)
            if not chunk:
                return bytes(data)
            data += chunk


async def ask(host, peer, request: dict) -> tuple[dict, bytes]:
    """One request on a new stream: write its frame, half-close (the request is whole), read the response frame and
    the bytes after it until the node closes its side."""
    stream = await open_stream(host, peer, DATA_PROTOCOL)
    try:
        with trio.fail_after(TIMEOUT):
            await stream.write(frame(request))
            await stream.close_write()
        data = await read_until_end(stream)
    finally:
        await stream.reset()
    length, at = read_varint(data)
    response = msgpack.unpackb(data[at : at + length], raw=False)
    assert isinstance(response, dict) and response["v"] == WIRE_VERSION, response
    return response, data[at + length :]


async def get_providers(host, peer, key: bytes) -> list[bytes]:
    """The provider peer IDs (binary) that `peer` holds for `key`: a Kademlia GET_PROVIDERS (type 3) message, a
    varint-prefixed protobuf {1: type, 2: key}; the answer's field 9 holds the providers, each {1: peer ID}."""
    stream = await open_stream(host, peer, DHT_PROTOCOL)
    try:
        request = bytes([0x08, 3, 0x12, len(key)]) + key
        with trio.fail_after(TIMEOUT):
            await stream.write(varint(len(request)) + request)
            data = b""
            while not whole_message(data):
                data += await stream.read(1 << 16)
    finally:
        await stream.reset()
    length, at = read_varint(data)
    fields = protobuf_fields(data[at : at + length])
    assert (1, 3) in fields and (2, key) in fields, fields
    return [dict(protobuf_fields(peer))[1] for number, peer in fields if number == 9]


def whole_message(data: bytes) -> bool:
    """Whether `data` holds a whole varint-prefixed message."""
    try:
        length, at = read_varint(data)
    except IndexError:
        return False
    return len(data) >= at + length


def peer_id_bytes(peer_id: str) -> bytes:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    number = 0
    for char in peer_id:
        number = number * 58 + alphabet.index(char)
    zeros = len(peer_id) - len(peer_id.lstrip("1"))
    return bytes(zeros) + number.to_bytes((number.bit_length() + 7) // 8, "big")


# ---- the tests --------------------------------------------------------------------------------------------------


def test_a_client_written_from_the_docs_finds_checks_and_reads_a_dataset(publisher):
    node, dataset_id, _ = publisher
    digest = digest_of(dataset_id)
    node_id = peer_id_bytes(node.peer_id)

    async def main() -> None:
        async with client(node.address) as (host, peer):
            # Providers, on Kogitune's own DHT, under the multihash key.
            assert node_id in await get_providers(host, peer, provider_key(dataset_id))
            assert await get_providers(host, peer, digest) == []  # the bare digest is not the key

            # The signed manifest: it hashes to the ID, and the publisher signed the ID.
            response, rest = await ask(host, peer, {"v": WIRE_VERSION, "op": "manifest", "dataset": digest})
            assert rest == b""
            assert set(response) == {"v", "op", "manifest", "signature", "public_key", "allow", "allow_signature"}
            assert response["op"] == "manifest" and response["allow"] == "" and response["allow_signature"] == b""
            assert canonical_id(response["manifest"]) == dataset_id
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            payload = b"kogitune/manifest/v1\x00" + digest
            Ed25519PublicKey.from_public_bytes(response["public_key"]).verify(response["signature"], payload)
            assert peer_id_of_ed25519_key(response["public_key"]) == node.peer_id  # it published the dataset
            manifest = json.loads(response["manifest"])

            # Which shards it holds: a have-map with every bit of the manifest's shards set, none beyond.
            response, _ = await ask(host, peer, {"v": WIRE_VERSION, "op": "have", "dataset": digest})
            shards = manifest["shards"]
            port = response.pop("data_port")  # optional; this node serves public datasets on its data port
            assert response == {"v": WIRE_VERSION, "op": "have", "shards": response["shards"]}
            assert type(port) is int and 1 <= port <= 65535
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{dataset_id}/manifest.json", timeout=10) as http:
                assert canonical_id(http.read()) == dataset_id  # the data port: the web-mirror layout
            assert int.from_bytes(response["shards"], "little") == (1 << len(shards)) - 1
            assert len(response["shards"]) == -(-len(shards) // 8)

            # Every file of the first shard, checked by the piece rules.
            shard = shards[0]
            piece_size = manifest["piece_size"]
            pieces_count = -(-shard["size"] // piece_size)

            async def read(file: str, offset: int, length: int) -> bytes:
                request = {"v": WIRE_VERSION, "op": "read", "dataset": digest, "shard": shard["name"]}
                header, data = await ask(host, peer, {**request, "file": file, "offset": offset, "length": length})
                assert header == {"v": WIRE_VERSION, "op": "read", "length": length}
                assert len(data) == length
                return data

            pieces = await read("pieces", 0, 32 * pieces_count)
            assert hashlib.sha256(pieces).hexdigest() == shard["root"]
            for index in range(pieces_count):
                offset = index * piece_size
                piece = await read("tokens", offset, min(piece_size, shard["size"] - offset))
                assert hashlib.sha256(piece).digest() == pieces[32 * index : 32 * index + 32]
            docs = await read("docs", 0, 4 * shard["documents"])
            assert hashlib.sha256(docs).hexdigest() == shard["docs_sha256"]

    trio.run(main)


@pytest.mark.parametrize(
    "request_, code, says",
    [
        ({"op": "delete"}, "bad_request", "unknown op"),
        ({"op": "have", "v": 1}, "bad_request", "version"),
        ({"op": "have", "extra": 1}, "bad_request", "unknown keys"),
        ({"op": "read", "shard": "00000", "file": "tokens", "offset": 1 << 53, "length": 1}, "bad_request", "offset"),
        ({"op": "have", "dataset": bytes(32)}, "not_found", f"this node does not hold {dataset_id_of(bytes(32))}"),
    ],
)
def test_the_documented_errors(publisher, request_, code, says):
    node, dataset_id, _ = publisher
    message = {"v": WIRE_VERSION, "dataset": digest_of(dataset_id), **request_}

    async def main() -> None:
        async with client(node.address) as (host, peer):
            response, rest = await ask(host, peer, message)
            assert response["op"] == "error" and response["code"] == code, response
            assert set(response) == {"v", "op", "code", "message"} and rest == b""
            assert says in response["message"], response["message"]
            assert "b'" not in response["message"] and "None" not in response["message"]

    trio.run(main)


def test_older_protocols_and_the_public_dht_are_refused(publisher):
    """libp2p's protocol negotiation answers "na" to the data protocol of Kogitune 1.x and to the IPFS DHT; identify
    lists Kogitune's own protocols only."""
    node, _, _ = publisher

    async def main() -> None:
        from libp2p.host.exceptions import StreamFailure

        async with client(node.address) as (host, peer):
            for protocol in OLD_PROTOCOLS:
                with pytest.raises(StreamFailure):
                    await open_stream(host, peer, protocol)
            stream = await open_stream(host, peer, "/ipfs/id/1.0.0")  # identify, asked directly
            data = await read_until_end(stream)
            length, at = read_varint(data)
            protocols = {value.decode() for number, value in protobuf_fields(data[at : at + length]) if number == 3}
            assert {DATA_PROTOCOL, DHT_PROTOCOL} <= protocols and not protocols & set(OLD_PROTOCOLS), protocols

    trio.run(main)


def test_two_nodes_find_each_others_datasets_on_the_kogitune_dht(publisher, tmp_path):
    """A second node, bootstrapped from the first, publishes its own dataset; each fetches the other's by ID alone,
    which only the DHT (the sole routing protocol the nodes speak) can tell it where to find."""
    first, first_id, _ = publisher
    second = NodeProcess(tmp_path / "node", [first.address])
    try:
        second_id = second.cli("publish", str(make_tensor(tmp_path, "second", 2))).stdout.strip()
        assert second_id != first_id
        assert first_id in second.cli("get", first_id, "--quiet").stdout
        assert second_id in first.cli("get", second_id, "--quiet").stdout
    finally:
        second.close()


def test_this_file_imports_nothing_from_kogitune():
    import ast

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {name for name in modules if name.split(".")[0] == "kogitune"}, modules
