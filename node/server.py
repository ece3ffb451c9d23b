"""Serving datasets to peers: the stream handler of the data protocol (`wire.PROTOCOL_ID`).

One request per stream, answered from the node's content store. Every read from a peer is bounded in time and
size; each peer may hold only a few streams at once; a private dataset answers only the peers on the allow-list
that its publisher signed, and every other peer gets the very answer of a dataset this node does not hold.
Fetchers verify every byte, but a node also sends only what it has checked (see kogitune.node.integrity): a
manifest that hashes to the ID it is served as, .pieces and .docs files that match it, and tokens files unchanged
since they passed a check. Anything else is withheld and answered like a missing file. A collection ID's manifest request is answered with the
signed collection manifest (one that hashes to the ID), in the same ManifestResponse; a collection has no shards,
so its have and read requests get the answer of an ID not held.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from kogitune.content_store import ContentStore
from kogitune.layout import (
    ALLOW_FILE,
    ALLOW_SIGNATURE_FILE,
    COLLECTION_FILE,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    read_allow_files,
    read_signature,
)
from kogitune.marks import stat_signature
from kogitune.protocol import wire
from kogitune.protocol.collection import MAX_COLLECTION_BYTES, parse_collection
from kogitune.protocol.errors import ManifestError
from kogitune.protocol.ids import dataset_id_from_digest
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from kogitune.protocol.signing import allowed_peers
from kogitune.settings import settings

from .host import FairSlots, ip_key
from .integrity import StoreGuard, open_served

log = logging.getLogger(__name__)
CHUNK = 1 << 20
"""Bytes of a served file read (and checked unchanged, StoreGuard.check_unchanged) at once before they are sent."""
WRITE_BYTES = CHUNK
"""Bytes written to a stream at once, each write within ServerLimits.write_timeout. Smaller writes would let the
deadline be shorter for the same floor, but they cost the receiver: with 64 KiB writes a `get` from 3 peers took
about 25% more CPU in the fetching process (bench_network.py, 2026-12-03), from more Yamux frames and window
updates."""
WRITE_TIMEOUT_SECONDS = settings().server_write_timeout
"""Seconds one write of WRITE_BYTES may take to leave (ServerLimits.write_timeout)."""
MIN_READER_RATE = WRITE_BYTES / WRITE_TIMEOUT_SECONDS
"""Bytes per second (32 KiB/s) below which a reader's stream is cut by the server, which frees its slot for others.
Above the fetcher's own floor for a source (kogitune.node.fetch.MIN_SOURCE_RATE, 1 KiB/s, measured over 10 s
windows) but below what a link shared by a `get`'s streams gives each of them: `get` reads 4 shards at once, so one
2 Mbit/s link gives each stream about 60 KiB/s. A reader stalled for good holds its slot for at most 32 s after the
Yamux window (256 KiB) fills, and less when others need the slot (fair sharing evicts it)."""


@dataclass
class ServerLimits:
    """How much of the data server one peer, one IP (host.ip_key) and everyone together may hold. A stream over a
    limit is answered "busy" at once (the fetcher retries after a short backoff); when every slot is taken, an IP
    holding fewer streams than the IP holding the most takes one of that IP's streams (its idle ones first), so a
    few identities that grab every slot are pushed back to their fair share as soon as anyone else asks."""

    request_timeout: float = settings().server_request_timeout
    """Seconds a stream has, once open, to deliver its whole request (a fetcher sends it at once): a stream left
    idle is ended after this."""
    write_timeout: float = WRITE_TIMEOUT_SECONDS
    """Seconds one write of a response (WRITE_BYTES, 1 MiB) may take to leave: a reader that stops consuming, or
    drains slower than MIN_READER_RATE, is cut."""
    streams_per_peer: int = settings().server_streams_per_peer
    """Streams one peer identity may have served at once."""
    streams_per_ip: int = settings().server_streams_per_ip
    """Streams all the identities behind one IP may have served at once (identities cost nothing to make)."""
    streams_total: int = settings().server_streams_total
    """Streams served at once by this node, shared fairly between IPs when full."""


@dataclass(eq=False)
class _Slot:
    """One stream being served: its cancel scope (ended if the slot is taken by a fairer claimant)."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    idle: bool = True
    """Still waiting for its request."""


