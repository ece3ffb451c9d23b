"""Peers as sources: requests on streams of the data protocol (`wire.PROTOCOL_ID`), plugged into the fetcher as
`PeerSource`.

Every network read is wrapped in `fail_after`; a peer that hangs (SIGSTOP) costs one timeout, a peer that dies
mid-stream looks like an early end of data (py-libp2p reports a clean EOF), which becomes a SourceError: a
failure (back-off, retry), not a ban. Nothing a peer sends is trusted: manifests are checked against the dataset ID and the publisher's signature,
pieces against the manifest.
"""

from __future__ import annotations

import random
from contextlib import asynccontextmanager

import trio

from kogitune.errors import SourceBusy, SourceError, SourceLacks
from kogitune.protocol import wire
from kogitune.protocol.collection import Collection
from kogitune.protocol.ids import dataset_id_digest
from kogitune.protocol.manifest import Manifest
from kogitune.protocol.signing import check_signed

from .body import Body
from .copies import CollectionCopy, ManifestCopy
from .sources import Source

READ_CHUNK = 1 << 20
BUSY_RETRIES = 4
"""Times a request that a peer answered "busy" (its serving slots are taken: it is alive and honest) is sent again,
on a new stream, before the busy answer counts as a failure of that peer."""
BUSY_BACKOFF_SECONDS = 0.1
"""The pause before asking a busy peer again, doubled at each retry and times a random 1 to 2 (so that the fetchers
a full node turned away do not all come back at the same moment): 4 retries wait 1.5 to 3 s in all."""


async def _open(host, peer_id, request: wire.Request, timeout: float):
    """Send one request; return (stream, response header, bytes already read past the header). The response is
    the kind that answers `request`, within its size limit (wire.expected_response, wire.response_limit). A busy
    answer is retried BUSY_RETRIES times after a short, growing, jittered pause, then raised as SourceBusy."""
    for retry in range(BUSY_RETRIES + 1):
        try:
            return await _open_once(host, peer_id, request, timeout)
        except SourceBusy:
            if retry == BUSY_RETRIES:
                raise
        await trio.sleep(BUSY_BACKOFF_SECONDS * 2**retry * random.uniform(1, 2))


def _multistream_line(text: str) -> bytes:
    """One multistream-select message: a varint length (one byte for these short lines), the text and a newline."""
    line = text.encode() + b"\n"
    assert len(line) < 0x80, "a one-byte varint"
    return bytes([len(line)]) + line


PROPOSAL = _multistream_line("/multistream/1.0.0") + _multistream_line(wire.PROTOCOL_ID)
"""What a stream of the data protocol opens with: multistream-select's handshake and the one protocol proposed. A
peer that speaks the protocol answers with these same bytes (an echo); one that does not, with "na"."""


class _Refused(Exception):
    """The peer did not echo the data protocol's proposal."""


async def _past_echo(stream, name: str) -> bytes:
    """Read the peer's echo of PROPOSAL; return the bytes read past it (the start of the response). _Refused as soon
    as what arrives differs from the echo, or the stream ends first."""
    echo = b""
    while len(echo) < len(PROPOSAL):
        data = await _read(stream, READ_CHUNK, name)
        echo += data
        if not data or not PROPOSAL.startswith(echo[: len(PROPOSAL)]):
            raise _Refused()
    return echo[len(PROPOSAL) :]


