"""Kogitune's exceptions: the whole tree, in one place.

Every error Kogitune raises on purpose is a KogituneError, so `except KogituneError` catches them all; its message
says what happened and what to do. The sans-I/O contract (kogitune.protocol) defines the root and its own four
errors, since it imports nothing from here; they are re-exported below, so that every class can be imported from
`kogitune.errors`.

    KogituneError               (protocol) the root
    ├── ManifestError           (protocol) a manifest does not follow the schema of docs/format.md
    ├── IntegrityError          (protocol) bytes or a signature do not match what a manifest or an ID commits to
    ├── IdentityError           (protocol) a TLS certificate or data-port authorization does not prove its peer ID
    ├── WireError               (protocol.frames) a malformed, oversized or unknown message on the wire; `.code`
    ├── BadInputError           input text (JSONL, Parquet, ...) cannot be read
    ├── DiskFullError           a file system is full or a quota reached while writing
    ├── TokenizerError          a tokenizer cannot be loaded, or two tensors use different ones
    ├── TensorError             a data tensor directory is missing, incomplete or not what was asked for
    ├── RecipeError             a dataset recipe names something that cannot be used for training
    ├── PerturbError            a --perturb spec is malformed or does not fit the tokenizer
    ├── FilterError             a filter config names an unknown filter or parameter, or a value it cannot take
    ├── SettingsError           a setting (config file, environment variable, flag) has a bad value
    ├── FetchError              a dataset, shard or file could not be fetched from any of its sources
    │   └── SourceError         one source failed one request; the others may still deliver
    │       ├── ConnectionLost  a connection to one source closed or broke before its answer (not a timeout)
    │       ├── SourceBusy      one source is alive and honest, but its serving slots are taken
    │       ├── SourceLacks     one peer does not hold the file asked for (yet): it serves part of a dataset
    │       └── SourceMissing   one source answered that it does not have the file (HTTP 404)
    └── NodeError               the node cannot start, refused a command, or a control request is malformed
        └── NodeNotRunning      no node answers on the control socket of a home

Lower-level errors are turned into these at the boundary where they enter: OSError and stream errors from a peer or a
web mirror become SourceError (kogitune.node.peers, kogitune.node.http), ENOSPC while storing becomes DiskFullError.
A failed request to a node daemon comes back as the class the daemon raised (`error_reply` on the node's side,
`error_from_reply` on the client's), so a caller catches the same FetchError whether a daemon or this process
fetched.
"""

from __future__ import annotations

from kogitune.protocol.errors import IdentityError, IntegrityError, KogituneError, ManifestError


class BadInputError(KogituneError):
    """Raised by `store` and `filter` when input text cannot be read; the message names the file and line."""


class DiskFullError(KogituneError):
    """Raised when a file system is full (or a quota reached) while writing; the message names the path, what was
    kept and what to do."""


class TokenizerError(KogituneError):
    """Raised when a tokenizer cannot be loaded, or when two tensors mixed in one recipe use different tokenizers."""


class TensorError(KogituneError):
    """Raised when a data tensor directory is missing, incomplete (no manifest.json) or not what was asked for."""


class RecipeError(KogituneError):
    """Raised by DatasetRecipe when an entry names something that cannot be used for training (a bad spelling, a
    weight, a publisher that is not trusted)."""


class PerturbError(KogituneError):
    """Raised when a --perturb spec is malformed or cannot be applied to the tokenizer's vocabulary."""


class FilterError(KogituneError):
    """Raised when a filter config names an unknown filter or parameter, or gives a parameter a value it cannot
    take."""


class SettingsError(KogituneError):
    """Raised when a setting (kogitune.settings) in the home's config.json, a KOGITUNE_* environment variable or a
    flag has a bad value; the message names the key, where it came from and what it should be."""


class FetchError(KogituneError):
    """Raised when a dataset, shard or file could not be fetched from any of its sources (peers, web mirrors); the
    message says what each source did."""


class SourceError(FetchError):
    """Raised when one source failed one request (refused, timed out, broke off, sent too much or bad bytes); the
    fetcher tries the others."""


class ConnectionLost(SourceError):
    """Raised when a connection to a web mirror or data port closed or broke (not a timeout; kogitune.node.http): on a
    kept-alive connection, the server may have closed it while it was idle, so the request goes again on a new one."""


class SourceBusy(SourceError):
    """Raised when a source answered "busy" (its serving slots are taken) again and again (kogitune.node.peers asks
    again after short pauses first): alive and honest, but full for now."""


class SourceLacks(SourceError):
    """Raised when a peer answers that it does not hold a file of a dataset it provides (kogitune.node.peers): it
    serves what it holds while it fetches the rest, or re-checks a shard whose files changed. The fetcher asks it
    again for that shard after a short pause, and after a few such answers in a row corrects its have-map
    (SourcePool.not_found in node/pool.py)."""


class SourceMissing(SourceError):
    """Raised when a source answered that it does not have a file (HTTP 404 or 410): for an optional file, such as
    a compressed sidecar (kogitune.sidecars), the fetcher takes it as "not offered" rather than as a failure."""


class NodeError(KogituneError):
    """Raised when the node cannot start, refuses a command (publish, get, ...), or gets a malformed control
    request."""


class NodeNotRunning(NodeError):
    """Raised by the daemon client when no node answers on the control socket of a home: start one with `kogitune
    node start`."""


def __getattr__(name: str) -> type[KogituneError]:
    """WireError lives with the wire format (kogitune.protocol.frames, which imports msgpack): imported on first use,
    so that `import kogitune` stays light."""
    if name == "WireError":
        from kogitune.protocol.frames import WireError

        return WireError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def error_reply(exc: BaseException) -> dict:
    """The fields of a node's failed control reply for `exc`: its message, its class name and, for a WireError, its
    code (what `error_from_reply` needs to raise the same error again)."""
    reply = {"error": str(exc), "type": type(exc).__name__}
    code = getattr(exc, "code", None)
    if isinstance(exc, KogituneError) and isinstance(code, str):
        reply["code"] = code
    return reply


def error_from_reply(reply: dict) -> KogituneError:
    """The error a node daemon reported in a failed control reply (`error_reply`), as the class it named; a name
    that is not a class of this tree (a bug in the node: ZeroDivisionError, OSError, ...) becomes a KogituneError."""
    message = f"node: {reply.get('error', 'unknown error')}"
    name = reply.get("type")
    cls = error_classes().get(name, KogituneError) if isinstance(name, str) else KogituneError
    if cls.__name__ == "WireError":
        from kogitune.protocol.frames import ERROR_CODES, WireError

        code = reply.get("code")
        return WireError(code, message) if code in ERROR_CODES else KogituneError(message)
    return cls(message)


def error_classes() -> dict[str, type[KogituneError]]:
    """Every class of the tree by name (WireError too)."""
    classes = {
        cls.__name__: cls for cls in globals().values() if isinstance(cls, type) and issubclass(cls, KogituneError)
    }
    from kogitune.protocol.frames import WireError

    classes["WireError"] = WireError
    return classes


__all__ = [
    "BadInputError",
    "ConnectionLost",
    "DiskFullError",
    "FetchError",
    "FilterError",
    "IdentityError",
    "IntegrityError",
    "KogituneError",
    "ManifestError",
    "NodeError",
    "NodeNotRunning",
    "PerturbError",
    "RecipeError",
    "SourceBusy",
    "SettingsError",
    "SourceError",
    "SourceLacks",
    "SourceMissing",
    "TensorError",
    "TokenizerError",
    "WireError",  # noqa: F822 (imported on first use: see __getattr__)
    "error_from_reply",
    "error_reply",
]
