"""The protocol, bytes in and bytes out: dataset IDs, the canonical encoding, the manifest schema and pieces."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest

from kogitune.protocol.errors import IntegrityError, KogituneError, ManifestError
from kogitune.protocol.ids import dataset_id_digest, dataset_id_from_digest, is_dataset_id, provider_key
from kogitune.protocol.jsonlimits import MAX_JSON_DEPTH
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, ShardInfo, canonical_encoding, parse_manifest
from kogitune.protocol.pieces import PieceHasher, check_pieces_file, piece_digests, piece_span, root_of

# The ID of manifest_dict() below. It pins the canonical encoding and the ID scheme: if this changes, every
# dataset ID ever published changes with it.
FIXED_DATASET_ID = "kg1-4sc3c6jvxx732gjavd2boticvkq655plpd3vrojccatavmxlc6uq"


def manifest_dict() -> dict:
    """A small valid manifest: 10 uint16 tokens in 3 blocks of 4, in two shards (keys deliberately unsorted)."""
    return {
        "format": "kogitune-tensor/1",
        "tokenizer": {
            "name": "gpt2",
            "id": "gpt2-f04f",
            "fingerprint": "ab" * 32,
            "vocab_size": 50257,
            "eos_id": 50256,
        },
        "dtype": "uint16",
        "block_size": 4,
        "piece_size": 65536,
        "counts": {"documents": 3, "tokens": 10, "blocks": 3},
        "shards": [
            {"name": "00000", "blocks": 2, "size": 16, "root": "11" * 32, "documents": 2, "docs_sha256": "22" * 32},
            {"name": "00001", "blocks": 1, "size": 8, "root": "33" * 32, "documents": 1, "docs_sha256": "44" * 32},
        ],
        "provenance": {"inputs": [{"name": "genèse.jsonl", "size": 123, "sha256": "55" * 32}]},
    }


def encoded(obj) -> bytes:
    return json.dumps(obj).encode()


# ---- dataset IDs ------------------------------------------------------------------------------------------------


def test_dataset_id_round_trips_through_its_digest():
    """Any 32-byte digest becomes `kg1-` + 52 base32 characters, and the ID gives back exactly that digest."""
    rng = random.Random(7)
    for _ in range(500):
        digest = rng.randbytes(32)
        dataset_id = dataset_id_from_digest(digest)
        assert dataset_id.startswith("kg1-") and len(dataset_id) == 56
        assert set(dataset_id[4:]) <= set("abcdefghijklmnopqrstuvwxyz234567")
        assert is_dataset_id(dataset_id)
        assert dataset_id_digest(dataset_id) == digest


def test_dataset_ids_of_known_digests():
    """The encoding is lowercase RFC 4648 base32 without padding."""
    assert dataset_id_from_digest(bytes(32)) == "kg1-" + "a" * 52
    assert dataset_id_from_digest(b"\xff" * 32) == "kg1-" + "7" * 51 + "q"
    empty = hashlib.sha256(b"").digest()
    assert dataset_id_from_digest(empty) == "kg1-4oymiquy7qobjgx36tejs35zeqt24qpemsnzgtfeswmrw6csxbkq"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "kg1-",
        "kg1-" + "a" * 51,
        "kg1-" + "a" * 53,
        "KG1-" + "a" * 52,
        "kg1-" + "A" * 52,
        "kg2-" + "a" * 52,
        "kg1-" + "a" * 51 + "1",
        "kg1-" + "a" * 51 + "8",
        "kg1-" + "a" * 52 + "\n",
        " kg1-" + "a" * 52,
        "kg1-" + "a" * 51 + "b",  # decodes to the digest of "a" * 52: one digest must have one ID
    ],
)
def test_malformed_dataset_ids_are_refused(text):
    """Only the exact form that dataset_id_from_digest writes is a dataset ID."""
    assert not is_dataset_id(text)
    with pytest.raises(KogituneError, match="is not a dataset ID"):
        dataset_id_digest(text)


# The DHT key vectors of docs/protocol.md ("Test vectors"): dataset ID, provider key (hex), the CIDv1 (raw) of it.
PROVIDER_KEY_VECTORS = [
    (
        "kg1-aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq",
        "1220000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        "bafkreiaaaebagbafaydqqcikbmga2dqpcaireeyuculbogazdinryhi6d4",
    ),
    (
        "kg1-t43i2wyjlzjobvj4yxxwmt46clslo5f6krknpqkk3fo4hrcw7ega",
        "12209f368d5b095e52e0d53cc5ef664f9e12e4b774be5454d7c14ad95dc3c456f90c",
        "bafkreie7g2gvwck6klqnkpgf55te7hqs4s3xjpsuktl4cswzlxb4ivxzbq",
    ),
]


@pytest.mark.parametrize("dataset_id, key, cid", PROVIDER_KEY_VECTORS)
def test_provider_keys_are_sha256_multihashes(dataset_id, key, cid):
    """The DHT key is the multihash `12 20` + digest, which is what a CID-based Kademlia client puts on the wire
    for the CIDv1 (raw codec 0x55) holding it; both are checked against docs/protocol.md and py-libp2p's CID code."""
    import base64
    from pathlib import Path

    from libp2p.bitswap.cid import parse_cid

    assert provider_key(dataset_id).hex() == key
    assert "b" + base64.b32encode(bytes([0x01, 0x55]) + bytes.fromhex(key)).decode().rstrip("=").lower() == cid
    assert parse_cid(cid).multihash == bytes.fromhex(key)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert dataset_id in docs and key in docs and cid in docs
    with pytest.raises(KogituneError):
        provider_key(dataset_id.upper())


