"""Frames on the wire, sans-I/O: the varint length prefix, the msgpack body and its limits, and the one error.

Every message of the wire protocol (wire.py) is a frame: an unsigned LEB128 varint length, then that many bytes of
msgpack holding one flat map with string keys. This module builds frames and decodes them incrementally from bytes
that arrive in pieces of any size; it knows nothing of what the maps mean.

Anything malformed, oversized or unknown raises WireError (code "bad_request"); nothing else escapes the parsers.
Error messages travel to peers written in any language, so they name values in msgpack's terms (`describe`), never
as Python reprs.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import msgpack

from .errors import KogituneError

ERROR_CODES = ("bad_request", "not_found", "busy", "internal")
MAX_VARINT_BYTES = 10
MAX_MAP_KEYS = 16


class WireError(KogituneError):
    """Malformed, oversized or unknown input on the wire; `.code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown wire error code {code!r}; expected one of {', '.join(ERROR_CODES)}")
        self.code = code
        self.message = message or code
        super().__init__(self.message)

    def __reduce__(self) -> tuple[type[WireError], tuple[str, str]]:
        return (type(self), (self.code, self.message))


def bad_request(message: str) -> WireError:
    """The error for input that breaks a rule of the protocol."""
    return WireError("bad_request", message)


def describe(value: Any) -> str:
    """A decoded msgpack value as an error message shows it: a string as JSON (its first 40 characters), an integer
    in decimal, true, false or nil, and any other value by its msgpack type and size ("binary of 3 bytes")."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value[:40]) + ("..." if len(value) > 40 else "")
    if isinstance(value, (bytes, bytearray)):
        return f"binary of {len(value)} bytes"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, dict):
        return f"a map of {len(value)} entries"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)} items"
    return "an extension type"


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


def encode_frame(obj: dict[str, Any]) -> bytes:
    """A whole frame: varint length of the msgpack body, then the body."""
    if not isinstance(obj, dict) or not all(isinstance(key, str) for key in obj):
        raise ValueError("a frame holds a map with string keys")
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return encode_varint(len(body)) + body


def unpack_body(body: bytes, max_body: int) -> dict[str, Any]:
    """Decode one frame body under strict limits: one flat map of at most 16 string keys and scalar values (no
    nested map, no array, no extension type), and nothing after it. The decoder stops at the second map it
    completes or the first array, so a nested frame is refused having built a few small objects at most (msgpack's
    own stack holds 1024 levels of 16 entries), and nothing that walks a message recurses."""
    maps = 0

    def one_map(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal maps
        maps += 1  # an inner map completes before the one around it: only the top map may be the first
        if maps > 1:
            raise _Refused("it holds a nested map; every value of a message is a scalar")
        obj = dict(pairs)
        if len(obj) != len(pairs):  # decoders differ on which value of a repeated key they keep
            raise _Refused("its map repeats a key")
        return obj

    def no_array(items: list[Any]) -> NoReturn:
        raise _Refused("it holds an array; no message has one")

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
    except _Refused as exc:
        raise bad_request(f"frame body refused: {exc}") from None
    except msgpack.ExtraData:
        raise bad_request("frame body holds bytes after its map") from None
    except Exception:  # msgpack raises several types (FormatError, StackError, ValueError, ...): all malformed
        raise bad_request(
            f"frame body is not one msgpack map within the limits (strings and binaries of at most {max_body} bytes, "
            f"at most {MAX_MAP_KEYS} entries, string keys, no extension types, valid UTF-8 in strings)"
        ) from None
    if not isinstance(obj, dict):
        raise bad_request(f"frame body is {describe(obj)}, not a map")
    if not all(isinstance(key, str) for key in obj):
        raise bad_request("frame body has a key that is not a string")
    return obj


class _Refused(ValueError):
    """A rule of unpack_body broken inside msgpack's hooks (its message is the reason)."""


class FrameDecoder:
    """Incremental frame decoder for bytes that arrive in pieces of any size.

    feed() buffers, next_frame() returns a decoded frame or None when more bytes are needed. A length above max_body
    is refused as soon as its varint is complete, before any of the body is kept, so an incomplete frame never
    holds more than max_body + 10 bytes: whenever next_frame() has returned None, `buffered` is at most that. Bytes
    that arrive in the same feed() as the end of a frame are kept for unused() (the start of a read response's raw
    data); feeding more while a complete frame waits, beyond max_body + 10 bytes in all, is refused.
    Errors are sticky: once next_frame() raised, it and unused() raise again and feed() ignores data.
    feed(b"") marks the end of the stream: then next_frame() returns a complete buffered frame or
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
            self._fail(bad_request(f"more than {self.max_buffered} bytes were fed while a complete frame waited"))
            return
        self._buf += data
        self._scan_header()

    def next_frame(self) -> dict[str, Any] | None:
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
                error = bad_request(f"the stream ended inside a frame ({len(self._buf)} bytes of it arrived)")
            else:
                error = bad_request("the stream ended before a frame")
            self._fail(error)
            raise error
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
                self._fail(bad_request(f"frame length is at least {value}, above the limit of {self.max_body} bytes"))
                return
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    self._fail(bad_request("frame length is a varint with redundant zero bytes"))
                    return
                self._header, self._length = i + 1, value
                return
        if len(self._buf) >= MAX_VARINT_BYTES:
            self._fail(bad_request(f"frame length is a varint longer than {MAX_VARINT_BYTES} bytes"))
