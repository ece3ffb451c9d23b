"""Where bytes come from: the Source interface, and HTTP(S) mirrors of a data tensor directory.

A source serves the files of one data tensor by their relative path (`manifest.json`, `shards/00000.tokens`, ...).
Sources are untrusted: the fetcher verifies every byte against the manifest, so a source only has to deliver
bytes, and a libp2p peer plugs in as one more Source. Every read is bounded in time and size.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from kogitune.errors import SourceError, SourceMissing
from kogitune.settings import settings

from .http import MAX_REDIRECTS, HttpClient

if TYPE_CHECKING:
    from .tlsdata import PeerTls

DEFAULT_READ_TIMEOUT = settings().read_timeout
HTTP_CONNECTIONS = settings().http_connections
"""Streams the fetcher keeps to one HTTP source while few shards are in flight (`KOGITUNE_HTTP_CONNECTIONS`): one
TCP stream is bounded by its window over a long path (docs/benchmarks.md)."""


class Source:
    """A place that serves a data tensor's files."""

    name: str
    offers_sidecars = False
    connections: int = 1
    """Streams the fetcher may read from this source at once for one shard (more when the fetcher has room)."""
    identity: str | None = None
    """The peer ID behind this source, if it is a peer (its libp2p streams, its data port): a wrong piece from one
    of a peer's sources bans them all (SourcePool.ban)."""
    preferred: bool = False
    """Whether this source takes the bulk bytes from the peer's other sources once it has delivered (a data port
    over its libp2p streams: faster); they take part again when it fails out (SourcePool.usable)."""
    job_peer = False
    """A node of this trainer's training job (node/jobs.py), or its data port: the scheduler asks it first for the
    shards it holds, and the other sources only when no job peer holds a shard or the job peers stop delivering
    (SourcePool.standing_by)."""

    def holds(self, index: int) -> bool:
        """Whether this source may serve shard `index`: a web mirror serves every shard; a peer (and its data port)
        says in its have-map (node/havemaps.py)."""
        return True

    def lacks(self, index: int) -> None:
        """Note that this source answered again and again that it does not hold shard `index` (SourcePool.not_found):
        `holds(index)` is False from now on (a peer's, until its have-map shows the shard again). A web mirror never
        answers so (its 404 is a failure)."""

    def stream(self, path: str, start: int, end: int | None = None):
        """Async context manager giving (offset of the first byte, `Body`) for `path` from `start` on, to byte `end`
        (exclusive; None: the end of the file); a source that cannot seek may begin earlier (at 0) and the reader
        skips ahead, and one may send past `end` (the reader stops there)."""
        raise NotImplementedError

    async def read_all(self, path: str, limit: int) -> bytes:
        """The whole file, refusing more than `limit` bytes."""
        async with self.stream(path, 0) as (_, body):
            return await body.read_all(limit, f"{self.name}: {path}")


class HttpSource(Source):
    """A tensor directory on any static web server (nginx, `python -m http.server`); Range used when offered. With
    `peer` (node/tlsdata.py), a node's TLS data port: https:// to that peer ID only, each request signed, so that
    the node serves the private datasets whose allow-lists name this fetcher."""

    offers_sidecars = True
    """Whether the fetcher asks this source for compressed sidecars (`shards/<name>.tokens.zst`, kogitune.sidecars):
    a web mirror or a node's data port may have them."""
    connections = HTTP_CONNECTIONS

    def __init__(
        self,
        base_url: str,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        redirects: int = MAX_REDIRECTS,
        peer: PeerTls | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = self.base_url
        self._client = HttpClient(read_timeout, redirects, peer)

    @asynccontextmanager
    async def stream(self, path: str, start: int, end: int | None = None):
        url = f"{self.base_url}/{path}"
        headers = {"Accept-Encoding": "identity"}
        if start or end is not None:  # bytes=A- or bytes=A-B (B inclusive), as every static server reads them
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        async with self._client.get(url, headers) as response:
            if response.status == 206:
                offset = _content_range_start(response.headers.get("content-range", ""), url)
            elif response.status == 200:
                offset = 0
                if start:  # it cannot seek: a second stream would only send the same bytes again
                    self.connections = 1
            elif response.status in (404, 410):
                raise SourceMissing(f"{url}: HTTP {response.status}")
            else:
                raise SourceError(f"{url}: HTTP {response.status}")
            yield offset, response.body


def _content_range_start(header: str, url: str) -> int:
    """The first byte offset of `Content-Range: bytes START-END/SIZE`."""
    try:
        unit, _, span = header.partition(" ")
        if unit != "bytes":
            raise ValueError(header)
        return int(span.split("-", 1)[0])
    except ValueError:
        raise SourceError(f"{url}: unreadable Content-Range {header!r}") from None
