"""Which sources offer a shard's compressed sidecar, its index from each, and where a stream of it begins
(docs/protocol.md#compressed-sidecars).

A sidecar (`shards/<name>.tokens.zst`, kogitune.protocol.compression) is a source's own transfer encoding: two
sources may compress at different levels, so the fetcher reads a sidecar's index from each source it streams frames
from, and never mixes one source's index with another's frames. The index is read once per shard and source (its
`header_size` bytes, known from the manifest, nothing more), checked against the shard (`parse_header`): a source
whose index does not fit lied and is banned, like one that sends a wrong piece. A source that answers 404 offers no
sidecars for the dataset, and is not asked again (`SourceHealth.no_sidecars`). Nothing here is trusted beyond the
bounds it sets: each frame is decoded with its piece's length as the bound and hashed against the manifest
(node/fetch.py), so a sidecar can only ever cost the bytes of one frame per lie.
"""

from __future__ import annotations

import trio

from kogitune.errors import SourceError, SourceMissing
from kogitune.protocol.compression import SidecarIndex, header_size, parse_header, sidecar_path
from kogitune.protocol.errors import IntegrityError
from kogitune.protocol.manifest import ShardInfo, piece_count
from kogitune.settings import settings

from .body import Body
from .pool import MinRateBody, SourceHealth, SourcePool


class SidecarIndexes:
    """The sidecar index of one shard from each source of the pool, read on first use (one read at a time per
    source: the shard's other workers on that source wait for it)."""

    def __init__(self, pool: SourcePool, shard: ShardInfo, piece_size: int) -> None:
        self.pool, self.shard, self.piece_size = pool, shard, piece_size
        self._known: dict[int, SidecarIndex | None | trio.Event] = {}

    async def of(self, health: SourceHealth) -> SidecarIndex | None:
        """The index of `health`'s sidecar, or None when it offers none (or compressed_transfer is 0). A failed
        read is a SourceError (a failure of the source; asked again on its next stream); a lying index bans the
        source and is a SourceError too."""
        if health.no_sidecars or not health.source.offers_sidecars or not settings().compressed_transfer:
            return None
        key = id(health)
        known = self._known.get(key)
        while isinstance(known, trio.Event):
            await known.wait()
            known = self._known.get(key)
        if key in self._known:
            return known
        reading = self._known[key] = trio.Event()
        try:
            index = await self._read(health)
        except SourceMissing:
            health.no_sidecars = True
            index = None
        except IntegrityError as exc:
            self.pool.ban(health, f"sent a compressed sidecar index that does not fit the manifest: {exc}")
            index = None
        except BaseException:
            del self._known[key]
            raise
        finally:
            reading.set()
        self._known[key] = index
        if health.banned:
            raise SourceError(f"{health.source.name}: banned")
        return index

    async def _read(self, health: SourceHealth) -> SidecarIndex:
        path = sidecar_path(self.shard)
        size = header_size(piece_count(self.shard.size, self.piece_size))
        header = bytearray(size)
        async with health.source.stream(path, 0, size) as (offset, raw):
            if offset:
                raise SourceError(f"{health.source.name}: {path} starts at byte {offset}, asked for 0")
            body, filled = MinRateBody(raw, self.pool.limits, health.source.name), 0
            view = memoryview(header)
            while filled < size:
                count = await body.receive_into(view[filled:])
                if not count:
                    raise SourceError(f"{health.source.name}: {path} ended at byte {filled}, within its index")
                filled += count
        return parse_header(header, self.shard, self.piece_size)


def first_piece_at(
    offset: int, start: int, piece_size: int, sidecar: SidecarIndex | None, name: str
) -> tuple[int, bool]:
    """(the piece a stream asked from piece `start` begins with, whether the source seeked), given the byte `offset`
    it begins at: `start` itself, or from a source that cannot seek, an earlier piece (the tokens file from any
    piece boundary before `start`; a sidecar from byte 0, its index to be read past). `name` names the stream."""
    wanted = start * piece_size if sidecar is None else sidecar.frame(start)[0]
    if offset == wanted:
        return start, True
    if sidecar is None and not offset % piece_size and offset < wanted:
        return offset // piece_size, False
    if sidecar is not None and offset == 0:
        return 0, False
    raise SourceError(f"{name} starts at byte {offset}, asked for {wanted}")


async def read_past(body: Body, count: int, name: str) -> None:
    """Read and drop the first `count` bytes of a body (a sidecar's index, from a source that cannot seek)."""
    scratch = memoryview(bytearray(min(count, 1 << 16)))
    while count:
        got = await body.receive_into(scratch[: min(count, len(scratch))])
        if not got:
            raise SourceError(f"{name} ended within its index")
        count -= got
