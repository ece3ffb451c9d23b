"""Repetition: boilerplate, spam and generated junk repeat lines, paragraphs and phrases far more than prose does.

`gopher_repetition` follows Rae et al. 2021 (Gopher, table A1) as datatrove implements it, with Kogitune's words
(kogitune/filters/text.py) so that it also works on Japanese.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .base import Filter, FilterResult, register
from .text import words

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n\s*")
_LINE_BREAK = re.compile(r"\n+")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@register
@dataclass
class Compression(Filter):
    """Drops documents that zlib compresses too well (repetitive) or, with `max_ratio`, too badly.

    The score is compressed size / UTF-8 size: English prose of a few KB lies near 0.35-0.5, Japanese near
    0.5-0.7, and a page of one repeated line below 0.1. Base64 blobs (0.76) overlap short Japanese text, so there
    is no upper bound by default. Documents shorter than `min_bytes` are kept unmeasured (score null), because
    zlib's fixed overhead makes short texts look incompressible.
    """

    name = "compression"
    min_ratio: float = 0.2
    max_ratio: float | None = None
    min_bytes: int = 256
    level: int = 6

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_ratio <= (self.max_ratio if self.max_ratio is not None else math.inf):
            raise ValueError(f"need 0 <= min_ratio <= max_ratio, got {self.min_ratio} and {self.max_ratio}")
        if not -1 <= self.level <= 9:
            raise ValueError(f"level must be a zlib level from -1 to 9, got {self.level}")

    def apply(self, text: str) -> FilterResult:
        data = text.encode("utf-8", "surrogatepass")
        if len(data) < self.min_bytes:
            return FilterResult(text)
        ratio = len(zlib.compress(data, self.level)) / len(data)
        if ratio < self.min_ratio:
            return FilterResult(None, ratio, "too_compressible")
        if self.max_ratio is not None and ratio > self.max_ratio:
            return FilterResult(None, ratio, "incompressible")
        return FilterResult(text, ratio)


def duplicates(items: list[str]) -> tuple[int, int]:
    """(how many items repeat an earlier one, how many characters those repeats hold)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


class WordArrays:
    """A document's words as arrays: a 64-bit hash of each word (equal words, equal hashes), each word's length,
    and hashes of word n-grams, each built from the (n-1)-gram hashes."""

    def __init__(self, word_list: list[str]) -> None:
        ids = np.fromiter(map(hash, word_list), dtype=np.int64, count=len(word_list)).view(np.uint64)
        self.lengths = np.fromiter(map(len, word_list), dtype=np.int64, count=len(word_list))
        self._hashes = {1: ids}

    def __len__(self) -> int:
        return len(self.lengths)

    def ngram_hashes(self, n: int) -> np.ndarray:
        """A hash of each word n-gram (position i covers words i..i+n-1); equal n-grams hash equal."""
        if n not in self._hashes:
            ids = self._hashes[1]
            built = max(k for k in self._hashes if k < n)
            hashes = self._hashes[built]
            for size in range(built, n):
                hashes = hashes[:-1] * _MULTIPLIER + ids[size:]
            self._hashes[n] = hashes
        return self._hashes[n]


class NgramRepeats(NamedTuple):
    n: int
    top_chars: int
    """Characters in all occurrences of the most frequent word n-gram, if it occurs more than once (else 0); of
    equally frequent ones, the one that occurs first (as datatrove's Counter.most_common)."""
    duplicate_chars: int
    """Characters of the words covered by n-grams that repeat an earlier n-gram, each word counted once.

    This is the paper's definition; datatrove's sequential scan, which does not remember n-grams inside a repeat
    it skips, counts a little less (on the KJV it drops 29 chapters where this drops 48 of 1,189)."""


def ngram_repeats(words_: WordArrays, sizes: Iterable[int]) -> Iterator[NgramRepeats]:
    """The repeats of word n-grams for each n from min(sizes) to max(sizes), yielded for the n in `sizes`.

    Only an n-gram whose (n-1)-gram prefix repeats can repeat, so each step sorts only the positions in the
    previous step's repeated groups: on prose, nearly all the work is the first n.
    """
    wanted = set(sizes)
    if not wanted:
        return
    length = len(words_)
    candidates = np.arange(max(length - min(wanted) + 1, 0))
    for n in range(min(wanted), max(wanted) + 1):
        candidates = candidates[candidates <= length - n]
        if not len(candidates):
            yield from (NgramRepeats(size, 0, 0) for size in sorted(wanted) if size >= n)
            return
        hashes = words_.ngram_hashes(n)[candidates]
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        same = ordered[1:] == ordered[:-1]
        if n in wanted:
            yield NgramRepeats(
                n,
                _top_chars(words_, n, candidates, order, same),
                _covered_chars(words_, n, candidates[order[1:][same]]),
            )
        grouped = np.zeros(len(candidates), dtype=bool)
        grouped[order[1:][same]] = True
        grouped[order[:-1][same]] = True
        candidates = candidates[grouped]


