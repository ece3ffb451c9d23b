"""Reading a data tensor: memory-mapped shards, verified against the manifest before first use.

Verifying a shard means hashing every piece and comparing with the manifest (about 1.5 GB/s here). A shard that
passed is recorded in `.kogitune-verified` in the tensor directory together with the size, mtime, inode and ctime
of its files, so later opens skip the hashing while the files are unchanged; any change on disk voids the record (a
write, truncate, chmod or new hard link always moves ctime, and nobody can set it back): kogitune.marks. A
shard that the fetcher brought in this process was checked piece by piece as it arrived and is not hashed again;
a fetched shard that fails its check on a later open is fetched again rather than refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kogitune.protocol.errors import IntegrityError, ManifestError
from kogitune.protocol.ids import DIGEST_SIZE, is_dataset_id
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, Manifest, ShardInfo, parse_manifest
from kogitune.protocol.pieces import piece_digests, piece_span, root_of

from .errors import TensorError
from .files import opener_like_folder, read_limited
from .layout import MANIFEST_FILE, partial_path, shard_lock_path
from .marks import file_signature, forget_verified, is_marked, record_checked, record_verified, settled_signature

MAX_OPEN_SHARDS = 64
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One thing `verify` found wrong, named down to the shard and piece."""

    shard: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"shard {self.shard}: {self.file}: {self.message}"


