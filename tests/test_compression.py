"""Compressed sidecars (kogitune.protocol.compression): the header and frames of docs/format.md#compressed-sidecars,
bytes in and bytes out, and every way an untrusted sidecar can lie refused fast, without a large allocation."""

from __future__ import annotations

import hashlib
import io
import os
import resource
import struct
import time

import pytest
import zstandard

from kogitune.protocol.compression import (
    SKIPPABLE_MAGIC,
    compress_bound,
    decode_piece,
    encode_header,
    encode_piece,
    header_size,
    parse_header,
    piece_compressor,
    sidecar_path,
)
from kogitune.protocol.errors import IntegrityError
from kogitune.protocol.manifest import ShardInfo
from kogitune.protocol.pieces import piece_digests

PIECE = 1 << 16
# docs/format.md's worked example, shard 00001 (one piece), and its sidecar as the test vector there gives it
VECTOR_TOKENS = bytes.fromhex("8e0e0107a70a0601422522010601b6110d0050c450c450c450c450c450c450c4")
VECTOR_SIDECAR = bytes.fromhex(
    "5e2a4d18200000004b475a310000100001000000000000002800000000000000"
    "4b00000000000000"
    "28b52ffd2020d50000a08e0e0107a70a0601422522010601b6110d0050c40100e21c13"
)


def shard_of(data: bytes, piece_size: int = PIECE, name: str = "00000") -> ShardInfo:
    root = hashlib.sha256(piece_digests(data, piece_size)).hexdigest()
    return ShardInfo(name, 1, len(data), root, 0, hashlib.sha256(b"").hexdigest())


def sidecar_of(data: bytes, piece_size: int = PIECE, level: int = 3) -> bytes:
    compressor = piece_compressor(level)
    frames = [encode_piece(compressor, data[at : at + piece_size]) for at in range(0, len(data), piece_size)]
    return encode_header(piece_size, [len(f) for f in frames]) + b"".join(frames)


def text_tokens(size: int) -> bytes:
    """Compressible bytes like real tokens: a small vocabulary in a varying order."""
    words = [struct.pack("<H", 1000 + 37 * i) for i in range(24)]
    out, state = bytearray(), 1
    while len(out) < size:
        state = (state * 1103515245 + 12345) % (1 << 31)
        out += words[state % len(words)]
    return bytes(out[:size])


def decode_all(sidecar: bytes, shard: ShardInfo, piece_size: int = PIECE) -> bytes:
    n = -(-shard.size // piece_size)
    index = parse_header(sidecar[: header_size(n)], shard, piece_size)
    pieces = []
    for i in range(n):
        at, length = index.frame(i)
        pieces.append(decode_piece(sidecar[at : at + length], min(piece_size, shard.size - i * piece_size)))
    return b"".join(pieces)


def test_vector_of_the_format_document():
    """docs/format.md: the sidecar of the worked example's shard 00001 decodes to its tokens, our writer makes
    exactly those bytes, and the whole file is a plain zstd stream of the tokens (zstd -d restores them)."""
    shard = shard_of(VECTOR_TOKENS, 1 << 20, "00001")
    assert sidecar_path(shard) == "shards/00001.tokens.zst"
    assert decode_all(VECTOR_SIDECAR, shard, 1 << 20) == VECTOR_TOKENS
    assert sidecar_of(VECTOR_TOKENS, 1 << 20) == VECTOR_SIDECAR
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(VECTOR_SIDECAR), read_across_frames=True)
    assert reader.read() == VECTOR_TOKENS


def test_round_trip_of_many_pieces_with_a_short_last_one():
    data = text_tokens(3 * PIECE + 1234)
    shard = shard_of(data)
    sidecar = sidecar_of(data)
    assert len(sidecar) < len(data) * 0.8
    assert decode_all(sidecar, shard) == data
    index = parse_header(sidecar[: header_size(4)], shard, PIECE)
    assert len(index) == 4 and index.size == len(sidecar)
    assert index.frames_size(1, 3) == sum(index.frame(i)[1] for i in (1, 2))


def test_incompressible_pieces_stay_within_the_bound():
    import os

    data = os.urandom(2 * PIECE + 5)
    sidecar = sidecar_of(data, level=19)
    assert decode_all(sidecar, shard_of(data)) == data
    assert len(sidecar) <= header_size(3) + compress_bound(PIECE) * 2 + compress_bound(5)


