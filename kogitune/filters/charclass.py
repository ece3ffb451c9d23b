"""Character-class fractions: tables of numbers, symbol soup and text in the wrong script have telling mixtures."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Filter, FilterResult, register
from .text import CLASS_PATTERNS, class_fraction


@register
@dataclass
class CharFraction(Filter):
    """Keeps documents whose fraction of non-whitespace characters in `char_class` lies in [min, max].

    Classes: letter (any script), digit, symbol (punctuation, emoji, `_`), latin, hiragana, katakana, kanji,
    japanese (hiragana + katakana + kanji), hangul. Use one `char_fraction` entry per class. The score is the
    fraction; a document without non-whitespace characters has fraction 0.
    """

    name = "char_fraction"
    char_class: str = "letter"
    min_fraction: float = 0.5
    max_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.char_class not in CLASS_PATTERNS or self.char_class == "whitespace":
            classes = ", ".join(c for c in CLASS_PATTERNS if c != "whitespace")
            raise ValueError(f"char_class must be one of {classes}; got {self.char_class!r}")
        if not 0.0 <= self.min_fraction <= self.max_fraction <= 1.0:
            raise ValueError(
                f"need 0 <= min_fraction <= max_fraction <= 1, got {self.min_fraction} and {self.max_fraction}"
            )

    def apply(self, text: str) -> FilterResult:
        fraction = class_fraction(self.char_class, text)
        if fraction < self.min_fraction:
            return FilterResult(None, fraction, f"too_few_{self.char_class}")
        if fraction > self.max_fraction:
            return FilterResult(None, fraction, f"too_many_{self.char_class}")
        return FilterResult(text, fraction)