def test_job_keys_are_sha256_multihashes_of_the_job_and_the_dataset():
    """The job key of docs/protocol.md's test vector; another job, another dataset, another key; a bad name refused."""
    from pathlib import Path

    from kogitune.protocol.ids import job_key

    dataset_id = PROVIDER_KEY_VECTORS[0][0]
    key = "1220ed59f8278cba9f21a92b8e03b78effd638f3ac9c28a95df8e164e8f42d4098af"
    assert job_key("10.0.0.1:29500/run1", dataset_id).hex() == key
    assert key in (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert job_key("10.0.0.1:29500/run2", dataset_id).hex() != key
    assert job_key("10.0.0.1:29500/run1", PROVIDER_KEY_VECTORS[1][0]).hex() != key
    for bad in ("", "a\nb", "x" * 257):
        with pytest.raises(KogituneError):
            job_key(bad, dataset_id)


def test_dataset_id_needs_a_32_byte_digest():
    with pytest.raises(ValueError):
        dataset_id_from_digest(bytes(31))


# ---- canonical encoding -----------------------------------------------------------------------------------------


def test_canonical_encoding_sorts_keys_and_drops_spaces():
    """Key order does not matter; the bytes are compact UTF-8 JSON with sorted keys."""
    one = {"b": 1, "a": {"d": [True, None, "x"], "c": -3}, "é": "ü"}
    two = {"é": "ü", "a": {"c": -3, "d": [True, None, "x"]}, "b": 1}
    assert canonical_encoding(one) == canonical_encoding(two)
    assert canonical_encoding(one) == '{"a":{"c":-3,"d":[true,null,"x"]},"b":1,"é":"ü"}'.encode()


@pytest.mark.parametrize(
    "value, message",
    [
        ({"a": [1, {"b": 0.5}]}, r"manifest\.a\[1\]\.b: floats are not allowed"),
        ({"a": 1.0}, "floats are not allowed"),
        ({1: "one"}, "key 1 is not a string"),
        ({"a": {(1, 2): "x"}}, "is not a string"),
        ({"a": 1 << 63}, "outside the 64-bit range"),
        ({"a": -(1 << 63)}, "outside the 64-bit range"),
        ({"a": b"bytes"}, "bytes cannot be encoded"),
        ({"a": {1, 2}}, "set cannot be encoded"),
    ],
)
def test_canonical_encoding_refuses_what_has_no_canonical_form(value, message):
    with pytest.raises(ManifestError, match=message):
        canonical_encoding(value)


def test_canonical_encoding_accepts_the_64_bit_range():
    assert canonical_encoding([(1 << 63) - 1, -(1 << 63) + 1]) == b"[9223372036854775807,-9223372036854775807]"


# ---- manifests --------------------------------------------------------------------------------------------------


def test_fixed_dataset_id_vector():
    """A literal manifest has a literal ID: the canonical encoding and the ID scheme have not changed."""
    assert parse_manifest(encoded(manifest_dict())).dataset_id == FIXED_DATASET_ID
    digest = hashlib.sha256(canonical_encoding(manifest_dict())).digest()
    assert dataset_id_from_digest(digest) == FIXED_DATASET_ID


def test_manifest_round_trip_keeps_the_dataset_id():
    """to_dict -> canonical bytes -> parse gives the same manifest, and the same ID, whatever the JSON layout."""
    manifest = parse_manifest(encoded(manifest_dict()))
    assert manifest.to_dict() == manifest_dict()
    again = parse_manifest(manifest.canonical_bytes())
    assert again == manifest and again.dataset_id == manifest.dataset_id
    pretty = json.dumps(dict(reversed(manifest_dict().items())), indent=3, ensure_ascii=True).encode()
    assert parse_manifest(pretty).dataset_id == manifest.dataset_id
    assert manifest.shards[0].tokens_path == "shards/00000.tokens" and manifest.pieces_in(manifest.shards[0]) == 1


def test_the_dataset_id_is_computed_once(monkeypatch):
    """Encoding a manifest of a 1 TiB tensor takes 0.33 s: the ID is computed on first use only (before, on every
    access: each shard a fetch finished, each marks check), and travels with a pickled manifest."""
    import pickle

    import kogitune.protocol.manifest as manifest_module

    manifest = parse_manifest(encoded(manifest_dict()))
    encodings = []
    encode = manifest_module.canonical_encoding
    monkeypatch.setattr(manifest_module, "canonical_encoding", lambda value: encodings.append(1) or encode(value))
    assert {manifest.dataset_id for _ in range(3)} == {FIXED_DATASET_ID}
    assert len(encodings) == 1
    copy = pickle.loads(pickle.dumps(manifest))
    assert copy.dataset_id == FIXED_DATASET_ID and len(encodings) == 1
    assert copy == manifest


def test_to_dict_returns_a_copy():
    """Editing the dict that to_dict returns does not change the (frozen) manifest, nor its ID."""
    manifest = parse_manifest(encoded(manifest_dict()))
    copied = manifest.to_dict()
    copied["provenance"]["inputs"][0]["size"] = 1
    copied["shards"][0]["root"] = "99" * 32
    copied["tokenizer"]["name"] = "other"
    assert manifest.to_dict() == manifest_dict()
    assert manifest.dataset_id == FIXED_DATASET_ID


@pytest.mark.parametrize(
    "path, value",
    [
        (("provenance", "inputs", 0, "size"), 124),
        (("shards", 1, "root"), "34" * 32),
        (("tokenizer", "fingerprint"), "ac" * 32),
        (("provenance", "note"), "any change"),
    ],
)
def test_any_change_changes_the_dataset_id(path, value):
    changed = manifest_dict()
    set_field(changed, path, value)
    assert parse_manifest(encoded(changed)).dataset_id != FIXED_DATASET_ID


DELETE = object()


def set_field(obj, path: tuple, value) -> None:
    for key in path[:-1]:
        obj = obj[key]
    if value is DELETE:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


@pytest.mark.parametrize(
    "changes, message",
    [
        ({("format",): "kogitune-tensor/2"}, "this Kogitune reads 'kogitune-tensor/1'"),
        ({("extra",): 1}, "manifest has unknown fields extra"),
        ({("provenance",): DELETE}, "manifest lacks provenance"),
        ({("tokenizer", "colour"): "red"}, "tokenizer has unknown fields colour"),
        ({("counts", "tokens"): DELETE}, "counts lacks tokens"),
        ({("shards", 0, "root"): DELETE}, r"shards\[0\] lacks root"),
        ({("shards", 0, "size"): 15}, r"shards\[0\].size 15 is not blocks x block bytes \(2 x 8\)"),
        ({("shards", 1, "size"): 16}, r"shards\[1\].size 16 is not blocks x block bytes"),
        ({("counts", "blocks"): 4, ("counts", "tokens"): 13}, "the shards hold 3 blocks, counts.blocks says 4"),
        ({("counts", "documents"): 4}, "the shards hold 3 documents, counts.documents says 4"),
        ({("counts", "tokens"): 8}, "does not fill counts.blocks 3 of 4 tokens"),
        ({("counts", "tokens"): 13}, "does not fill counts.blocks 3 of 4 tokens"),
        ({("dtype",): "uint32"}, "dtype 'uint32' does not fit vocab_size 50257"),
        ({("tokenizer", "vocab_size"): 70000}, "dtype 'uint16' does not fit vocab_size 70000"),
        ({("dtype",): "int16"}, "does not fit"),
        ({("piece_size",): 3 << 16}, "piece_size 196608 is not a power of two"),
        ({("piece_size",): 1 << 15}, "piece_size must be an integer from 65536"),
        ({("block_size",): 4.0}, "floats are not allowed"),
        ({("block_size",): True}, "block_size must be an integer"),
        ({("block_size",): "4"}, "block_size must be an integer"),
        ({("tokenizer", "id"): "GPT2"}, "is not of the form"),
        ({("tokenizer", "eos_id"): 50257}, "outside the vocabulary"),
        ({("tokenizer", "name"): ""}, "tokenizer.name must be a string"),
        ({("tokenizer", "fingerprint"): "ab" * 31}, "tokenizer.fingerprint must be 64 lowercase hex"),
        ({("tokenizer",): "gpt2"}, "tokenizer must be an object"),
        ({("shards", 1, "name"): "00000"}, "two shards have the same name"),
        ({("shards", 0, "name"): "0"}, "is not 5 to 9 digits"),
        ({("shards", 0, "name"): "../x0"}, "is not 5 to 9 digits"),
        ({("shards", 0, "root"): "AB" * 32}, "64 lowercase hex"),
        ({("shards", 0, "blocks"): 0}, "must be an integer from 1"),
        ({("shards",): []}, "shards must be a list of 1"),
        ({("provenance",): []}, "provenance must be an object"),
    ],
)
def test_parse_manifest_rejects(changes, message):
    """Each schema rule is enforced, with a message that says which rule was broken."""
    broken = manifest_dict()
    for path, value in changes.items():
        set_field(broken, path, value)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(encoded(broken))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\xff\xfe" + encoded(manifest_dict()), "not valid UTF-8 JSON"),
        (encoded(manifest_dict())[:-1], "not valid UTF-8 JSON"),
        (b"", "not valid UTF-8 JSON"),
        (b"[]", "manifest must be an object"),
        (b'"kogitune-tensor/1"', "manifest must be an object"),
    ],
)
def test_parse_manifest_rejects_bytes_that_are_no_manifest(data, message):
    with pytest.raises(ManifestError, match=message):
        parse_manifest(data)


def nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("where", ["top", "provenance"])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_deeply_nested_manifest_is_a_manifest_error(where, depth):
    """Nesting beyond MAX_JSON_DEPTH is refused with a ManifestError: never RecursionError (from json's decoder at
    any depth, or from the checks and json.dumps that walk a manifest that did decode), never accepted."""
    obj = manifest_dict()
    obj["provenance"] = {"deep": "DEEP"}
    data = nested_json(depth) if where == "top" else encoded(obj).replace(b'"DEEP"', nested_json(depth - 2))
    with pytest.raises(ManifestError, match=f"nested deeper than {MAX_JSON_DEPTH}"):
        parse_manifest(data)


def test_manifest_nested_up_to_the_limit_is_read():
    obj = manifest_dict()
    obj["provenance"] = {"deep": json.loads(nested_json(MAX_JSON_DEPTH - 2))}
    assert parse_manifest(encoded(obj)).provenance == obj["provenance"]


def test_oversized_manifest_is_rejected_before_parsing():
    """A valid manifest padded past the size limit is refused for its size alone."""
    valid = encoded(manifest_dict())
    assert parse_manifest(valid + b" " * (MAX_MANIFEST_BYTES - len(valid))).dataset_id == FIXED_DATASET_ID
    with pytest.raises(ManifestError, match="more than the limit"):
        parse_manifest(valid + b" " * (MAX_MANIFEST_BYTES - len(valid) + 1))


