"""The wire protocol between Kogitune nodes, sans-I/O: its messages, their limits, and have-maps.

One libp2p protocol, PROTOCOL_ID; a stream carries one request and one response. Every message is a frame
(frames.py): an unsigned LEB128 varint length, then that many bytes of msgpack holding a map with string keys, whose
`op` names the message. After a ReadResponse header exactly `length` raw bytes follow on the stream, unframed.
Providers are found on a Kademlia DHT of Kogitune's own, DHT_PROTOCOL_ID, under ids.provider_key. docs/protocol.md
is the specification; this module checks and builds the messages and never touches a socket.

Anything malformed, oversized or unknown raises WireError (code "bad_request"); nothing else escapes the parsers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Re-exported (`X as X`): node/ and the tests reach the whole protocol through wire.
from .frames import ERROR_CODES as ERROR_CODES
from .frames import FrameDecoder as FrameDecoder
from .frames import WireError as WireError
from .frames import bad_request, describe, encode_frame
from .frames import encode_varint as encode_varint
from .ids import DIGEST_SIZE, ED25519_KEY_BYTES, ED25519_SIGNATURE_BYTES, is_peer_id
from .manifest import MAX_MANIFEST_BYTES, MAX_SHARDS

PROTOCOL_ID = "/kogitune/data/2.0.0"
"""2.0.0: every response names itself (`op`: the request's op, or "error"; 1.x had a boolean `ok` and the client
knew the type from its request), `v` is 2, offsets stop at 2^53 - 1 (exact in every JSON and JavaScript number), a
frame that repeats a key is refused, and the DHT is Kogitune's own (DHT_PROTOCOL_ID, keys ids.provider_key). 1.x
peers cannot talk to 2.0.0 ones: libp2p's protocol negotiation answers "na"."""
DHT_PROTOCOL_ID = "/kogitune/kad/1.0.0"
"""The Kademlia DHT of the Kogitune network: the libp2p Kademlia protocol (the messages of `/ipfs/kad/1.0.0`) under
its own ID, so Kogitune nodes form a network of their own and never join or answer the public IPFS DHT."""
OLDER_PROTOCOL_IDS = ("/kogitune/data/1.0.0", "/kogitune/data/1.1.0")
"""Data protocols of older Kogitune versions: a peer that offers one of them and not PROTOCOL_ID runs an older
Kogitune, which a fetcher says rather than "cannot open a stream"."""
WIRE_VERSION = 2
MAX_REQUEST_BYTES = 4096
MAX_ALLOW_CHARS = 64 << 10
MAX_HEADER_BYTES = MAX_MANIFEST_BYTES + MAX_ALLOW_CHARS + 4096
MAX_READ_BYTES = 1 << 30
FILE_KINDS = ("tokens", "pieces", "docs")

