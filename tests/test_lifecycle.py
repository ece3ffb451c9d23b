"""The life of a dataset in a node's store: `ls`, `info`/`verify`/`head` by ID (held or remote), `status`, `rm`,
and the node commands around them (`node peers`, `node stop`, reconnecting a bootstrap peer, `--version`). Real node
processes on 127.0.0.1 (tests/netnodes.py) where a node is involved."""

import json
import shutil
import socket
import subprocess
import time
from importlib.metadata import version

import pytest
from netnodes import ENV, KOGITUNE, NodeProcess

from kogitune.cli import EXIT_ERROR, EXIT_OK, main
from kogitune.client import DaemonClient
from kogitune.content_store import ContentStore
from kogitune.corpora import write_kjv_chapters
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

RECONNECT_SECONDS = 10.0
"""A bootstrap peer that comes back must be connected again within this (RECONNECT_BACKOFF_MAX is 4 s)."""


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    root = tmp_path_factory.mktemp("lifecycle")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=30)
    options = StoreOptions(block_size=64, piece_size=64 << 10, shard_size=32 << 10, workers=1)
    return DataTensor(store([corpus], "gpt2", root / "kjv", options, progress=False).path)


def held_in(home, tensor: DataTensor):
    """A copy of `tensor` in the content store of `home`, as a fetch leaves it (without a signature)."""
    directory = ContentStore(home).dataset_dir(tensor.dataset_id)
    shutil.copytree(tensor.path, directory)
    return directory


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_ls_and_rm_without_a_node_refuse_while_a_reader_maps_the_data(tensor, tmp_path, capsys):
    home = tmp_path / "home"
    directory = held_in(home, tensor)
    status, out, _ = run(capsys, "ls", "--home", str(home))
    header, line = out.splitlines()
    assert status == EXIT_OK and header.split() == [
        "ID",
        "TOKENIZER",
        "DOCUMENTS",
        "TOKENS",
        "SIZE",
        "COMPLETE",
        "ACCESS",
    ]
    assert line.split()[:2] == [tensor.dataset_id, "gpt2-f04f"] and line.split()[-2:] == ["yes", "public"]
    (directory / tensor.shards[-1].tokens_path).unlink()
    _, out, _ = run(capsys, "ls", "--json", "--home", str(home))
    [entry] = json.loads(out)
    assert entry["dataset_id"] == tensor.dataset_id and entry["tokens"] == tensor.manifest.tokens
    assert entry["documents"] == tensor.manifest.documents and entry["complete"] is False
    assert entry["shards_held"] == len(tensor.shards) - 1 and entry["announced"] is None

    reader = DataTensor(directory, store=ContentStore(home))
    reader.shard_tokens(0)  # a memory map: it holds a shared lock on the tokens file
    status, _, err = run(capsys, "rm", tensor.dataset_id, "--home", str(home))
    assert status == EXIT_ERROR and "is in use" in err and "--force" in err and directory.is_dir()
    del reader
    status, out, _ = run(capsys, "rm", tensor.dataset_id, "--home", str(home))
    assert status == EXIT_OK and not directory.exists()
    assert [p.name for p in (home / "datasets").iterdir()] == []  # nothing half-removed left behind
    assert run(capsys, "ls", "--home", str(home))[1].startswith("no datasets in")


def test_rm_force_removes_a_dataset_in_use(tensor, tmp_path, capsys):
    home = tmp_path / "home"
    directory = held_in(home, tensor)
    reader = DataTensor(directory, store=ContentStore(home))
    reader.shard_tokens(0)
    assert run(capsys, "rm", tensor.dataset_id, "--force", "--home", str(home))[0] == EXIT_OK
    assert not directory.exists() and int(reader.shard_tokens(0)[0]) >= 0  # the map still reads the old pages


def test_info_verify_head_take_a_dataset_id_held_in_the_store(tensor, tmp_path, capsys):
    home = tmp_path / "home"
    held_in(home, tensor)
    status, out, _ = run(capsys, "info", tensor.dataset_id, "--home", str(home))
    assert status == EXIT_OK and f"dataset id  {tensor.dataset_id}" in out and f"{tensor.manifest.tokens:,}" in out
    status, out, _ = run(capsys, "verify", tensor.dataset_id, "--home", str(home))
    assert status == EXIT_OK and out.startswith("OK ")
    status, out, _ = run(capsys, "head", tensor.dataset_id, "-n", "1", "--home", str(home))
    assert status == EXIT_OK and out.startswith("--- block 0 ---\nGenesis 1")
    missing = "kg1-" + "a" * 52
    for command in ("verify", "head"):
        status, _, err = run(capsys, command, missing, "--home", str(home))
        assert status == EXIT_ERROR and f"kogitune get {missing}" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"kogitune {version('kogitune')}"


