"""The network, as separate OS processes on 127.0.0.1: publish, replicate, train by dataset ID through
failures, restart, private datasets."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from netnodes import ENV, KOGITUNE, NodeProcess

from kogitune.corpora import write_kjv_chapters
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

BLOCK = 64
TRAIN_SCRIPT = """
import sys
import numpy as np
from kogitune.recipe import DatasetRecipe
dataset = DatasetRecipe([sys.argv[1]], shuffle=False).get_train_dataset(int(sys.argv[2]))
np.save(sys.argv[3], np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))]))
"""


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    root = tmp_path_factory.mktemp("published")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=120)
    store(
        [corpus],
        "gpt2",
        root / "kjv",
        StoreOptions(block_size=BLOCK, piece_size=64 << 10, shard_size=128 << 10, workers=1),
        progress=False,
    )
    return DataTensor(root / "kjv")


def train_by_id(tmp_path: Path, dataset_id: str, bootstrap: str) -> np.ndarray:
    """A training process with no daemon: an embedded client-mode node resolves the ID and fetches."""
    out = tmp_path / "seen.npy"
    env = {**ENV, "KOGITUNE_HOME": str(tmp_path / "trainer"), "KOGITUNE_BOOTSTRAP": bootstrap}
    subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, dataset_id, str(BLOCK), str(out)], check=True, env=env, timeout=180
    )
    return np.load(out)


def local_samples(tensor: DataTensor) -> np.ndarray:
    from kogitune.recipe import DatasetRecipe

    dataset = DatasetRecipe([str(tensor.path)], shuffle=False).get_train_dataset(BLOCK)
    return np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))])


def test_publish_replicate_and_train_through_dead_lying_and_hung_providers(tensor, nodes, tmp_path):
    """A publishes; B, C, E replicate with `get`; B's copy is then corrupted on disk, C is frozen (SIGSTOP),
    E is killed (SIGKILL). A trainer naming only the dataset ID still gets every sample, byte-identical."""
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    assert dataset_id == tensor.dataset_id
    replicas = [nodes(name, [a.address]) for name in ("b", "c", "e")]
    for replica in replicas:
        replica.cli("get", dataset_id)
        copy = DataTensor(replica.home / "datasets" / dataset_id)
        assert copy.verify() == []
    status = replicas[0].cli("status", dataset_id).stdout
    assert f"{a.peer_id}  {len(tensor.shards)}/{len(tensor.shards)} shards" in status

    b, c, e = replicas
    shard_file = b.home / "datasets" / dataset_id / tensor.shards[0].tokens_path
    data = bytearray(shard_file.read_bytes())
    data[100] ^= 0xFF
    shard_file.write_bytes(bytes(data))
    c.signal(signal.SIGSTOP)
    e.signal(signal.SIGKILL)

    seen = train_by_id(tmp_path, dataset_id, a.address)
    np.testing.assert_array_equal(seen, local_samples(tensor))


def test_restart_keeps_identity_and_store_and_announces_again(tensor, nodes, tmp_path):
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    first_id = a.peer_id
    a.cli("node", "stop")
    assert a.proc.wait(timeout=30) == 0
    restarted = nodes("a")
    assert restarted.peer_id == first_id
    assert (restarted.home / "identity.key").stat().st_mode & 0o777 == 0o600
    b = nodes("b", [restarted.address])
    assert "sources: " in b.cli("get", dataset_id).stdout
    assert DataTensor(b.home / "datasets" / dataset_id).verify() == []
    assert "(already complete here; nothing fetched)" in b.cli("get", dataset_id).stdout


def test_private_dataset_is_served_only_to_its_allow_list_also_by_replicas(tensor, nodes):
    """`publish --allow` publishes the tensor's private dataset, under its own ID; B, allowed, replicates it and
    announces its copy; C is refused by both, with the answer of a node that does not hold it."""
    a = nodes("a")
    b = nodes("b", [a.address])
    c = nodes("c", [a.address])
    dataset_id = a.cli("publish", str(tensor.path), "--allow", b.peer_id).stdout.strip()
    assert dataset_id != tensor.dataset_id
    b.cli("get", dataset_id)
    assert DataTensor(b.home / "datasets" / dataset_id).verify() == []
    assert (b.home / "datasets" / dataset_id / "allow").read_text() == f"{b.peer_id}\n"
    info = subprocess.run(
        [KOGITUNE, "info", str(b.home / "datasets" / dataset_id)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=True,
    ).stdout
    assert f"dataset id  {dataset_id}" in info and f"access      private, published by {a.peer_id}" in info
    refused = c.cli("get", dataset_id, check=False)
    assert refused.returncode != 0
    for peer in (a.peer_id, b.peer_id):
        assert f"{peer}: not_found: this node does not hold {dataset_id}" in refused.stderr


def test_an_allow_list_on_a_public_dataset_restricts_nobody(tensor, nodes):
    """A public dataset's ID carries no restriction: H, a replica, writes an allow-list into its copy with its own
    signature of it; H still serves the dataset to anyone, and B, which fetches from H alone, keeps no list."""
    from kogitune.node.host import load_identity_seed
    from kogitune.protocol.signing import sign_allow_list

    a = nodes("a")
    h = nodes("h", [a.address])
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    h.cli("get", dataset_id)
    a.close()
    copy = h.home / "datasets" / dataset_id
    (copy / "allow").write_text(f"{h.peer_id}\n")
    (copy / "allow.signature").write_bytes(sign_allow_list(load_identity_seed(h.home), dataset_id, [h.peer_id]))
    b = nodes("b", [h.address])
    b.cli("get", dataset_id)
    assert not (b.home / "datasets" / dataset_id / "allow").exists()
    assert DataTensor(b.home / "datasets" / dataset_id).verify() == []


def test_only_the_publisher_republishes_a_private_dataset(tensor, nodes):
    """B cannot publish its replica of A's private dataset (as public or as its own); publishing the public tensor
    is another ID and leaves the private replica private. A publishes the same tensor publicly too (two IDs, the
    same shard files) and republishes the private one with a new list under the same ID."""
    a = nodes("a")
    b = nodes("b", [a.address])
    dataset_id = a.cli("publish", str(tensor.path), "--allow", b.peer_id).stdout.strip()
    b.cli("get", dataset_id)
    replica = b.home / "datasets" / dataset_id
    for args in ([], ["--allow", b.peer_id]):
        refused = b.cli("publish", str(replica), *args, check=False)
        assert refused.returncode == 2 and f"is a private dataset of {a.peer_id}: only that node" in refused.stderr
    assert b.cli("publish", str(tensor.path)).stdout.strip() == tensor.dataset_id
    assert (replica / "allow").read_text() == f"{b.peer_id}\n"
    assert a.cli("publish", str(tensor.path)).stdout.strip() == tensor.dataset_id
    shard = tensor.shards[0].tokens_path
    public, private = (a.home / "datasets" / i / shard for i in (tensor.dataset_id, dataset_id))
    assert public.stat().st_ino == private.stat().st_ino == (tensor.path / shard).stat().st_ino
    assert a.cli("publish", str(tensor.path), "--allow", b.peer_id, "--allow", a.peer_id).stdout.strip() == dataset_id
    assert (a.home / "datasets" / dataset_id / "allow").read_text() == "".join(
        f"{p}\n" for p in sorted([a.peer_id, b.peer_id])
    )


def test_publish_refuses_an_allow_entry_that_is_not_a_peer_id(tensor, nodes):
    a = nodes("a")
    for typo in ["alice@example.org", "12D3KooWtypo", a.peer_id[:-1]]:
        refused = a.cli("publish", str(tensor.path), "--allow", typo, check=False)
        assert refused.returncode != 0
        assert f"{typo!r} is not a peer ID" in refused.stderr


def test_a_dataset_fetched_by_id_trains_offline_later(tensor, nodes, tmp_path):
    """Once a training process has fetched every shard, the next one (same home) opens the ID from the local
    store, its manifest checked against the ID and the signature, without any peer: here the only node is gone."""
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    first = train_by_id(tmp_path, dataset_id, a.address)
    a.close()
    np.testing.assert_array_equal(train_by_id(tmp_path, dataset_id, a.address), first)
    np.testing.assert_array_equal(first, local_samples(tensor))


def routing_table_until(node: NodeProcess, done, seconds: float = 20.0) -> set[str]:
    """A's DHT routing table, asked again (bounded) until `done(table)` holds; the last answer either way."""
    from kogitune.client import DaemonClient

    deadline = time.monotonic() + seconds
    while True:
        table = set(DaemonClient(node.home).call("status")["dht_peers"])
        if done(table) or time.monotonic() > deadline:
            return table
        time.sleep(0.05)


