"""Running a node as a service: configuration, logging to `<home>/node.log`, signals, `--detach`."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from .control import serve_control
from .daemon import DEFAULT_LISTEN, Node, NodeConfig
from .errors import NodeError

CONFIG_FILE = "config.json"
LOG_FILE = "node.log"
READY_PREFIX = "kogitune node "


def bootstrap_peers(home: Path, flags: list[str] | None = None) -> list[str]:
    """Bootstrap multiaddrs from flags, `<home>/config.json` ("bootstrap": [...]) and `$KOGITUNE_BOOTSTRAP`."""
    peers = list(flags or [])
    config = Path(home) / CONFIG_FILE
    if config.is_file():
        try:
            peers += list(json.loads(config.read_text()).get("bootstrap", []))
        except (ValueError, AttributeError):
            raise NodeError(f"{config} is not a JSON object like {{\"bootstrap\": [\"/ip4/.../p2p/...\"]}}") from None
    peers += os.environ.get("KOGITUNE_BOOTSTRAP", "").replace(",", " ").split()
    return list(dict.fromkeys(peers))


def run_node(home: Path, listen: list[str], bootstrap: list[str], reprovide_interval: float) -> None:
    """Run the daemon in the foreground until `node stop`, SIGINT or SIGTERM."""
    home.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(home / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("kogitune",):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).propagate = False
    config = NodeConfig(home=home, listen=listen or [DEFAULT_LISTEN], bootstrap=bootstrap_peers(home, bootstrap),
                        reprovide_interval=reprovide_interval,
                        read_timeout=float(os.environ.get("KOGITUNE_READ_TIMEOUT", 30)))
    trio.run(_serve, Node(config))


async def _serve(node: Node) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await nursery.start(serve_control, node)
        nursery.start_soon(_stop_on_signal, node)
        print(f"{READY_PREFIX}{node.peer_id} listening on {' '.join(_full(node))}", flush=True)
        logging.getLogger("kogitune.node").info("started %s on %s", node.peer_id, _full(node))
        await node.wait_stopped()
        nursery.cancel_scope.cancel()


def _full(node: Node) -> list[str]:
    return [f"{a}/p2p/{node.peer_id}" if "/p2p/" not in a else a for a in node.addresses()]


async def _stop_on_signal(node: Node) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            node.stop()
            return


def start_detached(home: Path, argv: list[str]) -> str:
    """Start `kogitune node start` in the background; return its ready line once it listens."""
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / LOG_FILE, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "kogitune.cli", *argv], stdout=subprocess.PIPE, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    line = proc.stdout.readline().decode().strip()
    proc.stdout.close()
    if not line.startswith(READY_PREFIX):
        raise NodeError(f"the node did not start (exit {proc.poll()}); see {home / LOG_FILE}")
    return line
