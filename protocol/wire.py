"""The wire protocol between Kogitune nodes, sans-I/O: frames, messages and their limits.

One libp2p protocol, PROTOCOL_ID; a stream carries one request and one response. Every message is a frame: an
unsigned LEB128 varint length, then that many bytes of msgpack holding a map with string keys. After a ReadResponse
header exactly `length` raw bytes follow on the stream, unframed. docs/protocol.md is the specification; this module
parses and builds frames and never touches a socket.

Anything malformed, oversized or unknown raises WireError (code "bad_request"); nothing else escapes the parsers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import KogituneError
from .ids import DIGEST_SIZE, is_peer_id
from .manifest import MAX_MANIFEST_BYTES, MAX_SHARDS

PROTOCOL_ID = "/kogitune/data/1.1.0"
"""1.1.0: the allow-list of a ManifestResponse counts only with a private manifest (docs/format.md `access`), and
`forbidden` is gone (a refused peer is answered `not_found`). A 1.0.0 node would honour a list sent with a public
manifest, and a 1.1.0 node would serve publicly a 1.0.0 node's private dataset: they must not talk."""
WIRE_VERSION = 1
MAX_REQUEST_BYTES = 4096
MAX_ALLOW_CHARS = 64 << 10
MAX_HEADER_BYTES = (64 << 20) + MAX_ALLOW_CHARS + 4096
MAX_READ_BYTES = 1 << 30
FILE_KINDS = ("tokens", "pieces", "docs")
ERROR_CODES = ("bad_request", "not_found", "busy", "internal")

