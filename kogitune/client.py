"""The one narrow door from the sync world (producers, trainers) to the async node (kogitune.node).

Two ways through it: a node daemon running under the same home (`kogitune node start`), reached over its control
socket; else an embedded node, a trio loop in a background thread of this process, started on first use and
started again in a forked or spawned DataLoader worker. `KOGITUNE_READ_TIMEOUT` (seconds, default 30) bounds
every network read.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from kogitune.protocol.jsonlimits import MAX_JSON_DEPTH, loads

from . import errors
from .content_store import ContentStore, kogitune_home
from .errors import KogituneError, NodeNotRunning, RecipeError
from .files import read_limited
from .layout import CONTROL_SOCKET_FILE, MANIFEST_FILE, read_signature
from .settings import settings
from .tensor import DataTensor

DEFAULT_FETCH_TIMEOUT = settings().fetch_timeout
MAX_REPLY_BYTES = 16 << 20
"""A control reply longer than this is refused (the longest, `status`, takes about 60 bytes per dataset held)."""
_lock = threading.Lock()
_node = None
_node_pid = 0


class DaemonClient:
    """Sends control requests to the node daemon of `home` (one JSON line each way over a Unix socket)."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home is not None else kogitune_home()
        self.socket_path = self.home / CONTROL_SOCKET_FILE

    def call(self, op: str, timeout: float | None = DEFAULT_FETCH_TIMEOUT, **fields) -> dict:
        """One control operation; `timeout=None` waits as long as the node works on it."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
                reply = _read_reply(sock, op)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NodeNotRunning(
                f"no Kogitune node is running for {self.home}; start one with "
                f"`kogitune node start --home {self.home}` (or `--detach` to run it in the "
                "background)"
            ) from None
        except TimeoutError:
            raise KogituneError(
                f"the node did not answer {op!r} within {timeout:.0f} s; it may still be working: "
                "check `kogitune node status`"
            ) from None
        if not reply:
            raise KogituneError(f"the node closed the control connection during {op!r}")
        try:
            result = loads(reply, MAX_JSON_DEPTH)
        except ValueError as exc:
            raise KogituneError(f"the node's reply to {op!r} is not valid JSON: {exc}") from None
        if not isinstance(result, dict):
            raise KogituneError(f"the node's reply to {op!r} is a JSON {type(result).__name__}, not an object")
        if not result.pop("ok", False):
            raise errors.error_from_reply(result)
        return result

    def running(self) -> bool:
        try:
            self.call("status", timeout=5)
        except KogituneError:
            return False
        return True


def _read_reply(sock: socket.socket, op: str) -> bytes:
    """One reply line (up to the end of the stream if it has no newline), at most MAX_REPLY_BYTES."""
    reply = bytearray()
    while not reply.endswith(b"\n"):
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        reply += chunk
        if len(reply) > MAX_REPLY_BYTES:
            raise KogituneError(f"the node's reply to {op!r} is longer than {MAX_REPLY_BYTES} bytes")
    return bytes(reply)


def embedded_node():
    """This process's embedded node (created on first use, and anew after a fork)."""
    global _node, _node_pid
    with _lock:
        if _node is None or _node_pid != os.getpid() or not _node.alive:
            from kogitune.node.embedded import EmbeddedNode

            read_timeout = settings().read_timeout
            _node, _node_pid = EmbeddedNode(read_timeout=read_timeout, home=kogitune_home()), os.getpid()
        return _node


@dataclass(frozen=True)
class MirrorShards:
    """Fetches the missing shards of one stored dataset from its web mirrors. Picklable, for DataLoader workers."""

    directory: str
    urls: tuple[str, ...]
    timeout: float = DEFAULT_FETCH_TIMEOUT

    def ensure(self, manifest, index: int) -> None:
        """Fetch the shard, then trim the store to its size limit (least recently used shards go first)."""
        directory = Path(self.directory)
        embedded_node().ensure_shard(directory, manifest, index, self.urls, self.timeout)
        ContentStore(directory.parent.parent).gc()

    def prefetch(self, manifest, indexes: list[int]) -> None:
        embedded_node().prefetch(Path(self.directory), manifest, indexes, self.urls)


def _local_publisher(directory: Path, dataset_id: str) -> str | None:
    """The publisher of the copy of `dataset_id` in `directory` if its manifest hashes to the ID and its signature
    verifies, else None."""
    from kogitune.protocol.manifest import MAX_MANIFEST_BYTES
    from kogitune.protocol.signing import check_signed_manifest, peer_id_from_public_key

    try:
        public_key, signature = read_signature(directory)
        check_signed_manifest(
            dataset_id, read_limited(directory / MANIFEST_FILE, MAX_MANIFEST_BYTES), public_key, signature
        )
    except (OSError, KogituneError, ValueError):
        return None
    return peer_id_from_public_key(public_key)


@dataclass(frozen=True)
class PeerShards:
    """Fetches the missing shards of a dataset named by ID from the peers that provide it, through the local
    daemon when one runs (`home`), else through this process's embedded node. Picklable."""

    dataset_id: str
    home: str | None
    timeout: float = DEFAULT_FETCH_TIMEOUT

    def ensure(self, manifest, index: int) -> None:
        if self.home is not None:
            DaemonClient(Path(self.home)).call("shard", self.timeout, id=self.dataset_id, index=index)
        else:
            embedded_node().fetch_id_shard(self.dataset_id, index, self.timeout)

    def prefetch(self, manifest, indexes: list[int]) -> None:
        if self.home is not None:
            DaemonClient(Path(self.home)).call("prefetch", self.timeout, id=self.dataset_id, indexes=list(indexes))
        else:
            embedded_node().prefetch_id(self.dataset_id, list(indexes))


def open_mirrors(
    urls: list[str], store: ContentStore | None = None, timeout: float = DEFAULT_FETCH_TIMEOUT
) -> DataTensor:
    """Open a dataset served by web mirrors: fetch and check its manifest; shards follow on demand."""
    store = store or ContentStore()
    data, _ = embedded_node().fetch_manifest(tuple(urls), timeout)
    directory = store.add_manifest(data)
    return DataTensor(directory, remote=MirrorShards(str(directory), tuple(urls), timeout), store=store)


def open_dataset_id(dataset_id: str, trusted_publishers=None, timeout: float = DEFAULT_FETCH_TIMEOUT) -> DataTensor:
    """Open a dataset by ID: the manifest must hash to the ID and carry its publisher's signature (the publisher
    on `trusted_publishers` when that is given). A copy already in the local store that passes opens without the
    network, so a fetched dataset trains offline and a DataLoader worker starts no libp2p node for it; otherwise
    providers come from the DHT. Shards missing locally follow on demand."""
    trusted = sorted(trusted_publishers) if trusted_publishers is not None else None
    daemon = DaemonClient()
    home = str(daemon.home) if daemon.running() else None
    directory = ContentStore().dataset_dir(dataset_id)
    publisher = _local_publisher(directory, dataset_id)
    if publisher is None or (trusted is not None and publisher not in trusted):
        if home is not None:
            reply = daemon.call("open", timeout, id=dataset_id, trusted=trusted)
            directory, publisher = Path(reply["directory"]), reply["publisher"]
        else:
            directory, publisher = embedded_node().open_dataset_id(dataset_id, timeout, trusted)
    if trusted_publishers is not None and publisher not in set(trusted_publishers):
        raise RecipeError(f"{dataset_id} is published by {publisher}, who is not in trusted_publishers")
    store = ContentStore(directory.parent.parent)
    return DataTensor(directory, remote=PeerShards(dataset_id, home, timeout), store=store)
