"""The libp2p host: TCP + Noise + Yamux only, with a persistent Ed25519 identity.

py-libp2p's default `new_host()` also accepts plaintext and secio; Kogitune passes Noise as the only security
transport, so a plaintext dialer is refused at negotiation. The identity is a 32-byte Ed25519 seed in
`<home>/identity.key` (mode 0600), so the peer ID survives restarts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

IDENTITY_FILE = "identity.key"


def load_identity_seed(home: Path) -> bytes:
    """The node's Ed25519 seed, created (owner-only, atomically) on first use."""
    path = Path(home) / IDENTITY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{IDENTITY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    seed = path.read_bytes()
    if len(seed) != 32:
        from .errors import NodeError

        raise NodeError(f"{path} is not a Kogitune identity (32 bytes); move it away to create a new one")
    return seed


_WRITE_DEADLINE = 30.0
_patched = False


def _work_around_libp2p_0_8_1() -> None:
    """Three py-libp2p 0.8.1 traps, measured by scripts/bench_network.py and bench_dht.py (docs/benchmarks.md):

    - Noise encrypts (uses up a nonce) before it sends, so a write cancelled by a cancel scope leaves the peer one
      nonce behind: it fails the next frame and drops the connection with every stream on it. Kogitune cancels
      work on purpose (fail_after on reads, a lookup cut short), so writes finish shielded, under their own deadline.
    - Each dial waits 250 ms (happy eyeballs) for a second address that a TCP-only host never has.
    - The DHT adds every peer that sends it a query to its routing table, skipping the server-mode check, so
      trainers' client-mode nodes, which exit when training ends, fill the tables with dead peers. Here a querying
      peer is added only if identify does not show it to be a client (`keep_dht_clients_out` drops those that
      were added before identify finished, when they disconnect).
    """
    global _patched
    if _patched:
        return
    import trio
    import libp2p.network.swarm as swarm
    from libp2p.kad_dht.kad_dht import KadDHT
    from libp2p.security.secure_session import SecureSession

    swarm._HAPPY_EYEBALLS_DELAY = 0.0
    add_peer = KadDHT.add_peer

    async def add_server_peer(self, peer_id, *, skip_server_mode_check: bool = False) -> bool:
        return await add_peer(self, peer_id, skip_server_mode_check=False)

    KadDHT.add_peer = add_server_peer
    write = SecureSession.write

    async def shielded_write(self, data: bytes) -> None:
        with trio.CancelScope(shield=True):
            with trio.fail_after(_WRITE_DEADLINE):
                await write(self, data)

    SecureSession.write = shielded_write
    _patched = True


def is_dht_client(host, peer_id) -> bool:
    """Whether identify has shown `peer_id` to be a DHT client (protocols known, the Kademlia protocol not among
    them)."""
    from libp2p.kad_dht.common import PROTOCOL_ID

    try:
        protocols = host.get_peerstore().get_protocols(peer_id)
    except Exception:
        return False
    return bool(protocols) and str(PROTOCOL_ID) not in protocols


def keep_dht_clients_out(host, dht) -> None:
    """Drop a peer from the DHT's routing table when it disconnects if identify showed it to be a client: one that
    queried before identify finished was added all the same."""
    from libp2p.abc import INotifee

    class DropClients(INotifee):
        async def disconnected(self, network, conn) -> None:
            peer_id = conn.muxed_conn.peer_id
            if dht.routing_table.peer_in_table(peer_id) and is_dht_client(host, peer_id):
                dht.routing_table.remove_peer(peer_id)

        async def opened_stream(self, network, stream) -> None:
            pass

        async def closed_stream(self, network, stream) -> None:
            pass

        async def connected(self, network, conn) -> None:
            pass

        async def listen(self, network, multiaddr) -> None:
            pass

        async def listen_close(self, network, multiaddr) -> None:
            pass

    host.get_network().register_notifee(DropClients())


def new_kogitune_host(seed: bytes):
    """A libp2p host that speaks only Noise (security) and Yamux (multiplexing)."""
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_pair
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport

    logging.getLogger("libp2p").addHandler(logging.NullHandler())  # after importing libp2p, which resets it
    _work_around_libp2p_0_8_1()
    key_pair = create_new_key_pair(seed)
    noise = NoiseTransport(key_pair, noise_privkey=new_x25519_pair().private_key)
    return new_host(key_pair=key_pair, sec_opt={NOISE_PROTOCOL_ID: noise}, muxer_preference="YAMUX")
