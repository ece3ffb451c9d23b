"""The wire protocol, bytes in and bytes out: frames, every message, the limits, and hostile input."""

from __future__ import annotations

import random
from pathlib import Path

import msgpack
import pytest

from kogitune.protocol.errors import KogituneError
from kogitune.protocol.frames import encode_frame, unpack_body
from kogitune.protocol.ids import base58btc, is_peer_id
from kogitune.protocol.wire import (
    DHT_PROTOCOL_ID,
    ERROR_CODES,
    FILE_KINDS,
    MAX_ALLOW_CHARS,
    MAX_HEADER_BYTES,
    MAX_OFFSET,
    MAX_READ_BYTES,
    MAX_REQUEST_BYTES,
    PROTOCOL_ID,
    WIRE_VERSION,
    ErrorResponse,
    FrameDecoder,
    HaveRequest,
    HaveResponse,
    ManifestRequest,
    ManifestResponse,
    ReadRequest,
    ReadResponse,
    WireError,
    encode_request,
    encode_response,
    encode_varint,
    expected_response,
    have_bitmap,
    have_shards,
    parse_request,
    parse_response,
    response_limit,
)

DATASET = bytes(range(32))  # the digest behind kg1-aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq
# The signature and public key of test_signing.py's vector (seed 32 x 0x01 signs the ID of DATASET).
SIGNATURE = bytes.fromhex(
    "d40650c8b121556f1f36cfc72b9518784a5864e2aa24ac24d551ca4e2b7253c5"
    "cd9a3d97cdc2961ce9d99fc6ba8d44b1c34b7e18c55a4c846843f3badbddb30c"
)
PUBLIC_KEY = bytes.fromhex("8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c")

# Byte-level vectors: these exact strings are in docs/protocol.md ("Test vectors"); change both or neither.
PEER_A, PEER_B = sorted(base58btc(bytes([0x00, 36, 0x08, 0x01, 0x12, 0x20]) + bytes([n]) * 32) for n in (1, 2))


