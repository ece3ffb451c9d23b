"""The one narrow door from the sync world (producers, trainers) to the async node (kogitune.node).

Two ways through it: a node daemon running under the same home (`kogitune node start`, or the node that the
training processes of a host start for it, kogitune.hostnode), reached over its control socket; else an embedded
node, a trio loop in a background thread of this process, started on first use and started again in a forked or
spawned DataLoader worker. The setting `read_timeout` (kogitune.settings) bounds every
network read, `fetch_timeout` a wait for a shard or a reply of the daemon.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kogitune.protocol.jsonlimits import MAX_JSON_DEPTH, loads
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES

from . import errors, hostnode
from .collection import DataCollection, is_collection_dir
from .content_store import ContentStore, kogitune_home
from .errors import KogituneError, NodeNotRunning, RecipeError
from .layout import CONTROL_SOCKET_FILE, LOG_FILE, NODE_LOCK_FILE, part_url
from .progress import waiting_for
from .settings import settings
from .tensor import DataTensor

log = logging.getLogger(__name__)
DEFAULT_FETCH_TIMEOUT = settings().fetch_timeout
MAX_REPLY_BYTES = 16 << 20
"""A control reply longer than this is refused (the longest, `status`, takes about 60 bytes per dataset held), but
for `manifest` (MAX_MANIFEST_REPLY_BYTES)."""
MAX_MANIFEST_REPLY_BYTES = 2 * MAX_MANIFEST_BYTES + 4096
"""The reply to `manifest`: a manifest of up to MAX_MANIFEST_BYTES as a JSON string (escaping at most doubles it)."""
STOP_WAIT = 30.0
"""How long `kogitune node stop` waits for the node to have stopped."""
STOP_POLL = 0.05
_lock = threading.Lock()
_node = None
_node_pid = 0


class DaemonClient:
    """Sends control requests to the node daemon of `home` (one JSON line each way over a Unix socket)."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home is not None else kogitune_home()
        self.socket_path = self.home / CONTROL_SOCKET_FILE

    def call(
        self, op: str, timeout: float | None = DEFAULT_FETCH_TIMEOUT, max_reply: int | None = None, **fields
    ) -> dict:
        """One control operation; `timeout=None` waits as long as the node works on it; a reply longer than
        `max_reply` bytes (default MAX_REPLY_BYTES) is refused."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
                reply = _read_reply(sock, op, MAX_REPLY_BYTES if max_reply is None else max_reply)
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

    def stop(self, wait: float = STOP_WAIT) -> None:
        """Ask the node to stop and return once it has: once it let go of its home's node lock, which it holds
        until it has closed its host and is about to exit. NodeError if it still runs after `wait` seconds."""
        self.call("stop", timeout=wait)
        deadline = time.monotonic() + wait
        with open(self.home / NODE_LOCK_FILE, "a+b") as lock:
            while True:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise errors.NodeError(
                            f"the node of {self.home} was asked to stop but still runs after {wait:.0f} s; see "
                            f"{self.home / LOG_FILE}, or end its process (kill)"
                        ) from None
                    time.sleep(STOP_POLL)

    def running(self) -> bool:
        try:
            self.call("status", timeout=5)
        except KogituneError:
            return False
        return True


def _read_reply(sock: socket.socket, op: str, limit: int) -> bytes:
    """One reply line (up to the end of the stream if it has no newline), at most `limit` bytes."""
    reply = bytearray()
    while not reply.endswith(b"\n"):
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        reply += chunk
        if len(reply) > limit:
            raise KogituneError(f"the node's reply to {op!r} is longer than {limit} bytes")
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
class RemoteShards:
    """Fetches the missing shards of one dataset, by ID, from its sources: the peers that provide it (unless
    `peers` is False: a recipe entry of web mirror URLs alone) and its web `mirrors`, all at once. Through the node
    daemon of `daemon_home` when one runs for the store (`store_home`), else through this process's embedded node,
    which then trims the store to its size limit (least recently used shards first). Picklable, for DataLoader
    workers: each worker's embedded node opens the dataset again from the manifest in the store."""

    dataset_id: str
    store_home: str
    mirrors: tuple[str, ...] = ()
    peers: bool = True
    daemon_home: str | None = None
    timeout: float = DEFAULT_FETCH_TIMEOUT

    def ensure(self, manifest, index: int) -> None:
        """Block until shard `index` is in the store (kogitune.progress prints lines while the wait goes on)."""
        what = f"shard {index} of {self.dataset_id[:16]}... ({manifest.shards[index].size / 1e6:.1f} MB)"
        if self.daemon_home is not None:
            daemon = DaemonClient(Path(self.daemon_home))
            with waiting_for(what, lambda: daemon.call("progress", 5, id=self.dataset_id)["bytes_verified"]):
                self._call(daemon, "shard", index=index)
            return
        node = embedded_node()
        with waiting_for(what, lambda: sum(node.source_bytes(self.dataset_id).values())):
            node.fetch_shard(self.store_home, self.dataset_id, index, self.mirrors, self.peers, self.timeout)
        ContentStore(self.store_home).gc()

    def prefetch(self, manifest, indexes: list[int]) -> None:
        if self.daemon_home is not None:
            self._call(DaemonClient(Path(self.daemon_home)), "prefetch", indexes=list(indexes))
        else:
            embedded_node().prefetch(self.store_home, self.dataset_id, list(indexes), self.mirrors, self.peers)

    def _call(self, daemon: DaemonClient, op: str, **fields) -> dict:
        """A request about this dataset to the daemon; if it stopped running and this host starts its own node
        (kogitune.hostnode), it is started again and the request sent once more."""
        fields.update(id=self.dataset_id, mirrors=list(self.mirrors))
        try:
            return daemon.call(op, self.timeout, **fields)
        except NodeNotRunning:
            if not hostnode.start_for(daemon.home, daemon.running):
                raise
            if self.peers:
                join_job(daemon, self.dataset_id)
            return daemon.call(op, self.timeout, **fields)


