"""Dataset names: signed, versioned pointers `<publisher peer ID>/<name> -> kg1-...`, like IPNS records.

A publisher names a dataset by signing a record with the Ed25519 key of its node (the key inside its peer ID, so
a name's owner is part of the name and nobody else can sign for it). Each record has a sequence number; of the
valid records of a name, the one with the highest number wins (`select_record`), so publishing a new version under
the same name moves it. Records live on the DHT under `record_key(name)` (docs/protocol.md#names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import IntegrityError, ManifestError
from .ids import dataset_id_digest, ed25519_key_of_peer_id, is_dataset_id
from .jsonlimits import loads
from .manifest import canonical_encoding

NAME_FORMAT = "kogitune-name/1"
NAME_NAMESPACE = "kogitune-name"
"""The DHT record namespace: a name's key is `/kogitune-name/<peer ID>/<name>`."""
MAX_RECORD_BYTES = 1024
MAX_SEQUENCE = 2**53 - 1
_CONTEXT = b"kogitune/name/v1\x00"
_SHORT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class NameRecord:
    """`name` (`<peer ID>/<short name>`) points to `dataset_id`, version `sequence`, signed by the peer."""

    name: str
    sequence: int
    dataset_id: str
    signature: bytes

    def to_bytes(self) -> bytes:
        """The record as stored on the DHT: the canonical JSON of format, name, seq, value and the hex signature."""
        return canonical_encoding(
            {
                "format": NAME_FORMAT,
                "name": self.name,
                "seq": self.sequence,
                "value": self.dataset_id,
                "signature": self.signature.hex(),
            }
        )


def is_short_name(text: object) -> bool:
    """A name as a publisher gives it: 1 to 100 of A-Z a-z 0-9 . _ -, not starting with . _ or -."""
    return isinstance(text, str) and bool(_SHORT_NAME_RE.fullmatch(text))


def is_dataset_name(text: object) -> bool:
    """`<peer ID>/<short name>`, the peer ID an Ed25519 one (`12D3KooW...`)."""
    if not isinstance(text, str):
        return False
    publisher, slash, short = text.partition("/")
    return bool(slash) and is_short_name(short) and ed25519_key_of_peer_id(publisher) is not None


def full_name(publisher: str, short_name: str) -> str:
    name = f"{publisher}/{short_name}"
    if not is_dataset_name(name):
        raise ManifestError(
            f"{short_name!r} is not a dataset name: 1 to 100 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def record_key(name: str) -> str:
    """The DHT key of a name's records, `/kogitune-name/<peer ID>/<short name>` (its UTF-8 bytes on the wire)."""
    if not is_dataset_name(name):
        raise ManifestError(f"{name!r} is not a dataset name (<peer ID>/<name>)")
    return f"/{NAME_NAMESPACE}/{name}"


def name_payload(name: str, sequence: int, dataset_id: str) -> bytes:
    """What a publisher signs: the context, the name (UTF-8), a zero byte, the sequence number (8 bytes, big
    endian) and the dataset's 32-byte digest."""
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"a sequence number is 0 to 2^53 - 1, got {sequence}")
    return _CONTEXT + name.encode("ascii") + b"\x00" + sequence.to_bytes(8, "big") + dataset_id_digest(dataset_id)


def sign_name(seed: bytes, name: str, sequence: int, dataset_id: str) -> NameRecord:
    """A record of `name` signed with the 32-byte Ed25519 `seed` (the key of the name's peer ID)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(name_payload(name, sequence, dataset_id))
    return NameRecord(name, sequence, dataset_id, signature)


def parse_record(data: bytes, name: str | None = None) -> NameRecord:
    """A record from its bytes, checked: at most MAX_RECORD_BYTES of JSON with exactly format, name, seq, value and
    signature (ManifestError otherwise), for `name` when given, signed by the key of the name's peer ID
    (IntegrityError otherwise)."""
    if len(data) > MAX_RECORD_BYTES:
        raise ManifestError(f"a name record is at most {MAX_RECORD_BYTES} bytes, got {len(data)}")
    try:
        obj: Any = loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"a name record is UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != {"format", "name", "seq", "value", "signature"}:
        raise ManifestError("a name record has exactly the fields format, name, seq, value and signature")
    if obj["format"] != NAME_FORMAT:
        raise ManifestError(f"unknown name record format {obj['format']!r}; expected {NAME_FORMAT!r}")
    if not is_dataset_name(obj["name"]) or (name is not None and obj["name"] != name):
        raise ManifestError(f"the record names {str(obj['name'])[:200]!r}, not {name!r}")
    sequence, dataset_id, signature = obj["seq"], obj["value"], obj["signature"]
    if type(sequence) is not int or not 0 <= sequence <= MAX_SEQUENCE:
        raise ManifestError("a name record's seq is an integer from 0 to 2^53 - 1")
    if not isinstance(dataset_id, str) or not is_dataset_id(dataset_id):
        raise ManifestError("a name record's value is a dataset ID")
    if not isinstance(signature, str) or not re.fullmatch(r"[0-9a-f]{128}", signature):
        raise ManifestError("a name record's signature is 128 lowercase hex digits")
    record = NameRecord(obj["name"], sequence, dataset_id, bytes.fromhex(signature))
    _verify(record)
    return record


def _verify(record: NameRecord) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = ed25519_key_of_peer_id(record.name.partition("/")[0])
    assert key is not None  # is_dataset_name checked it
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(
            record.signature, name_payload(record.name, record.sequence, record.dataset_id)
        )
    except InvalidSignature:
        raise IntegrityError(f"the record of {record.name} (seq {record.sequence}) is not signed by its peer") from None


def select_record(records: list[NameRecord]) -> int:
    """The index of the record that wins: the highest sequence number; between equal numbers, the greatest bytes
    (so every node picks the same one)."""
    if not records:
        raise ValueError("no records to select from")
    return max(range(len(records)), key=lambda i: (records[i].sequence, records[i].to_bytes()))