def header_with(offsets: list[int], *, pieces: int | None = None, piece_size: int = PIECE, magic=SKIPPABLE_MAGIC):
    count = len(offsets) - 1 if pieces is None else pieces
    payload = 16 + 8 * len(offsets)
    return struct.pack("<II4sIQ", magic, payload, b"KGZ1", piece_size, count) + struct.pack(
        f"<{len(offsets)}Q", *offsets
    )


@pytest.mark.parametrize(
    "mutate, says",
    [
        (lambda h: h[:-1], "header of"),  # truncated
        (lambda h: h + b"\0" * 8, "header of"),  # too long (an index for more pieces)
        (lambda h: b"\0" * 4 + h[4:], "bad magic"),
        (lambda h: h[:8] + b"KGZ2" + h[12:], "bad magic"),
        (lambda h: h[:12] + struct.pack("<I", PIECE * 2) + h[16:], "expected 3 of 65536"),  # other piece size
        (lambda h: h[:16] + struct.pack("<Q", 2) + h[24:], "expected 3 of 65536"),  # other piece count
        (lambda h: h[:4] + struct.pack("<I", 1 << 30) + h[8:], "expected 3 of 65536"),  # payload length
    ],
    ids=["truncated", "too-long", "magic", "tag", "piece-size", "count", "payload-length"],
)
def test_a_broken_header_is_refused(mutate, says):
    data = text_tokens(2 * PIECE + 7)
    shard = shard_of(data)
    header = sidecar_of(data)[: header_size(3)]
    parse_header(header, shard, PIECE)
    with pytest.raises(IntegrityError, match=says):
        parse_header(mutate(header), shard, PIECE)


@pytest.mark.parametrize(
    "offsets, says",
    [
        ([999, 1100, 1200, 1300], "first frame at byte 999"),
        ([56, 200, 150, 300], "frame 1 of -50 bytes"),  # out of order
        ([56, 200, 200, 300], "frame 1 of 0 bytes"),  # empty frame
        ([56, 200, 300, 2**63], "frame 2 of"),  # far beyond any frame of a piece (out of the file)
        ([56, 56 + compress_bound(PIECE) + 1, 70000 * 2, 70000 * 3], "frame 0 of"),  # one byte over the bound
        ([56, 100, 200, 200 + compress_bound(7) + 1], "frame 2 of"),  # the short last piece's bound is its own
    ],
    ids=["first-offset", "out-of-order", "empty", "huge", "over-bound", "short-piece-bound"],
)
def test_offsets_out_of_order_or_out_of_bounds_are_refused(offsets, says):
    shard = shard_of(text_tokens(2 * PIECE + 7))
    with pytest.raises(IntegrityError, match=says):
        parse_header(header_with(offsets), shard, PIECE)


def test_a_header_for_a_huge_shard_is_not_read_beyond_the_count_the_manifest_gives():
    """The length is checked first: a sidecar cannot make the parser unpack more offsets than the shard's pieces."""
    shard = shard_of(text_tokens(PIECE))
    forged = header_with([40] + [41] * 100_000, pieces=100_000)
    started = time.perf_counter()
    with pytest.raises(IntegrityError, match="header of"):
        parse_header(forged, shard, PIECE)
    assert time.perf_counter() - started < 0.05


def test_a_frame_that_decodes_to_more_or_fewer_bytes_than_its_piece_is_refused():
    piece = text_tokens(PIECE)
    compressor = piece_compressor(3)
    assert decode_piece(encode_piece(compressor, piece), PIECE) == piece
    with pytest.raises(IntegrityError, match="declares 65535"):
        decode_piece(encode_piece(compressor, piece[:-1]), PIECE)
    with pytest.raises(IntegrityError, match="declares 65537"):
        decode_piece(encode_piece(compressor, piece + b"x"), PIECE)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = no_size.compress(piece) + no_size.flush()
    with pytest.raises(IntegrityError, match="declares no size"):
        decode_piece(frame, PIECE)


