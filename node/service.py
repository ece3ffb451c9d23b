"""Running a node as a service: configuration, logging to `<home>/node.log`, signals, `--detach`."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import trio

from kogitune.errors import NodeError, SettingsError
from kogitune.layout import CONFIG_FILE, LOG_FILE, NODE_LOCK_FILE, NODE_USERS_FILE
from kogitune.settings import DEFAULT_LISTEN, read_config, settings

from .control import serve_control
from .daemon import Node, NodeConfig
from .dataport import data_listen_address
from .status_page import metrics_address, serve_status

log = logging.getLogger(__name__)
READY_PREFIX = "kogitune node "


def bootstrap_peers(home: Path, flags: list[str] | None = None) -> list[str]:
    """Bootstrap multiaddrs from flags, `<home>/config.json` ("bootstrap": [...]) and `$KOGITUNE_BOOTSTRAP`."""
    config = Path(home) / CONFIG_FILE
    like = f'{config} is not a JSON object like {{"bootstrap": ["/ip4/.../p2p/..."]}}'
    try:
        listed = read_config(config).get("bootstrap", [])
    except SettingsError as exc:  # not JSON, too deep or too long, not an object, an unknown key
        raise NodeError(f"{like}: {exc}") from None
    if not isinstance(listed, list) or not all(isinstance(peer, str) for peer in listed):
        raise NodeError(f"{like}: its bootstrap is not a list of multiaddr strings")
    peers = list(flags or []) + listed
    peers += os.environ.get("KOGITUNE_BOOTSTRAP", "").replace(",", " ").split()
    return list(dict.fromkeys(peers))


@contextmanager
def node_lock(home: Path):
    """Held while a node runs on `home`: a second node there would share its identity and take over its control
    socket. The kernel drops the lock when the process ends, however it ends."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / NODE_LOCK_FILE, "a+b") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NodeError(
                f"a node is already running for {home}; stop it first (`kogitune node stop --home "
                f"{home}`) or start this one with another --home"
            ) from None
        yield


def check_start(
    home: Path, listen: list[str], bootstrap: list[str], metrics: str | None = None, data_listen: str | None = None
) -> None:
    """Refuse, before anything starts, what would make a node start wrong: a node already running on `home`, a
    listen address that does not parse or whose port is taken, a bootstrap address without its peer ID, a metrics
    or data port address (`--metrics`, `--data-listen`) that does not parse or whose port is taken."""
    with node_lock(home):
        _check_addresses(home, listen, bootstrap, metrics, data_listen)


def _check_addresses(
    home: Path, listen: list[str], bootstrap: list[str], metrics: str | None, data_listen: str | None
) -> None:
    from multiaddr import Multiaddr

    served = metrics_address(metrics)
    if served is not None and served[1]:
        _check_port_free(f"--metrics {served[0]}:{served[1]}", *served)
    data = data_listen_address(data_listen, listen)
    if data is not None and data[1]:
        _check_port_free(f"--data-listen {data[0]}:{data[1]}", *data)

    for address in listen or [DEFAULT_LISTEN]:
        try:
            parsed = Multiaddr(address)
            host = next(parsed.value_for_protocol(p) for p in ("ip4", "ip6") if p in _protocols(parsed))
            port = int(parsed.value_for_protocol("tcp"))
        except Exception:
            raise NodeError(f"--listen {address!r} is not a TCP multiaddr such as {DEFAULT_LISTEN}") from None
        if port:
            _check_port_free(f"--listen {address}", host, port)
    for address in bootstrap_peers(home, bootstrap):
        try:
            ok = "p2p" in _protocols(Multiaddr(address))
        except Exception:
            ok = False
        if not ok:
            raise NodeError(
                f"bootstrap address {address!r} is not a multiaddr ending in /p2p/<peer id>, such as "
                "/ip4/192.0.2.1/tcp/4011/p2p/12D3KooW... (from --bootstrap, "
                f"{home / CONFIG_FILE} or $KOGITUNE_BOOTSTRAP)"
            )


def _protocols(address) -> list[str]:
    return [protocol.name for protocol in address.protocols()]