MAX_VARINT_BYTES = 10
MAX_MESSAGE_CHARS = 1000
MAX_OFFSET = (1 << 63) - 1
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
MAX_BITMAP_BYTES = -(-MAX_SHARDS // 8)
MAX_MAP_KEYS = 16
_SHARD_RE = re.compile(r"[0-9]{5,9}")


class WireError(KogituneError):
    """Malformed, oversized or unknown input on the wire; `.code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown wire error code {code!r}; expected one of {', '.join(ERROR_CODES)}")
        self.code = code
        self.message = message or code
        super().__init__(self.message)

    def __reduce__(self):
        return (type(self), (self.code, self.message))


def _bad(message: str) -> WireError:
    return WireError("bad_request", message)


# ---- frames -----------------------------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits a byte, least significant first, high bit set on every byte but the last."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError(f"a varint holds an integer from 0 to 2**64 - 1, got {value!r}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_frame(obj: dict) -> bytes:
    """A whole frame: varint length of the msgpack body, then the body."""
    if not isinstance(obj, dict) or not all(isinstance(key, str) for key in obj):
        raise ValueError("a frame holds a map with string keys")
    body = msgpack.packb(obj, use_bin_type=True)
    return encode_varint(len(body)) + body


def unpack_body(body: bytes, max_body: int) -> dict:
    """Decode one frame body under strict limits: one flat map of at most 16 string keys and scalar values (no
    nested map, no array, no extension type), and nothing after it. The decoder stops at the second map it
    completes or the first array, so a nested frame is refused having built a few small objects at most (msgpack's
    own stack holds 1024 levels of 16 entries), and nothing that walks a message recurses."""
    maps = 0

    def one_map(pairs: list) -> dict:
        nonlocal maps
        maps += 1  # an inner map completes before the one around it: only the top map may be the first
        if maps > 1:
            raise ValueError("it holds a nested map; every value of a message is a scalar")
        return dict(pairs)

    def no_array(items: list):
        raise ValueError("it holds an array; no message has one")

    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=one_map,
            list_hook=no_array,
            max_bin_len=max_body,
            max_str_len=max_body,
            max_array_len=0,
            max_map_len=MAX_MAP_KEYS,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several types (ExtraData, FormatError, ValueError, ...): all malformed
        raise _bad(f"frame body is not one msgpack value within the limits: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise _bad(f"frame body is a msgpack {type(obj).__name__}, not a map")
    if not all(isinstance(key, str) for key in obj):
        raise _bad("frame body has a key that is not a string")
    return obj


class FrameDecoder:
    """Incremental frame decoder for bytes that arrive in pieces of any size.

    feed() buffers, next_frame() returns a decoded frame or None when more bytes are needed. A length above max_body
    is refused as soon as its varint is complete, before any of the body is kept, so an incomplete frame never
    holds more than max_body + 10 bytes: whenever next_frame() has returned None, `buffered` is at most that. Bytes
    that arrive in the same feed() as the end of a frame are kept for unused() (the start of a read response's raw
    data); feeding more while a complete frame waits, beyond max_body + 10 bytes in all, is refused.
    Errors are sticky: once next_frame() raised, it and unused() raise again and feed() ignores data.
    feed(b"") or feed_eof() marks the end of the stream: then next_frame() returns a complete buffered frame or
    raises, never None. Take a read response's raw bytes with unused() right after its header frame, and read the
    rest of the stream directly: the decoder is not a buffer for raw data.
    """

    def __init__(self, max_body: int) -> None:
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise ValueError(f"max_body must be a positive integer, got {max_body!r}")
        self.max_body = max_body
        self.max_buffered = max_body + MAX_VARINT_BYTES
        self._buf = bytearray()
        self._header = 0  # bytes of the pending frame's varint, once complete
        self._length: int | None = None  # body length of the pending frame, once known
        self._error: WireError | None = None
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes held right now."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        if self._eof:
            raise ValueError("feed() after the end of the stream")
        if self._error is not None:
            return
        waiting = self._length is not None and len(self._buf) >= self._header + self._length
        if waiting and len(self._buf) + len(data) > self.max_buffered:
            self._fail(_bad(f"more than {self.max_buffered} bytes were fed while a complete frame waited"))
            return
        self._buf += data
        self._scan_header()

    def feed_eof(self) -> None:
        self._eof = True

    def next_frame(self) -> dict | None:
        if self._error is not None:
            raise self._error
        self._scan_header()
        if self._error is not None:
            raise self._error
        if self._length is not None and len(self._buf) >= self._header + self._length:
            end = self._header + self._length
            body = bytes(self._buf[self._header : end])
            del self._buf[:end]
            self._header, self._length = 0, None
            try:
                return unpack_body(body, self.max_body)
            except WireError as exc:
                self._fail(exc)
                raise
        if self._eof:
            if self._buf:
                self._fail(_bad(f"the stream ended inside a frame ({len(self._buf)} bytes of it arrived)"))
            else:
                self._fail(_bad("the stream ended before a frame"))
            raise self._error
        return None

    def unused(self) -> bytes:
        """Bytes fed after the last returned frame: the first raw bytes that follow a ReadResponse header."""
        if self._error is not None:
            raise self._error
        return bytes(self._buf)

    def _fail(self, error: WireError) -> None:
        self._error = error
        self._buf = bytearray()
        self._header, self._length = 0, None

    def _scan_header(self) -> None:
        if self._length is not None or self._error is not None or not self._buf:
            return
        value = 0
        for i in range(min(len(self._buf), MAX_VARINT_BYTES)):
            byte = self._buf[i]
            value |= (byte & 0x7F) << (7 * i)
            if value > self.max_body:
                self._fail(_bad(f"frame length is at least {value}, above the limit of {self.max_body} bytes"))
                return
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    self._fail(_bad("frame length is a varint with redundant zero bytes"))
                    return
                self._header, self._length = i + 1, value
                return
        if len(self._buf) >= MAX_VARINT_BYTES:
            self._fail(_bad(f"frame length is a varint longer than {MAX_VARINT_BYTES} bytes"))


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
    shards: bytes


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
_RESPONSE_KEYS = {
    ManifestResponse: ("v", "ok", "manifest", "signature", "public_key", "allow", "allow_signature"),
    HaveResponse: ("v", "ok", "shards"),
    ReadResponse: ("v", "ok", "length"),
    ErrorResponse: ("v", "ok", "code", "message"),
}


def _keys(obj: Any, names: tuple[str, ...], what: str) -> None:
    if not isinstance(obj, dict):
        raise _bad(f"{what} is not a map")
    if obj.keys() != set(names):
        missing = sorted(set(names) - obj.keys())
        extra = sorted(repr(key)[:40] for key in obj.keys() - set(names))
        raise _bad(f"{what}: missing keys {missing}, unknown keys {extra}")


def _version(obj: dict) -> None:
    v = obj.get("v")
    if type(v) is not int or v != WIRE_VERSION:
        raise _bad(f"wire version is {v!r:.40}; this Kogitune speaks version {WIRE_VERSION}")


def _int(value: Any, name: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _bad(f"{name} must be an integer from {low} to {high}, got {value!r:.40}")
    return value


def _bin(value: Any, name: str, low: int, high: int) -> bytes:
    if type(value) is not bytes or not low <= len(value) <= high:
        size = f"{low}" if low == high else f"{low} to {high}"
        raise _bad(
            f"{name} must be {size} bytes of binary, got {type(value).__name__}"
            + (f" of {len(value)}" if isinstance(value, (bytes, str)) else "")
        )
    return value


def _str(value: Any, name: str, high: int) -> str:
    if type(value) is not str or len(value) > high:
        raise _bad(f"{name} must be a string of at most {high} characters")
    return value


def _allow(text: str) -> tuple[str, ...]:
    """An allow-list: peer IDs in ascending order, each once, separated by single spaces; "" for none."""
    peers = tuple(text.split(" ")) if text else ()
    if not all(map(is_peer_id, peers)):
        raise _bad("allow must hold peer IDs separated by single spaces")
    if list(peers) != sorted(set(peers)):
        raise _bad("allow must list each peer ID once, in ascending order")
    return peers


def parse_request(obj: dict) -> Request:
    """Validate a decoded request frame; WireError("bad_request") unless it is exactly one valid request."""
    if not isinstance(obj, dict):
        raise _bad("a request is not a map")
    op = obj.get("op")
    if type(op) is not str or op not in _REQUEST_KEYS:
        raise _bad(f"unknown op {op!r:.40}; expected one of {', '.join(_REQUEST_KEYS)}")
    _keys(obj, _REQUEST_KEYS[op], f"{op} request")
    _version(obj)
    dataset = _bin(obj["dataset"], "dataset", DIGEST_SIZE, DIGEST_SIZE)
    if op == "manifest":
        return ManifestRequest(dataset)
    if op == "have":
        return HaveRequest(dataset)
    shard = obj["shard"]
    if type(shard) is not str or not _SHARD_RE.fullmatch(shard):
        raise _bad(f"shard must be a name of 5 to 9 digits, got {shard!r:.40}")
    file = obj["file"]
    if type(file) is not str or file not in FILE_KINDS:
        raise _bad(f"file must be one of {', '.join(FILE_KINDS)}, got {file!r:.40}")
    offset = _int(obj["offset"], "offset", 0, MAX_OFFSET)
    length = _int(obj["length"], "length", 1, MAX_READ_BYTES)
    return ReadRequest(dataset, shard, file, offset, length)


def _request_dict(request: Request) -> dict:
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


def parse_response(obj: dict, expected: type) -> Response:
    """Validate a decoded response frame: an ErrorResponse, or a response of the `expected` type; else WireError."""
    if expected not in _RESPONSE_KEYS:
        raise TypeError(f"expected must be a response class, got {expected!r:.80}")
    if not isinstance(obj, dict):
        raise _bad("a response is not a map")
    ok = obj.get("ok")
    if type(ok) is not bool:
        raise _bad(f"response field ok must be true or false, got {ok!r:.40}")
    kind = expected if ok else ErrorResponse
    if ok and expected is ErrorResponse:
        raise _bad("expected an error response, got ok=true")
    _keys(obj, _RESPONSE_KEYS[kind], f"{kind.__name__}")
    _version(obj)
    if kind is ErrorResponse:
        code = obj["code"]
        if type(code) is not str or code not in ERROR_CODES:
            raise _bad(f"unknown error code {code!r:.40}")
        return ErrorResponse(code, _str(obj["message"], "message", MAX_MESSAGE_CHARS))
    if kind is ManifestResponse:
        allow = _allow(_str(obj["allow"], "allow", MAX_ALLOW_CHARS))
        signed = SIGNATURE_BYTES if allow else 0  # the publisher's signature of the list, none without one
        return ManifestResponse(
            manifest=_bin(obj["manifest"], "manifest", 1, MAX_MANIFEST_BYTES),
            signature=_bin(obj["signature"], "signature", SIGNATURE_BYTES, SIGNATURE_BYTES),
            public_key=_bin(obj["public_key"], "public_key", PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES),
            allow=allow,
            allow_signature=_bin(obj["allow_signature"], "allow_signature", signed, signed),
        )
    if kind is HaveResponse:
        return HaveResponse(_bin(obj["shards"], "shards", 0, MAX_BITMAP_BYTES))
    return ReadResponse(_int(obj["length"], "length", 1, MAX_READ_BYTES))


def _response_dict(response: Response) -> dict:
    if isinstance(response, ManifestResponse):
        return {
            "v": WIRE_VERSION,
            "ok": True,
            "manifest": response.manifest,
            "signature": response.signature,
            "public_key": response.public_key,
            "allow": " ".join(response.allow),
            "allow_signature": response.allow_signature,
        }
    if isinstance(response, HaveResponse):
        return {"v": WIRE_VERSION, "ok": True, "shards": response.shards}
    if isinstance(response, ReadResponse):
        return {"v": WIRE_VERSION, "ok": True, "length": response.length}
    if isinstance(response, ErrorResponse):
        message = response.message if isinstance(response.message, str) else str(response.message)
        message = message[:MAX_MESSAGE_CHARS].encode("utf-8", "replace").decode("utf-8")
        return {"v": WIRE_VERSION, "ok": False, "code": response.code, "message": message}
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


def error_frame(code: str, message: str) -> bytes:
    """Shorthand for encode_response(ErrorResponse(code, message))."""
    return encode_response(ErrorResponse(code, message))


def response_limit(request: Request) -> int:
    """The max_body for a FrameDecoder that reads the response to `request` (tighter than MAX_HEADER_BYTES)."""
    if isinstance(request, ManifestRequest):
        return MAX_HEADER_BYTES
    if isinstance(request, HaveRequest):
        return MAX_BITMAP_BYTES + 4096
    if isinstance(request, ReadRequest):
        return 4096
    raise TypeError(f"not a request: {request!r:.80}")


def expected_response(request: Request) -> type:
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
        raise _bad(f"have-map has {len(bitmap)} bytes; {count} shards need {-(-count // 8)}")
    if count % 8 and bitmap[-1] >> (count % 8):
        raise _bad(f"have-map marks shards beyond the manifest's {count}")
    return [bool(bitmap[i >> 3] >> (i & 7) & 1) for i in range(count)]
