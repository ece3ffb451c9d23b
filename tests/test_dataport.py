"""The data port (node/dataport.py): every node is also a web seed for its public datasets, over plain HTTP/1.1 on
127.0.0.1 between real node processes. The layout is a web mirror's, ranges work, a private dataset and every odd
path are the same 404, a `get` by ID reads from the peers' data ports (and a node without one, and a web mirror,
in the same swarm), a peer whose data port serves wrong bytes is banned on both its transports while the dataset
completes, and the per-IP cap and the head deadline hold while an honest fetch goes on."""

from __future__ import annotations

import http.client
import re

import pytest
from netnodes import ENV

from kogitune.corpora import write_kjv_chapters
from kogitune.layout import read_signature
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

TIMEOUT = 20.0
PORT_LINE = re.compile(r"^data port\s+(\d+)", re.M)
LIMITED = {**ENV, "KOGITUNE_SERVER_STREAMS_PER_IP": "6", "KOGITUNE_SERVER_REQUEST_TIMEOUT": "1"}
"""A node whose data port holds at most 6 connections from one IP and waits 1 s for a request head."""


@pytest.fixture(scope="module")
def tensor(tmp_path_factory) -> DataTensor:
    root = tmp_path_factory.mktemp("published")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=200)
    options = StoreOptions(block_size=64, piece_size=64 << 10, shard_size=256 << 10, workers=1)
    store([corpus], "gpt2", root / "kjv", options, progress=False)
    return DataTensor(root / "kjv")


def data_port(node) -> int:
    """The node's data port, from `kogitune node status`."""
    return int(PORT_LINE.search(node.cli("node", "status").stdout).group(1))


def request(port: int, path: str, method: str = "GET", headers: dict | None = None):
    """(status, headers, body) of one request to 127.0.0.1:port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def test_the_layout_and_ranges_of_a_web_mirror(tensor, nodes):
    a = nodes("a")
    dataset_id = a.cli("publish", str(tensor.path)).stdout.strip()
    port = data_port(a)
    status, _, body = request(port, f"/{dataset_id}/manifest.json")
    assert (status, body) == (200, (tensor.path / "manifest.json").read_bytes())
    status, _, body = request(port, f"/{dataset_id}/signature")
    public_key, signature = read_signature(a.home / "datasets" / dataset_id)
    assert (status, body) == (200, public_key + signature)
    shard = tensor.shards[1]
    data = (tensor.path / shard.tokens_path).read_bytes()
    for path in (shard.pieces_path, shard.docs_path, shard.tokens_path):
        status, headers, body = request(port, f"/{dataset_id}/{path}")
        assert (status, body) == (200, (tensor.path / path).read_bytes())
        assert headers["Accept-Ranges"] == "bytes"
    status, headers, body = request(port, f"/{dataset_id}/{shard.tokens_path}", headers={"Range": "bytes=1000-"})
    assert (status, body, headers["Content-Range"]) == (206, data[1000:], f"bytes 1000-{len(data) - 1}/{len(data)}")
    status, headers, body = request(port, f"/{dataset_id}/{shard.tokens_path}", headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    status, headers, body = request(port, f"/{dataset_id}/{shard.tokens_path}", "HEAD", {"Range": "bytes=5-"})
    assert (status, body, headers["Content-Length"]) == (206, b"", str(len(data) - 5))
    status, headers, _ = request(port, f"/{dataset_id}/{shard.tokens_path}", headers={"Range": f"bytes={len(data)}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(data)}")

    # keep-alive: several requests on one connection
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    for start in (0, 100, 200):
        connection.request("GET", f"/{dataset_id}/{shard.tokens_path}", headers={"Range": f"bytes={start}-{start + 9}"})
        assert connection.getresponse().read() == data[start : start + 10]
    connection.close()

    # the fetcher's mirror code reads the node's port as a mirror base URL
    b = nodes("b", flags=["--data-listen", "off"])
    b.cli("get", "--mirror", f"http://127.0.0.1:{port}/{dataset_id}", dataset_id, "--quiet")
    assert DataTensor(b.home / "datasets" / dataset_id).verify() == []
    assert "data port" not in b.cli("node", "status").stdout  # --data-listen off
