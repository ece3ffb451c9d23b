"""Offline language identification: Unicode scripts decide Japanese, Chinese and Korean; stop words and accented
letters tell English from the other Latin-script languages. No model file, no download.

Japanese is the only language that mixes kana with kanji; Korean is written in hangul; kanji without kana is
Chinese. Latin-script text is scored against short lists of the most frequent function words of English,
French, German, Spanish, Italian, Portuguese and Dutch. Cyrillic, Greek, Arabic, Hebrew, Devanagari and Thai
are recognised by script only (labelled ru, el, ar, he, hi, th: a guess at the most common language of the script).
Measured accuracy is in docs/filters.md.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from .base import Filter, FilterResult, register
from .text import CLASS_PATTERNS, HIRAGANA, KATAKANA, LATIN, count_chars

_KANA = re.compile(f"[{HIRAGANA}{KATAKANA}]+")
_KANJI = CLASS_PATTERNS["kanji"]
_HANGUL = CLASS_PATTERNS["hangul"]
_LATIN = CLASS_PATTERNS["latin"]
_LETTER = CLASS_PATTERNS["letter"]
_LATIN_WORD = re.compile(f"[{LATIN}]+")
SCRIPT_LANGUAGES = {
    "ru": re.compile("[\u0400-\u04ff]+"),
    "el": re.compile("[\u0370-\u03ff]+"),
    "ar": re.compile("[\u0600-\u06ff\u0750-\u077f]+"),
    "he": re.compile("[\u0590-\u05ff]+"),
    "hi": re.compile("[\u0900-\u097f]+"),
    "th": re.compile("[\u0e00-\u0e7f]+"),
}

STOP_WORDS = {
    "en": "the a and of to is in that it was for with as he on be at by this have from or had not but are they his "
    "which you were we she her there been would their will what shall unto thou thee thy hath my me him all "
    "said when who so if an do has our can its about into them than then where i",
    "fr": "le la les des du de et un une est que qui dans pour pas sur au aux avec ce il elle nous vous ne sont "
    "mais ou où été leur leurs très je cette son ses sa plus fait",
    "de": "der die das und ist nicht ein eine zu den dem mit sich auf für von auch es im ich sie wir werden wird "
    "sind nach bei aus keine kein weil dass noch nur oder wie",
    "es": "el la los las de que y en un una es por con para del se no al lo como más pero sus su ella si sé va "
    "muy este esta cuando",
    "it": "il lo la gli le di che e è un una per non con del della sono ma come anche questo questa nel alla",
    "pt": "o a os as de que e do da em um uma para com não por mais dos das se ao como mas foi são você",
    "nl": "de het een en van is dat niet op te zijn voor met ook er maar aan om dit wat bij ik je",
}
STOP_SETS = {language: frozenset(words.split()) for language, words in STOP_WORDS.items()}
ACCENTS = {"fr": "éèêëçàâîïôûùœ", "de": "äöüß", "es": "ñ¿¡áíóú", "pt": "ãõçáâêô", "it": "àèìòù"}
"""Letters that mark a language (lower case); each occurrence counts as half a stop word."""


class Detection(NamedTuple):
    language: str
    """An ISO 639-1 code, or "und" when the text has no letters."""
    confidence: float
    """0 to 1: the share of the text's letters (and, for Latin script, of its stop words) behind the decision."""


def detect_language(text: str, max_chars: int = 2000) -> Detection:
    """The language of `text` (its first `max_chars` characters)."""
    sample = text[:max_chars]
    letters = count_chars(_LETTER, sample)
    if not letters:
        return Detection("und", 0.0)
    kana, kanji, hangul = count_chars(_KANA, sample), count_chars(_KANJI, sample), count_chars(_HANGUL, sample)
    if hangul / letters >= 0.3 and hangul >= kana:
        return Detection("ko", min(1.0, (hangul + kanji) / letters))
    cjk = (kana + kanji) / letters
    if kana and cjk >= 0.3 and kana / (kana + kanji) >= 0.05:
        return Detection("ja", cjk)
    if kanji / letters >= 0.3:
        return Detection("zh", kanji / letters)
    latin = count_chars(_LATIN, sample) / letters
    if latin >= 0.5:
        language, share = _latin_language(sample)
        return Detection(language, latin * share)
    language, matched = max(
        ((lang, count_chars(pattern, sample)) for lang, pattern in SCRIPT_LANGUAGES.items()), key=lambda item: item[1]
    )
    return Detection(language, matched / letters) if matched else Detection("und", 0.0)


def _latin_language(sample: str) -> tuple[str, float]:
    """The Latin-script language with most stop-word hits, and its share of all hits (English when none)."""
    lowered = sample.lower()
    frequencies = Counter(_LATIN_WORD.findall(lowered))
    scores: dict[str, float] = {
        language: sum(frequencies[w] for w in stop_set & frequencies.keys()) for language, stop_set in STOP_SETS.items()
    }
    for language, letters in ACCENTS.items():
        scores[language] += sum(lowered.count(letter) for letter in letters) / 2
    total = sum(scores.values())
    if not total:
        return "en", 0.0
    best = max(scores, key=scores.__getitem__)
    return best, scores[best] / total


@register
@dataclass
class Language(Filter):
    """Keeps documents detected as one of `languages` with confidence at least `min_confidence`.

    Reasons: "lang_xx" (detected as another language xx) or "uncertain_xx" (xx is allowed, but the
    confidence is too low: usually mixed-language or mostly non-letter text). The score is the confidence.
    """

    name = "language"
    languages: tuple = ("ja", "en")
    min_confidence: float = 0.5
    max_chars: int = 2000

    def __post_init__(self) -> None:
        if not self.languages or not all(isinstance(code, str) for code in self.languages):
            raise ValueError(f"languages must be a non-empty list of codes like ['ja', 'en'], got {self.languages!r}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must lie in [0, 1], got {self.min_confidence}")

    def apply(self, text: str) -> FilterResult:
        language, confidence = detect_language(text, self.max_chars)
        if language not in self.languages:
            return FilterResult(None, confidence, f"lang_{language}")
        if confidence < self.min_confidence:
            return FilterResult(None, confidence, f"uncertain_{language}")
        return FilterResult(text, confidence)