def _daemon_for(store: ContentStore) -> DaemonClient | None:
    """The node daemon that fills `store` (a daemon fills the store of its home): the one that runs, else the one
    this host starts for its training processes (kogitune.hostnode), else None."""
    daemon = DaemonClient()
    if Path(store.home).resolve() != daemon.home.resolve():
        return None
    if daemon.running() or hostnode.start_for(daemon.home, daemon.running):
        return daemon
    return None


def join_job(daemon: DaemonClient, dataset_id: str) -> None:
    """Tell the node which training job this process is part of (kogitune.hostnode.job_of_environment), so that it
    finds the job's other hosts and prefers them as sources of `dataset_id` (node/jobs.py); nothing outside a job."""
    job = hostnode.job_of_environment()
    if job is not None:
        try:
            daemon.call("job", DEFAULT_FETCH_TIMEOUT, id=dataset_id, job=job)
        except KogituneError as exc:  # the job's hosts then do not find this one: slower, never wrong
            log.warning("the node did not join job %r for %s: %s", job, dataset_id, exc)


def remote_manifest(dataset_id: str, home: Path, timeout: float = DEFAULT_FETCH_TIMEOUT):
    """(the manifest, its publisher) of a dataset, to look at: the signed manifest from the store or from its
    providers, as the fetch service opens it (Swarm.peek), written nowhere and with no shard fetched; a collection's
    manifest for a collection ID. Through the node daemon of `home` when one runs, else through a node started in
    this process for `home`."""
    from kogitune.protocol.collection import parse_manifest_or_collection

    try:
        reply = DaemonClient(home).call("manifest", timeout, MAX_MANIFEST_REPLY_BYTES, id=dataset_id)
        data, publisher = reply["manifest"].encode(), reply["publisher"]
    except NodeNotRunning:
        from kogitune.node.embedded import EmbeddedNode

        data, publisher = EmbeddedNode(settings().read_timeout, home).peek(home, dataset_id, timeout)
    manifest = parse_manifest_or_collection(data)
    if manifest.dataset_id != dataset_id:
        raise errors.IntegrityError(f"the manifest given for {dataset_id} hashes to {manifest.dataset_id}")
    return manifest, publisher