def test_a_frame_that_lies_about_its_size_or_carries_more_is_refused():
    piece = text_tokens(PIECE)
    frame = bytearray(encode_piece(piece_compressor(3), piece))
    with pytest.raises(IntegrityError, match="does not decode"):  # a second frame after the first
        decode_piece(bytes(frame) + encode_piece(piece_compressor(3), b"more"), PIECE)
    with pytest.raises(IntegrityError):  # truncated
        decode_piece(bytes(frame[:-3]), PIECE)
    with pytest.raises(IntegrityError):  # not zstd
        decode_piece(b"\0" * 64, PIECE)
    # declares 64 KiB but its blocks hold 1 byte fewer: zstd stops short of the declared size
    short = bytearray(encode_piece(zstandard.ZstdCompressor(level=3, write_checksum=False), piece[:-1]))
    header_length = zstandard.frame_header_size(bytes(short))
    params = zstandard.get_frame_parameters(bytes(short))
    assert params.content_size == PIECE - 1
    forged = bytes(short[: header_length - 4]) + struct.pack("<I", PIECE) + bytes(short[header_length:])
    with pytest.raises(IntegrityError):
        decode_piece(forged, PIECE)


def test_a_zstd_bomb_is_refused_before_any_allocation():
    """A frame of a few bytes that declares 1 TiB, or a real frame of 256 MiB of zeros that compresses to a few
    KiB: refused from the frame header, at once, with no memory spent (before: zstandard.decompress allocates the
    declared size)."""
    tiny = zstandard.ZstdCompressor(level=19).compress(b"\0" * 1)
    header_length = zstandard.frame_header_size(tiny)
    assert header_length < len(tiny)
    # a frame header declaring 2**40 bytes (single segment off, 8-byte content size field)
    descriptor = 0b11000000  # FCS field 8 bytes, not single-segment -> window descriptor follows
    bomb_head = struct.pack("<IBBQ", 0xFD2FB528, descriptor, 0x50, 1 << 40)
    bomb = bomb_head + b"\x01\x00\x00"  # one empty raw last block
    assert zstandard.get_frame_parameters(bomb).content_size == 1 << 40
    stream = zstandard.ZstdCompressor(level=3).compressobj(size=256 << 20)  # made 1 MiB at a time: no big buffer
    zeros = bytes(1 << 20)
    real_bomb = b"".join(stream.compress(zeros) for _ in range(256)) + stream.flush()
    assert zstandard.get_frame_parameters(real_bomb).content_size == 256 << 20
    assert len(real_bomb) < 64 << 10
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    for frame in (bomb, real_bomb):
        with pytest.raises(IntegrityError, match="declares"):
            decode_piece(frame, PIECE)
    assert time.perf_counter() - started < 0.05
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 16 << 10  # KiB: no 256 MiB buffer


def test_a_frame_that_asks_for_a_huge_window_costs_no_window():
    """A frame may declare its piece's size and ask for a window of 2 GiB: whole in memory, with an output buffer of
    the declared size, it is decoded in one pass straight into that buffer, so no window is allocated (and a
    window above MAX_WINDOW_SIZE would be refused on the streaming path)."""
    descriptor = 0b11000000
    window = (31 - 10) << 3  # window log 31: 2 GiB
    head = struct.pack("<IBBQ", 0xFD2FB528, descriptor, window, PIECE)
    rle_block = struct.pack("<I", (PIECE << 3) | (1 << 1) | 1)[:3] + b"a"  # last RLE block of PIECE bytes
    frame = head + rle_block
    assert zstandard.get_frame_parameters(frame).window_size == 1 << 31
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert decode_piece(frame, PIECE) == b"a" * PIECE  # the right length; its hash decides whether it is the piece
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 16 << 10  # KiB


# ---- the writer: kogitune compress, and verify of sidecars --------------------------------------------------------


def test_compress_writes_sidecars_that_decode_to_every_shard_and_change_no_id(kjv_tensor, tmp_path):
    from conftest import copy_tensor, file_states

    from kogitune.cli import main
    from kogitune.tensor import DataTensor

    directory = copy_tensor(kjv_tensor, tmp_path / "kjv")
    tensor_files = file_states(directory)
    assert main(["compress", str(directory), "--quiet", "--workers", "2"]) == 0
    tensor = DataTensor(directory)
    assert tensor.dataset_id == kjv_tensor.dataset_id
    assert {k: v for k, v in file_states(directory).items() if k in tensor_files} == tensor_files  # nothing rewritten
    total = 0
    for shard in tensor.shards:
        sidecar = (directory / sidecar_path(shard)).read_bytes()
        assert decode_all(sidecar, shard, tensor.manifest.piece_size) == (directory / shard.tokens_path).read_bytes()
        total += len(sidecar)
    assert total < 0.6 * sum(s.size for s in tensor.shards)  # real text: about half
    assert not list(directory.rglob("*.partial"))
    assert tensor.verify() == []


