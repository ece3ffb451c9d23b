"""Signed manifests: Ed25519 over the dataset ID, and libp2p peer IDs of publisher keys, bytes in and bytes out."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from test_protocol import manifest_dict

from kogitune.protocol.errors import IntegrityError, KogituneError, ManifestError
from kogitune.protocol.ids import base58btc, dataset_id_from_digest
from kogitune.protocol.manifest import parse_manifest
from kogitune.protocol.signing import (
    SIGNING_CONTEXT,
    check_signed_manifest,
    peer_id_from_public_key,
    public_key_from_seed,
    sign_dataset,
    signing_payload,
    verify_dataset,
)

# The signing vector: these exact strings are in docs/protocol.md ("Test vectors"); change both or neither.
SEED = b"\x01" * 32
DATASET_ID = "kg1-aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"  # the digest 00 01 02 ... 1f
PAYLOAD_HEX = (
    "6b6f676974756e652f6d616e69666573742f7631"  # "kogitune/manifest/v1"
    "00000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
)
PUBLIC_KEY_HEX = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
SIGNATURE_HEX = (
    "d40650c8b121556f1f36cfc72b9518784a5864e2aa24ac24d551ca4e2b7253c5"
    "cd9a3d97cdc2961ce9d99fc6ba8d44b1c34b7e18c55a4c846843f3badbddb30c"
)
PEER_ID = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"


def manifest_bytes(**changes) -> bytes:
    """The small valid manifest of test_protocol.py, with `changes`."""
    return json.dumps({**manifest_dict(), "provenance": {"note": "signing test"}, **changes}, indent=1).encode()


def test_the_signing_vector():
    assert dataset_id_from_digest(bytes(range(32))) == DATASET_ID
    assert SIGNING_CONTEXT == b"kogitune/manifest/v1\x00"
    assert signing_payload(DATASET_ID).hex() == PAYLOAD_HEX
    signature, public_key = sign_dataset(SEED, DATASET_ID)
    assert public_key.hex() == PUBLIC_KEY_HEX
    assert public_key_from_seed(SEED) == public_key
    assert signature.hex() == SIGNATURE_HEX
    assert peer_id_from_public_key(public_key) == PEER_ID
    verify_dataset(DATASET_ID, public_key, signature)


def test_the_signing_vector_is_in_the_docs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    for value in [DATASET_ID, PAYLOAD_HEX, PUBLIC_KEY_HEX, SIGNATURE_HEX, PEER_ID]:
        assert value in text


def test_sign_and_verify_round_trip():
    rng = random.Random(11)
    for _ in range(50):
        seed, dataset_id = rng.randbytes(32), dataset_id_from_digest(rng.randbytes(32))
        signature, public_key = sign_dataset(seed, dataset_id)
        assert len(signature) == 64 and len(public_key) == 32
        verify_dataset(dataset_id, public_key, signature)
        assert sign_dataset(seed, dataset_id) == (signature, public_key)  # Ed25519 is deterministic


def test_wrong_id_key_or_signature_is_an_integrity_error():
    signature, public_key = sign_dataset(SEED, DATASET_ID)
    other_id = dataset_id_from_digest(bytes(range(1, 33)))
    _, other_key = sign_dataset(b"\x02" * 32, DATASET_ID)
    with pytest.raises(IntegrityError):
        verify_dataset(other_id, public_key, signature)
    with pytest.raises(IntegrityError):
        verify_dataset(DATASET_ID, other_key, signature)
    for i in range(64):  # any flipped bit of the signature
        bad = bytearray(signature)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(IntegrityError):
            verify_dataset(DATASET_ID, public_key, bytes(bad))
    for bad_key, bad_signature in [
        (public_key[:31], signature),
        (public_key + b"\x00", signature),
        (public_key, signature[:63]),
        (public_key, b""),
        (bytes(32), signature),
        (b"\xff" * 32, signature),
        (public_key.hex(), signature),
    ]:
        with pytest.raises(IntegrityError):
            verify_dataset(DATASET_ID, bad_key, bad_signature)


def test_the_signature_covers_the_context():
    """A signature of the bare digest (or of any other context) is not a manifest signature."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(SEED)
    with pytest.raises(IntegrityError):
        verify_dataset(DATASET_ID, bytes.fromhex(PUBLIC_KEY_HEX), key.sign(bytes(range(32))))
    assert key.sign(signing_payload(DATASET_ID)).hex() == SIGNATURE_HEX


