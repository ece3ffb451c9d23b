"""A peer's data port as a source: the HTTP side of a peer that serves a dataset (node/dataport.py).

A provider's have answer may name a data port (wire.HaveResponse.data_port). The fetcher then reads the dataset
from `http://<the IP it reaches the peer on>:<that port>/<dataset ID>`, a web-mirror base URL, with the same
HttpSource and the same checks as a mirror. The host is never one the peer names (the IP is the remote address of
the libp2p stream that carried the answer) and redirects are not followed, so an announcement cannot send a
fetcher anywhere but to that peer's address. The source is tied to the peer's identity: a wrong piece from it bans
the peer's libp2p source too, and the other way round (SourcePool.ban); it is `preferred` (HTTP is faster than
Noise + Yamux): once it has delivered verified bytes, the libp2p source stands by while it works
(SourcePool.usable); before that, it waits for it at most DATA_PORT_PATIENCE_SECONDS from its joining
(SourcePool.standing_by), so a data port that a firewall hides costs that once.
"""

from __future__ import annotations

import logging

from kogitune.errors import SourceError
from kogitune.protocol import wire

from .peers import PeerSource, fetch_data_port
from .pool import SourcePool
from .sources import HttpSource
from .tlsdata import PeerTls

log = logging.getLogger(__name__)


class PeerHttpSource(HttpSource):
    """The data port of one peer, for one dataset; with `seed` (this node's identity, for a private dataset) over
    TLS to that very peer, each request signed (node/tlsdata.py)."""

    preferred = True

    def __init__(
        self, peer_id, ip: str, port: int, dataset_id: str, read_timeout: float, seed: bytes | None = None
    ) -> None:
        host = f"[{ip}]" if ":" in ip else ip
        scheme, peer = ("http", None) if seed is None else ("https", PeerTls(str(peer_id), seed))
        super().__init__(f"{scheme}://{host}:{port}/{dataset_id}", read_timeout, redirects=0, peer=peer)
        self.identity = str(peer_id)
        self.libp2p_source: PeerSource | None = None
        """The peer's libp2p source in the pool: the data port holds what its have-map says (node/havemaps.py)."""

    def holds(self, index: int) -> bool:
        return self.libp2p_source is None or self.libp2p_source.holds(index)

    def lacks(self, index: int) -> None:
        if self.libp2p_source is not None:
            self.libp2p_source.lacks(index)


async def join_data_port(
    pool: SourcePool, host, peer_id, dataset_id: str, read_timeout: float, seed: bytes | None = None
) -> None:
    """Ask `peer_id` for its data port for the dataset; if it names one, add it to `pool` (over TLS with `seed`, for
    a private dataset): `add_data_port`. Never raises: the peer's libp2p source serves the dataset whatever happens
    here."""
    try:
        found, shards = await fetch_data_port(host, peer_id, dataset_id, read_timeout)
    except SourceError as exc:
        log.debug("no data port from %s: %s", peer_id, exc)
        return
    add_data_port(pool, peer_id, found, shards, dataset_id, read_timeout, seed)


def add_data_port(
    pool: SourcePool,
    peer_id,
    found: tuple[str, int] | None,
    shards: bytes,
    dataset_id: str,
    read_timeout: float,
    seed: bytes | None = None,
) -> None:
    """A peer's have answer (`peers.fetch_data_port`: its data port `found`, or None, and its have-map) applied to
    `pool`: the have-map becomes the peer's libp2p source's when that has none yet (so the first shard fetch need
    not ask again: havemaps.refresh_for), and the data port joins."""
    libp2p_source = next(
        (h.source for h in pool.health if isinstance(h.source, PeerSource) and h.source.identity == str(peer_id)),
        None,
    )
    if libp2p_source is not None and libp2p_source.have is None:  # the same answer's have-map (node/havemaps.py)
        try:
            libp2p_source.have = wire.have_shards(shards, len(libp2p_source.manifest.shards))
        except wire.WireError as exc:
            log.debug("bad have-map from %s: %s", peer_id, exc)
    if found is not None:
        source = PeerHttpSource(peer_id, *found, dataset_id, read_timeout, seed)
        source.libp2p_source = libp2p_source
        source.job_peer = libp2p_source is not None and libp2p_source.job_peer
        pool.add(source)