async def _open_once(host, peer_id, request: wire.Request, timeout: float):
    """One request on a new stream, its protocol negotiated in the same round trip as the request: the proposal and
    the request are sent together, and the peer's echo of the proposal is read before the response (multistream-
    select's optimistic "lazy" dialing, as rust-libp2p and go-libp2p do for a single protocol). py-libp2p's own
    `host.new_stream` waits for each echo before it sends the next line: two more round trips through both peers'
    Noise and Yamux, 10-30 ms on loopback, most of an open by ID."""
    try:
        with trio.fail_after(timeout):
            stream = await host.get_network().new_stream(peer_id)
    except trio.TooSlowError:
        raise SourceError(f"{peer_id}: no stream within {timeout:.0f} s") from None
    except Exception as exc:
        raise SourceError(f"{peer_id}: cannot open a stream ({type(exc).__name__}: {exc})") from None
    try:
        decoder = wire.FrameDecoder(wire.response_limit(request))
        with trio.fail_after(timeout):
            await stream.write(PROPOSAL + wire.encode_request(request))
            if past := await _past_echo(stream, str(peer_id)):
                decoder.feed(past)  # (feeding b"" would mean the end of the stream)
            stream.set_protocol(wire.PROTOCOL_ID)
            while (frame := decoder.next_frame()) is None:
                data = await _read(stream, READ_CHUNK, str(peer_id))
                if not data:
                    raise SourceError(f"{peer_id}: stream ended before a response")
                decoder.feed(data)
        response = wire.parse_response(frame, wire.expected_response(request))
        if isinstance(response, wire.ErrorResponse):
            error = {"busy": SourceBusy, "not_found": SourceLacks}.get(response.code, SourceError)
            raise error(f"{peer_id}: {response.code}: {response.message}")
        return stream, response, decoder.unused()
    except _Refused:
        await _reset(stream)
        older = await older_protocol(host, peer_id, timeout)
        if older is not None:
            raise SourceError(
                f"{peer_id} runs an older Kogitune: it speaks {older}, this node {wire.PROTOCOL_ID} (upgrade it)"
            ) from None
        raise SourceError(f"{peer_id}: does not speak {wire.PROTOCOL_ID}") from None
    except trio.TooSlowError:
        await _reset(stream)
        raise SourceError(f"{peer_id}: no response within {timeout:.0f} s") from None
    except wire.WireError as exc:
        await _reset(stream)
        raise SourceError(f"{peer_id}: malformed response ({exc})") from None
    except SourceError:
        await _reset(stream)
        raise
    except Exception as exc:
        await _reset(stream)
        raise SourceError(f"{peer_id}: request failed ({type(exc).__name__}: {exc})") from None
    except BaseException:
        await _reset(stream)
        raise


async def older_protocol(host, peer_id, timeout: float) -> str | None:
    """The older Kogitune data protocol that `peer_id` speaks, if it refused this one's: asked by opening a stream
    with one of wire.OLDER_PROTOCOL_IDS, reset at once (identify may not have told its protocols yet). None if it
    speaks none of them or does not answer within `timeout`."""
    from libp2p.custom_types import TProtocol

    with trio.move_on_after(timeout):
        try:
            stream = await host.new_stream(peer_id, [TProtocol(p) for p in wire.OLDER_PROTOCOL_IDS])
        except Exception:
            return None
        await _reset(stream)
        return str(stream.get_protocol())
    return None


async def _read(stream, size: int, name: str) -> bytes:
    from libp2p.network.stream.exceptions import StreamEOF, StreamError

    try:
        return await stream.read(size)
    except StreamEOF:
        return b""
    except StreamError as exc:
        raise SourceError(f"{name}: stream failed: {type(exc).__name__} {exc}") from None


async def _reset(stream) -> None:
    try:
        await stream.reset()
    except Exception:
        pass


async def fetch_signed_manifest(host, peer_id, dataset_id: str, timeout: float) -> ManifestCopy | CollectionCopy:
    """The manifest of `dataset_id` from one peer, checked against the ID and the publisher's signature: a data
    tensor's, or a collection's when the ID names a collection (its manifest comes in the same response)."""
    stream, response, _ = await _open(host, peer_id, wire.ManifestRequest(dataset_id_digest(dataset_id)), timeout)
    await _reset(stream)
    manifest = check_signed(dataset_id, response.manifest, response.public_key, response.signature)
    if isinstance(manifest, Collection):
        return CollectionCopy(response.manifest, manifest, response.public_key, response.signature, peer_id)
    return ManifestCopy(
        response.manifest,
        manifest,
        response.public_key,
        response.signature,
        response.allow,
        response.allow_signature,
        peer_id,
    )


async def fetch_have(host, peer_id, dataset_id: str, shard_count: int, timeout: float) -> list[bool]:
    stream, response, _ = await _open(host, peer_id, wire.HaveRequest(dataset_id_digest(dataset_id)), timeout)
    await _reset(stream)
    try:
        return wire.have_shards(response.shards, shard_count)
    except wire.WireError as exc:
        raise SourceError(f"{peer_id}: bad have-map ({exc})") from None


