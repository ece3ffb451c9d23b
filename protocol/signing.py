"""Signed manifests: the publisher's Ed25519 key (its libp2p node identity) signs the dataset ID.

What is signed is SIGNING_CONTEXT followed by the 32-byte digest behind the dataset ID. The ID is the SHA-256 of the
manifest's canonical encoding, so the signature covers the whole manifest, and the context keeps a manifest
signature from ever being valid for anything else signed with the same key. The publisher is named by the libp2p peer
ID of its key.

Who may fetch a dataset is decided by the publisher that its manifest names, and by nobody else. A public manifest
names none: anyone may fetch it, whatever list a peer sends with it. A private manifest (its `access` field) names
its publisher inside what the ID hashes, is valid only with that publisher's signature, and is served only to the
peers of an allow-list that the same publisher signed. Pure functions; docs/protocol.md is the specification.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .collection import Collection, parse_manifest_or_collection
from .errors import IntegrityError
from .ids import (
    ED25519_KEY_BYTES,
    ED25519_SIGNATURE_BYTES,
    dataset_id_digest,
    ed25519_key_of_peer_id,
    peer_id_of_ed25519_key,
)
from .manifest import Manifest, parse_manifest

SIGNING_CONTEXT = b"kogitune/manifest/v1\x00"
ALLOW_CONTEXT = b"kogitune/allow/v1\x00"
SEED_BYTES = 32
SIGNATURE_FILE_BYTES = ED25519_KEY_BYTES + ED25519_SIGNATURE_BYTES
"""A `signature` file (kogitune/layout.py names it): the publisher's public key, then its signature of the ID."""


def signing_payload(dataset_id: str) -> bytes:
    """The bytes that a publisher signs for `dataset_id` (KogituneError if it is not a dataset ID)."""
    return SIGNING_CONTEXT + dataset_id_digest(dataset_id)


def public_key_from_seed(private_key_bytes: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key of a 32-byte seed."""
    return _private_key(private_key_bytes).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_dataset(private_key_bytes: bytes, dataset_id: str) -> tuple[bytes, bytes]:
    """(64-byte signature, 32-byte public key) over signing_payload(dataset_id); the private key is a 32-byte seed."""
    key = _private_key(private_key_bytes)
    signature = key.sign(signing_payload(dataset_id))
    return signature, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def allow_payload(dataset_id: str, allow: Iterable[str]) -> bytes:
    """The bytes a publisher signs to make `dataset_id` private to the peer IDs `allow` (in ascending order)."""
    return ALLOW_CONTEXT + dataset_id_digest(dataset_id) + " ".join(allow).encode("ascii")


def sign_allow_list(private_key_bytes: bytes, dataset_id: str, allow: Iterable[str]) -> bytes:
    """The publisher's 64-byte signature of allow_payload: replicas pass the list on, and cannot change it."""
    return _private_key(private_key_bytes).sign(allow_payload(dataset_id, allow))


def allow_list_verifies(dataset_id: str, allow: Iterable[str], public_key: bytes, signature: bytes) -> bool:
    """Whether `signature` is `public_key`'s signature of the allow-list `allow` of `dataset_id`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, allow_payload(dataset_id, allow))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def verify_dataset(dataset_id: str, public_key: bytes, signature: bytes) -> None:
    """Return if `signature` is `public_key`'s signature of `dataset_id`; raise IntegrityError otherwise."""
    payload = signing_payload(dataset_id)
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_KEY_BYTES:
        raise IntegrityError(f"a publisher key is {ED25519_KEY_BYTES} bytes of Ed25519 public key")
    if not isinstance(signature, bytes) or len(signature) != ED25519_SIGNATURE_BYTES:
        raise IntegrityError(f"a manifest signature is {ED25519_SIGNATURE_BYTES} bytes of Ed25519 signature")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        raise IntegrityError(
            f"the signature of {dataset_id} does not verify with the publisher key of "
            f"{peer_id_from_public_key(public_key)}: the manifest was not signed by that publisher"
        ) from None


def check_signed_manifest(dataset_id: str, manifest: bytes, public_key: bytes, signature: bytes) -> Manifest:
    """Everything a fetcher checks on a ManifestResponse: the manifest parses (ManifestError otherwise), its ID is
    `dataset_id`, the signature of that ID verifies, and a private manifest is signed by the publisher it names
    (IntegrityError otherwise)."""
    expected = dataset_id_digest(dataset_id)  # a malformed ID fails here, before any work
    parsed = parse_manifest(manifest)
    if dataset_id_digest(parsed.dataset_id) != expected:
        raise IntegrityError(f"the manifest received for {dataset_id} hashes to {parsed.dataset_id}")
    verify_dataset(dataset_id, public_key, signature)
    if parsed.access is not None and public_key != ed25519_key_of_peer_id(parsed.access.publisher):
        raise IntegrityError(
            f"{dataset_id} is private to its publisher {parsed.access.publisher}, but this copy is "
            f"signed by {peer_id_from_public_key(public_key)}"
        )
    return parsed


def check_signed(dataset_id: str, data: bytes, public_key: bytes, signature: bytes) -> Manifest | Collection:
    """check_signed_manifest for an ID that may name a collection: the bytes are a tensor's manifest (checked as
    there) or a collection manifest, which must hash to `dataset_id` and carry a valid signature of it (a
    collection is public: any valid signature, like a public dataset's)."""
    parsed = parse_manifest_or_collection(data)
    if isinstance(parsed, Manifest):
        return check_signed_manifest(dataset_id, data, public_key, signature)
    if dataset_id_digest(parsed.dataset_id) != dataset_id_digest(dataset_id):
        raise IntegrityError(f"the collection manifest received for {dataset_id} hashes to {parsed.dataset_id}")
    verify_dataset(dataset_id, public_key, signature)
    return parsed


def allowed_peers(
    dataset_id: str, manifest: Manifest, allow: Iterable[str], allow_signature: bytes
) -> frozenset[str] | None:
    """Who may fetch `dataset_id`, whose checked manifest is `manifest`: None (anyone) for a public manifest,
    whatever list comes with it; for a private one, the peers of `allow` if the publisher that the manifest names
    signed exactly that list, else nobody (an empty set: a replica that lost or never got the list fails closed)."""
    if manifest.access is None:
        return None
    signed = tuple(sorted(set(allow)))  # the order the publisher signs
    publisher_key = ed25519_key_of_peer_id(manifest.access.publisher)
    if signed and publisher_key and allow_list_verifies(dataset_id, signed, publisher_key, allow_signature):
        return frozenset(signed)
    return frozenset()


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID of an Ed25519 public key: base58btc of the identity multihash of its protobuf PublicKey."""
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {ED25519_KEY_BYTES} bytes")
    return peer_id_of_ed25519_key(public_key)


def _private_key(private_key_bytes: bytes) -> Ed25519PrivateKey:
    if not isinstance(private_key_bytes, bytes) or len(private_key_bytes) != SEED_BYTES:
        raise ValueError(f"an Ed25519 private key is a {SEED_BYTES}-byte seed")
    return Ed25519PrivateKey.from_private_bytes(private_key_bytes)
