"""Deduplication across documents: exact (hash of normalized text) and near-duplicate (MinHash LSH).

Both filters are stateful: they remember what they kept and drop a later document that repeats it, so they run in
one process, in input order. They never hold documents, only compact keys in a `KeyIndex` (sorted numpy runs):
exact dedup costs 16 bytes per kept document, MinHash 16 bytes per band per kept document (224 bytes with the
default 14 bands). Dropped documents cost nothing. docs/filters.md ("Deduplication") has the figures.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .base import Filter, FilterError, FilterResult, register

MISSING = np.uint64(2**64 - 1)
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


class KeyIndex:
    """A map of uint64 keys to uint64 values for hundreds of millions of keys, at 16 bytes per key.

    New keys go into a small dict; when it holds `buffer_keys` keys it becomes a sorted numpy run, and runs of
    similar size are merged (like a binary counter), so there are O(log n) runs and each key is copied O(log n)
    times. Lookups binary-search every run.
    """

    def __init__(self, buffer_keys: int = 1 << 16) -> None:
        self.buffer_keys = buffer_keys
        self._recent: dict[int, int] = {}
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self._recent) + sum(len(keys) for keys, _ in self._runs)

    @property
    def nbytes(self) -> int:
        """Bytes held: the sorted runs exactly, the dict by a measured ~100 bytes per entry."""
        return sum(keys.nbytes + values.nbytes for keys, values in self._runs) + 100 * len(self._recent)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, or MISSING."""
        found = np.full(len(keys), MISSING, dtype=np.uint64)
        for run_keys, run_values in self._runs:
            at = np.minimum(np.searchsorted(run_keys, keys), len(run_keys) - 1)
            hit = run_keys[at] == keys
            found[hit] = run_values[at[hit]]
        if self._recent:
            for i, key in enumerate(keys.tolist()):
                value = self._recent.get(key)
                if value is not None:
                    found[i] = value
        return found

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Remember `keys`; callers add keys they did not find (a key added twice returns either value)."""
        for key, value in zip(keys.tolist(), values.tolist()):
            self._recent.setdefault(key, value)
        if len(self._recent) >= self.buffer_keys:
            self._flush()

    def _flush(self) -> None:
        keys = np.fromiter(self._recent.keys(), dtype=np.uint64, count=len(self._recent))
        values = np.fromiter(self._recent.values(), dtype=np.uint64, count=len(self._recent))
        self._recent = {}
        order = np.argsort(keys, kind="stable")
        self._runs.append((keys[order], values[order]))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            (old_keys, old_values), (new_keys, new_values) = self._runs[-2:]
            keys, values = np.concatenate((old_keys, new_keys)), np.concatenate((old_values, new_values))
            order = np.argsort(keys, kind="stable")
            self._runs[-2:] = [(keys[order], values[order])]


class _BoundedIndex:
    """Mixin: the memory check shared by both dedup filters."""

    max_index_mb: float
    index: KeyIndex
    kept: int

    def _check_memory(self) -> None:
        if self.max_index_mb and self.index.nbytes > self.max_index_mb * 1e6:
            raise FilterError(
                f"{self.name}: the index of {self.kept:,} kept documents needs {self.index.nbytes / 1e6:.1f} MB, "
                f"over max_index_mb={self.max_index_mb}; raise max_index_mb, or deduplicate the input in parts")


@register
@dataclass
class ExactDedup(_BoundedIndex, Filter):
    """Drop a document whose normalized text (NFKC, lowercase, collapsed whitespace) was seen before.

    The key is a 128-bit BLAKE2b digest, so at 10**9 documents a false "duplicate" has probability ~10**-21.
    """

    name: ClassVar[str] = "exact_dedup"
    stateful: ClassVar[bool] = True

    normalize: bool = True
    max_index_mb: float = 0.0
    index: KeyIndex = field(init=False, repr=False, default_factory=KeyIndex)
    kept: int = field(init=False, default=0)

    def apply(self, text: str) -> FilterResult:
        key = normalize_for_exact(text) if self.normalize else text
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        high, low = np.frombuffer(digest, dtype="<u8")
        keys = np.array([high], dtype=np.uint64)
        if self.index.get(keys)[0] == low:
            return FilterResult(None, 1.0, "duplicate")
        self.index.add(keys, np.array([low], dtype=np.uint64))
        self.kept += 1
        self._check_memory()
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
            grams = grams + units[offset: len(units) - n + 1 + offset] * self.gram_multipliers[offset]
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
            chunk = shingles[start:start + _SHINGLE_CHUNK]
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
class MinHashDedup(_BoundedIndex, Filter):
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
    max_index_mb: float = 0.0
    hasher: MinHasher = field(init=False, repr=False)
    index: KeyIndex = field(init=False, repr=False, default_factory=KeyIndex)
    kept: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.hasher = MinHasher(self.shingle, self.ngram, self.bands, self.rows, self.seed)

    def apply(self, text: str) -> FilterResult:
        shingles = self.hasher.shingles(text)
        if not len(shingles):
            return FilterResult(text)
        keys = self.hasher.band_keys(self.hasher.signature(shingles))
        matches = self.index.get(keys)
        matches = matches[matches != MISSING]
        if len(matches):
            best = np.unique(matches, return_counts=True)[1].max()
            return FilterResult(None, float((best / self.bands) ** (1 / self.rows)), "near_duplicate")
        self.index.add(keys, np.full(self.bands, self.kept, dtype=np.uint64))
        self.kept += 1
        self._check_memory()
        return FilterResult(text)