def test_bad_inputs():
    with pytest.raises(KogituneError):
        signing_payload("kg1-nope")
    with pytest.raises(KogituneError):
        verify_dataset("not an id", bytes.fromhex(PUBLIC_KEY_HEX), bytes.fromhex(SIGNATURE_HEX))
    for seed in [b"", b"\x01" * 31, b"\x01" * 33, "01" * 32, b"\x01" * 64]:
        with pytest.raises(ValueError):
            sign_dataset(seed, DATASET_ID)
    for key in [b"", b"\x01" * 31, b"\x01" * 33, "x" * 32]:
        with pytest.raises(ValueError):
            peer_id_from_public_key(key)


def test_check_signed_manifest():
    data = manifest_bytes()
    dataset_id = parse_manifest(data).dataset_id
    signature, public_key = sign_dataset(SEED, dataset_id)
    assert check_signed_manifest(dataset_id, data, public_key, signature) == parse_manifest(data)
    # Another layout of the same manifest has the same ID: the ID hashes the canonical encoding.
    canonical = parse_manifest(data).canonical_bytes()
    assert check_signed_manifest(dataset_id, canonical, public_key, signature) == parse_manifest(data)
    # A different manifest (one field changed) under the same ID and signature.
    tampered = manifest_bytes(provenance={"note": "tampered"})
    with pytest.raises(IntegrityError):
        check_signed_manifest(dataset_id, tampered, public_key, signature)
    # The right manifest with someone else's signature.
    other_signature, other_key = sign_dataset(b"\x02" * 32, parse_manifest(tampered).dataset_id)
    with pytest.raises(IntegrityError):
        check_signed_manifest(dataset_id, data, other_key, other_signature)
    with pytest.raises(IntegrityError):
        check_signed_manifest(dataset_id, data, other_key, signature)
    with pytest.raises(ManifestError):
        check_signed_manifest(dataset_id, b"{}", public_key, signature)


def test_allow_lists_are_signed_by_the_publisher():
    """A replica keeps an allow-list only with its publisher's signature of exactly that list for that dataset."""
    from kogitune.protocol.signing import allow_list_verifies, public_key_from_seed, sign_allow_list

    other = dataset_id_from_digest(bytes(range(1, 33)))
    allow = ("12D3KooWA", "12D3KooWB")
    signature = sign_allow_list(SEED, DATASET_ID, allow)
    public_key = public_key_from_seed(SEED)
    assert allow_list_verifies(DATASET_ID, allow, public_key, signature)
    assert not allow_list_verifies(DATASET_ID, allow[:1], public_key, signature)
    assert not allow_list_verifies(other, allow, public_key, signature)
    assert not allow_list_verifies(DATASET_ID, allow, public_key_from_seed(b"\x02" * 32), signature)
    assert not allow_list_verifies(DATASET_ID, allow, public_key, sign_dataset(SEED, DATASET_ID)[0])
    assert not allow_list_verifies(DATASET_ID, allow, b"short", signature)


def test_base58btc():
    assert base58btc(b"") == ""
    assert base58btc(b"\x00") == "1"
    assert base58btc(b"\x00\x00\x01") == "112"
    assert base58btc(b"hello world") == "StV1DL6CwTryKyV"
    assert base58btc(b"Hello World!") == "2NEpo7TZRRrLZSi2U"
    assert base58btc(bytes.fromhex("0000287fb4cd")) == "11233QC4"


def test_peer_ids_match_py_libp2p():
    """Our peer IDs are libp2p's: checked against py-libp2p when it is installed (protocol/ never imports it)."""
    ed25519 = pytest.importorskip("libp2p.crypto.ed25519")
    peer_id = pytest.importorskip("libp2p.peer.id")
    rng = random.Random(12)
    seeds = [SEED] + [rng.randbytes(32) for _ in range(30)]
    for seed in seeds:
        key_pair = ed25519.create_new_key_pair(seed)
        public_key = key_pair.public_key.to_bytes()
        assert public_key == public_key_from_seed(seed)
        assert peer_id_from_public_key(public_key) == peer_id.ID.from_pubkey(key_pair.public_key).to_base58()
        # The node identity key signs manifests: libp2p's own signature is ours, byte for byte.
        assert key_pair.private_key.sign(signing_payload(DATASET_ID)) == sign_dataset(seed, DATASET_ID)[0]
    assert peer_id.ID.from_pubkey(ed25519.create_new_key_pair(SEED).public_key).to_base58() == PEER_ID