class DataTensor:
    """A data tensor directory opened for reading."""

    def __init__(self, path: str | os.PathLike, remote=None, store=None, manifest: Manifest | None = None) -> None:
        """`remote` (e.g. kogitune.client.MirrorShards) fetches shards missing from `path`; `store` is the
        ContentStore that holds `path`, told when shards are used; `manifest`, the one the caller already read from
        `path` (it is then not read again)."""
        self.path = Path(path)
        self.remote = remote
        self.store = store
        if manifest is None:
            manifest = _read_manifest(self.path)
        self.manifest: Manifest = manifest
        self.dataset_id = self.manifest.dataset_id
        self.shard_first_block = np.cumsum([0] + [s.blocks for s in self.manifest.shards])
        self._arrays: OrderedDict[int, np.ndarray] = OrderedDict()
        self._dtype = np.dtype(f"<u{self.manifest.itemsize}")

    def __getstate__(self) -> dict:
        """Pickled (by DataLoader workers) without its memory maps; each process maps and checks shards itself."""
        return {**self.__dict__, "_arrays": OrderedDict()}

    def __repr__(self) -> str:
        return f"DataTensor({str(self.path)!r}, {self.dataset_id})"

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self.manifest.shards

    def shard_path(self, index: int) -> Path:
        """Where shard `index`'s tokens are (or will be, once fetched)."""
        return self.path / self.shards[index].tokens_path

    def shard_tokens(self, index: int) -> np.ndarray:
        """The shard's tokens as a read-only memory map, verified the first time this process opens it. The last
        MAX_OPEN_SHARDS maps stay open (each holds a file descriptor, and keeps the cache from evicting the shard);
        older ones are closed once nothing uses them. In a content store, the shard is kept from eviction from
        before it is fetched until it is mapped (ContentStore.using), and then by the map (`_map_shared`)."""
        array = self._arrays.get(index)
        if array is None:
            shard = self.shards[index]
            with self.store.using(self.path, shard.name) if self.store is not None else nullcontext():
                array = self._open_shard(index, shard)
            self._arrays[index] = array
            if len(self._arrays) > MAX_OPEN_SHARDS:
                self._arrays.popitem(last=False)
        else:
            self._arrays.move_to_end(index)
        return array

    def _open_shard(self, index: int, shard: ShardInfo) -> np.ndarray:
        """Fetch the shard if it is missing, check it unless it is known good, and map it."""
        fetched = self.remote is not None and not (self.path / shard.tokens_path).exists()
        if fetched:
            self.remote.ensure(self.manifest, index)
        if self.store is not None:
            self.store.touch(self.path, shard.name)
        if not fetched and not self._is_marked(shard):
            problems = self.check_and_mark(shard)
            if problems and self.remote is not None:
                self._fetch_again(shard, index, problems[0])
            elif problems:
                raise IntegrityError(
                    f"{self.path}: {problems[0]}; the tensor is damaged: "
                    "run `kogitune verify` for all problems, then store or fetch it again"
                )
        if self.store is None:  # not in a content store: nothing evicts it (and its file system may lack flock)
            return np.memmap(self.path / shard.tokens_path, dtype=self._dtype, mode="r")
        return _map_shared(self.path / shard.tokens_path, self._dtype)

    def _fetch_again(self, shard: ShardInfo, index: int, problem: Problem) -> None:
        """A fetched shard that fails its check (e.g. the machine crashed before the fetcher's fsync) is a cache
        miss, not a damaged dataset: remove its files and fetch it again, checked piece by piece. Under the shard's
        lock, and only if the files are still those that failed: another process may have fetched it meanwhile."""
        log.warning("%s: %s; fetching shard %s again", self.path, problem, shard.name)
        failed = file_signature(self.path, shard)
        with open(shard_lock_path(self.path, shard.name), "a+b", opener=opener_like_folder) as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if file_signature(self.path, shard) == failed:
                forget_verified(self.path, [shard])
                for name in (shard.tokens_path, shard.pieces_path, shard.docs_path):
                    (self.path / name).unlink(missing_ok=True)
        self.remote.ensure(self.manifest, index)

    def prefetch(self, indexes) -> None:
        """Start fetching these shards in the background if they are missing (no-op for local tensors)."""
        if self.remote is None:
            return
        missing = [
            i for i in indexes if i not in self._arrays and not (self.path / self.shards[i].tokens_path).exists()
        ]
        if missing:
            self.remote.prefetch(self.manifest, missing)

    def block(self, index: int) -> np.ndarray:
        """Stored block `index` (0 <= index < manifest.blocks) as a view of the memory map."""
        if not 0 <= index < self.manifest.blocks:
            raise IndexError(f"block {index} is out of range for a tensor of {self.manifest.blocks} blocks")
        shard = int(np.searchsorted(self.shard_first_block, index, side="right")) - 1
        start = (index - int(self.shard_first_block[shard])) * self.manifest.block_size
        return self.shard_tokens(shard)[start : start + self.manifest.block_size]

    def document_starts(self, index: int) -> np.ndarray:
        """Token offsets, within shard `index`, where documents begin."""
        shard = self.shards[index]
        data = (self.path / shard.docs_path).read_bytes()
        if hashlib.sha256(data).hexdigest() != shard.docs_sha256:
            raise IntegrityError(f"{self.path}: shard {shard.name}: {shard.docs_path} does not match the manifest")
        return np.frombuffer(data, dtype="<u4")

    def shard_token_counts(self) -> list[int]:
        """The real tokens (padding excluded) of each shard, in order: the padding is at the end of the last."""
        counts, left = [], self.manifest.tokens
        for shard in self.shards:
            counts.append(min(left, shard.blocks * self.manifest.block_size))
            left -= counts[-1]
        return counts

    def tokens(self) -> np.ndarray:
        """All real tokens (padding excluded) in one array; for inspection and tests, not for training."""
        stream = np.concatenate([self.shard_tokens(i) for i in range(len(self.shards))])
        return stream[: self.manifest.tokens]

    def verify(self) -> list[Problem]:
        """Hash every piece of every shard, and decode every frame of the compressed sidecars present
        (kogitune.sidecars); return what is wrong (empty when all is well). A bad sidecar leaves the shard's mark."""
        from .sidecars import sidecar_path, sidecar_problems

        problems = []
        for shard in self.shards:
            problems.extend(self.check_and_mark(shard))
            problems.extend(
                Problem(shard.name, sidecar_path(shard), f"{message}; remove it or run `kogitune compress --overwrite`")
                for message in sidecar_problems(self.path, self.manifest, shard)
            )
        return problems

    def check_and_mark(self, shard: ShardInfo) -> list[Problem]:
        """Hash the shard's files and record the result: a mark if they passed and did not change while being
        hashed (none otherwise: the next open hashes them again), no mark if they failed. Returns the problems."""
        before = settled_signature(self.path, shard)
        problems = self.verify_shard(shard)
        if problems:
            forget_verified(self.path, [shard])
        elif before is not None and record_verified(self.path, self.manifest, [shard], checked_as=before):
            record_checked(self.path, shard, before)
        return problems

    def verify_shard(self, shard: ShardInfo) -> list[Problem]:
        problems = []
        tokens_path = self.path / shard.tokens_path
        size = tokens_path.stat().st_size if tokens_path.is_file() else None
        if size is None:
            problems.append(Problem(shard.name, shard.tokens_path, "missing"))
        elif size != shard.size:
            problems.append(
                Problem(
                    shard.name,
                    shard.tokens_path,
                    f"has {size} bytes, the manifest says {shard.size} (truncated or extended)",
                )
            )
        else:
            problems.extend(self._check_pieces(shard, tokens_path))
        docs_path = self.path / shard.docs_path
        if not docs_path.is_file() or hashlib.sha256(docs_path.read_bytes()).hexdigest() != shard.docs_sha256:
            problems.append(Problem(shard.name, shard.docs_path, "missing or does not match the manifest"))
        return problems

    def _check_pieces(self, shard: ShardInfo, tokens_path: Path) -> list[Problem]:
        piece_size = self.manifest.piece_size
        with open(tokens_path, "rb") as f:
            data = np.fromfile(f, dtype=np.uint8) if shard.size < piece_size else np.memmap(f, mode="r")
            actual = piece_digests(data.data, piece_size)
        if root_of(actual) == shard.root:
            pieces_path = self.path / shard.pieces_path
            if pieces_path.is_file() and root_of(pieces_path.read_bytes()) == shard.root:
                return []
            return [
                Problem(
                    shard.name,
                    shard.pieces_path,
                    "missing or does not match the root in the manifest (the tokens are intact)",
                )
            ]
        stored = self._stored_pieces(shard)
        if stored is None:
            return [
                Problem(
                    shard.name,
                    shard.tokens_path,
                    "does not match the root in the manifest (and the .pieces file is damaged too)",
                )
            ]
        problems = []
        for index in range(len(actual) // DIGEST_SIZE):
            span = slice(index * DIGEST_SIZE, (index + 1) * DIGEST_SIZE)
            if actual[span] != stored[span]:
                start, length = piece_span(shard, index, piece_size)
                problems.append(
                    Problem(
                        shard.name,
                        shard.tokens_path,
                        f"piece {index} (bytes {start}-{start + length - 1}) does not match its hash",
                    )
                )
        return problems

    def _stored_pieces(self, shard: ShardInfo) -> bytes | None:
        path = self.path / shard.pieces_path
        data = path.read_bytes() if path.is_file() else b""
        return data if root_of(data) == shard.root else None

    def is_verified(self) -> bool:
        """Whether every shard's files are as they were when they last passed verification (no hashing: marks)."""
        return all(self._is_marked(shard) for shard in self.shards)

    def _is_marked(self, shard: ShardInfo) -> bool:
        """Whether the shard's files are as they were when they last passed verification (a missing file never
        is); remembered in this process, so that opening the shard again reads no marks file."""
        signature = file_signature(self.path, shard)
        return signature is not None and is_marked(self.path, self.dataset_id, shard.name, signature)


def verify(tensor: str | os.PathLike | DataTensor, home: str | os.PathLike | None = None) -> list[Problem]:
    """Hash every piece of every shard of a data tensor and return what is wrong: an empty list when it is intact.
    As `kogitune verify` does.

        problems = kogitune.verify("gpt2-f04f/corpus")      # a tensor directory
        problems = kogitune.verify("kg1-...")               # a dataset in the content store of `home`

    `tensor`: a tensor or collection directory, a DataTensor, or the ID of a dataset held in the content store of `home` (default:
    $KOGITUNE_HOME; its missing shards are reported missing). Shards that pass are marked verified, so that
    opening them later does not hash them again. Raises TensorError if it is not a data tensor at all.
    """
    if isinstance(tensor, DataTensor):
        return tensor.verify()
    if is_dataset_id(str(tensor)) and not Path(tensor).exists():
        from .content_store import ContentStore

        content = ContentStore(home)
        directory = content.dataset_dir(str(tensor))
        if not (directory / MANIFEST_FILE).is_file():
            raise TensorError(
                f"{tensor} is not in the content store {content.home}: fetch it with `kogitune get {tensor}`"
            )
        return DataTensor(directory).verify()
    from .collection import open_local  # a collection directory too

    return open_local(tensor).verify()


def _map_shared(path: Path, dtype: np.dtype) -> np.memmap:
    """`path` memory-mapped read-only, with a shared flock on it that lives exactly as long as the map: the map
    keeps a duplicate of the descriptor it was made from (mmap's default), and a flock belongs to the open file
    that all duplicates share, released when the last of them closes. So gc, which takes that lock exclusively
    without waiting, skips a shard while any process (or forked worker) maps it, at no descriptor beyond the map's
    own."""
    with open(path, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        return np.memmap(f, dtype=dtype, mode="r")


def _not_a_tensor(path: Path) -> str:
    """Why `path` cannot be opened as a data tensor, and what to do."""
    if is_dataset_id(str(path)) and not path.exists():
        return (
            f"{path} is a dataset ID, not a directory: `kogitune get {path}` fetches it into "
            f"$KOGITUNE_HOME/datasets/{path}, and a recipe can name the ID itself"
        )
    if partial_path(path).exists():
        return (
            f"{path} is not a data tensor: it has no {MANIFEST_FILE} (a store into it is unfinished or was "
            "interrupted; run it again)"
        )
    if not path.exists():
        return f"{path}: no such directory"
    return f"{path} is not a data tensor: it has no {MANIFEST_FILE}. Create one with `kogitune store FILE.jsonl`."


def _read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise TensorError(_not_a_tensor(path))
    try:
        return parse_manifest(read_limited(manifest_path, MAX_MANIFEST_BYTES))
    except ManifestError as exc:
        raise ManifestError(f"{manifest_path}: {exc}") from None
