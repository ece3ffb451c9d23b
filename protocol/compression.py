"""Compressed sidecars: a shard's tokens as one zstd frame per piece, a transfer encoding beside the flat file.

Compression changes nothing a dataset ID, a manifest or a piece hash covers: pieces are hashed uncompressed, and
training maps the flat `.tokens` file. A producer or node may add beside `shards/<name>.tokens` the sidecar
`shards/<name>.tokens.zst` (docs/format.md#compressed-sidecars), so that a fetcher moves about half the bytes:

    header   a zstd skippable frame: u32 SKIPPABLE_MAGIC, u32 payload length, then the payload:
             4 bytes INDEX_TAG, u32 piece_size, u64 piece count n, n + 1 u64 offsets (all little-endian)
    frames   n zstd frames; frame i is bytes [offsets[i], offsets[i + 1]) of the file and decodes to piece i

The header being a skippable frame, the whole file is a valid zstd stream whose content is the tokens file
(`zstd -d 00000.tokens.zst` restores `00000.tokens`). Nothing in a sidecar is trusted: `parse_header` bounds every
offset by what the manifest says the shard holds (a frame may not be longer than `compress_bound` of its piece), and
`decode_piece` refuses a frame that does not declare exactly its piece's length before it allocates anything, then
decodes it into that many bytes at most; the caller hashes the result against the `.pieces` file like any piece.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import zstandard

from .errors import IntegrityError
from .manifest import MAX_PIECE_SIZE, ShardInfo, piece_count

SIDECAR_SUFFIX = ".zst"
"""Appended to a shard's tokens path: `shards/<name>.tokens.zst`."""
SKIPPABLE_MAGIC = 0x184D2A5E
"""One of the sixteen magic numbers of a zstd skippable frame (0x184D2A50 to 0x184D2A5F), which decoders pass over."""
INDEX_TAG = b"KGZ1"
"""The first bytes of the header's payload: this format, version 1."""
_HEAD = struct.Struct("<II4sIQ")  # skippable magic, payload length, tag, piece_size, piece count
MAX_WINDOW_SIZE = MAX_PIECE_SIZE
"""The largest zstd window a frame may ask for: a frame decodes to one piece, so it needs no window beyond that."""


def sidecar_path(shard: ShardInfo) -> str:
    """`shards/<name>.tokens.zst`, relative to the data tensor directory."""
    return shard.tokens_path + SIDECAR_SUFFIX


def header_size(pieces: int) -> int:
    """Bytes of the header of a sidecar of `pieces` pieces (also offsets[0], where the first frame starts)."""
    return _HEAD.size + 8 * (pieces + 1)


def compress_bound(length: int) -> int:
    """The largest zstd frame that `length` bytes compress into (ZSTD_COMPRESSBOUND of zstd.h): incompressible data
    is stored in raw blocks, so an honest frame is never longer. Longer frames are refused unread."""
    return length + (length >> 8) + ((128 * 1024 - length) >> 11 if length < 128 * 1024 else 0)


@dataclass(frozen=True)
class SidecarIndex:
    """Where each piece's frame lies in a sidecar; checked against the shard by `parse_header`."""

    piece_size: int
    offsets: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def size(self) -> int:
        """Bytes of the whole sidecar file."""
        return self.offsets[-1]

    def frame(self, index: int) -> tuple[int, int]:
        """Byte offset and length of piece `index`'s frame in the sidecar."""
        return self.offsets[index], self.offsets[index + 1] - self.offsets[index]

    def frames_size(self, start: int, stop: int) -> int:
        """Bytes of the frames of pieces `start` to `stop - 1`, which lie back to back."""
        return self.offsets[stop] - self.offsets[start]


