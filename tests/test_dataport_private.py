"""A private dataset on the data port, between real node processes on 127.0.0.1: the peer on its allow-list fetches
it over TLS on the publisher's data port (node/tlsdata.py); every other identity, and plain HTTP, get the 404 of a
dataset the node does not hold, on the data port as on libp2p."""

from __future__ import annotations

import test_network_hostile
import trio
from test_dataport import NOT_FOUND, request

from kogitune.layout import IDENTITY_FILE
from kogitune.node.http import HttpClient
from kogitune.node.tlsdata import PeerTls
from kogitune.tensor import DataTensor

tensor = test_network_hostile.tensor  # the fixture: 40 KJV chapters in two shards
TIMEOUT = 20.0


def tls_get(port: int, path: str, server_peer: str, seed: bytes | None) -> tuple[int, bytes]:
    """(status, body) of a GET over TLS to the data port, pinned to `server_peer`, signed with `seed`."""

    async def main():
        with trio.fail_after(TIMEOUT):
            client = HttpClient(TIMEOUT, peer=PeerTls(server_peer, seed))
            async with client.get(f"https://127.0.0.1:{port}{path}") as response:
                return response.status, await response.body.read_all(1 << 20, path)

    return trio.run(main)


def test_a_private_dataset_reaches_its_allowed_peer_over_tls_and_nobody_else(tensor, nodes):
    a = nodes("a")
    b = nodes("b", [a.address])
    private_id = a.cli("publish", str(tensor.path), "--allow", b.peer_id).stdout.strip()
    port = a.data_port()
    got = b.cli("get", private_id, "--quiet").stdout
    # The have answer named the data port, and the fetcher joined it over TLS (which source delivered first depends
    # on timing: the data port joins while libp2p already reads; the requests below check TLS serving itself).
    assert f"https://127.0.0.1:{port}/{private_id}: " in got, got
    assert DataTensor(b.home / "datasets" / private_id).verify() == []

    c = nodes("c", [a.address])
    refused = c.cli("get", private_id, "--quiet", check=False)
    assert refused.returncode != 0 and "this node does not hold" in refused.stderr, refused.stderr
    c_seed = (c.home / IDENTITY_FILE).read_bytes()
    b_seed = (b.home / IDENTITY_FILE).read_bytes()
    shard = tensor.shards[0]
    for path in ("manifest.json", "signature", shard.tokens_path):
        target = f"/{private_id}/{path}"
        assert request(port, target)[::2] == NOT_FOUND, path  # plain HTTP: never
        assert tls_get(port, target, a.peer_id, c_seed) == NOT_FOUND, path  # TLS, not on the list
        assert tls_get(port, target, a.peer_id, None) == NOT_FOUND, path  # TLS, no identity
        assert tls_get(port, target, a.peer_id, b_seed)[0] == 200, path  # TLS, on the list
