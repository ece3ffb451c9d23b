"""The data tensor manifest: schema, validation, canonical encoding and the dataset ID.

The manifest is the one file that names everything in a data tensor. Its canonical encoding (JSON with sorted
keys, no spaces, UTF-8, integers only) is what the dataset ID hashes, so any change to any shard changes the ID,
and the same manifest gives the same ID on every machine. docs/format.md is the specification.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import ManifestError
from .ids import dataset_id_from_digest, ed25519_key_of_peer_id, is_hex_digest, sha256
from .jsonlimits import MAX_JSON_DEPTH, loads

FORMAT = "kogitune-tensor/1"
MAX_MANIFEST_BYTES = 64 << 20
MAX_SHARDS = 1 << 20
MIN_PIECE_SIZE = 64 << 10
MAX_PIECE_SIZE = 16 << 20
MAX_BLOCK_SIZE = 1 << 20
MAX_SHARD_TOKENS = 1 << 32
MAX_NAME_CHARS = 256
DTYPES = {"uint16": 2, "uint32": 4}
DOC_OFFSET_BYTES = 4
_SHARD_NAME_RE = re.compile(r"[0-9]{5,9}")
_TOKENIZER_ID_RE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*-[0-9a-f]{4}")


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def piece_count(size: int, piece_size: int) -> int:
    return -(-size // piece_size)


@dataclass(frozen=True)
class TokenizerInfo:
    name: str
    id: str
    fingerprint: str
    vocab_size: int
    eos_id: int


SHARDS_DIR = "shards"
"""The folder of a data tensor that holds its shards' files; `ShardInfo.tokens_path` and its siblings are relative to
the tensor's directory, and so are the file paths of the wire protocol's data requests."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard: `shards/<name>.tokens` (flat tokens), `.pieces` (piece digests) and `.docs` (document starts)."""

    name: str
    blocks: int
    size: int
    root: str
    documents: int
    docs_sha256: str

    @property
    def tokens_path(self) -> str:
        return f"{SHARDS_DIR}/{self.name}.tokens"

    @property
    def pieces_path(self) -> str:
        return f"{SHARDS_DIR}/{self.name}.pieces"

    @property
    def docs_path(self) -> str:
        return f"{SHARDS_DIR}/{self.name}.docs"

    @property
    def docs_size(self) -> int:
        return self.documents * DOC_OFFSET_BYTES


@dataclass(frozen=True)
class Access:
    """Who decides who may fetch a dataset: present only in a private dataset's manifest (`publish --allow`).

    It is part of what the ID hashes, so a private dataset's ID differs from the public ID of the same tensor
    and names its publisher: the manifest is valid only with that publisher's signature, and the allow-list that
    travels with it only with that publisher's signature too (kogitune.protocol.signing)."""

    publisher: str
    private: bool = True


@dataclass(frozen=True)
class Manifest:
    tokenizer: TokenizerInfo
    dtype: str
    block_size: int
    piece_size: int
    documents: int
    tokens: int
    blocks: int
    shards: tuple[ShardInfo, ...]
    provenance: dict[str, Any]
    access: Access | None = None

    @property
    def is_private(self) -> bool:
        return self.access is not None

    def made_private(self, publisher: str) -> Manifest:
        """This manifest with an `access` field naming `publisher` (a "12D3KooW..." peer ID): a new dataset ID."""
        _access({"publisher": publisher, "private": True})  # the same checks as when it is read back
        return dataclasses.replace(self, access=Access(publisher))

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype]

    def pieces_in(self, shard: ShardInfo) -> int:
        return piece_count(shard.size, self.piece_size)

    def to_dict(self) -> dict[str, Any]:
        access = {"access": vars(self.access).copy()} if self.access is not None else {}
        return {
            **access,
            "format": FORMAT,
            "tokenizer": vars(self.tokenizer).copy(),
            "dtype": self.dtype,
            "block_size": self.block_size,
            "piece_size": self.piece_size,
            "counts": {"documents": self.documents, "tokens": self.tokens, "blocks": self.blocks},
            "shards": [vars(s).copy() for s in self.shards],
            "provenance": copy.deepcopy(self.provenance),
        }

    def canonical_bytes(self) -> bytes:
        return canonical_encoding(self.to_dict())

    @cached_property
    def dataset_id(self) -> str:
        """The SHA-256 of the canonical encoding, as an ID; computed on first use only (0.33 s for a 1 TiB
        tensor's manifest), which is right because a Manifest never changes (its provenance dict must not be
        edited in place: build a new Manifest)."""
        return dataset_id_from_digest(sha256(self.canonical_bytes()))