def test_compress_is_resumable_and_skips_what_is_in_place(kjv_tensor, tmp_path):
    from conftest import copy_tensor

    from kogitune.layout import partial_path
    from kogitune.sidecars import compress

    directory = copy_tensor(kjv_tensor, tmp_path / "kjv")
    first, second = kjv_tensor.shards[:2]
    report = compress(directory, workers=1)
    assert report.compressed == len(kjv_tensor.shards) and report.ratio > 1.6
    # an interrupted run: one sidecar in place, one half-written partial, one missing
    (directory / sidecar_path(second)).rename(partial_path(directory / sidecar_path(second)))
    (partial_path(directory / sidecar_path(second))).write_bytes(b"half")
    kept = (directory / sidecar_path(first)).stat().st_ino
    report = compress(directory, workers=1)
    assert report.compressed == 1 and report.skipped == len(kjv_tensor.shards) - 1
    assert (directory / sidecar_path(first)).stat().st_ino == kept
    assert not partial_path(directory / sidecar_path(second)).exists()
    assert compress(directory, level=1, workers=1, overwrite=True).compressed == len(kjv_tensor.shards)
    assert (directory / sidecar_path(first)).stat().st_ino != kept


def test_compress_refuses_a_damaged_shard_and_verify_names_a_damaged_sidecar(kjv_tensor, tmp_path):
    from conftest import copy_tensor, flip_byte

    from kogitune.errors import TensorError
    from kogitune.sidecars import compress
    from kogitune.tensor import DataTensor

    directory = copy_tensor(kjv_tensor, tmp_path / "kjv")
    shard = kjv_tensor.shards[1]
    compress(directory, workers=1)
    sidecar = directory / sidecar_path(shard)
    flip_byte(sidecar, sidecar.stat().st_size - 10)  # inside the last frame
    problems = DataTensor(directory).verify()
    assert [(p.shard, p.file) for p in problems] == [(shard.name, sidecar_path(shard))]
    assert DataTensor(directory).is_verified()  # a bad sidecar does not unmark the intact shard
    flip_byte(directory / shard.tokens_path, 5)
    with pytest.raises(TensorError, match="piece 0 of shards/00001.tokens does not match its hash"):
        compress(directory, workers=1, overwrite=True)
    assert not list(directory.rglob("*.partial"))


# ---- fetching: web mirrors and a node's data port with sidecars, honest and lying ---------------------------------


@pytest.fixture(scope="module")
def compressed(kjv_tensor, tmp_path_factory):
    """The KJV tensor (3 shards of 3 pieces of 64 KiB) with its sidecars."""
    from conftest import copy_tensor

    from kogitune.sidecars import compress
    from kogitune.tensor import DataTensor

    directory = copy_tensor(kjv_tensor, tmp_path_factory.mktemp("compressed") / "kjv")
    compress(directory, workers=1)
    return DataTensor(directory)


def sidecars_only(tensor, directory):
    """A copy of `tensor` without its flat tokens: a mirror of it can deliver shards through sidecars only."""
    from conftest import copy_tensor

    copy = copy_tensor(tensor, directory)
    for shard in tensor.shards:
        (copy / shard.tokens_path).unlink()
    return copy


def fetch_all(tensor, target, pool):
    """Every shard of `tensor` fetched into `target` with ShardFetch from one SourcePool; the fetches."""
    import trio

    from kogitune.node.fetch import ShardFetch

    (target / "shards").mkdir(parents=True)
    (target / "manifest.json").write_bytes((tensor.path / "manifest.json").read_bytes())
    fetches = [ShardFetch(target, tensor.manifest, shard, pool) for shard in tensor.shards]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for fetch in fetches:
                await nursery.start(fetch.run)

    try:
        trio.run(main)
    except Exception as exc:  # a group of one, from the nursery: the fetch's own error
        if len(getattr(exc, "exceptions", ())) == 1:
            raise exc.exceptions[0] from None
        raise
    return fetches


def assert_same_tokens(tensor, directory):
    from kogitune.tensor import DataTensor

    assert DataTensor(directory).verify() == []
    for shard in tensor.shards:
        assert (directory / shard.tokens_path).read_bytes() == (tensor.path / shard.tokens_path).read_bytes()