def test_a_remote_dataset_from_info_to_rm(tensor, nodes, tmp_path):
    """B looks at A's dataset (info, status: nothing written into B's store, B not listed as a provider), fetches
    it, lists it as announced, reads it by ID, removes it; `node peers` and `node stop` say what happened."""
    a = nodes("a")
    assert a.cli("node", "peers").stdout == "0 peers\n"
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    b = nodes("b", [a.address])
    assert b.cli("node", "peers").stdout.splitlines() == ["1 peer", a.peer_id]

    info = b.cli("info", dataset_id).stdout
    assert f"publisher   {a.peer_id}" in info and f"tokens      {tensor.manifest.tokens:,}" in info
    assert "no shard fetched" in info
    shards = len(tensor.shards)
    for _ in range(2):  # the second time, nothing of the first may make B list itself
        status = b.cli("status", dataset_id).stdout
        assert f"{a.peer_id}  {shards}/{shards} shards" in status and b.peer_id not in status
    assert not (b.home / "datasets" / dataset_id).exists()
    no_node = subprocess.run(  # no node runs for this home: a client node in the command's process looks
        [KOGITUNE, "info", dataset_id, "--home", str(tmp_path / "c")],
        env={**ENV, "KOGITUNE_BOOTSTRAP": a.address},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"publisher   {a.peer_id}" in no_node.stdout, no_node.stderr
    assert not (tmp_path / "c" / "datasets").exists()
    refused = b.cli("verify", dataset_id, check=False)
    assert refused.returncode == EXIT_ERROR and f"kogitune get {dataset_id}" in refused.stderr

    b.cli("get", dataset_id, "-q")
    listed = b.cli("ls").stdout.splitlines()
    assert listed[0].split()[-1] == "ANNOUNCED" and listed[1].split()[-3:] == ["yes", "public", "yes"]
    assert b.cli("verify", dataset_id).stdout.startswith("OK ")
    assert b.cli("head", dataset_id, "-n", "1").stdout.startswith("--- block 0 ---")

    private_id = a.cli("publish", str(tensor.path), "--allow", b.peer_id).stdout.strip()
    rows = {line.split()[0]: line.split()[-2:] for line in a.cli("ls").stdout.splitlines()[1:]}
    assert rows == {dataset_id: ["public", "yes"], private_id: ["private", "yes"]}

    reader = DataTensor(b.home / "datasets" / dataset_id, store=ContentStore(b.home))
    reader.shard_tokens(0)  # a trainer's map of a shard: the node refuses to remove the dataset under it
    refused = b.cli("rm", dataset_id, check=False)
    assert refused.returncode == EXIT_ERROR and f"{dataset_id} is in use" in refused.stderr
    del reader
    b.cli("rm", dataset_id)
    assert not (b.home / "datasets" / dataset_id).exists()
    assert DaemonClient(b.home).call("status")["datasets"] == []
    assert b.cli("ls").stdout.startswith("no datasets in")
    assert b.cli("node", "stop").stdout.startswith("stopped the node")
    assert b.proc.wait(timeout=5) == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_bootstrap_peer_that_comes_back_is_reconnected_within_seconds(nodes, tmp_path):
    port = free_port()
    a = NodeProcess(tmp_path / "a", listen=f"/ip4/127.0.0.1/tcp/{port}")
    try:
        b = nodes("b", [a.address])
        assert DaemonClient(b.home).call("status")["connected_peers"] == [a.peer_id]
        a.cli("node", "stop")
        a.proc.wait(timeout=10)
        a.close()
        a = NodeProcess(tmp_path / "a", listen=f"/ip4/127.0.0.1/tcp/{port}")
        deadline = time.monotonic() + RECONNECT_SECONDS
        while a.peer_id not in DaemonClient(b.home).call("status")["connected_peers"]:
            assert time.monotonic() < deadline, f"B did not reconnect to A within {RECONNECT_SECONDS:.0f} s"
            time.sleep(0.2)  # polling a bounded wait, not synchronisation
    finally:
        a.close()