def _top_chars(words_: WordArrays, n: int, candidates: np.ndarray, order: np.ndarray, same: np.ndarray) -> int:
    if not len(order):
        return 0
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    counts = np.diff(np.append(starts, len(order)))
    top = int(counts.max())
    if top < 2:
        return 0
    first = int(candidates[order[starts[counts == top]]].min())
    return int(words_.lengths[first : first + n].sum()) * top


def _covered_chars(words_: WordArrays, n: int, repeats: np.ndarray) -> int:
    if not len(repeats):
        return 0
    depth = np.bincount(repeats, minlength=len(words_) + n) - np.bincount(repeats + n, minlength=len(words_) + n)
    covered = np.cumsum(depth[: len(words_)]) > 0
    return int(words_.lengths[covered].sum())


@register
@dataclass
class GopherRepetition(Filter):
    """Gopher's repetition limits: duplicate line and paragraph fractions (by count and by characters), the
    character fraction of the most frequent 2-, 3- and 4-gram, and of repeated 5- to 10-grams.

    `top_ngram_fracs` and `duplicate_ngram_fracs` are lists of [n, limit]. The score is the highest
    measure/limit ratio of all checks, so a score above 1 means dropped; the reason names the first check over
    its limit (e.g. "duplicate_lines", "top_2gram", "duplicate_5gram").
    """

    name = "gopher_repetition"
    duplicate_line_frac: float = 0.3
    duplicate_paragraph_frac: float = 0.3
    duplicate_line_char_frac: float = 0.2
    duplicate_paragraph_char_frac: float = 0.2
    top_ngram_fracs: tuple = ((2, 0.2), (3, 0.18), (4, 0.16))
    duplicate_ngram_fracs: tuple = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    def __post_init__(self) -> None:
        for key in ("top_ngram_fracs", "duplicate_ngram_fracs"):
            pairs = getattr(self, key)
            if not all(
                isinstance(p, (tuple, list))
                and len(p) == 2
                and isinstance(p[0], int)
                and p[0] >= 1
                and isinstance(p[1], (int, float))
                and p[1] > 0
                for p in pairs
            ):
                raise ValueError(f"{key} must be a list of [n, limit] with n >= 1 and limit > 0, got {pairs!r}")

    def apply(self, text: str) -> FilterResult:
        if not text:
            return FilterResult(text, 0.0)
        worst, reason = 0.0, ""
        for measure, value, limit in self._measures(text):
            if limit <= 0:
                continue
            ratio = value / limit
            if ratio > 1.0 and not reason:
                reason = measure
            worst = max(worst, ratio)
            if reason:
                break
        return FilterResult(None if reason else text, worst, reason)

    def _measures(self, text: str):
        """(name, value, limit) of each check, cheapest first, so that a drop can stop early."""
        size = len(text)
        paragraphs = [p for p in _PARAGRAPH_BREAK.split(text.strip()) if p]
        repeated, chars = duplicates(paragraphs)
        yield "duplicate_paragraphs", repeated / max(len(paragraphs), 1), self.duplicate_paragraph_frac
        yield "duplicate_paragraph_chars", chars / size, self.duplicate_paragraph_char_frac
        line_list = [line for line in _LINE_BREAK.split(text) if line.strip()]
        repeated, chars = duplicates(line_list)
        yield "duplicate_lines", repeated / max(len(line_list), 1), self.duplicate_line_frac
        yield "duplicate_line_chars", chars / size, self.duplicate_line_char_frac
        top_limits, duplicate_limits = dict(self.top_ngram_fracs), dict(self.duplicate_ngram_fracs)
        for repeats in ngram_repeats(WordArrays(words(text)), {*top_limits, *duplicate_limits}):
            if repeats.n in top_limits:
                yield f"top_{repeats.n}gram", repeats.top_chars / size, top_limits[repeats.n]
            if repeats.n in duplicate_limits:
                yield f"duplicate_{repeats.n}gram", repeats.duplicate_chars / size, duplicate_limits[repeats.n]
