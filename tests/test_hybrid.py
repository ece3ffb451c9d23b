"""Hybrid recipe entries: a dataset ID with the web mirrors that host it (web seeds). Real processes: node processes
(`kogitune node start` on 127.0.0.1), mirror servers (tests/mirror_server.py), trainers in fresh Python processes
with no daemon (their embedded node). The trainer gets exactly the stored tokens from mirrors alone (no node
anywhere, and a bootstrap peer that is down must not make it wait), from peers alone, and from both with one source
lying (a mirror, or a peer), which is dropped; a daemon that fetched a dataset from a mirror serves it on to another
node, and `kogitune get --mirror` fetches from a mirror with no peer."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import copy_tensor, flip_byte
from mirrors import mirrors
from netnodes import ENV

from kogitune.client import DaemonClient, open_dataset_id
from kogitune.content_store import ContentStore
from kogitune.corpora import write_kjv_chapters
from kogitune.errors import FetchError
from kogitune.marks import record_verified
from kogitune.protocol.signing import peer_id_from_public_key, sign_dataset
from kogitune.recipe import DatasetRecipe, parse_entry
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

BLOCK = 64
DEAD_BOOTSTRAP = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWGzh9VdU5n2xJ6G3ZN1DXYZ9y4nrnD9eHCtQnBNpQdCPd"
"""A bootstrap peer nobody answers for (the discard port): the DHT is missing."""
TRAIN_SCRIPT = """
import json, sys
import numpy as np
from kogitune.client import embedded_node
from kogitune.trainers import DatasetRecipe
trusted = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
recipe = DatasetRecipe([json.loads(sys.argv[1])], shuffle=False, trusted_publishers=trusted)
dataset = recipe.get_train_dataset(int(sys.argv[2]))
np.save(sys.argv[3], np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))]))
dataset_id = dataset.tensors[0].dataset_id
print(json.dumps({"bytes": embedded_node().source_bytes(dataset_id), "report": embedded_node().report(dataset_id)}))
"""


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    root = tmp_path_factory.mktemp("hybrid")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=60)
    options = StoreOptions(block_size=BLOCK, piece_size=64 << 10, shard_size=128 << 10, workers=1)
    store([corpus], "gpt2", root / "kjv", options, progress=False)
    return DataTensor(root / "kjv")


def expected(tensor: DataTensor) -> np.ndarray:
    dataset = DatasetRecipe([str(tensor.path)], shuffle=False).get_train_dataset(BLOCK)
    return np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))])


def train(tmp_path, entry, bootstrap: str = "", trusted=None, env=None) -> tuple[np.ndarray, dict, float]:
    """A training process with no daemon (its embedded node): (samples, what its sources did, seconds)."""
    out = tmp_path / "seen.npy"
    env = {**ENV, **(env or {}), "KOGITUNE_HOME": str(tmp_path / "trainer"), "KOGITUNE_BOOTSTRAP": bootstrap}
    started = time.monotonic()
    trust = [json.dumps(trusted)] if trusted is not None else []
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, json.dumps(entry), str(BLOCK), str(out), *trust],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return np.load(out), json.loads(result.stdout.splitlines()[-1]), time.monotonic() - started


def test_entry_spellings():
    """A dict with "id" and "mirrors", or a list of one ID and URLs (in any order), is one hybrid dataset."""
    dataset_id = "kg1-" + "a" * 52
    urls = ["https://a.example/x", "https://b.example/x"]
    for entry in (
        {"id": dataset_id, "mirrors": urls, "tokens": "1M"},
        [urls[0], f"{dataset_id}?tokens=1M", urls[1]],
        {"sources": [dataset_id, *urls], "tokens": "1M"},
    ):
        parsed = parse_entry(entry)
        assert (parsed.dataset_id, parsed.mirrors, parsed.tokens) == (dataset_id, tuple(urls), 10**6)
    for bad in ([dataset_id, "kg1-" + "b" * 52], [dataset_id, "./local"], {"mirrors": urls}):
        with pytest.raises(Exception, match="two dataset IDs|mixes|needs 'sources', or 'id'"):
            parse_entry(bad)


def test_mirror_only_with_no_node_anywhere(tensor, tmp_path):
    """No daemon, no node, the bootstrap peer down: the trainer takes the dataset from its mirror without waiting for
    the DHT (LOOKUP_DEADLINE is 30 s); the copy is unsigned, which needs no trusted_publishers."""
    with mirrors(tensor.path, "ok") as urls:
        seen, sources, seconds = train(tmp_path, {"id": tensor.dataset_id, "mirrors": urls}, DEAD_BOOTSTRAP)
    np.testing.assert_array_equal(seen, expected(tensor))
    assert sources["bytes"][urls[0]] == sum(shard.size for shard in tensor.shards)
    assert seconds < 25


def test_a_mirror_copy_must_be_signed_by_a_trusted_publisher(tensor, tmp_path, monkeypatch):
    """With trusted_publishers, a mirror's copy needs the `signature` file of a published directory, by one of
    them; without one the open fails and says why."""
    monkeypatch.delenv("KOGITUNE_BOOTSTRAP", raising=False)
    monkeypatch.setenv("KOGITUNE_HOME", str(tmp_path / "home"))
    signed_dir = copy_tensor(tensor, tmp_path / "signed")
    signature, public_key = sign_dataset(os.urandom(32), tensor.dataset_id)
    (signed_dir / "signature").write_bytes(public_key + signature)
    publisher = peer_id_from_public_key(public_key)
    with mirrors(tensor.path, "ok") as unsigned, mirrors(signed_dir, "ok") as signed:
        with pytest.raises(FetchError, match="with no valid signature file, and trusted_publishers does not name"):
            open_dataset_id(tensor.dataset_id, [publisher], 30, unsigned, ContentStore(tmp_path / "a"))
        opened = open_dataset_id(tensor.dataset_id, [publisher], 30, signed, ContentStore(tmp_path / "b"))
        assert bytes(opened.shard_tokens(0)) == (tensor.path / tensor.shards[0].tokens_path).read_bytes()
    assert (opened.path / "signature").read_bytes() == public_key + signature


def test_peers_only(tensor, nodes, tmp_path):
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    seen, sources, _ = train(tmp_path, {"id": dataset_id}, a.address)
    np.testing.assert_array_equal(seen, expected(tensor))
    from_a = {f"peer {a.peer_id}", f"http://127.0.0.1:{a.data_port()}/{dataset_id}"}  # its libp2p, its data port
    assert set(sources["bytes"]) <= from_a and sum(sources["bytes"].values()) == sum(s.size for s in tensor.shards)


def test_peers_and_a_lying_mirror(tensor, nodes, tmp_path):
    """A peer and a mirror that corrupts every response: the trainer gets exactly the stored tokens, the mirror is
    dropped for a wrong hash, and the peer delivered."""
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    with mirrors(tensor.path, "corrupt") as urls:
        seen, sources, _ = train(tmp_path, [dataset_id, *urls], a.address)
    np.testing.assert_array_equal(seen, expected(tensor))
    assert f"{urls[0]}: dropped, sent shard" in sources["report"] and "wrong hash" in sources["report"]
    assert (
        sources["bytes"][f"peer {a.peer_id}"] + sources["bytes"][f"http://127.0.0.1:{a.data_port()}/{dataset_id}"] > 0
    )


def test_a_lying_peer_beside_an_honest_mirror(tensor, nodes, tmp_path):
    """A peer process that serves wrong tokens (its store copy was changed in every piece, and its verification
    marks forged so that its server sends the changed files as checked) and an honest mirror: the trainer gets
    exactly the stored tokens, and the peer is dropped for a wrong hash. The trainer trusts only the peer's
    signature, so the peer's signed manifest opens the dataset (the mirror's copy, from `kogitune store`, has no
    signature) and the peer is in the pool from the first shard on. The mirror cannot finish alone: it hangs on
    its first tokens response, and with one connection (KOGITUNE_HTTP_CONNECTIONS) it sends no tokens byte until
    the read timeout (3 s: netnodes.ENV) ends that stream, while the fetcher gives the hung run to an idle worker,
    the peer's, within a fraction of a second (the endgame: node/piece_board.py); a mirror that took both pieces
    of this one shard at once left the peer nothing to send, and nothing to be dropped for."""
    a = nodes("a")
    dataset_id = a.cli("publish", str(copy_tensor(tensor, tmp_path / "published"))).stdout.strip()
    held = DataTensor(a.home / "datasets" / dataset_id)
    for shard in held.shards:
        for offset in range(0, shard.size, held.manifest.piece_size):
            flip_byte(held.path / shard.tokens_path, offset)
    record_verified(held.path, held.manifest, held.shards)  # the lie
    one = {"KOGITUNE_HTTP_CONNECTIONS": "1"}  # with two, the mirror's second stream would take the hung run
    with mirrors(tensor.path, "hang-once") as urls:
        seen, sources, _ = train(tmp_path, {"id": dataset_id, "mirrors": urls}, a.address, [a.peer_id], one)
    np.testing.assert_array_equal(seen, expected(tensor))
    assert f"peer {a.peer_id}: dropped, sent shard" in sources["report"] and "wrong hash" in sources["report"]
    assert sources["bytes"][urls[0]] == sum(shard.size for shard in tensor.shards)


def test_a_daemon_serves_on_what_it_fetched_from_a_mirror(tensor, nodes):
    """D fetches a published dataset from a web mirror of the publisher's directory (manifest, shards, signature)
    with no peer to ask; E, which knows only D, then gets it from D."""
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    published = a.home / "datasets" / dataset_id
    a.close()
    d = nodes("d")
    with mirrors(published, "ok") as urls:
        reply = DaemonClient(d.home).call("get", 60, id=dataset_id, mirrors=urls)
    assert urls[0] in reply["sources"]
    assert DataTensor(d.home / "datasets" / dataset_id).verify() == []
    e = nodes("e", [d.address])
    assert f"http://127.0.0.1:{d.data_port()}/{dataset_id}: ok" in e.cli("get", dataset_id).stdout  # D's data port
    assert DataTensor(e.home / "datasets" / dataset_id).verify() == []
    served = DaemonClient(d.home).call("status", 10)["bytes_served"]
    assert served >= sum(shard.size for shard in tensor.shards)


def test_get_with_a_mirror_and_no_peer(tensor, nodes):
    """`kogitune get ID --mirror URL` on a daemon that knows no peer: every shard comes from the mirror, checked
    against the ID. The copy (a `kogitune store` directory: no signature) is kept but not announced or served."""
    d = nodes("d")
    with mirrors(tensor.path, "ok") as urls:
        got = d.cli("get", tensor.dataset_id, "--mirror", urls[0], "--quiet").stdout
    assert f"{urls[0]}: ok" in got, got
    assert DataTensor(d.home / "datasets" / tensor.dataset_id).verify() == []
    assert tensor.dataset_id not in DaemonClient(d.home).call("status", 10)["datasets"]