def test_trainers_do_not_stay_in_the_routing_tables(tensor, nodes, tmp_path):
    """A trainer's embedded node is a DHT client that exits when training ends; servers must not keep it in their
    routing tables (py-libp2p 0.8.1 adds every peer that queries), while server nodes stay in them."""
    from kogitune.node.host import load_identity_seed
    from kogitune.protocol.signing import peer_id_from_public_key, public_key_from_seed

    a = nodes("a")
    b = nodes("b", [a.address])
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    assert b.peer_id in routing_table_until(a, lambda table: b.peer_id in table)
    np.testing.assert_array_equal(train_by_id(tmp_path, dataset_id, a.address), local_samples(tensor))
    trainer = peer_id_from_public_key(public_key_from_seed(load_identity_seed(tmp_path / "trainer")))
    assert trainer not in routing_table_until(a, lambda table: trainer not in table)
    assert b.peer_id in routing_table_until(a, lambda table: True)


def test_status_on_the_publisher_lists_itself(tensor, nodes):
    """A node with nobody to ask answers at once (the lookup waited its whole 30 s deadline for other providers)."""
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    count = len(tensor.shards)
    started = time.monotonic()
    assert f"{a.peer_id}  {count}/{count} shards  (this node)" in a.cli("status", dataset_id).stdout
    assert time.monotonic() - started < 10


