"""The one narrow door from the sync world (producers, trainers) to the async node (kogitune.node).

Today that door is an embedded node: a trio loop in a background thread of this process, started on first use
and started again in a forked or spawned DataLoader worker. `KOGITUNE_READ_TIMEOUT` (seconds, default 30) bounds
every network read.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .cache import ContentStore
from .tensor import DataTensor

DEFAULT_FETCH_TIMEOUT = 300.0
DEFAULT_READ_TIMEOUT = 30.0
_lock = threading.Lock()
_node = None
_node_pid = 0


def embedded_node():
    """This process's embedded node (created on first use, and anew after a fork)."""
    global _node, _node_pid
    with _lock:
        if _node is None or _node_pid != os.getpid():
            from kogitune.node.embedded import EmbeddedNode

            read_timeout = float(os.environ.get("KOGITUNE_READ_TIMEOUT", DEFAULT_READ_TIMEOUT))
            _node, _node_pid = EmbeddedNode(read_timeout=read_timeout), os.getpid()
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


def open_mirrors(urls: list[str], store: ContentStore | None = None,
                 timeout: float = DEFAULT_FETCH_TIMEOUT) -> DataTensor:
    """Open a dataset served by web mirrors: fetch and check its manifest; shards follow on demand."""
    store = store or ContentStore()
    data, _ = embedded_node().fetch_manifest(tuple(urls), timeout)
    directory = store.add_manifest(data)
    return DataTensor(directory, remote=MirrorShards(str(directory), tuple(urls), timeout), store=store)