@dataclass
class ServerStats:
    """What the data server has done since the node started (`kogitune node status`, node/metrics.py)."""

    served: Counter = field(default_factory=Counter)
    """dataset ID -> bytes of its files sent (tokens ranges, .pieces and .docs, each checked before it left)."""
    requests: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)

    @property
    def bytes_served(self) -> int:
        return sum(self.served.values())


class DataServer:
    """Answers manifest, have and read requests from the datasets in `store`."""

    def __init__(self, store: ContentStore, limits: ServerLimits | None = None) -> None:
        self.store = store
        self.limits = limits or ServerLimits()
        self.stats = ServerStats()
        self._streams: Counter = Counter()
        self._slots: FairSlots[_Slot] = FairSlots(self.limits.streams_total, self.limits.streams_per_ip)
        self._manifests: dict[str, tuple[list, Manifest | None, bytes]] = {}
        """dataset ID -> (stat_signature of its manifest.json when read, the manifest or None if it did not hash to
        the ID, its bytes): read and checked again only when the file changes."""
        self._audiences: dict[str, tuple[tuple, Audience]] = {}
        self._collections: dict[str, tuple[list, bytes]] = {}
        """collection ID -> (stat_signature of its collection.json when read, its bytes, or b"" if they did not
        hash to the ID)."""
        self.guard = StoreGuard()
        self.data_port = 0
        """The port where this node serves its datasets over HTTP (node/dataport.py; private ones over TLS only),
        told to peers in have answers; 0 while there is none."""

    @property
    def streams_in_use(self) -> int:
        """Streams holding a serving slot now (ServerLimits.streams_total in all)."""
        return len(self._slots)

    async def handle(self, stream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        ip = ip_key(_remote_address(stream))
        slot = _Slot()
        admitted, evicted = (
            (False, None)
            if self._streams[peer] >= self.limits.streams_per_peer
            else self._slots.take(ip, slot, rank=lambda held: not held.idle)
        )
        if evicted is not None:
            evicted.scope.cancel()
        if not admitted:
            self.stats.refused["busy"] += 1
            await self._send_error(
                stream, "busy", "too many concurrent requests from this peer or address, or in all; retry in a moment"
            )
            return
        self._streams[peer] += 1
        try:
            with slot.scope:
                request = await self._read_request(stream)
                slot.idle = False
                self.stats.requests[type(request).__name__] += 1
                await self._answer(stream, peer, request)
                await stream.close()
            if slot.scope.cancelled_caught:
                self.stats.refused["evicted"] += 1
                log.debug("stream from %s ended to make room for another address", peer)
                await _reset(stream)
        except wire.WireError as exc:
            self.stats.refused[exc.code] += 1
            await self._send_error(stream, exc.code, str(exc))
        except (trio.TooSlowError, Exception) as exc:
            self.stats.refused["aborted"] += 1
            log.debug("stream from %s aborted: %r", peer, exc)
            await _reset(stream)
        finally:
            self._slots.release(ip, slot)
            self._streams[peer] -= 1
            if not self._streams[peer]:
                del self._streams[peer]

    async def _read_request(self, stream) -> wire.Request:
        decoder = wire.FrameDecoder(wire.MAX_REQUEST_BYTES)
        with trio.fail_after(self.limits.request_timeout):
            while True:
                frame = decoder.next_frame()
                if frame is not None:
                    return wire.parse_request(frame)
                try:
                    data = await stream.read(4096)
                except EOFError:  # py-libp2p ends a stream by raising StreamEOF (an EOFError), not with b""
                    data = b""
                if not data:
                    raise wire.WireError("bad_request", "the stream ended before a whole request")
                decoder.feed(data)

    async def _answer(self, stream, peer: str, request: wire.Request) -> None:
        dataset_id = dataset_id_from_digest(request.dataset)
        directory = self.store.dataset_dir(dataset_id)
        loaded = self.checked_manifest(dataset_id, directory)
        if loaded is None and isinstance(request, wire.ManifestRequest):
            collection = self._collection(dataset_id, directory)
            if collection:
                public_key, signature = read_signature(directory)
                response = wire.ManifestResponse(collection, signature=signature, public_key=public_key)
                await self._send(stream, wire.encode_response(response))
                return
        if loaded is None:
            raise not_held(dataset_id)
        manifest, manifest_bytes = loaded
        audience = self.audience(dataset_id, directory, manifest)
        if not audience.admits(peer):
            log.debug("%s is private: not served to %s", dataset_id, peer)
            raise not_held(dataset_id)
        if isinstance(request, wire.ManifestRequest):
            public_key, signature = read_signature(directory)
            await self._send(
                stream,
                wire.encode_response(
                    wire.ManifestResponse(
                        manifest_bytes,
                        signature=signature,
                        public_key=public_key,
                        allow=audience.allow,
                        allow_signature=audience.allow_signature,
                    )
                ),
            )
        elif isinstance(request, wire.HaveRequest):
            complete = [
                (directory / s.tokens_path).exists() and not self.guard.is_damaged(dataset_id, s)
                for s in manifest.shards
            ]
            port = self.data_port  # a private dataset's only to its audience (checked above), who reach it over TLS
            await self._send(stream, wire.encode_response(wire.HaveResponse(wire.have_bitmap(complete), port)))
        else:
            await self._send_range(stream, dataset_id, directory, manifest, request)

    async def _send_range(
        self, stream, dataset_id: str, directory: Path, manifest: Manifest, request: wire.ReadRequest
    ) -> None:
        shard = next((s for s in manifest.shards if s.name == request.shard), None)
        if shard is None:
            raise wire.WireError("bad_request", f"no shard {request.shard} in this dataset")
        path, size = {
            "tokens": (shard.tokens_path, shard.size),
            "pieces": (shard.pieces_path, manifest.pieces_in(shard) * 32),
            "docs": (shard.docs_path, shard.docs_size),
        }[request.file]
        if request.offset + request.length > size:
            raise wire.WireError("bad_request", f"{path} has {size} bytes; asked for {request.offset}+{request.length}")
        if request.file == "tokens":
            opened = self.guard.open_tokens(directory, manifest, shard)
        else:
            opened = await self.guard.open_small_file(directory, manifest, shard, request.file)
        if opened is None:
            raise wire.WireError("not_found", f"this node does not hold {path}")
        fd, signature = opened
        try:
            await self._send(stream, wire.encode_response(wire.ReadResponse(request.length)))
            offset, end = request.offset, request.offset + request.length
            while offset < end:
                chunk = os.pread(fd, min(CHUNK, end - offset), offset)
                self.guard.check_unchanged(fd, signature, directory, path)
                if not chunk:
                    raise OSError(f"{path} is shorter than the manifest says")
                await self._send(stream, chunk)
                offset += len(chunk)
                self.stats.served[dataset_id] += len(chunk)
        finally:
            os.close(fd)

    async def _send(self, stream, data: bytes) -> None:
        """Write `data` in pieces of WRITE_BYTES, each within write_timeout."""
        for start in range(0, len(data), WRITE_BYTES):
            with trio.fail_after(self.limits.write_timeout):
                await stream.write(data[start : start + WRITE_BYTES])

    async def _send_error(self, stream, code: str, message: str) -> None:
        try:
            await self._send(stream, wire.encode_response(wire.ErrorResponse(code, message[:1000])))
            await stream.close()
        except Exception:
            await _reset(stream)

    def audience(self, dataset_id: str, directory: Path, manifest: Manifest) -> Audience:
        """Who may fetch a dataset, read from its allow files and checked (signing.allowed_peers) once per change
        of those files."""
        if manifest.access is None:
            return PUBLIC
        stamp = (_stamp(directory / ALLOW_FILE), _stamp(directory / ALLOW_SIGNATURE_FILE))
        cached = self._audiences.get(dataset_id)
        if cached is None or cached[0] != stamp:
            allow, signature = read_allow_files(directory)
            peers = allowed_peers(dataset_id, manifest, allow, signature) or frozenset()  # None: a public manifest
            if not peers:
                log.warning(
                    "%s is private but holds no allow-list signed by its publisher %s: served to nobody",
                    dataset_id,
                    manifest.access.publisher,
                )
            cached = self._audiences[dataset_id] = (
                stamp,
                Audience(peers, tuple(sorted(peers)), signature if peers else b""),
            )
        return cached[1]

    def _collection(self, collection_id: str, directory: Path) -> bytes:
        """The signed collection manifest of `collection_id`, only if it hashes to the ID (else b"")."""
        fd = open_served(directory / COLLECTION_FILE)
        if fd is None:
            return b""
        with open(fd, "rb") as f:
            signature = stat_signature(os.fstat(f.fileno()))
            if not (directory / SIGNATURE_FILE).exists():
                return b""
            cached = self._collections.get(collection_id)
            if cached is None or cached[0] != signature:
                data = f.read(MAX_COLLECTION_BYTES + 1)
                try:
                    valid = parse_collection(data).dataset_id == collection_id
                except ManifestError:
                    valid = False
                cached = self._collections[collection_id] = (signature, data if valid else b"")
        return cached[1]

    def checked_manifest(self, dataset_id: str, directory: Path) -> tuple[Manifest, bytes] | None:
        """The dataset's manifest, only if it hashes to `dataset_id` (a replaced manifest.json is withheld)."""
        fd = open_served(directory / MANIFEST_FILE)
        if fd is None:
            return None
        with open(fd, "rb") as f:
            signature = stat_signature(os.fstat(f.fileno()))
            if not (directory / SIGNATURE_FILE).exists():
                return None
            cached = self._manifests.get(dataset_id)
            if cached is None or cached[0] != signature:
                data = f.read(MAX_MANIFEST_BYTES + 1)
                try:
                    manifest = parse_manifest(data)
                except ManifestError:
                    manifest = None
                if manifest is None or manifest.dataset_id != dataset_id:
                    self.guard.note_damaged(
                        dataset_id, MANIFEST_FILE, MANIFEST_FILE, "it does not hash to the dataset ID"
                    )
                    manifest, data = None, b""
                else:
                    self.guard.note_intact(dataset_id, MANIFEST_FILE)
                cached = self._manifests[dataset_id] = (signature, manifest, data)
        return None if cached[1] is None else (cached[1], cached[2])


@dataclass(frozen=True)
class Audience:
    """Who may fetch one dataset (`peers`, None for anyone) and the publisher's signed list to pass on with it."""

    peers: frozenset[str] | None
    allow: tuple[str, ...] = ()
    allow_signature: bytes = b""

    def admits(self, peer: str) -> bool:
        return self.peers is None or peer in self.peers


PUBLIC = Audience(None)


def not_held(dataset_id: str) -> wire.WireError:
    """The answer to a request for a dataset this node does not hold, and to a peer that may not fetch a private
    one: the same code and message, so that a refused peer cannot tell whether the node holds it."""
    return wire.WireError("not_found", f"this node does not hold {dataset_id}")


def _stamp(path: Path) -> tuple | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


def _remote_address(stream):
    try:
        return stream.get_remote_address()
    except Exception:
        return None


async def _reset(stream) -> None:
    try:
        await stream.reset()
    except Exception:
        pass
