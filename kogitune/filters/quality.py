"""Quality heuristics in the manner of Gopher (Rae et al. 2021) and C4 (Raffel et al. 2020): cheap signs that a
page is prose and not menus, lists, code dumps or link farms."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .base import Filter, FilterResult, register
from .text import LATIN, lines, words

BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "◦", "‣", "⁃", "・", "※", "★", "☆", "◆", "◇", "-", "*", "–", "—")
ELLIPSES = ("...", "…", "。。。", "・・・")
_SYMBOLS = re.compile(r"#|\.\.\.|…")


@register
@dataclass
class GopherQuality(Filter):
    """Gopher's quality rules: word count, mean word length, symbol-to-word ratio, fraction of lines starting with a
    bullet or ending in an ellipsis, and fraction of words containing a letter (that is, not all digits). Null
    disables a rule.

    Words are Kogitune's (kogitune/filters/text.py), in which Japanese words are short (mean 1.5-2.5 characters):
    set the mean word length bounds to null for Japanese. The score is the word count.
    """

    name = "gopher_quality"
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_frac: float | None = 0.9
    max_ellipsis_lines_frac: float | None = 0.3
    min_alpha_words_frac: float | None = 0.8

    def apply(self, text: str) -> FilterResult:
        word_list = words(text)
        reason = self._reason(text, word_list)
        return FilterResult(None if reason else text, float(len(word_list)), reason)

    def _reason(self, text: str, word_list: list[str]) -> str:
        count = len(word_list)
        if self.min_words is not None and count < self.min_words:
            return "too_few_words"
        if self.max_words is not None and count > self.max_words:
            return "too_many_words"
        if not count:
            return ""
        mean_length = sum(map(len, word_list)) / count
        if self.min_mean_word_length is not None and mean_length < self.min_mean_word_length:
            return "short_words"
        if self.max_mean_word_length is not None and mean_length > self.max_mean_word_length:
            return "long_words"
        if self.max_symbol_word_ratio is not None and len(_SYMBOLS.findall(text)) / count > self.max_symbol_word_ratio:
            return "symbols"
        line_list = lines(text)
        if line_list and self.max_bullet_lines_frac is not None:
            bullets = sum(line.startswith(BULLETS) for line in line_list)
            if bullets / len(line_list) > self.max_bullet_lines_frac:
                return "bullet_lines"
        if line_list and self.max_ellipsis_lines_frac is not None:
            ellipses = sum(line.endswith(ELLIPSES) for line in line_list)
            if ellipses / len(line_list) > self.max_ellipsis_lines_frac:
                return "ellipsis_lines"
        if self.min_alpha_words_frac is not None:
            numbers = sum(map(str.isdecimal, word_list))
            if (count - numbers) / count < self.min_alpha_words_frac:
                return "non_alpha_words"
        return ""


STOP_WORDS = {
    "en": ("the", "be", "to", "of", "and", "that", "have", "with"),
    "ja": ("の", "に", "は", "を", "が", "で", "と", "も", "へ", "から", "まで", "です", "ます", "である", "した"),
}
"""English: Gopher's eight. Japanese: particles and copulas, found as substrings (Japanese has no spaces)."""


@register
@dataclass
class StopWords(Filter):
    """Keeps documents with at least `min_count` occurrences of the language's stop words: real sentences need
    them, while keyword lists, tables and menus do not have them. The score is the count."""

    name = "stop_words"
    language: str = "en"
    min_count: int = 2

    def __post_init__(self) -> None:
        if self.language not in STOP_WORDS:
            raise ValueError(f"language must be one of {', '.join(STOP_WORDS)}, got {self.language!r}")
        alternatives = "|".join(map(re.escape, STOP_WORDS[self.language]))
        if self.language == "ja":
            self._pattern = re.compile(alternatives)
        else:
            self._pattern = re.compile(f"(?<![{LATIN}])(?:{alternatives})(?![{LATIN}])", re.IGNORECASE)

    def apply(self, text: str) -> FilterResult:
        found = self._pattern.subn("", text)[1]
        if found < self.min_count:
            return FilterResult(None, float(found), f"few_{self.language}_stop_words")
        return FilterResult(text, float(found))


_TERMINAL = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？", "」", "』", "）", ")", "…")
_POLICY = re.compile(
    r"terms of use|privacy policy|cookie policy|uses cookies|use of cookies|"
    r"利用規約|プライバシーポリシー|クッキー",
    re.IGNORECASE,
)


@register
@dataclass
class C4Lines(Filter):
    """C4's line cleanup: removes lines that do not end in terminal punctuation (Latin or Japanese), that have
    fewer than `min_words_per_line` words, or that mention javascript or a cookie/privacy policy; drops pages
    with "lorem ipsum" or (optionally) a curly brace. A page with fewer than `min_lines` lines left is dropped.
    The score is the fraction of lines removed.
    """

    name = "c4_lines"
    min_words_per_line: int = 3
    require_terminal_punctuation: bool = True
    remove_javascript_lines: bool = True
    remove_policy_lines: bool = True
    drop_lorem_ipsum: bool = True
    drop_curly_brace: bool = False
    min_lines: int = 1

    def apply(self, text: str) -> FilterResult:
        lowered = text.lower()
        if self.drop_lorem_ipsum and "lorem ipsum" in lowered:
            return FilterResult(None, None, "lorem_ipsum")
        if self.drop_curly_brace and "{" in text:
            return FilterResult(None, None, "curly_brace")
        content = [line for line in text.splitlines() if line.strip()]
        kept = [line for line in text.splitlines() if not line.strip() or self._keeps(line.strip())]
        kept_content = sum(1 for line in kept if line.strip())
        removed = 1.0 - kept_content / len(content) if content else 0.0
        if kept_content < max(self.min_lines, 1):
            return FilterResult(None, removed, "no_lines_left")
        return FilterResult("\n".join(kept), removed)

    def _keeps(self, line: str) -> bool:
        if self.require_terminal_punctuation and not line.endswith(_TERMINAL):
            return False
        if len(words(line)) < self.min_words_per_line:
            return False
        if self.remove_javascript_lines and "javascript" in line.lower():
            return False
        return not (self.remove_policy_lines and _POLICY.search(line))
