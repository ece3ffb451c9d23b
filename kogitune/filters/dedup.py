"""Deduplication across documents: exact (hash of normalized text) and near-duplicate (MinHash LSH).

Both filters are stateful: they remember what they kept and drop a later document that repeats it, so they run in
one process, in input order. They never hold documents, only compact keys in a `KeyIndex` (sorted numpy runs):
exact dedup costs 16 bytes per kept document, MinHash 16 bytes per band per kept document (224 bytes with the
default 14 bands). Dropped documents cost nothing. Memory is bounded by `max_index_mb` (default 512): beyond it the
large runs go to files in `spill_dir`, memory-mapped, so inputs of any size stream through with the same decisions
as in memory. docs/filters.md ("Deduplication") has the figures.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import unicodedata
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from .base import Filter, FilterError, FilterResult, register

MISSING = np.uint64(2**64 - 1)
DEFAULT_INDEX_MB = 512.0
"""Memory of a dedup index by default. Runs of over a quarter of it go to disk: the first spill comes after about
8 million exact-dedup or 570,000 MinHash documents (14 bands); memory then stays near 512 MB whatever the input."""
PRIME = np.uint64(2**32 - 5)
"""Permutations are (a*x + b) mod PRIME on 32-bit shingle hashes: exact in uint64 since a, b, x < 2**32."""

_SPACES = re.compile(r"\s+")
_NOT_WORD = re.compile(r"[\W_]+")
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_CHAR_SALT = np.uint64(0x9E3779B97F4A7C15)
_SHINGLE_CHUNK = 4096


def normalize_for_exact(text: str) -> str:
    """NFKC, lowercase, whitespace runs to one space: copies that differ only in such details are duplicates."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def simplify_for_shingles(text: str) -> str:
    """Like `normalize_for_exact`, and punctuation removed: words separated by single spaces."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a fast bijective scramble of uint64 arrays (multiplication wraps modulo 2**64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


class Run(NamedTuple):
    """A sorted run of a `KeyIndex`: keys ascending, their values beside them; `path` is its file if on disk."""

    keys: np.ndarray
    values: np.ndarray
    path: Path | None = None


def merged_chunks(old: Run, new: Run, chunk_keys: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The keys and values of two sorted runs in one sorted order, a slice at a time, each slice taking at most
    `chunk_keys` keys of each run: so that runs on disk merge in bounded memory.

    Equal keys come old before new, each run's in its own order: exactly as a stable sort of old + new puts them,
    so that a lookup, which finds the first of equal keys, finds the one added first.
    """
    i = j = 0
    while i < len(old.keys) and j < len(new.keys):
        a, b = old.keys[i : i + chunk_keys], new.keys[j : j + chunk_keys]
        cut = min(a[-1], b[-1])
        take_a = int(np.searchsorted(a, cut, "right"))
        old_has_more_of_cut = i + take_a < len(old.keys) and old.keys[i + take_a] == cut
        # New keys equal to `cut` wait until no old key equal to it is left.
        take_b = int(np.searchsorted(b, cut, "left" if old_has_more_of_cut else "right"))
        keys = np.concatenate((a[:take_a], b[:take_b]))
        order = np.argsort(keys, kind="stable")
        yield keys[order], np.concatenate((old.values[i : i + take_a], new.values[j : j + take_b]))[order]
        i, j = i + take_a, j + take_b
    for run, start in ((old, i), (new, j)):
        for at in range(start, len(run.keys), chunk_keys):
            yield run.keys[at : at + chunk_keys], run.values[at : at + chunk_keys]