def encode_header(piece_size: int, frame_lengths: list[int]) -> bytes:
    """The header of a sidecar whose frames, in piece order, have these lengths."""
    offsets = [header_size(len(frame_lengths))]
    for length in frame_lengths:
        offsets.append(offsets[-1] + length)
    payload_length = _HEAD.size - 8 + 8 * len(offsets)
    head = _HEAD.pack(SKIPPABLE_MAGIC, payload_length, INDEX_TAG, piece_size, len(frame_lengths))
    return head + struct.pack(f"<{len(offsets)}Q", *offsets)


def parse_header(data: bytes | bytearray | memoryview, shard: ShardInfo, piece_size: int) -> SidecarIndex:
    """The index in the first `header_size(pieces)` bytes of a sidecar for `shard`; IntegrityError unless they
    are exactly a header for this shard's pieces at this piece size, with every frame between 1 byte and
    `compress_bound` of its piece. A sidecar whose index passes can still lie in its frames: `decode_piece` and
    the piece hash catch that."""
    pieces = piece_count(shard.size, piece_size)
    where = f"shard {shard.name}: {sidecar_path(shard)}"
    if len(data) != header_size(pieces):
        raise IntegrityError(f"{where}: header of {len(data)} bytes, expected {header_size(pieces)}")
    magic, payload_length, tag, size, count = _HEAD.unpack_from(data)
    if magic != SKIPPABLE_MAGIC or tag != INDEX_TAG:
        raise IntegrityError(f"{where}: not a compressed sidecar (bad magic)")
    if payload_length != len(data) - 8 or size != piece_size or count != pieces:
        raise IntegrityError(
            f"{where}: header for {count} pieces of {size} bytes ({payload_length} bytes long), "
            f"expected {pieces} of {piece_size}"
        )
    offsets = struct.unpack_from(f"<{pieces + 1}Q", data, _HEAD.size)
    if offsets[0] != len(data):
        raise IntegrityError(f"{where}: first frame at byte {offsets[0]}, expected {len(data)}")
    for index in range(pieces):
        length = offsets[index + 1] - offsets[index]
        bound = compress_bound(min(piece_size, shard.size - index * piece_size))
        if not 0 < length <= bound:
            raise IntegrityError(f"{where}: frame {index} of {length} bytes, not 1 to {bound}")
    return SidecarIndex(piece_size, offsets)


def decode_piece(frame: bytes | bytearray | memoryview, length: int) -> bytes:
    """The `length` bytes that one zstd frame decodes to; IntegrityError for a frame that declares another size or
    none (checked before any allocation: a frame of a few bytes may declare terabytes), needs a dictionary or a
    window beyond MAX_WINDOW_SIZE, is not valid zstd, decodes to more or fewer bytes than it declares, or is
    followed by other bytes. The caller still hashes the result: a valid frame of the wrong bytes is a wrong
    piece."""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"not a zstd frame: {exc}") from None
    if params.content_size != length:
        declared = "no size" if params.content_size == zstandard.CONTENTSIZE_UNKNOWN else params.content_size
        raise IntegrityError(f"zstd frame declares {declared}, the piece has {length} bytes")
    if params.dict_id:
        raise IntegrityError("zstd frame needs a dictionary")
    try:
        data = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE).decompress(
            frame, max_output_size=length, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"zstd frame does not decode: {exc}") from None
    if len(data) != length:  # zstandard checks this; a piece is only ever taken at its exact length
        raise IntegrityError(f"zstd frame decoded to {len(data)} bytes, the piece has {length}")
    return data


def encode_piece(compressor: zstandard.ZstdCompressor, piece: bytes | memoryview) -> bytes:
    """One piece's frame, as a sidecar needs it: its size in the frame header, no dictionary. `compressor` should
    be made by `piece_compressor` (one per thread: a compressor is not thread-safe)."""
    return compressor.compress(piece)


def piece_compressor(level: int) -> zstandard.ZstdCompressor:
    """A compressor for `encode_piece`: the content size in each frame header (which `decode_piece` requires), no
    checksum (the piece's SHA-256 checks it)."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