async def fetch_data_port(host, peer_id, dataset_id: str, timeout: float) -> tuple[tuple[str, int] | None, bytes]:
    """((the IP this node reaches `peer_id` on, the data port the peer names for `dataset_id` in its have answer),
    or None when it names none; the have-map bytes of that answer, unchecked: wire.have_shards). The IP is the
    remote address of the very stream that carried the answer: a peer chooses its port, never the host a fetcher
    dials."""
    stream, response, _ = await _open(host, peer_id, wire.HaveRequest(dataset_id_digest(dataset_id)), timeout)
    try:
        address = stream.get_remote_address()
    except Exception:
        address = None
    finally:
        await _reset(stream)
    if not response.data_port or not address:
        return None, response.shards
    return (str(address[0]), response.data_port), response.shards


class PeerSource(Source):
    """One peer that provides a dataset, read through range requests."""

    def __init__(self, host, peer_id, dataset_id: str, manifest: Manifest, read_timeout: float) -> None:
        self.host = host
        self.peer_id = peer_id
        self.name = f"peer {peer_id}"
        self.identity = str(peer_id)
        self.dataset_id = dataset_id
        self.digest = dataset_id_digest(dataset_id)
        self.have: list[bool] | None = None
        """Its have-map (which shards it holds) as last asked, None until asked (node/havemaps.py)."""
        self.have_due = 0.0
        """When (trio clock) its have-map may be asked again."""
        self.have_failures = 0
        self.have_asking: trio.Event | None = None
        """Set while a have request to it is on its way (node/havemaps.py asks once for all who need it)."""
        self.manifest = manifest
        self.read_timeout = read_timeout
        self._sizes = {}
        self._index = {shard.name: index for index, shard in enumerate(manifest.shards)}
        for shard in manifest.shards:
            self._sizes[shard.tokens_path] = (shard.name, "tokens", shard.size)
            self._sizes[shard.pieces_path] = (shard.name, "pieces", manifest.pieces_in(shard) * 32)
            self._sizes[shard.docs_path] = (shard.name, "docs", shard.docs_size)

    def holds(self, index: int) -> bool:
        """As its have-map says; a peer not asked yet is taken at its provider record's word."""
        return self.have is None or (index < len(self.have) and self.have[index])

    def lacks(self, index: int) -> None:
        """Its have-map no longer shows shard `index` (until it is asked again: node/havemaps.py); not asked yet, it
        still holds the others, for all this source knows."""
        if self.have is None:
            self.have = [True] * len(self._index)
        self.have[index] = False

    @asynccontextmanager
    async def stream(self, path: str, start: int, end: int | None = None):
        if path not in self._sizes:
            raise SourceError(f"{self.name}: {path} is not a file of this dataset")
        shard, kind, size = self._sizes[path]
        stop = size if end is None else min(end, size)
        if start >= stop:
            yield start, Body()
            return
        request = wire.ReadRequest(self.digest, shard, kind, start, stop - start)
        # not_found raises SourceLacks: asked again later, then taken to lack the shard (SourcePool.not_found)
        stream, response, first = await _open(self.host, self.peer_id, request, self.read_timeout)
        try:
            if response.length != stop - start:
                raise SourceError(f"{self.name}: offered {response.length} bytes of {path}, asked {stop - start}")
            yield start, _PeerBody(self, stream, first, response.length)
        finally:
            await _reset(stream)


class _PeerBody(Body):
    """The `length` bytes a peer answers a read request with; `first` came with the response header. A peer that
    ends early (py-libp2p shows a dead peer as a clean EOF) raises a SourceError: the fetcher counts it as a
    failure, never as a lie (only a wrong hash bans)."""

    def __init__(self, source: PeerSource, stream, first: bytes, length: int) -> None:
        super().__init__()
        self._source, self._stream, self._left = source, stream, length
        self._first = first[:length]

    async def _next_chunk(self) -> bytes:
        if self._first:
            data, self._first = self._first, b""
        elif self._left <= 0:
            return b""
        else:
            try:
                with trio.fail_after(self._source.read_timeout):
                    data = await _read(self._stream, min(READ_CHUNK, self._left), self._source.name)
            except trio.TooSlowError:
                raise SourceError(f"{self._source.name}: no data for {self._source.read_timeout:.0f} s") from None
            if not data:
                raise SourceError(
                    f"{self._source.name}: the stream ended {self._left} bytes short (the peer closed it or died)"
                )
        self._left -= len(data)
        return data
