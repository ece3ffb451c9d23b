"""Wikipedia cleanup as Kogitune did it: trailing reference sections and bracketed footnote marks are not prose."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .base import Filter, FilterResult, register

TRAILING_SECTIONS = (
    "References",
    "External links",
    "See also",
    "Notes",
    "Footnotes",
    "Citations",
    "Sources",
    "Bibliography",
    "Further reading",
    "Notes and references",
    "脚注",
    "注釈",
    "出典",
    "参考文献",
    "関連項目",
    "外部リンク",
    "関連文献",
    "参考資料",
    "外部サイト",
)
_FOOTNOTE_MARK = re.compile(
    r"[\[［](?:\d{1,3}|[a-z]|注(?:釈)?\s*\d{1,3}|(?:note|nb)\s*\d{1,3}|citation needed|要出典[^\]］\n]{0,40}"
    r"|要検証[^\]］\n]{0,40}|独自研究\??|信頼性要検証|疑問点[^\]］\n]{0,40}|いつ\??|どこ\??|誰\??|誰によって\??"
    r"|どれ\??|何\??)[\]］]",
    re.IGNORECASE,
)


@register
@dataclass
class WikipediaTrim(Filter):
    """Cuts the text at the first heading line (after the title line) naming a trailing section (References,
    脚注, 参考文献, 関連項目, 外部リンク, ...; plain or in `== x ==` / `## x` form) and removes footnote marks such as [1], [注 2], [a],
    [要出典] and [citation needed]. A page left empty is dropped. The score is the fraction of characters removed.
    """

    name = "wikipedia_trim"
    sections: tuple = TRAILING_SECTIONS
    remove_footnote_marks: bool = True

    def __post_init__(self) -> None:
        if not all(isinstance(s, str) and s.strip() for s in self.sections):
            raise ValueError(f"sections must be a list of non-empty heading names, got {self.sections!r}")
        names = "|".join(re.escape(s.strip()) for s in sorted(self.sections, key=len, reverse=True))
        self._heading = (
            re.compile(rf"^[ \t]*(?:=+|#+)?[ \t]*(?:{names})[ \t]*=*[ \t]*$", re.IGNORECASE | re.MULTILINE)
            if names
            else None
        )

    def apply(self, text: str) -> FilterResult:
        trimmed = text
        if self._heading is not None:
            heading = self._heading.search(trimmed, trimmed.find("\n") + 1 or len(trimmed))
            if heading:
                trimmed = trimmed[: heading.start()]
        if self.remove_footnote_marks:
            trimmed = _FOOTNOTE_MARK.sub("", trimmed)
        trimmed = trimmed.rstrip()
        removed = (len(text) - len(trimmed)) / len(text) if text else 0.0
        if not trimmed.strip():
            return FilterResult(None, removed, "empty")
        return FilterResult(trimmed, removed)
