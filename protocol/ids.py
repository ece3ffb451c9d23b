"""Content hashes and dataset IDs.

Every hash in Kogitune is SHA-256. A dataset ID is the SHA-256 of the manifest's canonical encoding, written as
``kg1-`` followed by 52 lowercase base32 characters: the prefix versions the scheme, base32 survives copy-paste,
URLs and file names. On the DHT the same digest is a multihash (`provider_key`), the key any Kademlia client uses.
"""

import base64
import hashlib
import re
from typing import TypeGuard

from .errors import KogituneError

DATASET_ID_PREFIX = "kg1-"
DIGEST_SIZE = 32
# 256 bits are 51 base32 characters and 1 bit: the last character is "a" or "q", so one digest has one ID.
_DATASET_ID_RE = re.compile(r"kg1-[a-z2-7]{51}[aq]")
_HEX_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_RE = re.compile(r"[1-9A-HJ-NP-Za-km-z]{1,128}")
_IDENTITY_MULTIHASH, _SHA256_MULTIHASH = 0x00, 0x12
"""Multihash codes (multiformats table): the identity "hash", and SHA2-256."""
ED25519_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
"""Ed25519's sizes: a public key (inside a peer ID; a publisher's key) and a signature (protocol/signing.py makes
and checks them; the wire and the `signature` file carry them)."""
ED25519_PROTOBUF_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
"""The protobuf PublicKey {Type: Ed25519 (1), Data: 32 bytes} of libp2p's peer-id spec, before the key bytes."""
# identity multihash (0x00) of 36 bytes, then the protobuf PublicKey header
_ED25519_PEER_ID_PREFIX = (
    bytes([_IDENTITY_MULTIHASH, len(ED25519_PROTOBUF_PREFIX) + ED25519_KEY_BYTES]) + ED25519_PROTOBUF_PREFIX
)
MAX_INLINE_KEY_BYTES = 42
"""libp2p puts public keys of at most this many bytes (Ed25519's are 36) in the peer ID itself; longer keys are
hashed with SHA-256."""


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def dataset_id_from_digest(digest: bytes) -> str:
    if len(digest) != DIGEST_SIZE:
        raise ValueError(f"a dataset digest has {DIGEST_SIZE} bytes, got {len(digest)}")
    return DATASET_ID_PREFIX + base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def is_dataset_id(text: str) -> bool:
    return bool(_DATASET_ID_RE.fullmatch(text))


def dataset_id_digest(dataset_id: str) -> bytes:
    """The 32-byte digest behind a dataset ID (the wire's `dataset` field; the DHT key is `provider_key`)."""
    if not is_dataset_id(dataset_id):
        raise KogituneError(
            f"{dataset_id!r} is not a dataset ID: expected 'kg1-' and 52 characters a-z, 2-7 "
            "(as printed by `kogitune info` or `kogitune publish`)"
        )
    return base64.b32decode(dataset_id[len(DATASET_ID_PREFIX) :].upper() + "====")


def provider_key(dataset_id: str) -> bytes:
    """The DHT key of a dataset's provider records: the SHA2-256 multihash of its digest, `12 20` and the 32 bytes
    (34 bytes). It is the multihash of the CIDv1 `raw` (`01 55 12 20` and the digest, "bafkrei..." in base32), so a
    standard Kademlia client that takes a CID finds the same records; `KogituneError` if it is not a dataset ID."""
    return bytes([_SHA256_MULTIHASH, DIGEST_SIZE]) + dataset_id_digest(dataset_id)


def is_hex_digest(text: object) -> TypeGuard[str]:
    return isinstance(text, str) and bool(_HEX_DIGEST_RE.fullmatch(text))


def base58btc(data: bytes) -> str:
    """Bitcoin base58: the bytes as a big-endian number in the 58-letter alphabet, a "1" for each leading zero byte."""
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rest = divmod(number, 58)
        digits.append(_BASE58_ALPHABET[rest])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(digits))


def _base58btc_decode(text: str) -> bytes:
    number = 0
    for char in text:
        number = number * 58 + _BASE58_ALPHABET.index(char)
    zeros = len(text) - len(text.lstrip("1"))
    return bytes(zeros) + number.to_bytes((number.bit_length() + 7) // 8, "big")


def is_peer_id(text: object) -> TypeGuard[str]:
    """Whether `text` is a libp2p peer ID as nodes print it: base58btc of a multihash, either the identity of a
    protobuf public key of at most MAX_INLINE_KEY_BYTES ("12D3KooW..." for Ed25519) or a SHA-256 ("Qm...")."""
    if not isinstance(text, str) or not _BASE58_RE.fullmatch(text):
        return False
    data = _base58btc_decode(text)
    if len(data) < 3 or data[1] != len(data) - 2:
        return False
    if data[0] == _IDENTITY_MULTIHASH:  # a protobuf PublicKey {Type (0-3): varint, Data: bytes}
        return (
            data[1] <= MAX_INLINE_KEY_BYTES
            and len(data) > 6
            and data[2] == 0x08
            and data[3] <= 3
            and data[4] == 0x12
            and data[5] == len(data) - 6
        )
    return data[0] == _SHA256_MULTIHASH and data[1] == DIGEST_SIZE


def ed25519_key_of_peer_id(text: object) -> bytes | None:
    """The 32-byte Ed25519 public key inside a peer ID ("12D3KooW...": the identity multihash of the protobuf
    PublicKey {Type: Ed25519, Data: key}), or None for any other text. Only such a peer can sign a manifest."""
    if not is_peer_id(text):
        return None
    data = _base58btc_decode(text)
    if data[:6] != _ED25519_PEER_ID_PREFIX or len(data) != len(_ED25519_PEER_ID_PREFIX) + ED25519_KEY_BYTES:
        return None
    return data[len(_ED25519_PEER_ID_PREFIX) :]


def peer_id_of_ed25519_key(public_key: bytes) -> str:
    """The peer ID of a 32-byte Ed25519 public key (the inverse of ed25519_key_of_peer_id; the length is the
    caller's to check: signing.peer_id_from_public_key)."""
    return base58btc(_ED25519_PEER_ID_PREFIX + public_key)


JOB_KEY_PREFIX = b"kogitune-job/1\n"
MAX_JOB_BYTES = 256
"""A job's name (kogitune.client.job_of_environment) is at most this long."""


def job_key(job: str, dataset_id: str) -> bytes:
    """The DHT key under which the nodes of one training job announce themselves for one dataset: the SHA2-256
    multihash (like `provider_key`) of SHA-256("kogitune-job/1\\n" + job + "\\n" + dataset ID). `job` names the job
    the same on all its hosts (by default "MASTER_ADDR:MASTER_PORT/TORCHELASTIC_RUN_ID", what torchrun sets on every
    host). Anyone who knows the name can announce under it: a job peer is preferred, never trusted (every byte is
    still checked). `KogituneError` for an empty or too long name, or something that is not a dataset ID."""
    encoded = job.encode()
    if not encoded or len(encoded) > MAX_JOB_BYTES or "\n" in job:
        raise KogituneError(f"a job name is 1 to {MAX_JOB_BYTES} bytes on one line, not {job[:300]!r}")
    dataset_id_digest(dataset_id)
    digest = sha256(JOB_KEY_PREFIX + encoded + b"\n" + dataset_id.encode())
    return bytes([_SHA256_MULTIHASH, DIGEST_SIZE]) + digest