def frames_bytes(tensor, shard) -> int:
    size = (tensor.path / sidecar_path(shard)).stat().st_size
    return size - header_size(tensor.manifest.pieces_in(shard))


def test_a_mirror_with_sidecars_sends_the_frames_and_the_flat_verified_tokens_land(compressed, tmp_path):
    """From a mirror that has both, the fetcher takes the frames (the bytes received are the frames', about half the
    tokens), and what lands is the flat tokens, verified; a recipe over a mirror that has no flat tokens at all reads
    the same samples (so the sidecars alone carried them); with compressed_transfer 0 the sidecars are ignored."""
    from mirrors import mirrors, stdlib_http_server

    from kogitune.client import open_mirrors
    from kogitune.content_store import ContentStore
    from kogitune.errors import FetchError
    from kogitune.node.pool import SourcePool
    from kogitune.node.sources import HttpSource

    with mirrors(compressed.path, "ok") as urls:
        fetches = fetch_all(compressed, tmp_path / "one", SourcePool([HttpSource(urls[0])]))
    assert_same_tokens(compressed, tmp_path / "one")
    for fetch, shard in zip(fetches, compressed.shards):
        assert fetch.bytes_received == frames_bytes(compressed, shard) < 0.7 * shard.size
    only = sidecars_only(compressed, tmp_path / "only")
    with mirrors(only, "ok") as urls:
        tensor = open_mirrors(urls, ContentStore(tmp_path / "store"))
        for index in range(len(tensor.shards)):
            tensor.shard_tokens(index)
        assert_same_tokens(compressed, tensor.path)
    with stdlib_http_server(only) as url:  # no Range: the index is read past, then the frames
        fetch_all(compressed, tmp_path / "no-range", SourcePool([HttpSource(url)]))
        assert_same_tokens(compressed, tmp_path / "no-range")
    os.environ["KOGITUNE_COMPRESSED_TRANSFER"] = "0"
    try:
        with mirrors(only, "ok") as urls, pytest.raises(FetchError, match="HTTP 404"):
            fetch_all(compressed, tmp_path / "off", SourcePool([HttpSource(urls[0])], max_failures=1))
    finally:
        del os.environ["KOGITUNE_COMPRESSED_TRANSFER"]


def lie(kind: str, tensor, directory):
    """A copy of `tensor` whose sidecars lie in one way (every frame, so that any frame the liar sends is a lie)."""
    copy = sidecars_only(tensor, directory)
    piece_size = tensor.manifest.piece_size
    for shard in tensor.shards:
        path = copy / sidecar_path(shard)
        data = path.read_bytes()
        n = tensor.manifest.pieces_in(shard)
        index = parse_header(data[: header_size(n)], shard, piece_size)
        frames = [data[at : at + length] for at, length in (index.frame(i) for i in range(n))]
        if kind == "index":  # offsets one byte off: every frame starts in the wrong place
            header = encode_header(piece_size, [len(f) for f in frames])
            offsets = [o + 1 for o in struct.unpack_from(f"<{n + 1}Q", header, 24)]
            header = header[:24] + struct.pack(f"<{n + 1}Q", *offsets)
            path.write_bytes(header + b"\0" + b"".join(frames))
            continue
        if kind == "other-piece":  # valid frames of other bytes, each declaring its piece's length
            compressor = piece_compressor(3)
            frames = [
                encode_piece(compressor, bytes(len(decode_piece(f, len_of(shard, i, piece_size)))))
                for i, f in enumerate(frames)
            ]
        elif kind == "bomb":  # each frame a small frame of zeros declaring 1 TiB
            frames = [
                zstandard.ZstdCompressor().compress(b"\0" * 4096)[:4]
                + b"\xc0\x50"
                + struct.pack("<Q", 1 << 40)
                + b"\x01\x00\x00"
                for _ in frames
            ]
        elif kind == "garbage":
            frames = [bytes(len(f)) for f in frames]
        elif kind == "count":  # an index for one piece more than the shard has
            path.write_bytes(encode_header(piece_size, [len(f) for f in frames] + [1]) + b"".join(frames) + b"\0")
            continue
        path.write_bytes(encode_header(piece_size, [len(f) for f in frames]) + b"".join(frames))
    return copy


def len_of(shard, index: int, piece_size: int) -> int:
    return min(piece_size, shard.size - index * piece_size)