class KeyIndex:
    """A map of uint64 keys to uint64 values for billions of keys, at 16 bytes per key, in bounded memory.

    New keys go into a small dict; when it holds `buffer_keys` keys it becomes a sorted run, and runs of similar
    size are merged (like a binary counter), so there are O(log n) runs and each key is copied O(log n) times.
    Lookups binary-search every run.

    With a `memory_budget` (bytes), a run of more than a quarter of it is written to a file in a fresh directory
    under `spill_dir` (default: the system's temporary directory) and memory-mapped read-only, and runs merge a
    chunk at a time. Memory then stays under about the budget however many keys there are: the runs in memory
    hold under half of it (each is over twice the size of the next), a merge's output under a quarter, the dict
    (at least 64 keys) an eighth. The directory is made when first needed and removed by `close`, when the index
    is garbage-collected, or at exit.
    """

    def __init__(
        self, buffer_keys: int = 1 << 16, memory_budget: int | None = None, spill_dir: str | os.PathLike | None = None
    ) -> None:
        if memory_budget is not None:
            buffer_keys = max(64, min(buffer_keys, memory_budget // 800))
        self.buffer_keys = max(1, buffer_keys)
        self.memory_budget = memory_budget
        self.spill_dir = spill_dir
        self._recent: dict[int, int] = {}
        self._runs: list[Run] = []
        self._directory: Path | None = None
        self._remove_directory: weakref.finalize | None = None
        self._files = 0

    def __len__(self) -> int:
        return len(self._recent) + sum(len(run.keys) for run in self._runs)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory and on disk: the sorted runs exactly, the dict by a measured ~100 bytes per entry."""
        return sum(run.keys.nbytes + run.values.nbytes for run in self._runs) + 100 * len(self._recent)

    @property
    def spilled_bytes(self) -> int:
        """The part of `nbytes` in files on disk."""
        return sum(run.keys.nbytes + run.values.nbytes for run in self._runs if run.path is not None)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value each key was first added with, or MISSING."""
        found = np.full(len(keys), MISSING, dtype=np.uint64)
        if self._recent:
            for i, key in enumerate(keys.tolist()):
                value = self._recent.get(key)
                if value is not None:
                    found[i] = value
        for run in reversed(self._runs):  # newest first: the oldest value of a key is written last
            at = np.minimum(run.keys.searchsorted(keys), len(run.keys) - 1)
            hit = run.keys[at] == keys
            found[hit] = run.values[at[hit]]
        return found

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Remember `keys`; callers add keys they did not find (a key added twice keeps its first value, so that
        lookups do not depend on the buffer size, the merges or the budget)."""
        for key, value in zip(keys.tolist(), values.tolist()):
            self._recent.setdefault(key, value)
        if len(self._recent) >= self.buffer_keys:
            self._flush()

    def close(self) -> None:
        """Forget all keys and remove the spill directory now; the index is empty afterwards."""
        self._recent, self._runs = {}, []
        if self._remove_directory is not None:
            self._remove_directory()
            self._directory = self._remove_directory = None

    def _flush(self) -> None:
        keys = np.fromiter(self._recent.keys(), dtype=np.uint64, count=len(self._recent))
        values = np.fromiter(self._recent.values(), dtype=np.uint64, count=len(self._recent))
        self._recent = {}
        order = np.argsort(keys, kind="stable")
        self._runs.append(self._store([(keys[order], values[order])], len(keys)))
        while len(self._runs) > 1 and len(self._runs[-2].keys) <= 2 * len(self._runs[-1].keys):
            old, new = self._runs[-2:]
            self._runs[-2:] = [self._store(merged_chunks(old, new, self.buffer_keys), len(old.keys) + len(new.keys))]
            for run in (old, new):
                if run.path is not None:
                    run.path.unlink()

    def _store(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], count: int) -> Run:
        """A run of the `count` sorted keys and values of `chunks`: in memory, or on disk if over a quarter of the
        budget."""
        if self.memory_budget is not None and 16 * count > self.memory_budget // 4:
            return self._write(chunks, count)
        keys, values = np.empty(count, dtype=np.uint64), np.empty(count, dtype=np.uint64)
        at = 0
        for chunk_keys, chunk_values in chunks:
            keys[at : at + len(chunk_keys)], values[at : at + len(chunk_keys)] = chunk_keys, chunk_values
            at += len(chunk_keys)
        return Run(keys, values)

    def _write(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], count: int) -> Run:
        """Write a run to a file (its keys, then its values, little-endian uint64) and memory-map it read-only.

        A scratch file: written under a temporary name and renamed when complete, but not fsynced, as nothing
        reads it after a crash.
        """
        directory = self._spill_directory()
        self._files += 1
        path = directory / f"run-{self._files:06d}.u64"
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                at = 0
                for keys, values in chunks:
                    f.seek(8 * at)
                    f.write(np.ascontiguousarray(keys, dtype="<u8").data)
                    f.seek(8 * (count + at))
                    f.write(np.ascontiguousarray(values, dtype="<u8").data)
                    at += len(keys)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise FilterError(self._cannot_write(directory, exc)) from None
        table = np.memmap(path, dtype="<u8", mode="r", shape=(2, count))
        return Run(np.asarray(table[0]), np.asarray(table[1]), path)

    def _spill_directory(self) -> Path:
        if self._directory is None:
            parent = Path(self.spill_dir) if self.spill_dir else Path(tempfile.gettempdir())
            try:
                parent.mkdir(parents=True, exist_ok=True)
                self._directory = Path(tempfile.mkdtemp(prefix="kogitune-dedup-", dir=parent))
            except OSError as exc:
                raise FilterError(self._cannot_write(parent, exc)) from None
            self._remove_directory = weakref.finalize(self, shutil.rmtree, self._directory, ignore_errors=True)
        return self._directory

    def _cannot_write(self, directory: Path, exc: OSError) -> str:
        return (
            f"cannot write the dedup index to {directory} ({exc.strerror or exc}); it holds "
            f"{self.nbytes / 1e6:.1f} MB and grows by 16 bytes per key: set spill_dir to a writable directory "
            "with more free space, or raise max_index_mb to keep more of it in memory"
        )


class _SpillingIndex:
    """Mixin: the index of both dedup filters, kept within `max_index_mb` of memory by spilling to `spill_dir`."""

    max_index_mb: float
    spill_dir: str
    index: KeyIndex

    def __post_init__(self) -> None:
        if self.max_index_mb < 0:
            raise FilterError(f"max_index_mb must be 0 (no limit: all in memory) or more, got {self.max_index_mb}")
        budget = int(self.max_index_mb * 1e6) if self.max_index_mb else None
        self.index = KeyIndex(memory_budget=budget, spill_dir=self.spill_dir or None)

    def close(self) -> None:
        """Remove the index's files now, rather than when the filter is garbage-collected or at exit."""
        self.index.close()


@register
@dataclass
class ExactDedup(_SpillingIndex, Filter):
    """Drop a document whose normalized text (NFKC, lowercase, collapsed whitespace) was seen before.

    The key is a 128-bit BLAKE2b digest, so at 10**9 documents a false "duplicate" has probability ~10**-21.
    """

    name: ClassVar[str] = "exact_dedup"
    stateful: ClassVar[bool] = True

    normalize: bool = True
    max_index_mb: float = DEFAULT_INDEX_MB
    spill_dir: str = ""
    index: KeyIndex = field(init=False, repr=False)
    kept: int = field(init=False, default=0)

    def digest(self, text: str) -> tuple[np.uint64, np.uint64]:
        """The 128-bit digest of the (normalized) text as two uint64: the index's key and the value beside it."""
        key = normalize_for_exact(text) if self.normalize else text
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        high, low = np.frombuffer(digest, dtype="<u8")
        return high, low

    def apply(self, text: str) -> FilterResult:
        high, low = self.digest(text)
        keys = np.array([high], dtype=np.uint64)
        if self.index.get(keys)[0] == low:
            return FilterResult(None, 1.0, "duplicate")
        self.index.add(keys, np.array([low], dtype=np.uint64))
        self.kept += 1
        return FilterResult(text)


class MinHasher:
    """MinHash signatures and LSH band keys of texts, deterministic given the seed.

    Shingles are n-grams of words or of characters of the simplified text; each is hashed once to 32 bits, then
    `bands * rows` permutations (a*x + b) mod PRIME run on the whole uint64 array at once.
    """

    def __init__(self, shingle: str = "word", ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1) -> None:
        if shingle not in ("word", "char"):
            raise FilterError(f"shingle must be 'word' or 'char', got {shingle!r}")
        if ngram < 1 or bands < 1 or rows < 1:
            raise FilterError(f"ngram, bands and rows must be positive, got {ngram}, {bands}, {rows}")
        self.shingle, self.ngram, self.bands, self.rows = shingle, ngram, bands, rows
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, int(PRIME), size=(bands * rows, 1), dtype=np.uint64)
        self.b = rng.integers(0, int(PRIME), size=(bands * rows, 1), dtype=np.uint64)
        self.gram_multipliers = rng.integers(1, 2**63, size=ngram, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.row_multipliers = rng.integers(1, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.band_salts = mix64(rng.integers(0, 2**63, size=bands, dtype=np.uint64))

    def shingles(self, text: str) -> np.ndarray:
        """The distinct 32-bit shingle hashes of `text` (as uint64); empty if the text has no word characters."""
        simple = simplify_for_shingles(text)
        if not simple:
            return np.empty(0, dtype=np.uint64)
        chars = np.frombuffer(simple.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint64)
        units = self._word_hashes(chars) if self.shingle == "word" else mix64(chars + _CHAR_SALT)
        n = min(self.ngram, len(units))
        grams = units[: len(units) - n + 1] * self.gram_multipliers[0]
        for offset in range(1, n):
            grams = grams + units[offset : len(units) - n + 1 + offset] * self.gram_multipliers[offset]
        return np.unique(mix64(grams) >> np.uint64(32)) % PRIME

    @staticmethod
    def _word_hashes(chars: np.ndarray) -> np.ndarray:
        """One hash per space-separated word: the wrapped sum of mix64(char, position in word) over its characters."""
        space = chars == 32
        index = np.arange(len(chars))
        position = index - np.maximum.accumulate(np.where(space, index, -1))
        scrambled = mix64(chars * _CHAR_SALT + position.astype(np.uint64))
        scrambled[space] = 0
        return np.add.reduceat(scrambled, np.append(0, np.flatnonzero(space) + 1))

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """The minimum of each permutation over the shingles: uint64 values below 2**32, `bands * rows` of them."""
        result = np.full(self.bands * self.rows, PRIME, dtype=np.uint64)
        for start in range(0, len(shingles), _SHINGLE_CHUNK):
            chunk = shingles[start : start + _SHINGLE_CHUNK]
            np.minimum(result, ((self.a * chunk + self.b) % PRIME).min(axis=1), out=result)
        return result

    def band_keys(self, signature: np.ndarray) -> np.ndarray:
        """One 64-bit key per band, salted by the band number so that all bands can share one index."""
        rows = signature.reshape(self.bands, self.rows) * self.row_multipliers
        return mix64(rows.sum(axis=1) ^ self.band_salts)

    @property
    def threshold(self) -> float:
        """The Jaccard similarity at which a pair is caught with probability about 1/2: (1/bands)**(1/rows)."""
        return (1 / self.bands) ** (1 / self.rows)


@register
@dataclass
class MinHashDedup(_SpillingIndex, Filter):
    """Drop a document whose shingles resemble an earlier kept document's: any equal LSH band means near-duplicate.

    With 14 bands of 8 rows, pairs of Jaccard similarity 0.8 are caught with probability 0.93, 0.7 with 0.44 and
    0.5 with 0.05. The score of a drop estimates the Jaccard similarity to the best match from the fraction f of
    its bands that are equal: f**(1/rows) (coarse: it is exact only in expectation).
    """

    name: ClassVar[str] = "minhash_dedup"
    stateful: ClassVar[bool] = True

    shingle: str = "word"
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1
    max_index_mb: float = DEFAULT_INDEX_MB
    spill_dir: str = ""
    hasher: MinHasher = field(init=False, repr=False)
    index: KeyIndex = field(init=False, repr=False)
    kept: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hasher = MinHasher(self.shingle, self.ngram, self.bands, self.rows, self.seed)

    def band_keys(self, text: str) -> np.ndarray:
        """The text's `bands` LSH keys; none for a text without shingles (never a near-duplicate)."""
        shingles = self.hasher.shingles(text)
        if not len(shingles):
            return np.empty(0, dtype=np.uint64)
        return self.hasher.band_keys(self.hasher.signature(shingles))

    def apply(self, text: str) -> FilterResult:
        keys = self.band_keys(text)
        if not len(keys):
            return FilterResult(text)
        matches = self.index.get(keys)
        matches = matches[matches != MISSING]
        if len(matches):
            best = np.unique(matches, return_counts=True)[1].max()
            return FilterResult(None, float((best / self.bands) ** (1 / self.rows)), "near_duplicate")
        self.index.add(keys, np.full(self.bands, self.kept, dtype=np.uint64))
        self.kept += 1
        return FilterResult(text)