def test_protocol_does_not_import_libp2p_or_io():
    import ast
    from pathlib import Path

    for name in ["frames.py", "wire.py", "signing.py"]:
        tree = ast.parse((Path(__file__).resolve().parents[1] / "protocol" / name).read_text())
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and not node.level
        }
        pure = {"__future__", "collections", "re", "json", "dataclasses", "typing", "msgpack", "cryptography"}
        assert imported <= pure, imported
        calls = {
            node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert "open" not in calls


# ---- who decides who may fetch: private manifests and their allow-lists ------------------------------------------

# The private-dataset vectors of docs/protocol.md: the worked example of docs/format.md published privately by
# PEER_ID, and PEER_ID's signature of the allow-list [OTHER_PEER_ID] for DATASET_ID.
WORKED_EXAMPLE_ID = "kg1-t43i2wyjlzjobvj4yxxwmt46clslo5f6krknpqkk3fo4hrcw7ega"
PRIVATE_WORKED_EXAMPLE_ID = "kg1-v2job2iiervrz7xuibfz34e4redxbcszeeapexbzwvvirxxqp3cq"
PRIVATE_WORKED_EXAMPLE_SHA256 = "ae92e0e908246b1cfef4404b9df09c8907708a592100f25c39b56a88def07ec5"
ACCESS_TEXT = '{"access":{"private":true,"publisher":"12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"},'
OTHER_SEED = b"\x02" * 32
OTHER_PEER_ID = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
ALLOW_PAYLOAD_HEX = (
    "6b6f676974756e652f616c6c6f772f7631"  # "kogitune/allow/v1"
    "00000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" + OTHER_PEER_ID.encode().hex()
)
ALLOW_SIGNATURE_HEX = (
    "798846cba47c884279618bd556c895dfec795a7e33a759df467d4fb5e3eab61f"
    "2554cd73381c330413963ee008dbeca2be1da4e013fc1b0c6b45f3245d05ac03"
)


def worked_example() -> bytes:
    """The canonical manifest of docs/format.md's worked example, as printed there."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text(encoding="utf-8")
    return next(line for line in text.splitlines() if line.startswith('{"block_size":8,')).encode()


def signed(seed: bytes, manifest) -> tuple[str, bytes, bytes, bytes]:
    """(ID, canonical bytes, signature, public key) of `manifest` signed by `seed`."""
    dataset_id = manifest.dataset_id
    signature, public_key = sign_dataset(seed, dataset_id)
    return dataset_id, manifest.canonical_bytes(), signature, public_key


def test_the_private_dataset_vectors():
    from kogitune.protocol.ids import ed25519_key_of_peer_id
    from kogitune.protocol.signing import allow_payload, sign_allow_list

    public = parse_manifest(worked_example())
    assert public.dataset_id == WORKED_EXAMPLE_ID and not public.is_private
    private = public.made_private(PEER_ID)
    assert private.canonical_bytes() == ACCESS_TEXT.encode() + worked_example()[1:]
    assert private.dataset_id == PRIVATE_WORKED_EXAMPLE_ID
    assert hashlib.sha256(private.canonical_bytes()).hexdigest() == PRIVATE_WORKED_EXAMPLE_SHA256
    assert len(private.canonical_bytes()) == 1130
    assert parse_manifest(private.canonical_bytes()) == private
    assert ed25519_key_of_peer_id(PEER_ID).hex() == PUBLIC_KEY_HEX
    assert peer_id_from_public_key(public_key_from_seed(OTHER_SEED)) == OTHER_PEER_ID
    assert allow_payload(DATASET_ID, (OTHER_PEER_ID,)).hex() == ALLOW_PAYLOAD_HEX
    assert sign_allow_list(SEED, DATASET_ID, (OTHER_PEER_ID,)).hex() == ALLOW_SIGNATURE_HEX


def test_the_private_dataset_vectors_are_in_the_docs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    for value in [
        WORKED_EXAMPLE_ID,
        PRIVATE_WORKED_EXAMPLE_ID,
        PRIVATE_WORKED_EXAMPLE_SHA256,
        ACCESS_TEXT,
        OTHER_PEER_ID,
        ALLOW_PAYLOAD_HEX,
        ALLOW_SIGNATURE_HEX,
    ]:
        assert value in text, value


def test_a_private_manifest_is_valid_only_with_its_publishers_signature():
    """The ID of a private dataset names its publisher: another key's valid signature of that ID is refused,
    while anyone's signature of a public ID stays a valid (if untrusted) copy."""
    public = parse_manifest(manifest_bytes())
    private = public.made_private(PEER_ID)
    assert private.dataset_id != public.dataset_id
    dataset_id, data, signature, public_key = signed(SEED, private)
    assert check_signed_manifest(dataset_id, data, public_key, signature) == private
    hijack_id, _, hijack_signature, hijack_key = signed(OTHER_SEED, private)
    assert hijack_id == dataset_id
    verify_dataset(dataset_id, hijack_key, hijack_signature)  # a valid signature, of the wrong publisher
    with pytest.raises(
        IntegrityError, match=f"private to its publisher {PEER_ID}, but this copy is signed by {OTHER_PEER_ID}"
    ):
        check_signed_manifest(dataset_id, data, hijack_key, hijack_signature)
    # re-signing the private manifest as another publisher is another manifest, so another ID
    assert public.made_private(OTHER_PEER_ID).dataset_id not in (dataset_id, public.dataset_id)
    # a public manifest: any signature of its ID is a valid copy (trust lists decide whom to believe)
    public_id, public_data, other_signature, other_key = signed(OTHER_SEED, public)
    assert check_signed_manifest(public_id, public_data, other_key, other_signature) == public


def test_only_the_named_publisher_decides_who_may_fetch():
    """allowed_peers: a public manifest carries no restriction whoever signed a list; a private one is served to
    the list its own publisher signed, and to nobody when the list is missing, altered or signed by another key."""
    from kogitune.protocol.signing import allowed_peers, sign_allow_list

    public = parse_manifest(manifest_bytes())
    private = public.made_private(PEER_ID)
    public_id, private_id = public.dataset_id, private.dataset_id
    allow = tuple(sorted([OTHER_PEER_ID, PEER_ID]))
    # today's attack: a peer signs a public ID and an allow-list with its own key: no restriction follows
    for seed in (SEED, OTHER_SEED):
        assert allowed_peers(public_id, public, allow, sign_allow_list(seed, public_id, allow)) is None
    assert allowed_peers(public_id, public, (), b"") is None
    # the private dataset's own publisher signed the list: exactly those peers
    good = sign_allow_list(SEED, private_id, allow)
    assert allowed_peers(private_id, private, allow, good) == frozenset(allow)
    assert allowed_peers(private_id, private, allow[::-1], good) == frozenset(allow)  # as read from a file
    # anything else: nobody (fail closed), never everyone
    for bad_allow, bad_signature in [
        (allow, sign_allow_list(OTHER_SEED, private_id, allow)),  # another key
        (allow[:1], good),
        (allow + (OTHER_PEER_ID[:-1] + "X",), good),  # altered
        (allow, sign_allow_list(SEED, public_id, allow)),  # another dataset's list
        (allow, good[:63]),
        (allow, b""),
        ((), b""),
    ]:
        assert allowed_peers(private_id, private, bad_allow, bad_signature) == frozenset()


@pytest.mark.parametrize(
    "access, message",
    [
        ({"publisher": PEER_ID, "private": False}, "access.private must be true"),
        ({"publisher": PEER_ID, "private": 1}, "access.private must be true"),
        ({"publisher": PEER_ID}, "access lacks private"),
        ({"publisher": PEER_ID, "private": True, "allow": []}, "access has unknown fields allow"),
        ({"publisher": "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "private": True}, "Ed25519 key"),
        ({"publisher": PEER_ID[:-1], "private": True}, "Ed25519 key"),
        ({"publisher": 12, "private": True}, "Ed25519 key"),
        ("private", "access must be an object"),
    ],
)
def test_malformed_access_fields_are_refused(access, message):
    with pytest.raises(ManifestError, match=message):
        parse_manifest(manifest_bytes(access=access))


def test_only_an_ed25519_peer_can_be_made_a_publisher():
    for publisher in ["QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", PEER_ID[:-1], "alice"]:
        with pytest.raises(ManifestError, match="Ed25519 key"):
            parse_manifest(manifest_bytes()).made_private(publisher)


def test_ed25519_keys_of_peer_ids():
    from kogitune.protocol.ids import ed25519_key_of_peer_id

    rng = random.Random(13)
    for _ in range(30):
        public_key = public_key_from_seed(rng.randbytes(32))
        assert ed25519_key_of_peer_id(peer_id_from_public_key(public_key)) == public_key
    for text in [None, b"12D3KooW", "", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", PEER_ID + "1", PEER_ID[1:]]:
        assert ed25519_key_of_peer_id(text) is None