def start_node(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [KOGITUNE, "node", "start", "--home", str(home), *args], capture_output=True, text=True, timeout=60, env=ENV
    )


def test_a_second_node_on_a_home_or_a_port_is_refused_and_the_first_keeps_running(nodes, tmp_path):
    """Two nodes on one home would share an identity and the control socket; two on one port (libp2p binds with
    SO_REUSEPORT) would share its connections. Both are refused, in the foreground and with --detach."""
    a = nodes("a")
    port = a.address.split("/tcp/")[1].split("/")[0]
    for detach in ([], ["--detach"]):
        same_home = start_node(a.home, "--listen", "/ip4/127.0.0.1/tcp/0", *detach)
        assert same_home.returncode == 2 and f"a node is already running for {a.home}" in same_home.stderr
        same_port = start_node(tmp_path / "b", "--listen", f"/ip4/127.0.0.1/tcp/{port}", *detach)
        assert same_port.returncode == 2 and f"port {port} is already in use" in same_port.stderr
    assert a.cli("node", "status").stdout.startswith(f"peer id     {a.peer_id}")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--listen", "127.0.0.1:4011"], "is not a TCP multiaddr"),
        (["--listen", "/ip4/127.0.0.1/tcp/99999"], "is not a TCP multiaddr"),
        (["--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", "garbage"], "is not a multiaddr ending in /p2p/"),
        (["--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", "/ip4/127.0.0.1/tcp/4011"], "ending in /p2p/"),
    ],
)
def test_bad_node_addresses_are_refused_before_the_node_starts(tmp_path, args, message):
    refused = start_node(tmp_path / "n", *args)
    assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr


def test_a_trust_list_accepts_only_its_publishers(tensor, nodes):
    """Opening a dataset with a trust list that does not name its publisher fails, naming who signed it."""
    from kogitune.client import DaemonClient
    from kogitune.errors import KogituneError

    a = nodes("a")
    b = nodes("b", [a.address])
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    with pytest.raises(KogituneError, match=f"signed by {a.peer_id}, who is not trusted"):
        DaemonClient(b.home).call("open", id=dataset_id, trusted=[b.peer_id])
    reply = DaemonClient(b.home).call("open", id=dataset_id, trusted=[a.peer_id])
    assert reply["publisher"] == a.peer_id
