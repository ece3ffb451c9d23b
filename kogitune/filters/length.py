"""Length bounds: documents too short to teach anything, or so long that they are usually dumps, are dropped."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .base import Filter, FilterResult, register
from .text import words

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

_SURROGATE = re.compile("[\ud800-\udfff]")
"""Unpaired surrogates, which the tokenizers library refuses; they are counted as one token each ("?")."""


def _check_bounds(low: int | None, high: int | None, what: str) -> None:
    for bound in (low, high):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 0):
            raise ValueError(f"{what} bounds must be whole numbers of 0 or more, or null for no bound; got {bound!r}")
    if low is not None and high is not None and low > high:
        raise ValueError(f"the minimum {what} ({low}) is above the maximum ({high})")


def _outside(value: int, low: int | None, high: int | None, unit: str) -> str:
    """The drop reason for `value` outside [low, high], or "" inside."""
    if low is not None and value < low:
        return f"too_few_{unit}"
    if high is not None and value > high:
        return f"too_many_{unit}"
    return ""


@register
@dataclass
class Length(Filter):
    """Bounds on characters, UTF-8 bytes and words (see kogitune/filters/text.py); null means no bound.

    The score is the number of characters.
    """

    name = "length"
    min_chars: int | None = 200
    max_chars: int | None = None
    min_bytes: int | None = None
    max_bytes: int | None = None
    min_words: int | None = None
    max_words: int | None = None

    def __post_init__(self) -> None:
        _check_bounds(self.min_chars, self.max_chars, "chars")
        _check_bounds(self.min_bytes, self.max_bytes, "bytes")
        _check_bounds(self.min_words, self.max_words, "words")

    def apply(self, text: str) -> FilterResult:
        chars = len(text)
        reason = _outside(chars, self.min_chars, self.max_chars, "chars")
        if not reason and (self.min_bytes is not None or self.max_bytes is not None):
            size = len(text.encode("utf-8", "surrogatepass"))
            reason = _outside(size, self.min_bytes, self.max_bytes, "bytes")
        if not reason and (self.min_words is not None or self.max_words is not None):
            reason = _outside(len(words(text)), self.min_words, self.max_words, "words")
        return FilterResult(None if reason else text, float(chars), reason)


@register
@dataclass
class TokenLength(Filter):
    """Bounds on the number of tokens of a Kogitune tokenizer (by name or path, as `kogitune store --tokenizer`).

    Use the tensor's own tokenizer, so that the bound is in the units training sees. The score is the token count.
    """

    name = "token_length"
    tokenizer: str = "gpt2"
    min_tokens: int | None = 64
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        _check_bounds(self.min_tokens, self.max_tokens, "tokens")
        self._tokenizer: Tokenizer | None = None

    def apply(self, text: str) -> FilterResult:
        original = text
        if self._tokenizer is None:
            from ..tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer)
        if _SURROGATE.search(text):
            text = text.encode("utf-8", "replace").decode("utf-8")
        tokens = len(self._tokenizer.encode_batch([text])[0])
        reason = _outside(tokens, self.min_tokens, self.max_tokens, "tokens")
        return FilterResult(None if reason else original, float(tokens), reason)
