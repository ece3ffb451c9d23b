"""Who decides who may fetch a dataset, against real node processes on 127.0.0.1.

Only the publisher that a private dataset's manifest names decides who may fetch it: a peer that re-signs a public
dataset with its own key and an allow-list cannot make honest replicas refuse it to anyone. A private dataset's
replica is stored owner-only, and a peer that may not fetch it gets, byte for byte, the answer of a node that does
not hold it. Hostile peers are py-libp2p hosts inside this test process (as in test_network_hostile.py); every
network wait is bounded.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import test_network_hostile
import trio
from netnodes import NodeProcess
from test_network_hostile import (
    CONNECT_TIMEOUT,
    STREAM_TIMEOUT,
    exchange,
    expect_bytes,
    file_sizes,
    noise_peer,
    read_request,
    running,
)

from kogitune.node.host import new_kogitune_host
from kogitune.node.providers import provide
from kogitune.protocol import wire
from kogitune.protocol.ids import dataset_id_digest
from kogitune.protocol.manifest import parse_manifest
from kogitune.protocol.signing import (
    peer_id_from_public_key,
    public_key_from_seed,
    sign_allow_list,
    sign_dataset,
    verify_dataset,
)
from kogitune.tensor import DataTensor

tensor = test_network_hostile.tensor  # the fixture: 40 KJV chapters in two shards

GET_TIMEOUT = 60.0


def manifest_of(outcome) -> wire.ManifestResponse:
    frame, rest = outcome.frame()
    assert frame is not None and rest == b"", f"no manifest response ({outcome.ended}, {len(outcome.data)} bytes)"
    response = wire.parse_response(frame, wire.ManifestResponse)
    assert isinstance(response, wire.ManifestResponse), response
    return response


# ---- a peer cannot restrict a public dataset ----------------------------------------------------------------------


class Hijacker:
    """A peer that holds a public dataset and serves it as its own: the manifest signed with its key, and an
    allow-list naming only itself, signed with the same key (so it verifies against the manifest's signer)."""

    def __init__(self, tensor: DataTensor) -> None:
        self.tensor = tensor
        self.seed = os.urandom(32)
        self.peer_id = peer_id_from_public_key(public_key_from_seed(self.seed))
        self.dataset_id = tensor.dataset_id
        self.sizes = {key: path for key, (path, _) in file_sizes(tensor).items()}

    def manifest_response(self, peer_id: str) -> bytes:
        signature, public_key = sign_dataset(self.seed, self.dataset_id)
        allow = (peer_id,)
        return wire.encode_response(
            wire.ManifestResponse(
                (self.tensor.path / "manifest.json").read_bytes(),
                signature,
                public_key,
                allow,
                sign_allow_list(self.seed, self.dataset_id, allow),
            )
        )

    async def handle(self, stream) -> None:
        """Answer one request: the forged manifest response, a full have-map, or the bytes asked for."""
        try:
            decoder = wire.FrameDecoder(wire.MAX_REQUEST_BYTES)
            with trio.fail_after(STREAM_TIMEOUT):
                while (frame := decoder.next_frame()) is None:
                    decoder.feed(await stream.read(4096))
                request = wire.parse_request(frame)
                if isinstance(request, wire.ManifestRequest):
                    await stream.write(self.manifest_response(self.peer_id))
                elif isinstance(request, wire.HaveRequest):
                    count = len(self.tensor.shards)
                    await stream.write(wire.encode_response(wire.HaveResponse(wire.have_bitmap([True] * count))))
                else:
                    path = self.tensor.path / self.sizes[request.shard, request.file]
                    with open(path, "rb") as f:
                        f.seek(request.offset)
                        data = f.read(request.length)
                    await stream.write(wire.encode_response(wire.ReadResponse(request.length)) + data)
            await stream.close()
        except Exception:
            await stream.reset()


def test_a_peer_cannot_make_a_public_dataset_private(tensor, tmp_path):
    """H signs a public dataset's ID with its own key and sends an allow-list naming only itself, signed by itself.
    B fetches the dataset from H alone (its bootstrap peer, the only provider) and must not inherit the list: a
    third peer C is still served by B, the manifest and the bytes."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    hijacker = Hijacker(tensor)
    digest = dataset_id_digest(tensor.dataset_id)
    shard = tensor.shards[0]
    replicas = []

    async def main() -> None:
        async with running(new_kogitune_host(hijacker.seed)) as host:
            assert str(host.get_id()) == hijacker.peer_id
            host.set_stream_handler(TProtocol(wire.PROTOCOL_ID), hijacker.handle)
            dht = KadDHT(host, DHTMode.SERVER)
            async with background_trio_service(dht):
                with trio.fail_after(CONNECT_TIMEOUT):
                    await provide(dht, tensor.dataset_id)
                address = f"{host.get_addrs()[0]}/p2p/{host.get_id()}"
                b = await trio.to_thread.run_sync(NodeProcess, tmp_path / "b", [address])
                replicas.append(b)
                with trio.fail_after(GET_TIMEOUT):
                    got = await trio.to_thread.run_sync(lambda: b.cli("get", tensor.dataset_id))
                assert hijacker.peer_id in got.stdout, got.stdout  # B did fetch from H
            copy = b.home / "datasets" / tensor.dataset_id
            assert DataTensor(copy).verify() == []
            assert not (copy / "allow").exists() and not (copy / "allow.signature").exists()
            async with noise_peer(b.address) as (c, peer):
                response = manifest_of(await exchange(c, peer, wire.encode_request(wire.ManifestRequest(digest))))
                assert parse_manifest(response.manifest).dataset_id == tensor.dataset_id
                verify_dataset(tensor.dataset_id, response.public_key, response.signature)
                assert peer_id_from_public_key(response.public_key) == hijacker.peer_id
                assert response.allow == () and response.allow_signature == b""
                outcome = await exchange(c, peer, read_request(digest, shard.name, "tokens", 0, shard.size))
                expect_bytes(outcome, (tensor.path / shard.tokens_path).read_bytes(), "C's read from B")

    try:
        trio.run(main)
    finally:
        for node in replicas:
            node.close()


# ---- a private dataset: owner-only replicas, refusals that look like "not held" -----------------------------------


def modes_under(directory: Path) -> dict[str, int]:
    """Permission bits of `directory` and of everything under it, by relative path."""
    found = {".": stat.S_IMODE(directory.stat().st_mode)}
    for path in directory.rglob("*"):
        found[str(path.relative_to(directory))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_a_private_replica_is_owner_only_and_refuses_like_a_node_that_lacks_it(tensor, nodes):
    """A publishes the tensor privately to B; B fetches it. B's copy is owner-only (folders 0700, every file 0600),
    so are the folder and the files A wrote; a peer C off the list gets from A and from B, for a manifest, a have and
    a read request, exactly the bytes that E, a node that does not hold the dataset, answers."""
    a = nodes("a")
    b = nodes("b", [a.address])
    e = nodes("e")
    private_id = a.cli("publish", str(tensor.path), "--allow", b.peer_id).stdout.strip()
    assert private_id != tensor.dataset_id
    b.cli("get", private_id)
    replica = b.home / "datasets" / private_id
    assert DataTensor(replica).verify() == []
    modes = modes_under(replica)
    assert {"shards", "allow", "allow.signature", "signature", "manifest.json"} <= modes.keys()
    assert any(name.endswith(".tokens") for name in modes)
    wrong = {name: oct(mode) for name, mode in modes.items() if mode != (0o700 if (replica / name).is_dir() else 0o600)}
    assert not wrong, f"not owner-only in B's replica: {wrong}"
    published = a.home / "datasets" / private_id
    assert stat.S_IMODE(published.stat().st_mode) == stat.S_IMODE((published / "shards").stat().st_mode) == 0o700
    for name in ("manifest.json", "signature", "allow", "allow.signature"):
        assert stat.S_IMODE((published / name).stat().st_mode) == 0o600, name

    digest = dataset_id_digest(private_id)
    shard = tensor.shards[0]
    requests = {
        "manifest": wire.encode_request(wire.ManifestRequest(digest)),
        "have": wire.encode_request(wire.HaveRequest(digest)),
        "read": read_request(digest, shard.name, "tokens", 0, shard.size),
    }
    answers = {}

    async def main() -> None:
        async with (
            noise_peer(a.address) as (ca, pa),
            noise_peer(b.address) as (cb, pb),
            noise_peer(e.address) as (ce, pe),
        ):
            for op, payload in requests.items():
                for name, (host, peer) in {"a": (ca, pa), "b": (cb, pb), "e": (ce, pe)}.items():
                    answers[op, name] = (await exchange(host, peer, payload)).data

    trio.run(main)
    for op in requests:
        absent = answers[op, "e"]
        decoder = wire.FrameDecoder(wire.MAX_HEADER_BYTES)
        decoder.feed(absent)
        assert wire.parse_response(decoder.next_frame(), wire.ErrorResponse).code == "not_found"
        assert answers[op, "a"] == absent, f"A answers a {op} request differently from a node that lacks it"
        assert answers[op, "b"] == absent, f"B answers a {op} request differently from a node that lacks it"
