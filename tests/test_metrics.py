"""The metrics port of a node (`node start --metrics`, node/status_page.py), over real HTTP on 127.0.0.1: the
Prometheus exposition counts what a publish and a get between two node processes moved, the status page lists
the dataset, and a slow, oversized or crowding client is cut within the limits."""

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kogitune.corpora import write_kjv_chapters
from kogitune.node.status_page import StatusLimits
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

LIMITS = StatusLimits()


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    root = tmp_path_factory.mktemp("published")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=120)
    options = StoreOptions(block_size=64, piece_size=64 << 10, shard_size=128 << 10, workers=1)
    store([corpus], "gpt2", root / "kjv", options, progress=False)
    return DataTensor(root / "kjv")


def metrics_url(node) -> str:
    """The metrics port's URL, from `kogitune node status` (the node was started with port 0: any free one)."""
    line = next(x for x in node.cli("node", "status").stdout.splitlines() if x.startswith("metrics"))
    return line.split()[-1]


def scrape(url: str) -> dict:
    """(sample name, frozen labels) -> value, from /metrics parsed as Prometheus text."""
    with urllib.request.urlopen(url + "metrics", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=LIMITS.request_timeout + 5)


def test_publish_and_get_show_in_the_metrics_and_on_the_status_page(tensor, nodes):
    a = nodes("a", flags=["--metrics", "127.0.0.1:0"])
    b = nodes("b", [a.address], flags=["--metrics", "0"])
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    b.cli("get", dataset_id, "--quiet")
    size = sum(s.size for s in tensor.shards)
    pieces = sum(tensor.manifest.pieces_in(s) for s in tensor.shards)

    served = scrape(metrics_url(a))
    dataset = frozenset({("dataset", dataset_id)})
    sent = sum(served.get(("kogitune_served_bytes_total", dataset | {("transport", t)}), 0) for t in ("libp2p", "http"))
    assert sent >= size  # the tokens, and the .pieces and .docs files, over libp2p and the data port
    assert served["kogitune_datasets_held", frozenset()] == 1
    assert served["kogitune_store_bytes", frozenset()] == size
    assert served["kogitune_connected_peers", frozenset()] >= 1

    fetched = scrape(metrics_url(b))
    from_a = [f"peer {a.peer_id}", f"http://127.0.0.1:{a.data_port()}/{dataset_id}"]  # its libp2p, its data port
    assert sum(fetched.get(("kogitune_fetched_bytes_total", dataset | {("source", s)}), 0) for s in from_a) == size
    assert fetched["kogitune_pieces_verified_total", dataset] == pieces
    assert fetched["kogitune_pieces_rejected_total", dataset] == 0
    found = ("kogitune_dht_lookup_seconds_count", frozenset({("outcome", "found")}))
    deadline = (
        time.monotonic() + 30
    )  # the lookup for more providers starts 1 s after the open (LOOKUP_DEFERRED_SECONDS)
    while found not in fetched and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the metrics for the lookup, within the deadline
        fetched = scrape(metrics_url(b))
    assert fetched[found] >= 1
    assert fetched["kogitune_shard_fetch_seconds_count", frozenset({("outcome", "ok")})] == len(tensor.shards)
    assert fetched["kogitune_store_bytes", frozenset()] == size

    with urllib.request.urlopen(metrics_url(b), timeout=10) as response:
        page = response.read().decode()
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert dataset_id in page and a.peer_id in page and "<script" not in page
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(metrics_url(b) + "nothing", timeout=10)


def test_a_slow_oversized_or_crowding_client_is_cut_within_the_limits(nodes):
    url = metrics_url(nodes("a", flags=["--metrics", "127.0.0.1:0"]))

    slow = connect(url)
    slow.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
    started = time.monotonic()
    assert slow.recv(100) == b""
    assert time.monotonic() - started < LIMITS.request_timeout + 2

    oversized = connect(url)
    oversized.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * LIMITS.max_request_bytes + b"\r\n\r\n")
    assert oversized.makefile("rb").readline().startswith(b"HTTP/1.1 431")
    hang_up(oversized)

    idle = [connect(url) for _ in range(LIMITS.connections_per_ip)]
    for held in idle:
        held.sendall(b"G")  # each holds a slot, waiting for the rest of its request
    crowding = connect(url)
    started = time.monotonic()
    assert crowding.recv(100) == b""  # closed at accept: this IP holds its share
    assert time.monotonic() - started < 1
    for held in idle:
        hang_up(held)
    assert scrape(url)["kogitune_connected_peers", frozenset()] == 0  # the slots came back: a scrape is served


def hang_up(client: socket.socket) -> None:
    """Close our side and wait for the server to close its own, which it does once it gave the slot back."""
    client.shutdown(socket.SHUT_WR)
    while client.recv(4096):
        pass
    client.close()


WAIT_SCRIPT = """
import sys
from kogitune.recipe import DatasetRecipe
dataset = DatasetRecipe([sys.argv[1]], shuffle=False).get_train_dataset(64)
dataset[0]
"""


def test_a_training_process_waiting_for_a_shard_prints_its_progress_from_rank_0_only(tensor, tmp_path, monkeypatch):
    """A mirror whose shards hang: the training process prints a progress line while it waits (every
    progress_interval), then fails after the stall timeout. Another rank than 0 prints none."""
    from mirrors import mirrors
    from netnodes import ENV

    from kogitune.progress import reports_progress

    env = {**ENV, "KOGITUNE_HOME": str(tmp_path / "trainer"), "KOGITUNE_PROGRESS_INTERVAL": "0.2"}
    env |= {"KOGITUNE_STALL_TIMEOUT": "1", "KOGITUNE_READ_TIMEOUT": "0.5"}
    with mirrors(tensor.path, "hang") as (url,):
        trainer = subprocess.run(
            [sys.executable, "-c", WAIT_SCRIPT, url], env=env, capture_output=True, text=True, timeout=60
        )
    assert trainer.returncode and "FetchError" in trainer.stderr
    assert f"kogitune: waiting for shard 0 of {tensor.dataset_id[:16]}... (" in trainer.stderr
    assert "MB of the dataset verified" in trainer.stderr
    monkeypatch.setenv("RANK", "1")
    assert not reports_progress()
    monkeypatch.setenv("RANK", "0")
    assert reports_progress()
