"""Small file helpers: atomic writes and an exclusive lock, so that a crash never leaves a half-written file.

New files take their privacy from their folder: in an owner-only folder (mode 0700, as a private dataset's folders
are) they are created owner-only (0600), elsewhere 0644. Create files with write_atomic, or with
`open(path, mode, opener=opener_like_folder)`, and they follow that rule.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import KogituneError

OWNER_ONLY_FOLDER = 0o700
OWNER_ONLY_FILE = 0o600
SHARED_FILE = 0o644
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""The errors of a full file system (or of a user over quota)."""


def file_mode_in(folder: Path) -> int:
    """The mode of a new file in `folder`: OWNER_ONLY_FILE if the folder grants nothing to group and others, else
    SHARED_FILE (both further limited by the umask)."""
    return OWNER_ONLY_FILE if os.stat(folder).st_mode & 0o077 == 0 else SHARED_FILE


def opener_like_folder(path, flags: int) -> int:
    """An `opener` for open(): the file, if created, gets file_mode_in(its folder)."""
    return os.open(path, flags, file_mode_in(Path(path).parent))


def make_folders(folders, owner_only: bool) -> None:
    """Create `folders` (and their parents) if needed; with `owner_only` each of them is made OWNER_ONLY_FOLDER,
    whatever the umask and even if it existed."""
    for folder in folders:
        Path(folder).mkdir(mode=OWNER_ONLY_FOLDER if owner_only else 0o777, parents=True, exist_ok=True)
        if owner_only:
            os.chmod(folder, OWNER_ONLY_FOLDER)


def write_atomic(path: Path, data: bytes, mode: int | None = None, durable: bool = True) -> None:
    """Write to a temporary file beside `path`, fsync it (unless the caller syncs later), then rename it over
    `path`. The file's mode is `mode`, by default file_mode_in(its folder)."""
    path = Path(path)
    mode = file_mode_in(path.parent) if mode is None else mode
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


def read_limited(path: Path, limit: int, *, follow_links: bool = True) -> bytes:
    """The bytes of `path`, at most `limit + 1` of them: enough for a parser with a size limit to refuse a file that
    is too large without reading it all (a file that any program of the user can write must not exhaust memory).
    With `follow_links=False` a symbolic link is refused (OSError ELOOP) instead of read through."""
    flags = os.O_RDONLY | (0 if follow_links else os.O_NOFOLLOW)
    with open(os.open(path, flags), "rb") as f:
        return f.read(limit + 1)


@contextmanager
def exclusive_lock(path: Path, what: str):
    """Hold an exclusive, non-blocking lock on `path` (created if needed) or fail with a clear message."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b", opener=opener_like_folder) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KogituneError(f"another process is already {what} (lock {path}); wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