# ---- pieces -----------------------------------------------------------------------------------------------------


def test_piece_digests_are_the_sha256_of_each_piece():
    data = bytes(range(256)) * 3  # 768 bytes: pieces of 256, 256, 256
    assert piece_digests(data, 256) == b"".join(hashlib.sha256(data[i : i + 256]).digest() for i in (0, 256, 512))
    assert piece_digests(data, 500) == hashlib.sha256(data[:500]).digest() + hashlib.sha256(data[500:]).digest()
    assert piece_digests(b"", 64) == b"" == PieceHasher(64).finish()


def test_piece_hasher_matches_piece_digests_for_any_chunking():
    """However a stream is cut into chunks, the hasher gives the digests of the whole."""
    rng = random.Random(2024)
    for _ in range(300):
        piece_size = rng.choice([1, 3, 64, 100, 256])
        data = rng.randbytes(rng.randrange(0, 12 * piece_size + 1))
        cuts = sorted(rng.randrange(0, len(data) + 1) for _ in range(rng.randrange(0, 12)))
        hasher = PieceHasher(piece_size)
        for start, end in zip([0] + cuts, cuts + [len(data)]):
            chunk = data[start:end]
            hasher.update(memoryview(chunk) if rng.random() < 0.5 else chunk)
        assert hasher.finish() == piece_digests(data, piece_size)