def _check_port_free(address: str, host: str, port: int) -> None:
    """Bind the port once ourselves: libp2p binds with SO_REUSEPORT, so two nodes on one port would both start
    and share its connections between two identities."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise NodeError(
                    f"{address}: port {port} is already in use (another node or program); pick another port"
                ) from None
            raise NodeError(f"{address}: cannot listen there ({exc.strerror})") from None


def run_node(
    home: Path,
    listen: list[str],
    bootstrap: list[str],
    reprovide_interval: float,
    metrics: str | None = None,
    data_listen: str | None = None,
    until_unused: bool = False,
) -> None:
    """Run the daemon in the foreground until `node stop`, SIGINT or SIGTERM (with `until_unused`, also once no
    process uses it: `_stop_when_unused`); with `metrics` ([HOST:]PORT) or the setting metrics_port, serve its
    metrics and status page too (node/status_page.py); its data port as `data_listen` (HOST:PORT, off) or the
    settings say (node/dataport.py)."""
    listen = listen or [DEFAULT_LISTEN]
    with node_lock(home):
        _check_addresses(home, listen, bootstrap, metrics, data_listen)
        handler = logging.FileHandler(home / LOG_FILE)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("kogitune")  # every module logs to a logger named after it, under "kogitune"
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
        config = NodeConfig(
            home=home,
            listen=listen,
            bootstrap=bootstrap_peers(home, bootstrap),
            reprovide_interval=reprovide_interval,
            read_timeout=settings().read_timeout,
            data_listen=data_listen_address(data_listen, listen),
        )
        if not trio.run(_serve, Node(config), metrics_address(metrics), until_unused):
            raise NodeError(f"the node could not listen on {' '.join(listen)}; see {home / LOG_FILE}")


async def _serve(node: Node, metrics: tuple[str, int] | None, until_unused: bool = False) -> bool:
    """Run the node until it stops (and its metrics port, if `metrics` gives one); False if it could not listen
    anywhere."""
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        if not node.addresses():
            node.stop()
            return False
        if metrics is not None:
            node.metrics_url = await nursery.start(serve_status, node, *metrics)
        await nursery.start(serve_control, node)
        nursery.start_soon(_stop_on_signal, node)
        if until_unused:
            nursery.start_soon(_stop_when_unused, node)
        print(f"{READY_PREFIX}{node.peer_id} listening on {' '.join(_full(node))}", flush=True)
        log.info("started %s on %s", node.peer_id, _full(node))
        await node.wait_stopped()
        nursery.cancel_scope.cancel()
    return True


def _full(node: Node) -> list[str]:
    return [f"{a}/p2p/{node.peer_id}" if "/p2p/" not in a else a for a in node.addresses()]


async def _stop_on_signal(node: Node) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            node.stop()
            return


UNUSED_CHECK_SECONDS = 1.0
"""How often a node started for its host (--until-unused) checks whether any process still uses it."""
UNUSED_GRACE_SECONDS = 5.0
"""How long such a node waits after it started before the first check (its starter holds the lock already)."""


async def _stop_when_unused(node: Node) -> None:
    """Stop the node once no process holds a shared lock on <home>/node.users (kogitune.hostnode). The node then
    keeps the exclusive lock until it exits, so a process that comes meanwhile waits and starts a new one."""
    fd = os.open(Path(node.config.home) / NODE_USERS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    await trio.sleep(UNUSED_GRACE_SECONDS)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await trio.sleep(UNUSED_CHECK_SECONDS)
            continue
        log.info("no process uses this node any more (--until-unused): stopping")
        node.stop()
        return  # fd stays open, and locked, until the process exits


def start_detached(home: Path, argv: list[str]) -> str:
    """Start `kogitune node start` in the background; return its ready line once it listens."""
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / LOG_FILE, "ab")
    logged_before = log.seek(0, os.SEEK_END)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kogitune.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdout is not None  # stdout=PIPE
    line = proc.stdout.readline().decode().strip()
    proc.stdout.close()
    if not line.startswith(READY_PREFIX):
        with open(home / LOG_FILE, "rb") as written:
            written.seek(logged_before)
            errors = [
                text
                for text in written.read().decode(errors="replace").splitlines()
                if text.startswith("kogitune node: error: ")
            ]
        why = errors[-1][len("kogitune node: error: ") :] if errors else f"exit {proc.poll()}; see {home / LOG_FILE}"
        raise NodeError(f"the node did not start: {why}")
    return line