MAX_MESSAGE_CHARS = 1000
MAX_OFFSET = (1 << 53) - 1
"""The largest offset of a read: every integer on the wire is below 2^53, so a decoder that holds numbers as IEEE
doubles (JavaScript) reads each one exactly."""
MAX_BITMAP_BYTES = -(-MAX_SHARDS // 8)
_SHARD_RE = re.compile(r"[0-9]{5,9}")


# ---- messages ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRequest:
    dataset: bytes


@dataclass(frozen=True)
class HaveRequest:
    dataset: bytes


@dataclass(frozen=True)
class ReadRequest:
    dataset: bytes
    shard: str
    file: str
    offset: int
    length: int


Request = ManifestRequest | HaveRequest | ReadRequest


@dataclass(frozen=True)
class ManifestResponse:
    """`allow`: the peers a private dataset is served to (sorted), empty for a public one, with the publisher's
    `allow_signature` of it (empty with an empty list). A replica keeps a list only for a private manifest and only
    if the publisher that manifest names signed it (signing.allowed_peers), and then serves its copy to the same
    peers only; a list sent with a public manifest means nothing."""

    manifest: bytes
    signature: bytes
    public_key: bytes
    allow: tuple[str, ...] = ()
    allow_signature: bytes = b""


@dataclass(frozen=True)
class HaveResponse:
    """`data_port`: a TCP port on the address this answer came from where the node serves this dataset over
    HTTP in the web-mirror layout (docs/protocol.md#the-data-port), 0 for none. Optional on the wire (sent only
    when not 0): the one key a message may have or leave out."""

    shards: bytes
    data_port: int = 0


@dataclass(frozen=True)
class ReadResponse:
    length: int


@dataclass(frozen=True)
class ErrorResponse:
    code: str
    message: str


Response = ManifestResponse | HaveResponse | ReadResponse | ErrorResponse

_REQUEST_KEYS = {
    "manifest": ("v", "op", "dataset"),
    "have": ("v", "op", "dataset"),
    "read": ("v", "op", "dataset", "shard", "file", "offset", "length"),
}
_RESPONSE_OPS: dict[type, str] = {
    ManifestResponse: "manifest",
    HaveResponse: "have",
    ReadResponse: "read",
    ErrorResponse: "error",
}
"""The `op` of each response: the op of the request it answers, or "error"."""
_OPTIONAL_KEYS: dict[type, tuple[str, ...]] = {HaveResponse: ("data_port",)}
"""Keys a response may leave out (a 2.0.0 node of before the data port sends none of them)."""
MAX_PORT = 65535
_RESPONSE_KEYS = {
    ManifestResponse: ("v", "op", "manifest", "signature", "public_key", "allow", "allow_signature"),
    HaveResponse: ("v", "op", "shards"),
    ReadResponse: ("v", "op", "length"),
    ErrorResponse: ("v", "op", "code", "message"),
}


def _keys(obj: dict[str, Any], names: tuple[str, ...], what: str) -> None:
    if obj.keys() != set(names):
        missing = ", ".join(sorted(set(names) - obj.keys())) or "none"
        extra = ", ".join(sorted(describe(key) for key in obj.keys() - set(names))) or "none"
        raise bad_request(f"{what}: missing keys: {missing}; unknown keys: {extra}")


def _version(obj: dict[str, Any]) -> None:
    v = obj.get("v")
    if type(v) is not int or v != WIRE_VERSION:
        raise bad_request(f"wire version is {describe(v)}; this node speaks version {WIRE_VERSION} ({PROTOCOL_ID})")


def _int(value: Any, name: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise bad_request(f"{name} must be an integer from {low} to {high}, got {describe(value)}")
    return value


def _bin(value: Any, name: str, low: int, high: int) -> bytes:
    if type(value) is not bytes or not low <= len(value) <= high:
        size = f"{low}" if low == high else f"{low} to {high}"
        raise bad_request(f"{name} must be {size} bytes of binary, got {describe(value)}")
    return value


def _str(value: Any, name: str, high: int) -> str:
    if type(value) is not str or len(value) > high:
        raise bad_request(f"{name} must be a string of at most {high} characters")
    return value


def _allow(text: str) -> tuple[str, ...]:
    """An allow-list: peer IDs in ascending order, each once, separated by single spaces; "" for none."""
    peers = tuple(text.split(" ")) if text else ()
    if not all(map(is_peer_id, peers)):
        raise bad_request("allow must hold peer IDs separated by single spaces")
    if list(peers) != sorted(set(peers)):
        raise bad_request("allow must list each peer ID once, in ascending order")
    return peers


def parse_request(obj: dict[str, Any]) -> Request:
    """Validate a decoded request frame; WireError("bad_request") unless it is exactly one valid request."""
    if not isinstance(obj, dict):
        raise bad_request("a request is not a map")
    op = obj.get("op")
    if type(op) is not str or op not in _REQUEST_KEYS:
        raise bad_request(f"unknown op {describe(op)}; a request's op is one of {', '.join(_REQUEST_KEYS)}")
    _keys(obj, _REQUEST_KEYS[op], f"{op} request")
    _version(obj)
    dataset = _bin(obj["dataset"], "dataset", DIGEST_SIZE, DIGEST_SIZE)
    if op == "manifest":
        return ManifestRequest(dataset)
    if op == "have":
        return HaveRequest(dataset)
    shard = obj["shard"]
    if type(shard) is not str or not _SHARD_RE.fullmatch(shard):
        raise bad_request(f"shard must be a name of 5 to 9 digits, got {describe(shard)}")
    file = obj["file"]
    if type(file) is not str or file not in FILE_KINDS:
        raise bad_request(f"file must be one of {', '.join(FILE_KINDS)}, got {describe(file)}")
    offset = _int(obj["offset"], "offset", 0, MAX_OFFSET)
    length = _int(obj["length"], "length", 1, MAX_READ_BYTES)
    return ReadRequest(dataset, shard, file, offset, length)


def _request_dict(request: Request) -> dict[str, Any]:
    if isinstance(request, ManifestRequest):
        return {"v": WIRE_VERSION, "op": "manifest", "dataset": request.dataset}
    if isinstance(request, HaveRequest):
        return {"v": WIRE_VERSION, "op": "have", "dataset": request.dataset}
    if isinstance(request, ReadRequest):
        return {
            "v": WIRE_VERSION,
            "op": "read",
            "dataset": request.dataset,
            "shard": request.shard,
            "file": request.file,
            "offset": request.offset,
            "length": request.length,
        }
    raise TypeError(f"not a request: {request!r:.80}")


def encode_request(request: Request) -> bytes:
    """A whole request frame; ValueError if the request would not pass parse_request."""
    obj = _request_dict(request)
    try:
        parse_request(obj)
    except WireError as exc:
        raise ValueError(f"invalid request: {exc}") from None
    return encode_frame(obj)


def parse_response(obj: dict[str, Any], expected: type[Response]) -> Response:
    """Validate a decoded response frame: an ErrorResponse, or a response of the `expected` type (its `op` says which
    it is); else WireError."""
    if expected not in _RESPONSE_KEYS:
        raise TypeError(f"expected must be a response class, got {expected!r:.80}")
    if not isinstance(obj, dict):
        raise bad_request("a response is not a map")
    op = obj.get("op")
    if op not in (_RESPONSE_OPS[expected], "error"):
        raise bad_request(f"response op is {describe(op)}; expected {_RESPONSE_OPS[expected]} or error")
    kind = ErrorResponse if op == "error" else expected
    present = tuple(key for key in _OPTIONAL_KEYS.get(kind, ()) if key in obj)
    _keys(obj, _RESPONSE_KEYS[kind] + present, f"{op} response")
    _version(obj)
    if kind is ErrorResponse:
        code = obj["code"]
        if type(code) is not str or code not in ERROR_CODES:
            raise bad_request(f"unknown error code {describe(code)}; expected one of {', '.join(ERROR_CODES)}")
        return ErrorResponse(code, _str(obj["message"], "message", MAX_MESSAGE_CHARS))
    if kind is ManifestResponse:
        allow = _allow(_str(obj["allow"], "allow", MAX_ALLOW_CHARS))
        signed = ED25519_SIGNATURE_BYTES if allow else 0  # the publisher's signature of the list, none without one
        return ManifestResponse(
            manifest=_bin(obj["manifest"], "manifest", 1, MAX_MANIFEST_BYTES),
            signature=_bin(obj["signature"], "signature", ED25519_SIGNATURE_BYTES, ED25519_SIGNATURE_BYTES),
            public_key=_bin(obj["public_key"], "public_key", ED25519_KEY_BYTES, ED25519_KEY_BYTES),
            allow=allow,
            allow_signature=_bin(obj["allow_signature"], "allow_signature", signed, signed),
        )
    if kind is HaveResponse:
        port = _int(obj["data_port"], "data_port", 1, MAX_PORT) if "data_port" in obj else 0
        return HaveResponse(_bin(obj["shards"], "shards", 0, MAX_BITMAP_BYTES), port)
    return ReadResponse(_int(obj["length"], "length", 1, MAX_READ_BYTES))


def _response_dict(response: Response) -> dict[str, Any]:
    if isinstance(response, ManifestResponse):
        return {
            "v": WIRE_VERSION,
            "op": "manifest",
            "manifest": response.manifest,
            "signature": response.signature,
            "public_key": response.public_key,
            "allow": " ".join(response.allow),
            "allow_signature": response.allow_signature,
        }
    if isinstance(response, HaveResponse):
        port = {"data_port": response.data_port} if response.data_port else {}
        return {"v": WIRE_VERSION, "op": "have", "shards": response.shards, **port}
    if isinstance(response, ReadResponse):
        return {"v": WIRE_VERSION, "op": "read", "length": response.length}
    if isinstance(response, ErrorResponse):
        message = response.message if isinstance(response.message, str) else str(response.message)
        message = message[:MAX_MESSAGE_CHARS].encode("utf-8", "replace").decode("utf-8")
        return {"v": WIRE_VERSION, "op": "error", "code": response.code, "message": message}
    raise TypeError(f"not a response: {response!r:.80}")


def encode_response(response: Response) -> bytes:
    """A whole response frame; ValueError if it would not pass parse_response.

    An ErrorResponse's message is cut to 1000 characters (and lone surrogates replaced), so
    `encode_response(ErrorResponse("internal", str(exc)))` is always safe.
    """
    obj = _response_dict(response)
    try:
        parse_response(obj, type(response))
    except WireError as exc:
        raise ValueError(f"invalid response: {exc}") from None
    return encode_frame(obj)


def response_limit(request: Request) -> int:
    """The max_body for a FrameDecoder that reads the response to `request` (tighter than MAX_HEADER_BYTES)."""
    if isinstance(request, ManifestRequest):
        return MAX_HEADER_BYTES
    if isinstance(request, HaveRequest):
        return MAX_BITMAP_BYTES + 4096
    if isinstance(request, ReadRequest):
        return 4096
    raise TypeError(f"not a request: {request!r:.80}")


def expected_response(request: Request) -> type[Response]:
    """The response class that answers `request` (for parse_response)."""
    if isinstance(request, ManifestRequest):
        return ManifestResponse
    if isinstance(request, HaveRequest):
        return HaveResponse
    if isinstance(request, ReadRequest):
        return ReadResponse
    raise TypeError(f"not a request: {request!r:.80}")


# ---- have-maps --------------------------------------------------------------------------------------------------


def have_bitmap(complete: list[bool]) -> bytes:
    """Bit i (byte i // 8, bit i % 8, least significant first) set when shard i in manifest order is complete."""
    out = bytearray(-(-len(complete) // 8))
    for i, done in enumerate(complete):
        if done:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def have_shards(bitmap: bytes, count: int) -> list[bool]:
    """The shards a have-map marks complete, for a manifest of `count` shards; WireError if it does not fit."""
    if len(bitmap) != -(-count // 8):
        raise bad_request(f"have-map has {len(bitmap)} bytes; {count} shards need {-(-count // 8)}")
    if count % 8 and bitmap[-1] >> (count % 8):
        raise bad_request(f"have-map marks shards beyond the manifest's {count}")
    return [bool(bitmap[i >> 3] >> (i & 7) & 1) for i in range(count)]