def test_piece_hasher_takes_numpy_token_arrays():
    """Chunks of uint16 tokens are hashed as their little-endian bytes."""
    tokens = np.arange(1000, dtype="<u2")
    hasher = PieceHasher(64)
    for chunk in np.array_split(tokens, 7):
        hasher.update(chunk)
    assert hasher.finish() == piece_digests(tokens.tobytes(), 64)


@pytest.fixture
def pieced():
    """Random shard bytes (3.5 pieces of 64 bytes), their `.pieces` list and a ShardInfo committing to it."""
    data = random.Random(5).randbytes(224)
    pieces = piece_digests(data, 64)
    shard = ShardInfo(name="00007", blocks=1, size=len(data), root=root_of(pieces), documents=0, docs_sha256="00" * 32)
    return data, pieces, shard


def test_check_pieces_file_rejects_any_wrong_byte(pieced):
    data, pieces, shard = pieced
    check_pieces_file(shard, pieces, 64)
    for offset in range(len(pieces)):
        damaged = bytearray(pieces)
        damaged[offset] ^= 0x80
        with pytest.raises(IntegrityError, match="shard 00007: shards/00007.pieces does not match"):
            check_pieces_file(shard, bytes(damaged), 64)
    for wrong in (pieces[:-32], pieces + pieces[:32], b""):
        with pytest.raises(IntegrityError):
            check_pieces_file(shard, wrong, 64)
    with pytest.raises(IntegrityError):
        check_pieces_file(shard, pieces, 32)  # the same list read with another piece size has the wrong length


def test_piece_span_covers_the_shard(pieced):
    _, _, shard = pieced
    assert [piece_span(shard, i, 64) for i in range(4)] == [(0, 64), (64, 64), (128, 64), (192, 32)]
    for index in (-1, 4):
        with pytest.raises(IndexError):
            piece_span(shard, index, 64)


@pytest.mark.parametrize("data", [b'{"format": 1, "format": 2}', b'{"format": "\\ud800"}'])
def test_manifest_with_repeated_keys_or_lone_surrogates_is_refused(data):
    """Both could be read differently by another JSON parser, so neither can have one canonical ID."""
    with pytest.raises(ManifestError):
        parse_manifest(data)
