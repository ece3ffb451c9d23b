"""Unicode normalization and whitespace cleanup: the same text must always become the same tokens."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from .base import Filter, FilterResult, register

_Form = Literal["NFC", "NFKC", "NFD", "NFKD"]

_FORMS: tuple[_Form, ...] = ("NFC", "NFKC", "NFD", "NFKD")


@register
@dataclass
class Nfkc(Filter):
    """Unicode normalization (NFKC by default): full-width ＡＢＣ１２３ become ABC123, half-width ｶﾅ become カナ."""

    name = "nfkc"
    form: _Form = "NFKC"

    def __post_init__(self) -> None:
        if self.form not in _FORMS:
            raise ValueError(f"form must be one of {', '.join(_FORMS)}, got {self.form!r}")

    def apply(self, text: str) -> FilterResult:
        normalized = unicodedata.normalize(self.form, text)
        return FilterResult(normalized, score=float(normalized != text))


_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_UNICODE_SPACES = re.compile("[\xa0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\xad\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\ufeff]"
)
"""Control characters (Unicode category Cc) other than tab and line breaks, unpaired surrogates (Cs), and
invisible marks: soft hyphen, zero-width space, direction marks and overrides, word joiner, byte-order mark."""
_SPACE_RUN = re.compile(r"\t[ \t]*| [ \t]+")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_LEADING_SPACE = re.compile(r"\n[ \t]+")


@register
@dataclass
class Whitespace(Filter):
    """Removes control characters, unpaired surrogates and invisible marks; tidies spaces and blank lines.

    CR LF and other line breaks become LF, Unicode spaces (including the ideographic space U+3000) become ASCII
    spaces, runs of spaces and tabs become one space, lines lose trailing (and optionally leading) spaces, and at
    most `max_blank_lines` blank lines are kept in a row. A document left empty is dropped ("empty").
    """

    name = "whitespace"
    collapse_spaces: bool = True
    strip_line_starts: bool = False
    max_blank_lines: int = 1

    def __post_init__(self) -> None:
        if self.max_blank_lines < 0:
            raise ValueError(f"max_blank_lines must be 0 or more, got {self.max_blank_lines}")
        self._blank_run = re.compile(r"\n{" + str(self.max_blank_lines + 2) + ",}")

    def apply(self, text: str) -> FilterResult:
        cleaned = _INVISIBLE.sub("", _UNICODE_SPACES.sub(" ", _LINE_BREAKS.sub("\n", text)))
        if self.collapse_spaces:
            cleaned = _SPACE_RUN.sub(" ", cleaned)
        cleaned = _TRAILING_SPACE.sub("\n", cleaned)
        if self.strip_line_starts:
            cleaned = _LEADING_SPACE.sub("\n", cleaned)
        cleaned = self._blank_run.sub("\n" * (self.max_blank_lines + 1), cleaned).strip()
        removed = (len(text) - len(cleaned)) / len(text) if text else 0.0
        if not cleaned:
            return FilterResult(None, removed, "empty")
        return FilterResult(cleaned, removed)
