"""What a request to the data port (node/dataport.py) names: its target resolved to a file this node may serve to
the requester, and the span of it that its Range asks for. No I/O on the connection here: the port sends.

A target is served only if it is spelled exactly `/<dataset ID>/<path>` with the path one the manifest names
(manifest.json, signature, or a shard's .tokens/.pieces/.docs or its compressed sidecar .tokens.zst: looked up in
a table made once per manifest, never joined to a directory), the dataset is held and not withheld (the data
server's manifest cache, DataServer.checked_manifest), the file passed its check and is unchanged since
(node/integrity.py's StoreGuard), and, for a private dataset, the request was signed over TLS by a peer of its
allow-list (node/tlsdata.requester).
Anything else is None, which the port answers with its one 404.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h11

from kogitune.layout import MANIFEST_FILE, SIGNATURE_FILE
from kogitune.protocol.compression import sidecar_path
from kogitune.protocol.ids import is_dataset_id
from kogitune.protocol.signing import SIGNATURE_FILE_BYTES

from .integrity import open_served
from .server import DataServer

RANGE_RE = re.compile(r"bytes=([0-9]{1,18})-([0-9]{0,18})")
"""The one form of Range served: a single span from a byte, to another or to the end. Any other Range header is
ignored (RFC 9110: the whole file, 200)."""


@dataclass
class ServedFile:
    """A file a request may have: `content` for a small one read whole (the manifest, the signature), else
    `opened`, the (fd, stat signature) of an open shard file, which the sender checks unchanged chunk by chunk and
    closes."""

    dataset_id: str
    path: str
    directory: Path
    content: bytes | None = None
    opened: tuple | None = None

    @property
    def size(self) -> int:
        """Bytes in the file: the content's, else the open file's."""
        if self.content is not None:
            return len(self.content)
        if self.opened is None:
            raise ValueError(f"{self.path}: a served file holds its content or an open file")
        return os.fstat(self.opened[0]).st_size


class ServedFiles:
    """Resolves request targets against the store of `server`, through its checks."""

    def __init__(self, server: DataServer) -> None:
        self.server = server
        self._files: dict[str, tuple] = {}

    async def open(self, target: bytes, requester: Callable[[], str | None]) -> ServedFile | None:
        """The file `target` names, or None for anything this port does not serve to `requester()`, the peer who
        signed the request over TLS (node/tlsdata.requester; None over plain HTTP), asked only for a private
        dataset (a signature to check costs CPU that a public dataset's request must not let anyone spend)."""
        parts = target.split(b"/")
        if len(parts) < 3 or parts[0] != b"" or not all(parts[1:]):
            return None
        try:
            dataset_id, path = parts[1].decode("ascii"), b"/".join(parts[2:]).decode("ascii")
        except UnicodeDecodeError:
            return None
        if not is_dataset_id(dataset_id):
            return None
        directory = self.server.store.dataset_dir(dataset_id)
        loaded = self.server.checked_manifest(dataset_id, directory)
        if loaded is None:  # not held or withheld
            return None
        manifest, manifest_bytes = loaded
        if manifest.access is not None:  # private: to a peer of its allow-list only, else the same 404
            peer = requester()
            if peer is None or not self.server.audience(dataset_id, directory, manifest).admits(peer):
                return None
        if path == MANIFEST_FILE:
            return ServedFile(dataset_id, path, directory, content=manifest_bytes)
        if path == SIGNATURE_FILE:
            fd = open_served(directory / SIGNATURE_FILE)
            if fd is None:
                return None
            with open(fd, "rb") as f:
                signature = f.read(SIGNATURE_FILE_BYTES + 1)
            if len(signature) != SIGNATURE_FILE_BYTES:
                return None
            return ServedFile(dataset_id, path, directory, content=signature)
        found = self._files_of(dataset_id, manifest).get(path)
        if found is None:
            return None
        shard, kind = found
        if kind == "tokens":
            opened = self.server.guard.open_tokens(directory, manifest, shard)
        else:
            opened = await self.server.guard.open_small_file(directory, manifest, shard, kind)
        return None if opened is None else ServedFile(dataset_id, path, directory, opened=opened)

    def _files_of(self, dataset_id: str, manifest) -> dict:
        """path in the dataset directory -> (shard, kind) of every shard file the manifest names (made once per
        manifest: a request looks its path up, never joins it to a directory)."""
        cached = self._files.get(dataset_id)
        if cached is None or cached[0] is not manifest:
            files = {}
            for shard in manifest.shards:
                files[shard.tokens_path] = (shard, "tokens")
                files[shard.pieces_path] = (shard, "pieces")
                files[shard.docs_path] = (shard, "docs")
                files[sidecar_path(shard)] = (shard, "sidecar")
            cached = self._files[dataset_id] = (manifest, files)
        return cached[1]


def requested_range(request: h11.Request, size: int) -> tuple[int, int, bool] | None:
    """(first byte, end, partial) of the answer to `request` for a file of `size` bytes; None if its Range cannot
    be satisfied (416). A Range of another form than RANGE_RE is ignored: the whole file."""
    header = next((value for name, value in request.headers if name == b"range"), None)
    match = RANGE_RE.fullmatch(header.decode("latin-1")) if header is not None else None
    if match is None:
        return 0, size, False
    start = int(match.group(1))
    end = min(int(match.group(2)) + 1, size) if match.group(2) else size
    if start >= size or end <= start:
        return None
    return start, end, True
