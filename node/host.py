"""The libp2p host: TCP + Noise + Yamux only, with a persistent Ed25519 identity.

py-libp2p's default `new_host()` also accepts plaintext and secio; Kogitune passes Noise as the only security
transport, so a plaintext dialer is refused at negotiation. The identity is a 32-byte Ed25519 seed in
`<home>/identity.key` (mode 0600), so the peer ID survives restarts.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from kogitune.layout import IDENTITY_FILE
from kogitune.settings import settings

if TYPE_CHECKING:  # libp2p loads when a host starts
    from libp2p.abc import IHost

log = logging.getLogger(__name__)


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
        from kogitune.errors import NodeError

        raise NodeError(f"{path} is not a Kogitune identity (32 bytes); move it away to create a new one")
    return seed


_WRITE_DEADLINE = 30.0
_patched = False


@dataclass(frozen=True)
class HostLimits:
    """What incoming TCP connections may hold of a node, per remote IP and in all (an IPv6 address counts by its
    /64: one host gets a whole /64). Several identities from one IP share that IP's budget: identities cost
    nothing to make, addresses do."""

    handshake_timeout: float = settings().host_handshake_timeout
    """Seconds an incoming connection has to finish its security handshake (Noise) and muxer negotiation (Yamux);
    a loopback handshake takes milliseconds, one across the world a second."""
    handshakes_per_ip: int = settings().host_handshakes_per_ip
    """Incoming connections from one IP that may be in their handshake at once; more wait for a slot."""
    handshakes_total: int = settings().host_handshakes_total
    """Incoming connections in their handshake at once; when all are taken, a connection from an IP holding fewer
    than the IP holding the most takes the oldest of that IP's slots (fair sharing), else it waits for a slot."""
    handshakes_waiting_per_ip: int = settings().host_handshakes_waiting_per_ip
    """Incoming connections from one IP that may wait for a handshake slot (within their handshake_timeout, which
    counts from the accept), so that many trainers behind one address starting at once all get in; more are
    closed at accept."""
    connections_per_ip: int = settings().host_connections_per_ip
    """Established incoming connections from one IP (an organisation behind one NAT shares it)."""
    connections_total: int = settings().host_connections_total
    """Established incoming connections in all (py-libp2p's own cap, 300 with outgoing ones, stays on top); when
    full, shared fairly between IPs as the handshakes are."""


HOST_LIMITS = HostLimits()


def ip_key(address) -> str:
    """The IP that a remote (ip, port) address counts against: the address itself, or the /64 of an IPv6 one."""
    try:
        ip = ipaddress.ip_address(address[0])
    except (TypeError, ValueError, IndexError):
        return "unknown"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


Holder = TypeVar("Holder")


class FairSlots(Generic[Holder]):
    """At most `total` slots, at most `per_key` of them for one key (a remote IP). When every slot is taken, a key
    holding fewer slots (after taking this one) than the key holding the most may take one of that key's slots:
    the caller ends the evicted holder. So a handful of keys that grab every slot first are pushed back to their
    fair share as soon as others come, and never hold an honest newcomer out."""

    def __init__(self, total: int, per_key: int) -> None:
        self.total = total
        self.per_key = per_key
        self.held: dict[str, list[Holder]] = {}

    def count(self, key: str) -> int:
        return len(self.held.get(key, ()))

    def __len__(self) -> int:
        return sum(len(holders) for holders in self.held.values())

    def take(self, key: str, holder: Holder, rank: Callable[[Holder], Any] | None = None) -> tuple[bool, Holder | None]:
        """(admitted, evicted holder or None). `rank(holder)` orders the heaviest key's holders, the least worth
        keeping first (by default the oldest)."""
        if self.count(key) >= self.per_key:
            return False, None
        evicted = None
        if len(self) >= self.total:
            heaviest = max(self.held, key=self.count)
            if self.count(key) + 1 >= self.count(heaviest):
                return False, None
            evicted = min(self.held[heaviest], key=rank) if rank else self.held[heaviest][0]
            self.release(heaviest, evicted)
        self.held.setdefault(key, []).append(holder)
        return True, evicted

    def release(self, key: str, holder: Holder) -> None:
        """Give back `holder`'s slot (nothing if it was evicted and already given back)."""
        holders = self.held.get(key, [])
        if holder in holders:
            holders.remove(holder)
        if not holders:
            self.held.pop(key, None)


class InboundGate:
    """One node's incoming connections: the handshakes in progress and the established connections, each shared
    fairly between remote IPs (HostLimits)."""

    def __init__(self, limits: HostLimits) -> None:
        self.limits = limits
        self.handshakes: FairSlots[trio.CancelScope] = FairSlots(limits.handshakes_total, limits.handshakes_per_ip)
        self.connections: FairSlots[object] = FairSlots(limits.connections_total, limits.connections_per_ip)
        self.waiting: Counter = Counter()
        self._freed = trio.Event()

    async def admit_handshake(self, ip: str, handshake: trio.CancelScope) -> bool:
        """Take a handshake slot for a connection from `ip` (evicting a heavier IP's oldest handshake if the slots
        are all taken), waiting for one until the handshake's deadline; False if none came or too many wait."""
        with trio.move_on_at(handshake.deadline):
            while self.connections.count(ip) < self.limits.connections_per_ip:
                admitted, evicted = self.handshakes.take(ip, handshake)
                if evicted is not None:
                    evicted.cancel()
                if admitted:
                    return True
                if self.waiting[ip] >= self.limits.handshakes_waiting_per_ip:
                    break
                self.waiting[ip] += 1
                try:
                    await self._freed.wait()
                finally:
                    self.waiting[ip] -= 1
                    if not self.waiting[ip]:
                        del self.waiting[ip]
        return False

    def release_handshake(self, ip: str, handshake: trio.CancelScope) -> None:
        self.handshakes.release(ip, handshake)
        self._freed.set()
        self._freed = trio.Event()