def random_peer_id(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return base58btc(bytes([0x00, 36, 0x08, 0x01, 0x12, 0x20]) + rng.randbytes(32))  # Ed25519, "12D3KooW..."
    return base58btc(bytes([0x12, 32]) + rng.randbytes(32))  # a hashed key, "Qm..."


VECTORS = {
    "manifest request": (
        ManifestRequest(DATASET),
        "3a83a17602a26f70a86d616e6966657374a764617461736574c420"
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    ),
    "have request": (
        HaveRequest(DATASET),
        "3683a17602a26f70a468617665a764617461736574c420"
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    ),
    "read request": (
        ReadRequest(DATASET, "00000", "tokens", 65536, 65536),
        "6687a17602a26f70a472656164a764617461736574c420"
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "a57368617264a53030303030a466696c65a6746f6b656e73a66f6666736574ce00010000a66c656e677468ce00010000",
    ),
    "manifest response": (
        ManifestResponse(b"{}", SIGNATURE, PUBLIC_KEY),
        "af0187a17602a26f70a86d616e6966657374a86d616e6966657374c4027b7da97369676e6174757265c440"
        "d40650c8b121556f1f36cfc72b9518784a5864e2aa24ac24d551ca4e2b7253c5"
        "cd9a3d97cdc2961ce9d99fc6ba8d44b1c34b7e18c55a4c846843f3badbddb30c"
        "aa7075626c69635f6b6579c420"
        "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
        "a5616c6c6f77a0af616c6c6f775f7369676e6174757265c400",
    ),
    "have response": (
        HaveResponse(bytes([0x0D, 0x01])),  # shards 0, 2, 3 and 8 of 9
        "1783a17602a26f70a468617665a6736861726473c4020d01",
    ),
    "read response": (
        ReadResponse(65536),
        "1883a17602a26f70a472656164a66c656e677468ce00010000",
    ),
    "error response": (
        ErrorResponse("not_found", "no such dataset"),
        "3484a17602a26f70a56572726f72a4636f6465a96e6f745f666f756e64a76d657373616765af6e6f20737563682064617461736574",
    ),
}
REQUESTS = (ManifestRequest, HaveRequest, ReadRequest)
RESPONSE_TYPES = (ManifestResponse, HaveResponse, ReadResponse, ErrorResponse)


def encode(message) -> bytes:
    return encode_request(message) if isinstance(message, REQUESTS) else encode_response(message)


def decode_one(frame: bytes, max_body: int = MAX_HEADER_BYTES) -> dict:
    """The single frame of a complete stream."""
    decoder = FrameDecoder(max_body)
    decoder.feed(frame)
    decoder.feed(b"")
    obj = decoder.next_frame()
    assert decoder.unused() == b""
    return obj


def decode(message_type, frame: bytes):
    if message_type in REQUESTS:
        return parse_request(decode_one(frame, MAX_REQUEST_BYTES))
    return parse_response(decode_one(frame), message_type)


def raw_frame(obj) -> bytes:
    """Frame any msgpack value, valid or not, without the encoder's checks."""
    body = msgpack.packb(obj, use_bin_type=True)
    return encode_varint(len(body)) + body


def assert_bad(call, *args):
    with pytest.raises(WireError) as info:
        call(*args)
    assert info.value.code == "bad_request"
    return info.value


# ---- constants and vectors --------------------------------------------------------------------------------------


def test_constants():
    assert PROTOCOL_ID == "/kogitune/data/2.0.0"
    assert DHT_PROTOCOL_ID == "/kogitune/kad/1.0.0"
    assert WIRE_VERSION == 2
    assert MAX_OFFSET == (1 << 53) - 1
    assert MAX_REQUEST_BYTES == 4096
    assert MAX_HEADER_BYTES == 64 * 1024 * 1024 + 64 * 1024 + 4096
    assert MAX_READ_BYTES == 1 << 30
    assert FILE_KINDS == ("tokens", "pieces", "docs")
    assert ERROR_CODES == ("bad_request", "not_found", "busy", "internal")
    assert issubclass(WireError, KogituneError)


@pytest.mark.parametrize("name", list(VECTORS))
def test_vectors_encode_to_exact_bytes_and_back(name):
    message, hex_frame = VECTORS[name]
    assert encode(message).hex() == hex_frame
    assert decode(type(message), bytes.fromhex(hex_frame)) == message


def test_vectors_in_docs_are_the_tests_vectors():
    """docs/protocol.md shows every vector of this file, byte for byte."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
    text = "".join(docs.read_text(encoding="utf-8").split())  # the docs wrap long hex over lines
    for name, (_, hex_frame) in VECTORS.items():
        assert hex_frame in text, f"the {name} vector is not in docs/protocol.md"


def test_varint_encoding():
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(300) == b"\xac\x02"
    assert encode_varint((1 << 64) - 1) == b"\xff" * 9 + b"\x01"
    with pytest.raises(ValueError):
        encode_varint(-1)
    with pytest.raises(ValueError):
        encode_varint(1 << 64)


# ---- round trips ------------------------------------------------------------------------------------------------


def random_messages(rng: random.Random, count: int):
    for _ in range(count):
        dataset = rng.randbytes(32)
        kind = rng.randrange(7)
        if kind == 0:
            yield ManifestRequest(dataset)
        elif kind == 1:
            yield HaveRequest(dataset)
        elif kind == 2:
            yield ReadRequest(
                dataset,
                str(rng.randrange(10**9)).zfill(rng.randint(5, 9)),
                rng.choice(FILE_KINDS),
                rng.choice([0, rng.randrange(1 << 50), MAX_OFFSET]),
                rng.choice([1, rng.randint(1, MAX_READ_BYTES), MAX_READ_BYTES]),
            )
        elif kind == 3:
            allow = {random_peer_id(rng) for _ in range(rng.choice([0, 1, 20]))}
            yield ManifestResponse(
                rng.randbytes(rng.randint(1, 3000)),
                rng.randbytes(64),
                rng.randbytes(32),
                tuple(sorted(allow)),
                rng.randbytes(64) if allow else b"",
            )
        elif kind == 4:
            count_shards = rng.randint(0, 100)
            yield HaveResponse(have_bitmap([rng.random() < 0.5 for _ in range(count_shards)]))
        elif kind == 5:
            yield ReadResponse(rng.randint(1, MAX_READ_BYTES))
        else:
            text = "".join(rng.choice("aé😀 \n\x00") for _ in range(rng.randint(0, 1000)))
            yield ErrorResponse(rng.choice(ERROR_CODES), text)


def test_every_message_round_trips():
    rng = random.Random(1)
    for message in random_messages(rng, 2000):
        assert decode(type(message), encode(message)) == message


def test_a_big_manifest_response_round_trips():
    manifest = bytes(range(256)) * (1 << 18)  # 64 MiB: the largest manifest there can be
    rng = random.Random(2)
    allow = tuple(sorted({random_peer_id(rng) for _ in range(1300)}))
    while len(" ".join(allow)) > MAX_ALLOW_CHARS:
        allow = allow[:-1]  # the longest allow-list there can be
    frame = encode_response(ManifestResponse(manifest, SIGNATURE, PUBLIC_KEY, allow, SIGNATURE))
    assert len(frame) <= MAX_HEADER_BYTES + 10
    assert parse_response(decode_one(frame), ManifestResponse) == ManifestResponse(
        manifest, SIGNATURE, PUBLIC_KEY, allow, SIGNATURE
    )
    with pytest.raises(ValueError):
        encode_response(ManifestResponse(manifest + b"x", SIGNATURE, PUBLIC_KEY))


def test_an_error_response_is_accepted_whatever_was_expected():
    frame = decode_one(encode_response(ErrorResponse("busy", "try later")))
    for expected in RESPONSE_TYPES:
        assert parse_response(frame, expected) == ErrorResponse("busy", "try later")


def test_expected_response_and_limits():
    for request, response in [
        (ManifestRequest(DATASET), ManifestResponse),
        (HaveRequest(DATASET), HaveResponse),
        (ReadRequest(DATASET, "00001", "docs", 0, 4), ReadResponse),
    ]:
        assert expected_response(request) is response
        assert response_limit(request) <= MAX_HEADER_BYTES
    assert response_limit(ManifestRequest(DATASET)) == MAX_HEADER_BYTES
    # The largest have-map and the longest error message fit the limits their requests get.
    biggest_have = encode_response(HaveResponse(have_bitmap([True] * (1 << 20))))
    assert parse_response(decode_one(biggest_have, response_limit(HaveRequest(DATASET))), HaveResponse)
    longest_error = encode_response(ErrorResponse("internal", "😀" * 1000))
    assert (
        parse_response(
            decode_one(longest_error, response_limit(ReadRequest(DATASET, "00000", "docs", 0, 1))), ReadResponse
        ).message
        == "😀" * 1000
    )


def test_error_messages_are_cut_and_cleaned_by_the_encoder():
    frame = encode_response(ErrorResponse("internal", "x" * 5000))
    assert parse_response(decode_one(frame), ReadResponse) == ErrorResponse("internal", "x" * 1000)
    frame = encode_response(ErrorResponse("internal", "bad \udcff name"))
    assert parse_response(decode_one(frame), ReadResponse).message == "bad ? name"


def test_the_encoders_refuse_invalid_messages():
    for bad in [
        ManifestRequest(DATASET[:31]),
        HaveRequest("x" * 32),
        ReadRequest(DATASET, "abc", "tokens", 0, 1),
        ReadRequest(DATASET, "00000", "tokens", -1, 1),
        ReadRequest(DATASET, "00000", "tokens", 0, 0),
        ReadRequest(DATASET, "00000", "blob", 0, 1),
    ]:
        with pytest.raises(ValueError):
            encode_request(bad)
    for bad in [
        ManifestResponse(b"", SIGNATURE, PUBLIC_KEY),
        ManifestResponse(b"{}", SIGNATURE[:63], PUBLIC_KEY),
        ReadResponse(0),
        ReadResponse(MAX_READ_BYTES + 1),
        ErrorResponse("teapot", "no"),
    ]:
        with pytest.raises(ValueError):
            encode_response(bad)
    with pytest.raises(TypeError):
        encode_request(ReadResponse(1))
    with pytest.raises(ValueError):
        encode_frame({1: 2})


def test_wire_error_codes():
    for code in ERROR_CODES:
        error = WireError(code, "why")
        assert error.code == code and str(error) == "why"
    assert str(WireError("busy")) == "busy"
    with pytest.raises(ValueError):
        WireError("nope")
    import pickle

    copy = pickle.loads(pickle.dumps(WireError("not_found", "no such dataset")))
    assert (copy.code, copy.message) == ("not_found", "no such dataset")


# ---- the frame decoder ------------------------------------------------------------------------------------------


def all_vector_bytes() -> tuple[bytes, list[dict]]:
    frames = [bytes.fromhex(h) for _, h in VECTORS.values()]
    return b"".join(frames), [decode_one(f) for f in frames]


def test_decoder_fed_one_byte_at_a_time():
    stream, expected = all_vector_bytes()
    decoder = FrameDecoder(MAX_HEADER_BYTES)
    got = []
    for byte in stream:
        decoder.feed(bytes([byte]))
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    assert got == expected
    assert decoder.unused() == b"" and decoder.buffered == 0


def test_decoder_fed_random_splits():
    stream, expected = all_vector_bytes()
    rng = random.Random(2)
    for _ in range(300):
        decoder = FrameDecoder(MAX_HEADER_BYTES)
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 20)))
        got = []
        for start, end in zip([0] + cuts, cuts + [len(stream)]):
            decoder.feed(stream[start:end])
            while (frame := decoder.next_frame()) is not None:
                got.append(frame)
        decoder.feed(b"")
        with pytest.raises(WireError):
            decoder.next_frame()  # the stream ended cleanly, but a caller that still wants a frame gets none
        assert got == expected


def test_unused_bytes_after_a_read_header_are_the_raw_data():
    rng = random.Random(3)
    raw = rng.randbytes(5000)
    stream = encode_response(ReadResponse(len(raw))) + raw
    for _ in range(200):
        decoder = FrameDecoder(response_limit(ReadRequest(DATASET, "00000", "tokens", 0, len(raw))))
        at = 0
        while True:
            step = rng.randint(1, 64)
            decoder.feed(stream[at : at + step])
            at += step
            frame = decoder.next_frame()
            if frame is not None:
                break
        response = parse_response(frame, ReadResponse)
        assert response == ReadResponse(5000)
        assert decoder.unused() + stream[at:] == raw


def test_end_of_stream():
    frame = bytes.fromhex(VECTORS["read response"][1])
    decoder = FrameDecoder(100)
    decoder.feed(frame)
    decoder.feed(b"")  # the end of the stream
    assert decoder.next_frame() == {"v": 2, "op": "read", "length": 65536}
    with pytest.raises(WireError, match="ended before a frame"):
        decoder.next_frame()
    with pytest.raises(ValueError):
        decoder.feed(b"more")


@pytest.mark.parametrize(
    "data, why",
    [
        (b"\x80", "ended inside a frame"),  # truncated varint
        (b"\x80\x80", "ended inside a frame"),
        (bytes.fromhex(VECTORS["have request"][1])[:-1], "ended inside a frame"),  # truncated body
        (b"", "ended before a frame"),
    ],
)
def test_a_stream_that_ends_inside_a_frame(data, why):
    decoder = FrameDecoder(MAX_REQUEST_BYTES)
    if data:
        decoder.feed(data)
    assert decoder.next_frame() is None
    decoder.feed(b"")
    error = assert_bad(decoder.next_frame)
    assert why in str(error)
    assert_bad(decoder.next_frame)  # errors are sticky


def test_an_oversized_length_is_refused_before_the_body_arrives():
    for length in [MAX_REQUEST_BYTES + 1, 1 << 30, (1 << 64) - 1]:
        decoder = FrameDecoder(MAX_REQUEST_BYTES)
        decoder.feed(encode_varint(length))  # only the length: no body has been sent
        assert "above the limit" in str(assert_bad(decoder.next_frame))
        assert decoder.buffered == 0
        decoder.feed(b"\x00" * 4000)  # the body that follows is dropped, not buffered
        assert decoder.buffered == 0
    # Refused as soon as the varint's bytes so far exceed the limit, even before its last byte.
    decoder = FrameDecoder(MAX_REQUEST_BYTES)
    decoder.feed(b"\xff\xff")
    assert_bad(decoder.next_frame)
    # The limit itself is fine.
    decoder = FrameDecoder(MAX_REQUEST_BYTES)
    decoder.feed(encode_varint(MAX_REQUEST_BYTES))
    assert decoder.next_frame() is None


def test_a_varint_longer_than_ten_bytes_is_refused():
    decoder = FrameDecoder(1 << 62)
    decoder.feed(b"\x80" * 10)
    assert "longer than 10" in str(assert_bad(decoder.next_frame))
    decoder = FrameDecoder(1 << 62)
    decoder.feed(b"\x80" * 9)
    assert decoder.next_frame() is None


def test_a_varint_with_redundant_bytes_is_refused():
    decoder = FrameDecoder(MAX_REQUEST_BYTES)
    decoder.feed(b"\x83\x00" + msgpack.packb({"v": 1}))
    assert "redundant" in str(assert_bad(decoder.next_frame))


def test_bytes_after_a_complete_frame():
    """The chunk that completes a frame may carry more (a read response's raw data); more chunks on top of a
    complete frame that nobody took, beyond max_body + 10 bytes, are refused."""
    header = encode_response(ReadResponse(65536))
    decoder = FrameDecoder(100)
    decoder.feed(header + b"r" * 65536)  # one big read: the header and all its data
    assert decoder.next_frame() == {"v": 2, "op": "read", "length": 65536}
    assert decoder.unused() == b"r" * 65536
    decoder = FrameDecoder(100)
    decoder.feed(header + b"r" * 50)
    decoder.feed(b"r" * 50)  # 121 bytes in all while a complete frame waits: more than 100 + 10
    with pytest.raises(WireError, match="while a complete frame waited"):
        decoder.next_frame()
    assert decoder.buffered == 0
    assert_bad(decoder.unused)
    decoder = FrameDecoder(100)
    decoder.feed(header + b"r" * 50)
    decoder.feed(b"r" * 30)  # 101 bytes: within the bound
    assert decoder.next_frame() is not None and decoder.unused() == b"r" * 80


def test_an_incomplete_frame_never_holds_more_than_the_bound():
    rng = random.Random(8)
    for _ in range(200):
        max_body = rng.randint(1, 3000)
        decoder = FrameDecoder(max_body)
        length = rng.randint(0, max_body + 50)
        decoder.feed(encode_varint(length))
        while True:
            decoder.feed(rng.randbytes(rng.randint(1, 500)))
            try:
                if decoder.next_frame() is not None:
                    break
            except WireError:
                break
            assert decoder.buffered <= max_body + 10


@pytest.mark.parametrize(
    "body, why",
    [
        (msgpack.packb({"v": 1}) + b"\x00", "bytes after its map"),  # trailing garbage inside the body
        (b"", "not one msgpack map"),  # an empty body
        (b"\xc1", "not one msgpack map"),  # a byte msgpack never uses
        (b"\x82\xa1v\x01", "not one msgpack map"),  # a map that ends early
        (b"\x82\xa1v\x01\xa1v\x02", "repeats a key"),  # decoders differ on which value they would keep
        (b"\xa3abc", "not a map"),
        (msgpack.packb(7), "not a map"),
        (msgpack.packb(None), "not a map"),
        (msgpack.packb([1, 2]), "not one msgpack map"),  # arrays are refused by the decoder's limits
        (msgpack.packb({1: 2}), "not one msgpack map"),  # strict_map_key: only str or bin keys
        (msgpack.packb({b"v": 1}, use_bin_type=True), "not a string"),
        (msgpack.packb({str(i): i for i in range(17)}), "not one msgpack map"),  # more than 16 keys
        (b"\xd4\x01\x00", "not one msgpack map"),  # extension types are refused
        (b"\x81\xa1v\xa2\xff\xfe", "not one msgpack map"),  # invalid UTF-8 in a string
        (b"\xdf\xff\xff\xff\xff", "not one msgpack map"),  # a map that claims 4 billion entries
        (b"\xc6\xff\xff\xff\xff", "not one msgpack map"),  # a bin that claims 4 GiB
        (b"\x81\xa1v" * 2000, "not one msgpack map"),  # maps nested 2000 deep
        (msgpack.packb({"v": {"v": 1}}), "nested map"),  # a map inside a map
        (msgpack.packb({"v": []}), "holds an array"),  # an (empty) array as a value
    ],
)
def test_malformed_bodies(body, why):
    decoder = FrameDecoder(MAX_HEADER_BYTES)
    decoder.feed(encode_varint(len(body)) + body)
    assert why in str(assert_bad(decoder.next_frame))


def nested(depth: int):
    value = 1
    for _ in range(depth):
        value = {"v": value}
    return value


@pytest.mark.parametrize("field", ["v", "op", "dataset", "offset"])
def test_a_nested_map_is_refused_by_the_decoder(field):
    """A map nested 1000 deep fits msgpack's own stack and a request frame; before the decoder refused nested maps
    it came out of the parsers as RecursionError (from an error message's repr), not WireError."""
    body = msgpack.packb({**read_request(), field: nested(1000)})
    assert len(body) < MAX_REQUEST_BYTES
    decoder = FrameDecoder(MAX_REQUEST_BYTES)
    decoder.feed(encode_varint(len(body)) + body)
    with pytest.raises(WireError) as caught:
        parse_request(decoder.next_frame())
    assert caught.value.code == "bad_request" and "nested map" in str(caught.value)


def test_a_frame_of_nested_maps_costs_no_more_memory_than_its_bytes():
    """A tree of maps (16 entries each, 4 levels: 5 MB) decoded to 27 MB of objects before; now the decoder stops
    at the second map it completes."""
    import tracemalloc

    tree = None
    for _ in range(5):
        tree = {f"k{i}": tree for i in range(16)}
    body = msgpack.packb(tree)
    tracemalloc.start()
    try:
        with pytest.raises(WireError, match="nested map"):
            unpack_body(body, MAX_HEADER_BYTES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(body) > 4 << 20 and peak < 1 << 20


# ---- malformed requests and responses ---------------------------------------------------------------------------


def read_request(**changes) -> dict:
    obj = {"v": 2, "op": "read", "dataset": DATASET, "shard": "00000", "file": "tokens", "offset": 0, "length": 1}
    obj.update(changes)
    return {k: v for k, v in obj.items() if v is not ...}


@pytest.mark.parametrize(
    "obj",
    [
        read_request(v=1),
        read_request(v=3),
        read_request(v=0),
        read_request(v="2"),
        read_request(v=True),
        read_request(v=2.0),
        read_request(v=...),
        read_request(op="write"),
        read_request(op="READ"),
        read_request(op=b"read"),
        read_request(op=...),
        read_request(dataset=DATASET[:31]),
        read_request(dataset=DATASET + b"\x00"),
        read_request(dataset=DATASET.hex()),
        read_request(dataset=None),
        read_request(dataset=...),
        read_request(shard="abc"),
        read_request(shard="1234"),
        read_request(shard="1234567890"),
        read_request(shard="00000\n"),
        read_request(shard="٠٠٠٠٠"),  # Arabic-Indic digits are digits to str.isdigit, not to the protocol
        read_request(shard=12345),
        read_request(shard=...),
        read_request(file="blob"),
        read_request(file="../tokens"),
        read_request(file=b"tokens"),
        read_request(file=...),
        read_request(offset=-1),
        read_request(offset=1 << 53),
        read_request(offset=1 << 63),
        read_request(offset="0"),
        read_request(offset=0.0),
        read_request(offset=False),
        read_request(offset=...),
        read_request(length=0),
        read_request(length=-5),
        read_request(length=MAX_READ_BYTES + 1),
        read_request(length=True),
        read_request(length=...),
        read_request(extra=1),
        {"v": 2, "op": "manifest", "dataset": DATASET, "shard": "00000"},
        {"v": 2, "op": "have", "dataset": DATASET, "x": None},
        {"v": 2, "op": "have"},
        {"v": 1, "op": "manifest", "dataset": DATASET},
        {"v": 2, "op": "error", "dataset": DATASET},
        {},
        [],
        "manifest",
    ],
)
def test_malformed_requests(obj):
    assert_bad(parse_request, obj)
    if isinstance(obj, dict):  # the same through a frame
        decoder = FrameDecoder(MAX_REQUEST_BYTES)
        decoder.feed(raw_frame(obj))
        assert_bad(lambda: parse_request(decoder.next_frame()))


def test_valid_request_edges():
    assert parse_request(read_request(length=MAX_READ_BYTES, offset=MAX_OFFSET, shard="999999999", file="docs"))
    assert parse_request(read_request(file="pieces")).file == "pieces"


def test_any_msgpack_form_of_a_value_is_accepted():
    """Frames are neither hashed nor signed, so a decoder takes every msgpack form of a value, not only the shortest
    that Kogitune writes: an encoder in another language may write 2 as uint 64, a short string as str 8 or str 32,
    a map as map 16."""
    longest = (
        "de0003"  # map 16 of 3 entries
        "d90176" + "cf0000000000000002"  # "v" as str 8, 2 as uint 64
        "db000000026f70" + "da00086d616e6966657374"  # "op" as str 32, "manifest" as str 16
        "a764617461736574" + "c600000020" + DATASET.hex()  # "dataset", bin 32
    )
    body = bytes.fromhex(longest)
    docs = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
    assert longest.removesuffix(DATASET.hex()) in "".join(docs.read_text(encoding="utf-8").split())
    assert parse_request(decode_one(encode_varint(len(body)) + body, MAX_REQUEST_BYTES)) == ManifestRequest(DATASET)
    for two in ["d30000000000000002", "d10002", "cc02", "d002"]:  # int 64, int 16, uint 8, int 8
        body = bytes.fromhex("83a176" + two + "a26f70a472656164a66c656e677468d200010000")  # length as int 32
        assert parse_response(decode_one(encode_varint(len(body)) + body), ReadResponse) == ReadResponse(65536)


@pytest.mark.parametrize(
    "obj",
    [
        read_request(op=b"read"),
        read_request(op=None),
        read_request(v=True),
        read_request(v=[1]),
        read_request(shard=b"\x00\x01"),
        read_request(file="it's"),
        read_request(offset=-1),
        read_request(length=1.5),
        read_request(dataset="x" * 32),
        read_request(dataset=...),
        {"v": 2, "op": "have", "dataset": DATASET, "x": b"1"},
    ],
)
def test_error_messages_show_values_in_msgpack_terms(obj):
    """Error messages go to peers written in any language: values appear as JSON strings, integers, true, false,
    nil or a msgpack type, never as Python reprs (b'..', None, True, ['..'])."""
    message = str(assert_bad(parse_request, obj))
    for python in ["b'", 'b"', "None", "True", "False", "['", "NoneType", "dict", "list"]:
        assert python not in message, message


def test_peer_ids():
    """What libp2p prints for an Ed25519 key (identity multihash) and for a hashed key (SHA-256 multihash), nothing
    else: typos in --allow must not pass."""
    from kogitune.protocol.signing import peer_id_from_public_key

    real = peer_id_from_public_key(PUBLIC_KEY)
    assert real.startswith("12D3KooW") and is_peer_id(real)
    assert is_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    for bad in [
        "",
        "notapeer",
        "12D3KooWtypo",
        real[:-1],
        real + "1",
        real.replace("K", "0"),
        "Qm" + "1" * 44,
        "x" * 129,
        None,
        real.encode(),
    ]:
        assert not is_peer_id(bad), bad


def ok(op: str, **fields) -> dict:
    return {"v": 2, "op": op, **fields}


def manifest_ok(**changes) -> dict:
    """A valid manifest response with `changes` (None removes a key)."""
    fields = {
        "manifest": b"{}",
        "signature": SIGNATURE,
        "public_key": PUBLIC_KEY,
        "allow": "",
        "allow_signature": b"",
        **changes,
    }
    return ok("manifest", **{key: value for key, value in fields.items() if value is not None})


@pytest.mark.parametrize(
    "obj, expected",
    [
        (manifest_ok(extra=1), ManifestResponse),
        (manifest_ok(public_key=None), ManifestResponse),
        (manifest_ok(allow_signature=None), ManifestResponse),
        (manifest_ok(manifest=b""), ManifestResponse),
        (manifest_ok(manifest="{}"), ManifestResponse),
        (manifest_ok(signature=SIGNATURE[:63]), ManifestResponse),
        (manifest_ok(public_key=PUBLIC_KEY + b"\x00"), ManifestResponse),
        *[
            (manifest_ok(allow=allow, allow_signature=SIGNATURE), ManifestResponse)
            for allow in [
                None,
                PEER_A.encode(),
                f"{PEER_B} {PEER_A}",
                f"{PEER_A} {PEER_A}",
                f"{PEER_A}  {PEER_B}",
                f" {PEER_A}",
                f"{PEER_A}\n{PEER_B}",
                PEER_A[:-1],
                PEER_A + "1",
                "12D3KooW0",
                "x" * 129,
                f"{PEER_A} " * 1300,
            ]
        ],
        (manifest_ok(allow=PEER_A), ManifestResponse),  # a list without the publisher's signature
        (manifest_ok(allow=PEER_A, allow_signature=SIGNATURE[:63]), ManifestResponse),
        (manifest_ok(allow_signature=SIGNATURE), ManifestResponse),  # a signature without a list
        (ok("have", shards=b"\x01"), ManifestResponse),  # a valid have response where a manifest was expected
        (ok("manifest", shards=b"\x01"), HaveResponse),  # a have response tagged as something else
        (ok("read", length=5), HaveResponse),
        (ok("have", length=5), HaveResponse),
        (ok("have", shards=b"\x00" * (131072 + 1)), HaveResponse),
        (ok("have", shards=[1]), HaveResponse),
        (ok("read", length=0), ReadResponse),
        (ok("read", length=MAX_READ_BYTES + 1), ReadResponse),
        (ok("read", length="5"), ReadResponse),
        (ok("read", length=5.0), ReadResponse),
        (ok("READ", length=5), ReadResponse),
        (ok(b"read", length=5), ReadResponse),
        ({"v": 1, "op": "read", "length": 5}, ReadResponse),
        ({"v": 2, "length": 5}, ReadResponse),
        ({"v": 1, "ok": True, "length": 5}, ReadResponse),  # a 1.x response
        ({"v": 2, "ok": True, "op": "read", "length": 5}, ReadResponse),
        ({"v": 1, "ok": False, "code": "busy", "message": ""}, ReadResponse),
        (ok("error", code="teapot", message=""), ReadResponse),
        (ok("error", code="busy", message="x" * 1001), ReadResponse),
        (ok("error", code="busy", message=b"x"), ReadResponse),
        (ok("error", code="busy"), ReadResponse),
        (ok("error", code="busy", message="", length=5), ReadResponse),
        ({"v": 3, "op": "error", "code": "busy", "message": ""}, ReadResponse),
        (ok("read", code="busy", message=""), ErrorResponse),
        ([], ReadResponse),
    ],
)
def test_malformed_responses(obj, expected):
    assert_bad(parse_response, obj, expected)


def test_parse_response_needs_a_response_class():
    with pytest.raises(TypeError):
        parse_response(ok("read", length=1), dict)


# ---- have-maps --------------------------------------------------------------------------------------------------


def test_have_bitmap_layout():
    assert have_bitmap([]) == b""
    assert have_bitmap([True]) == b"\x01"
    assert have_bitmap([False] * 7 + [True]) == b"\x80"
    assert have_bitmap([True, False, True, True, False, False, False, False, True]) == b"\x0d\x01"
    rng = random.Random(4)
    for _ in range(300):
        complete = [rng.random() < 0.3 for _ in range(rng.randint(0, 70))]
        assert have_shards(have_bitmap(complete), len(complete)) == complete


@pytest.mark.parametrize(
    "bitmap, count",
    [
        (b"", 1),
        (b"\x00", 0),
        (b"\x00\x00", 8),
        (b"\x00", 9),
        (b"\x02", 1),  # shard 1 of a 1-shard manifest
        (b"\x00\x02", 9),  # shard 9 of 9
        (b"\x80", 7),
    ],
)
def test_have_shards_refuses_maps_that_do_not_fit(bitmap, count):
    assert_bad(have_shards, bitmap, count)


# ---- fuzz -------------------------------------------------------------------------------------------------------


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randint(-(1 << 63), (1 << 64) - 1)
    if kind == 1:
        return rng.choice([0, 1, 2, -1, 65536, MAX_READ_BYTES, MAX_READ_BYTES + 1, (1 << 63) - 1, 1 << 63])
    if kind == 2:
        return rng.random() * 1e6
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return "".join(rng.choice("0123456789abc😀\x00") for _ in range(rng.randint(0, 12)))
    if kind == 5:
        return rng.choice(
            ["00000", "123456789", "tokens", "pieces", "docs", "manifest", "have", "read", "error", *ERROR_CODES]
        )
    if kind == 6:
        return rng.randbytes(rng.choice([0, 1, 31, 32, 33, 63, 64, 65, rng.randint(0, 300)]))
    if kind == 7 and depth < 3:
        return {random_key(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if kind == 8 and depth < 3:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice([DATASET, SIGNATURE, PUBLIC_KEY, 1, "x"])


def random_key(rng: random.Random):
    keys = [
        "v",
        "op",
        "ok",
        "error",
        "dataset",
        "shard",
        "file",
        "offset",
        "length",
        "manifest",
        "signature",
        "public_key",
        "shards",
        "code",
        "message",
        "extra",
        "",
    ]
    return rng.choice(keys) if rng.random() < 0.95 else rng.choice([1, b"v", None])


def mutated_object(rng: random.Random) -> dict:
    message, _ = rng.choice(list(VECTORS.values()))
    obj = decode_one(encode(message))
    for _ in range(rng.randint(1, 3)):
        action = rng.randrange(3)
        if action == 0 and obj:
            del obj[rng.choice(list(obj))]
        elif action == 1 and obj:
            obj[rng.choice(list(obj))] = random_value(rng)
        else:
            obj[random_key(rng)] = random_value(rng)
    return obj


def fuzz_frame(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # a structurally mutated message, framed correctly
        try:
            return raw_frame(mutated_object(rng))
        except (TypeError, ValueError, OverflowError):
            return raw_frame({"v": 1})
    if kind == 1:  # a valid message
        return encode(next(random_messages(rng, 1)))
    frame = bytearray(bytes.fromhex(rng.choice(list(VECTORS.values()))[1]))
    if kind == 2:  # flipped bytes
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
    elif kind == 3:  # bytes inserted, removed or cut off
        at = rng.randrange(len(frame))
        if rng.random() < 0.5:
            frame[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            del frame[at : at + rng.randint(1, 8)]
    elif kind == 4:  # a mutated body with a length that matches it
        body = bytearray(frame[1:] if frame[0] < 0x80 else frame[2:])
        body[rng.randrange(len(body))] = rng.randrange(256)
        frame = bytearray(encode_varint(len(body)) + body)
    else:  # noise, or a length with little behind it
        frame = bytearray(rng.randbytes(rng.randint(0, 200)))
        if rng.random() < 0.3:
            frame = bytearray(encode_varint(rng.randint(0, 1 << 40)) + frame)
    return bytes(frame)


def test_fuzz_frames_parse_or_raise_wire_error():
    """5,000 random and mutated frames, fed in random splits: each parses or raises WireError, nothing else, and the
    decoder never holds more than max_body + 10 bytes beyond the chunk just fed (none beyond once next_frame() has
    returned None)."""
    rng = random.Random(5)
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(5000):
        data = fuzz_frame(rng)
        max_body = rng.choice([MAX_REQUEST_BYTES, 512, 64, response_limit(HaveRequest(DATASET)), MAX_HEADER_BYTES])
        decoder = FrameDecoder(max_body)
        try:
            at = 0
            frames = []
            while at < len(data):
                step = rng.randint(1, 80) if rng.random() < 0.8 else rng.randint(1, 5000)
                decoder.feed(data[at : at + step])
                assert decoder.buffered <= max_body + 10 + len(data[at : at + step])
                at += step
                while (frame := decoder.next_frame()) is not None:
                    frames.append(frame)
                assert decoder.buffered <= max_body + 10  # next_frame() said None: an incomplete frame at most
            decoder.feed(b"")
            if not frames:
                frames.append(decoder.next_frame())
            for frame in frames:
                if rng.random() < 0.5:
                    parse_request(frame)
                else:
                    parse_response(frame, rng.choice(RESPONSE_TYPES))
            outcomes["parsed"] += 1
        except WireError as exc:
            assert exc.code == "bad_request"
            outcomes["refused"] += 1
        assert decoder.buffered <= max_body + 10
    assert outcomes["parsed"] > 200 and outcomes["refused"] > 2000, outcomes


def test_fuzz_parsers_on_random_objects():
    """The parsers take any decoded value, however odd, and answer with a message or WireError."""
    rng = random.Random(6)
    for _ in range(5000):
        obj = mutated_object(rng) if rng.random() < 0.7 else random_value(rng)
        try:
            parse_request(obj)
        except WireError:
            pass
        try:
            parse_response(obj, rng.choice(RESPONSE_TYPES))
        except WireError:
            pass


# ---- a whole exchange, as the node does it ----------------------------------------------------------------------


def test_a_read_exchange_bytes_in_bytes_out():
    """Client and server of one stream, with the wire carried in random pieces: the pattern the node follows."""
    rng = random.Random(7)
    tokens = rng.randbytes(300_000)  # the server's file

    def chunks(data: bytes):
        at = 0
        while at < len(data):
            step = rng.randint(1, 70_000)
            yield data[at : at + step]
            at += step

    request = ReadRequest(DATASET, "00042", "tokens", 65536, 131072)
    # Server: decode one request under MAX_REQUEST_BYTES, answer with a header and the raw range.
    server = FrameDecoder(MAX_REQUEST_BYTES)
    for chunk in chunks(encode_request(request)):
        server.feed(chunk)
    server.feed(b"")
    received = parse_request(server.next_frame())
    assert received == request
    reply = encode_response(ReadResponse(received.length)) + tokens[received.offset : received.offset + received.length]
    # Client: decode the header under response_limit(request), then the raw bytes it already has, then the rest.
    client = FrameDecoder(response_limit(request))
    pieces = chunks(reply)
    header = None
    while header is None:
        client.feed(next(pieces))
        header = client.next_frame()
    response = parse_response(header, expected_response(request))
    assert response == ReadResponse(request.length)
    body = client.unused() + b"".join(pieces)
    assert len(body) == response.length and body == tokens[65536 : 65536 + 131072]
