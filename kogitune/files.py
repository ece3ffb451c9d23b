"""Small file helpers: atomic writes and an exclusive lock, so that a crash never leaves a half-written file."""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import KogituneError


def write_atomic(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Write to a temporary file beside `path`, fsync it (unless the caller syncs later), then rename it over
    `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_limited(path: Path, limit: int) -> bytes:
    """The bytes of `path`, at most `limit + 1` of them: enough for a parser with a size limit to refuse a file that
    is too large without reading it all (a file that any program of the user can write must not exhaust memory)."""
    with open(path, "rb") as f:
        return f.read(limit + 1)


@contextmanager
def exclusive_lock(path: Path, what: str):
    """Hold an exclusive, non-blocking lock on `path` (created if needed) or fail with a clear message."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KogituneError(f"another process is already {what} (lock {path}); wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