@pytest.mark.parametrize("kind", ["other-piece", "bomb", "garbage", "index", "count"])
def test_a_lying_sidecar_beside_an_honest_mirror_is_banned_and_the_dataset_completes(compressed, tmp_path, kind):
    """The liar is the only source at first, so it must lie (no race decides who sends what); it is banned for what
    it sent, the honest mirror then joins the same pool (as a late source does), and every shard completes,
    byte-identical and verified: nothing the liar sent landed."""
    from kogitune.node.pool import SourcePool
    from kogitune.node.sources import HttpSource

    liar = lie(kind, compressed, tmp_path / "liar")

    class HonestJoinsAfterTheBan(SourcePool):
        def ban(self, health, reason: str) -> None:
            super().ban(health, reason)
            self.add(HttpSource(honest_url))
            self.search_ended()

    with mirrors_of(liar, compressed) as (liar_url, honest_url):
        pool = HonestJoinsAfterTheBan([HttpSource(liar_url)])
        pool.search_started()  # the shard waits for a source to join rather than fail once the liar is gone
        fetch_all(compressed, tmp_path / "fetched", pool)
    assert_same_tokens(compressed, tmp_path / "fetched")
    banned = pool.health[0]
    assert banned.source.name == liar_url and banned.banned, pool.report()
    assert ("sidecar index" if kind in ("index", "count") else "compressed frame") in banned.banned
    assert banned.pieces_verified == 0


def test_mirrors_with_a_liar_give_the_right_samples_through_the_public_path(compressed, tmp_path):
    """open_mirrors over a lying sidecar mirror and an honest one with sidecars: the dataset is byte-identical."""
    from kogitune.client import open_mirrors
    from kogitune.content_store import ContentStore

    liar = lie("other-piece", compressed, tmp_path / "liar")
    with mirrors_of(liar, compressed.path) as urls:
        tensor = open_mirrors(list(urls), ContentStore(tmp_path / "store"))
        for index in range(len(tensor.shards)):
            tensor.shard_tokens(index)
    assert_same_tokens(compressed, tensor.path)


def mirrors_of(*directories):
    """One quiet "ok" mirror process per directory; yields their URLs."""
    import sys

    from mirrors import SERVER, server_processes

    paths = [getattr(d, "path", d) for d in directories]
    return server_processes([[sys.executable, str(SERVER), str(p)] for p in paths], quiet=True)


def test_a_node_serves_the_sidecars_of_its_store_on_its_data_port(compressed, nodes, tmp_path):
    """`kogitune compress` then `publish`: the node links the sidecars into its store, checks each before it serves
    it, and a fetch from its data port moves the frames; a sidecar damaged in the store is withheld (404), and the
    fetcher takes the flat tokens instead, until `kogitune compress ID` on the node's copy writes it again."""
    from kogitune.node.pool import SourcePool
    from kogitune.node.sources import HttpSource

    a = nodes("a")
    dataset_id = a.cli("publish", str(compressed.path)).stdout.strip()
    url = f"http://127.0.0.1:{a.data_port()}/{dataset_id}"
    fetches = fetch_all(compressed, tmp_path / "one", SourcePool([HttpSource(url)]))
    assert_same_tokens(compressed, tmp_path / "one")
    assert [f.bytes_received for f in fetches] == [frames_bytes(compressed, s) for s in compressed.shards]
    stored = a.home / "datasets" / dataset_id
    shard = compressed.shards[0]
    (stored / sidecar_path(shard)).unlink()  # not the user's file: replaced by a damaged copy
    damaged = (compressed.path / sidecar_path(shard)).read_bytes()
    (stored / sidecar_path(shard)).write_bytes(damaged[:-5] + bytes(5))
    fetches = fetch_all(compressed, tmp_path / "two", SourcePool([HttpSource(url)]))
    assert_same_tokens(compressed, tmp_path / "two")
    assert fetches[0].bytes_received == shard.size  # withheld: the flat tokens came instead
    assert "3 sidecar(s) written" in a.cli("compress", dataset_id, "--overwrite", "--quiet").stdout  # by ID
    fetches = fetch_all(compressed, tmp_path / "three", SourcePool([HttpSource(url)]))
    assert_same_tokens(compressed, tmp_path / "three")
    assert fetches[0].bytes_received == frames_bytes(compressed, shard)
