"""Content hashes and dataset IDs.

Every hash in Kogitune is SHA-256. A dataset ID is the SHA-256 of the manifest's canonical encoding, written as
``kg1-`` followed by 52 lowercase base32 characters: the prefix versions the scheme, base32 survives copy-paste,
URLs and file names.
"""

import base64
import hashlib
import re

from .errors import KogituneError

DATASET_ID_PREFIX = "kg1-"
DIGEST_SIZE = 32
# 256 bits are 51 base32 characters and 1 bit: the last character is "a" or "q", so one digest has one ID.
_DATASET_ID_RE = re.compile(r"kg1-[a-z2-7]{51}[aq]")
_HEX_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def dataset_id_from_digest(digest: bytes) -> str:
    if len(digest) != DIGEST_SIZE:
        raise ValueError(f"a dataset digest has {DIGEST_SIZE} bytes, got {len(digest)}")
    return DATASET_ID_PREFIX + base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def is_dataset_id(text: str) -> bool:
    return bool(_DATASET_ID_RE.fullmatch(text))


def dataset_id_digest(dataset_id: str) -> bytes:
    """The 32-byte digest behind a dataset ID (the key that the DHT announces)."""
    if not is_dataset_id(dataset_id):
        raise KogituneError(
            f"{dataset_id!r} is not a dataset ID: expected 'kg1-' and 52 characters a-z, 2-7 "
            "(as printed by `kogitune info` or `kogitune publish`)"
        )
    return base64.b32decode(dataset_id[len(DATASET_ID_PREFIX):].upper() + "====")


def is_hex_digest(text: object) -> bool:
    return isinstance(text, str) and bool(_HEX_DIGEST_RE.fullmatch(text))
