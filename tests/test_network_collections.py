"""Collections on the network, as separate OS processes on 127.0.0.1: a 3-part collection published on A is
fetched by B by its ID alone, and a trainer opens it by ID through B; a provider whose collection manifest does
not hash to the ID is refused."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kjv_collection import kjv_collection
from netnodes import ENV

from kogitune.collection import DataCollection

BLOCK = 64
PARTS = 3
TRAIN_SCRIPT = """
import pickle
import sys
import numpy as np
from kogitune.recipe import DatasetRecipe
tensors = DatasetRecipe([sys.argv[1]], shuffle=False).tensors()
assert type(tensors[0]).__name__ == "DataCollection", tensors
dataset = DatasetRecipe([sys.argv[1]], shuffle=False).get_train_dataset(int(sys.argv[2]))
dataset = pickle.loads(pickle.dumps(dataset))  # as a spawned DataLoader worker gets it
np.save(sys.argv[3], np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))]))
"""


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> DataCollection:
    """A collection of 3 parts of a KJV corpus, each of 2 shards or more (stored in this process, then merged)."""
    return kjv_collection(tmp_path_factory.mktemp("collection"), 90, PARTS, BLOCK)


def samples(tensor_or_path) -> np.ndarray:
    from kogitune.recipe import DatasetRecipe

    dataset = DatasetRecipe([str(tensor_or_path)], shuffle=False).get_train_dataset(BLOCK)
    return np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))])


def test_a_collection_is_published_fetched_and_trained_on_by_its_id(collection, nodes, tmp_path):
    a = nodes("a")
    collection_id = a.cli("publish", str(collection.path)).stdout.strip()
    assert collection_id == collection.dataset_id
    b = nodes("b", [a.address])
    remote = b.cli("info", collection_id).stdout
    assert "manifest from its providers; no shard fetched" in remote and f"parts       {PARTS}: " in remote
    got = b.cli("get", collection_id).stdout
    assert f"(a collection of {PARTS} parts)" in got
    held = DataCollection(b.home / "datasets" / collection_id)
    assert held.verify() == []
    local = samples(collection.path)
    np.testing.assert_array_equal(samples(held.path), local)

    status = b.cli("status", collection_id).stdout
    assert f"{collection_id}: a collection; " in status and a.peer_id in status
    for index, part_id in enumerate(collection.collection.parts):
        assert f"part {index:05d} {part_id}  {a.peer_id}  " in status
    assert f"OK   {b.home / 'datasets' / collection_id}" in b.cli("verify", collection_id).stdout
    info = b.cli("info", collection_id).stdout
    assert f"dataset id  {collection_id}" in info and f"publisher   {a.peer_id}" in info
    assert f"parts       {PARTS}: " in info

    a.close()  # the trainer reaches the collection through B alone, which announced it and its parts
    out = tmp_path / "seen.npy"
    env = {**ENV, "KOGITUNE_HOME": str(tmp_path / "trainer"), "KOGITUNE_BOOTSTRAP": b.address}
    subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, collection_id, str(BLOCK), str(out)], check=True, env=env, timeout=120
    )
    np.testing.assert_array_equal(np.load(out), local)


def test_a_collection_manifest_that_does_not_hash_to_the_id_is_refused(collection, nodes):
    """L published the collection, whose collection.json in L's store is then replaced by another collection's
    (the signature of the ID stays valid, so only the hash can tell): L's node withholds it, with the answer of an
    ID it does not hold, and B's `get` fails. (A provider that sends such bytes anyway: the next test.)"""
    from kogitune.node.host import load_identity_seed
    from kogitune.protocol.collection import Collection, collection_file_bytes, parse_collection
    from kogitune.protocol.signing import IntegrityError, check_signed, sign_dataset

    liar = nodes("l")
    collection_id = liar.cli("publish", str(collection.path)).stdout.strip()
    stored = liar.home / "datasets" / collection_id / "collection.json"
    other = Collection(tuple(reversed(collection.collection.parts)))
    stored.write_bytes(collection_file_bytes(other))
    signature, public_key = sign_dataset(load_identity_seed(liar.home), collection_id)
    with pytest.raises(IntegrityError, match="hashes to"):
        check_signed(collection_id, stored.read_bytes(), public_key, signature)
    assert parse_collection(stored.read_bytes()).dataset_id != collection_id

    b = nodes("b", [liar.address])
    refused = b.cli("get", collection_id, check=False)
    assert refused.returncode != 0
    assert f"{liar.peer_id}: not_found: this node does not hold {collection_id}" in refused.stderr
    assert not (b.home / "datasets" / collection_id / "collection.json").exists()


def test_a_fetcher_refuses_a_collection_manifest_that_does_not_hash_to_the_id(collection):
    """A lying provider (a libp2p host in this process speaking the data protocol) answers the manifest request
    for the collection ID with another collection's manifest, validly signed for the ID: the fetcher's check
    (peers.fetch_signed_manifest, which every open by ID goes through) refuses it."""
    import os

    import trio
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import PeerInfo
    from multiaddr import Multiaddr

    from kogitune.node.host import new_kogitune_host
    from kogitune.node.peers import fetch_signed_manifest
    from kogitune.protocol import wire
    from kogitune.protocol.collection import Collection, collection_file_bytes
    from kogitune.protocol.errors import IntegrityError
    from kogitune.protocol.signing import sign_dataset

    seed = os.urandom(32)
    collection_id = collection.dataset_id
    lie = collection_file_bytes(Collection(tuple(reversed(collection.collection.parts))))
    signature, public_key = sign_dataset(seed, collection_id)

    async def answer(stream) -> None:
        decoder = wire.FrameDecoder(wire.MAX_REQUEST_BYTES)
        while decoder.next_frame() is None:
            decoder.feed(await stream.read(4096))
        await stream.write(wire.encode_response(wire.ManifestResponse(lie, signature, public_key)))
        await stream.close()

    async def main() -> None:
        liar, fetcher = new_kogitune_host(seed), new_kogitune_host(os.urandom(32))
        async with liar.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]), fetcher.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                liar.set_stream_handler(TProtocol(wire.PROTOCOL_ID), answer)
                with trio.fail_after(10):
                    await fetcher.connect(PeerInfo(liar.get_id(), liar.get_addrs()))
                    with pytest.raises(IntegrityError, match=f"received for {collection_id} hashes to kg1-"):
                        await fetch_signed_manifest(fetcher, liar.get_id(), collection_id, 5)
            finally:
                await fetcher.close()
                await liar.close()

    trio.run(main)


def test_a_store_collection_opens_locally_with_its_parts_linked(collection, tmp_path):
    """copies.store_collection lays a collection out in a content store as a collection directory: parts/<i> link
    to the parts' own directories, so `info`, `verify` and `head` of the ID read it like `merge`'s output."""
    from kogitune.content_store import ContentStore
    from kogitune.node.copies import CollectionCopy, store_collection, stored_collection
    from kogitune.protocol.collection import collection_file_bytes

    store = ContentStore(tmp_path / "home")
    for part in collection.parts:
        target = store.dataset_dir(part.dataset_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(part.path).resolve())
    copy = CollectionCopy(collection_file_bytes(collection.collection), collection.collection)
    directory = store_collection(store, collection.dataset_id, copy)
    assert stored_collection(store, collection.dataset_id).collection == collection.collection
    np.testing.assert_array_equal(DataCollection(directory).tokens(), collection.tokens())
