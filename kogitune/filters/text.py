"""Shared text measures: Unicode script classes, words, lines and paragraphs, counted the same way by every filter.

Words: Japanese and Chinese are written without spaces, so a "word" is a maximal run of one script — a run of
kanji, of hiragana, of katakana, of hangul, or of other letters and digits (with inner apostrophes, "don't").
For English this is the usual word; for Japanese it approximates short units such as 東京|には|住|んでいます.
"""

from __future__ import annotations

import re
from functools import lru_cache

KANJI = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3005\u3006\u30f6\U00020000-\U0003134f"
HIRAGANA = "\u3041-\u309f"
KATAKANA = "\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9f"
HANGUL = "\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff"
LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"
_CJK = KANJI + HIRAGANA + KATAKANA + HANGUL

CLASS_PATTERNS = {
    "letter": re.compile(r"[^\W\d_]+"),
    "digit": re.compile(r"\d+"),
    "symbol": re.compile(r"(?:[^\w\s]|_)+"),
    "whitespace": re.compile(r"\s+"),
    "latin": re.compile(f"[{LATIN}]+"),
    "hiragana": re.compile(f"[{HIRAGANA}]+"),
    "katakana": re.compile(f"[{KATAKANA}]+"),
    "kanji": re.compile(f"[{KANJI}]+"),
    "japanese": re.compile(f"[{KANJI}{HIRAGANA}{KATAKANA}]+"),
    "hangul": re.compile(f"[{HANGUL}]+"),
}
"""Character classes by name, as patterns of runs (see `count_chars`). Letters include kana, kanji and hangul;
symbols are punctuation, emoji and `_`."""

WORD = re.compile(f"[{KANJI}]+|[{HIRAGANA}]+|[{KATAKANA}]+|[{HANGUL}]+|[^\\W_{_CJK}]+(?:['’][^\\W_{_CJK}]+)*")
_WORD_WITHOUT_CJK = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
"""The same words for text without CJK characters, three times faster."""
_ANY_CJK = re.compile(f"[{_CJK}]")
_BLANK_LINES = re.compile(r"\n[ \t\u3000]*\n\s*")


def count_chars(pattern: re.Pattern, text: str) -> int:
    """Characters matched by `pattern` in `text`: matching runs rather than single characters is much faster."""
    return sum(map(len, pattern.findall(text)))


def non_space_chars(text: str) -> int:
    return len(text) - count_chars(CLASS_PATTERNS["whitespace"], text)


def class_fraction(name: str, text: str) -> float:
    """The fraction of non-whitespace characters in class `name` (0.0 for text with none)."""
    total = non_space_chars(text)
    return count_chars(CLASS_PATTERNS[name], text) / total if total else 0.0


@lru_cache(maxsize=2)
def words(text: str) -> list[str]:
    """The words of `text`, cached for the next filter that asks (do not change the list)."""
    return (WORD if _ANY_CJK.search(text) else _WORD_WITHOUT_CJK).findall(text)


def lines(text: str) -> list[str]:
    """Non-blank lines, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def paragraphs(text: str) -> list[str]:
    """Blocks separated by blank lines, stripped; blank blocks are left out."""
    return [p.strip() for p in _BLANK_LINES.split(text) if p.strip()]