def canonical_encoding(value: Any) -> bytes:
    """JSON with sorted keys and no spaces, UTF-8; floats are refused because their text is not canonical."""
    _check_canonical(value, "manifest")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _check_canonical(value: Any, where: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) >= 1 << 63:
            raise ManifestError(f"{where}: integer {value} is outside the 64-bit range")
        return
    if isinstance(value, float):
        raise ManifestError(f"{where}: floats are not allowed in a manifest (write {value!r} as a string)")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_canonical(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ManifestError(f"{where}: key {key!r} is not a string")
            _check_canonical(item, f"{where}.{key}")
        return
    raise ManifestError(f"{where}: {type(value).__name__} cannot be encoded in a manifest")


def parse_manifest(data: bytes) -> Manifest:
    """Decode and validate manifest bytes (any JSON layout; the ID is computed from the canonical form). At most
    MAX_MANIFEST_BYTES bytes, nested at most MAX_JSON_DEPTH deep: anything else is a ManifestError."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest has more than the limit of {MAX_MANIFEST_BYTES} bytes")
    try:
        obj = loads(data.decode("utf-8"), MAX_JSON_DEPTH, object_pairs_hook=_unique_keys)
        canonical_encoding(obj).decode("utf-8")
    except ValueError as exc:  # UnicodeError, json.JSONDecodeError and too deep nesting are ValueErrors
        raise ManifestError(f"manifest is not valid UTF-8 JSON: {exc}") from None
    return manifest_from_dict(obj)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a repeated key are refused: another parser could keep the other value."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ManifestError(f"manifest repeats a key in one object ({sorted(k for k, _ in pairs)})")
    return obj


def manifest_from_dict(obj: Any) -> Manifest:
    _check_canonical(obj, "manifest")
    top = _fields(
        obj,
        "manifest",
        {"format", "tokenizer", "dtype", "block_size", "piece_size", "counts", "shards", "provenance"},
        optional={"access"},
    )
    if top["format"] != FORMAT:
        raise ManifestError(
            f"manifest format is {top['format']!r}; this Kogitune reads {FORMAT!r} "
            "(upgrade kogitune if the tensor is newer)"
        )
    tok = _fields(top["tokenizer"], "tokenizer", {"name", "id", "fingerprint", "vocab_size", "eos_id"})
    tokenizer = TokenizerInfo(
        name=_text(tok["name"], "tokenizer.name"),
        id=_text(tok["id"], "tokenizer.id"),
        fingerprint=_digest(tok["fingerprint"], "tokenizer.fingerprint"),
        vocab_size=_int(tok["vocab_size"], "tokenizer.vocab_size", 1, 1 << 32),
        eos_id=_int(tok["eos_id"], "tokenizer.eos_id", 0, 1 << 32),
    )
    if not _TOKENIZER_ID_RE.fullmatch(tokenizer.id):
        raise ManifestError(f"tokenizer.id {tokenizer.id!r} is not of the form 'name-1a2b'")
    if tokenizer.eos_id >= tokenizer.vocab_size:
        raise ManifestError(f"tokenizer.eos_id {tokenizer.eos_id} is outside the vocabulary ({tokenizer.vocab_size})")
    dtype = top["dtype"]
    if dtype != dtype_for_vocab(tokenizer.vocab_size):
        raise ManifestError(
            f"dtype {dtype!r} does not fit vocab_size {tokenizer.vocab_size} "
            f"(expected {dtype_for_vocab(tokenizer.vocab_size)!r})"
        )
    block_size = _int(top["block_size"], "block_size", 1, MAX_BLOCK_SIZE)
    piece_size = _int(top["piece_size"], "piece_size", MIN_PIECE_SIZE, MAX_PIECE_SIZE)
    if piece_size & (piece_size - 1):
        raise ManifestError(f"piece_size {piece_size} is not a power of two")
    counts = _fields(top["counts"], "counts", {"documents", "tokens", "blocks"})
    documents = _int(counts["documents"], "counts.documents", 0, 1 << 62)
    tokens = _int(counts["tokens"], "counts.tokens", 1, 1 << 62)
    blocks = _int(counts["blocks"], "counts.blocks", 1, 1 << 62)
    if not (blocks - 1) * block_size < tokens <= blocks * block_size:
        raise ManifestError(
            f"counts.tokens {tokens} does not fill counts.blocks {blocks} of {block_size} tokens "
            "(only the last block may be partial)"
        )
    raw_shards = top["shards"]
    if not isinstance(raw_shards, list) or not 1 <= len(raw_shards) <= MAX_SHARDS:
        raise ManifestError(f"shards must be a list of 1 to {MAX_SHARDS} entries")
    item_bytes = DTYPES[dtype] * block_size
    shards = tuple(_shard(s, i, item_bytes, DTYPES[dtype]) for i, s in enumerate(raw_shards))
    if len({s.name for s in shards}) != len(shards):
        raise ManifestError("two shards have the same name")
    if sum(s.blocks for s in shards) != blocks:
        raise ManifestError(f"the shards hold {sum(s.blocks for s in shards)} blocks, counts.blocks says {blocks}")
    if sum(s.documents for s in shards) != documents:
        raise ManifestError(
            f"the shards hold {sum(s.documents for s in shards)} documents, counts.documents says {documents}"
        )
    if not isinstance(top["provenance"], dict):
        raise ManifestError("provenance must be an object")
    access = _access(top["access"]) if "access" in top else None
    return Manifest(
        tokenizer, dtype, block_size, piece_size, documents, tokens, blocks, shards, top["provenance"], access
    )


def _access(obj: Any) -> Access:
    """`access` is {"private": true, "publisher": <an Ed25519 peer ID>}; a public manifest has no `access` field
    (so one tensor has exactly one public ID)."""
    access = _fields(obj, "access", {"publisher", "private"})
    if access["private"] is not True:
        raise ManifestError("access.private must be true (a public manifest has no access field)")
    if ed25519_key_of_peer_id(access["publisher"]) is None:
        raise ManifestError(
            f"access.publisher must be the peer ID of an Ed25519 key (12D3KooW...), got {access['publisher']!r:.80}"
        )
    return Access(access["publisher"])


def _shard(obj: Any, index: int, block_bytes: int, itemsize: int) -> ShardInfo:
    where = f"shards[{index}]"
    s = _fields(obj, where, {"name", "blocks", "size", "root", "documents", "docs_sha256"})
    shard = ShardInfo(
        name=_text(s["name"], f"{where}.name"),
        blocks=_int(s["blocks"], f"{where}.blocks", 1, 1 << 40),
        size=_int(s["size"], f"{where}.size", 1, 1 << 50),
        root=_digest(s["root"], f"{where}.root"),
        documents=_int(s["documents"], f"{where}.documents", 0, 1 << 40),
        docs_sha256=_digest(s["docs_sha256"], f"{where}.docs_sha256"),
    )
    if not _SHARD_NAME_RE.fullmatch(shard.name):
        raise ManifestError(f"{where}.name {shard.name!r} is not 5 to 9 digits")
    if shard.size != shard.blocks * block_bytes:
        raise ManifestError(f"{where}.size {shard.size} is not blocks x block bytes ({shard.blocks} x {block_bytes})")
    if shard.size // itemsize > MAX_SHARD_TOKENS:
        raise ManifestError(f"{where} holds more than {MAX_SHARD_TOKENS} tokens; document offsets are 32-bit")
    return shard


def _fields(obj: Any, where: str, names: set[str], optional: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where} must be an object")
    missing, extra = names - obj.keys(), obj.keys() - names - optional
    if missing:
        raise ManifestError(f"{where} lacks {', '.join(sorted(missing))}")
    if extra:
        raise ManifestError(f"{where} has unknown fields {', '.join(sorted(extra))}")
    return obj


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ManifestError(f"{where} must be an integer from {low} to {high}, got {value!r}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise ManifestError(f"{where} must be a string of 1 to {MAX_NAME_CHARS} characters")
    return value


def _digest(value: Any, where: str) -> str:
    if not is_hex_digest(value):
        raise ManifestError(f"{where} must be 64 lowercase hex digits")
    return value