async def _close_quietly(closable) -> None:
    try:
        await closable.close()
    except Exception:
        pass


async def handle_inbound_connection(swarm, read_write_closer, maddr) -> None:
    """Replaces py-libp2p 0.8.1's `Swarm._handle_inbound_connection` (see `_work_around_libp2p_0_8_1`): admit an
    incoming TCP connection by its remote IP, run the security and muxer upgrade under
    HostLimits.handshake_timeout (an evicted handshake is cancelled at once), admit the established connection,
    and hold it until it closes."""
    from libp2p.network.connection.raw_connection import RawConnection

    gate = getattr(swarm, "kogitune_inbound_gate", None)
    if gate is None:
        gate = swarm.kogitune_inbound_gate = InboundGate(HOST_LIMITS)
    ip = ip_key(read_write_closer.get_remote_address())
    handshake = trio.CancelScope(deadline=trio.current_time() + gate.limits.handshake_timeout)
    if not await gate.admit_handshake(ip, handshake):
        log.debug("incoming connection from %s refused: its handshakes or connections are at their limit", ip)
        await _close_quietly(read_write_closer)
        return
    raw_conn = RawConnection(read_write_closer, False)
    muxed = None
    try:
        with handshake:
            remote = swarm._build_remote_multiaddr(read_write_closer)
            if remote is None or await swarm.connection_gate.is_allowed(remote):
                muxed = await swarm.upgrade_inbound_raw_conn(raw_conn, maddr)
    except Exception as exc:
        log.debug("incoming connection from %s failed its upgrade: %s", ip, exc)
    finally:
        gate.release_handshake(ip, handshake)
    if muxed is None:  # refused, failed, timed out or evicted
        await _close_quietly(raw_conn)
        return
    admitted, evicted = gate.connections.take(ip, muxed)
    if evicted is not None:
        await _close_quietly(evicted)
    if not admitted:
        log.debug("connection from %s closed: its IP holds its share of connections", ip)
        await _close_quietly(muxed)
        return
    try:
        await muxed.event_closed.wait()
    finally:
        gate.connections.release(ip, muxed)


def _work_around_libp2p_0_8_1() -> None:
    """Four py-libp2p 0.8.1 traps, measured by scripts/bench_network.py and bench_dht.py (docs/benchmarks.md) and,
    the last one, by tests/test_network_dos.py:

    - Noise encrypts (uses up a nonce) before it sends, so a write cancelled by a cancel scope leaves the peer one
      nonce behind: it fails the next frame and drops the connection with every stream on it. Kogitune cancels
      work on purpose (fail_after on reads, a lookup cut short), so writes finish shielded, under their own deadline.
    - Each dial waits 250 ms (happy eyeballs) for a second address that a TCP-only host never has.
    - The DHT adds every peer that sends it a query to its routing table, skipping the server-mode check, so
      trainers' client-mode nodes, which exit when training ends, fill the tables with dead peers. Here a querying
      peer is added only if identify does not show it to be a client (`keep_dht_clients_out` drops those that
      were added before identify finished, when they disconnect).
    - Incoming connections: the swarm admits at most 250 at once (max_connections - min_connections) and the
      handler of each one, after the upgrade, waits for the whole swarm to stop (`manager.wait_finished()`) before
      it gives its slot back, so after 250 incoming connections in its life (closed ones too) a node accepts no
      one any more (measured: the 251st connect fails). Before that, a few hundred TCP connections that never
      start their Noise handshake hold every slot for the 10 s upgrade timeout, and reconnect. Here
      `handle_inbound_connection` admits connections by remote IP (HostLimits), bounds the handshake, and gives
      the slot back when the connection closes.
    """
    global _patched
    if _patched:
        return
    import libp2p.network.swarm as swarm
    from libp2p.kad_dht.kad_dht import KadDHT
    from libp2p.network.swarm import Swarm
    from libp2p.security.secure_session import SecureSession

    swarm._HAPPY_EYEBALLS_DELAY = 0.0
    add_peer = KadDHT.add_peer

    async def add_server_peer(self, peer_id, *, skip_server_mode_check: bool = False) -> bool:
        return await add_peer(self, peer_id, skip_server_mode_check=False)

    KadDHT.add_peer = add_server_peer  # type: ignore[method-assign]  # the patches this function exists for
    write = SecureSession.write

    async def shielded_write(self, data: bytes) -> None:
        with trio.CancelScope(shield=True):
            with trio.fail_after(_WRITE_DEADLINE):
                await write(self, data)

    SecureSession.write = shielded_write  # type: ignore[method-assign]
    Swarm._handle_inbound_connection = handle_inbound_connection  # type: ignore[method-assign, assignment]
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


def new_kogitune_host(seed: bytes) -> IHost:
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