def open_mirrors(
    urls: list[str], store: ContentStore | None = None, timeout: float = DEFAULT_FETCH_TIMEOUT
) -> DataTensor | DataCollection:
    """Open a dataset served by web mirrors alone: fetch and check its manifest (its hash is the dataset's ID);
    shards follow on demand, from the mirrors (no peer is looked for). Mirrors of a collection (`collection.json`)
    open it by its ID, so: with these mirrors (open_dataset_id)."""
    store = store or ContentStore()
    mirrors = tuple(urls)
    daemon = _daemon_for(store)
    if daemon is not None:
        reply = daemon.call("open", timeout, mirrors=list(mirrors))
        directory, dataset_id = Path(reply["directory"]), reply["id"]
    else:
        directory, dataset_id = embedded_node().open_mirrors(store.home, mirrors, timeout)
    if is_collection_dir(directory):
        return open_dataset_id(dataset_id, None, timeout, mirrors, store)
    home = str(daemon.home) if daemon is not None else None
    remote = RemoteShards(dataset_id, str(store.home), mirrors, False, home, timeout)
    return DataTensor(directory, remote=remote, store=store)


def open_dataset_id(
    dataset_id: str,
    trusted_publishers=None,
    timeout: float = DEFAULT_FETCH_TIMEOUT,
    mirrors=(),
    store: ContentStore | None = None,
) -> DataTensor | DataCollection:
    """Open a dataset by ID: its manifest must hash to the ID, from whichever source it comes (peers found on the
    DHT, or the web `mirrors` named for it, raced: with mirrors, a missing DHT holds nothing up). A copy from
    peers carries its publisher's signature; one from mirrors carries it when the mirrors serve the published
    directory's `signature` file, and must when `trusted_publishers` is given (the publisher must then be on it).
    A copy already in the local store that passes opens without the network, so a fetched dataset trains offline
    and a DataLoader worker starts no libp2p node for it. Shards missing locally follow on demand, from peers and
    mirrors at once. A collection ID opens as a DataCollection whose parts are opened so, each by its own ID (and
    its publisher checked against `trusted_publishers` too), with its mirrors under the collection's mirrors kept
    (a mirror that served another collection is not)."""
    from kogitune.node.copies import CollectionCopy, stored_collection, stored_copy  # files only: no trio, libp2p

    trusted = sorted(trusted_publishers) if trusted_publishers is not None else None
    store = store or ContentStore()
    mirrors = tuple(mirrors)
    daemon = _daemon_for(store)
    directory = store.dataset_dir(dataset_id)
    copy = stored_copy(store, dataset_id) or stored_collection(store, dataset_id)
    publisher = copy.publisher if copy is not None else None
    parts = copy.collection.parts if isinstance(copy, CollectionCopy) else None
    usable = copy is not None and (publisher is not None or bool(mirrors)) and (trusted is None or publisher in trusted)
    if not usable:
        if daemon is not None:
            reply = daemon.call("open", timeout, id=dataset_id, trusted=trusted, mirrors=list(mirrors))
            directory, publisher, parts = Path(reply["directory"]), reply["publisher"], reply.get("parts")
            kept = reply.get("mirrors") or []
        else:
            directory, publisher, parts, kept = embedded_node().open(
                store.home, dataset_id, mirrors, trusted, True, timeout
            )
        if parts is not None:  # a collection's mirrors less those that served another collection
            mirrors = tuple(kept)
    if trusted_publishers is not None and publisher not in set(trusted_publishers):
        raise RecipeError(f"{dataset_id} is published by {publisher}, who is not in trusted_publishers")
    if parts is not None:

        def open_part(index: int, part_id: str) -> DataTensor:
            part_mirrors = [part_url(url, index) for url in mirrors]
            opened = open_dataset_id(part_id, trusted_publishers, timeout, part_mirrors, store)
            if not isinstance(opened, DataTensor):
                raise RecipeError(f"part {index} of the collection {dataset_id} is itself a collection ({part_id})")
            return opened

        return DataCollection(directory, open_part)
    home = str(daemon.home) if daemon is not None else None
    if daemon is not None:
        join_job(daemon, dataset_id)
    remote = RemoteShards(dataset_id, str(store.home), mirrors, True, home, timeout)
    return DataTensor(directory, remote=remote, store=ContentStore(directory.parent.parent))
