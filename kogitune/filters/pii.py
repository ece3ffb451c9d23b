"""PII replacement: e-mail addresses, phone numbers, IP addresses, card numbers (and optionally URLs) become
placeholders, so that a shared data tensor does not teach a model someone's contact details.

Run it after `nfkc`, which turns full-width digits and ＠ into ASCII ones that these patterns match.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .base import Filter, FilterResult, register

KINDS = ("email", "credit_card", "ip", "phone", "url")
DEFAULT_PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ip": "<IP>",
    "credit_card": "<CREDIT_CARD>",
    "url": "<URL>",
}

_URL = re.compile(
    r"\b(?:https?|ftp)://[^\s<>\"'）」』、。，！？]+|\bwww\.[a-z0-9-]+(?:\.[a-z0-9-]+)+[^\s<>\"'）」』、。，！？]*",
    re.IGNORECASE,
)
_EMAIL = re.compile(
    r"(?<![0-9A-Za-z._%+-])[a-z0-9][a-z0-9._%+-]{0,63}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.[a-z]{2,24}(?![a-z0-9-])",
    re.IGNORECASE,
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\d.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\d|\.\d)")
_CARD_HINT = re.compile(r"\d{4}")
_IPV4_HINT = re.compile(r"\d\.\d")
_IPV6_HINT = re.compile(r"::|[0-9a-f]:[0-9a-f]", re.IGNORECASE)
"""Cheap searches that rule most texts out before the full patterns, which are slow to scan."""
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?:%\w+)?(?![\w:])", re.IGNORECASE)
_PHONE = re.compile(
    r"(?<![0-9A-Za-z+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # international: +81 3-1234-5678
    r"|\(0\d{1,4}\)[ -]?\d{1,4}[ -]\d{4}"  # Japanese: (03) 1234-5678
    r"|0\d{1,4}[ -]\d{1,4}[ -]\d{4}"  # Japanese: 03-1234-5678, 090-1234-5678
    r"|0[5789]0\d{8}"  # Japanese mobile/IP phone: 09012345678
    r"|\(\d{3}\)[ ]?\d{3}[ .-]\d{4}"  # North American: (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # North American: 555-123-4567
    r")(?![0-9A-Za-z-])"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn check that every payment card number passes (and 9 in 10 random digit strings fail)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


@register
@dataclass
class Pii(Filter):
    """Replaces personal data with placeholders; never drops a document. The score is the number of replacements.

    `replace` lists the kinds to replace, from: email, credit_card (13-19 digits passing the Luhn check), ip
    (IPv4 and IPv6), phone (Japanese and international forms), url. `placeholders` maps kinds to replacement text.
    """

    name = "pii"
    replace: tuple = ("email", "credit_card", "ip", "phone")
    placeholders: dict = field(default_factory=lambda: dict(DEFAULT_PLACEHOLDERS))

    def __post_init__(self) -> None:
        unknown = sorted(set(self.replace) - set(KINDS)) + sorted(set(self.placeholders) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown PII kind(s) {', '.join(map(repr, unknown))}; the kinds are {', '.join(KINDS)}")
        if not all(isinstance(value, str) for value in self.placeholders.values()):
            raise ValueError(f"placeholders must map kinds to strings, got {self.placeholders!r}")
        self._marks = {**DEFAULT_PLACEHOLDERS, **self.placeholders}
        self._kinds = [kind for kind in KINDS if kind in self.replace]

    def apply(self, text: str) -> FilterResult:
        replaced = 0
        for kind in self._kinds:
            text, found = _REPLACERS[kind](text, self._marks[kind])
            replaced += found
        return FilterResult(text, float(replaced))


def _replace_url(text: str, mark: str) -> tuple[str, int]:
    """URLs, leaving trailing punctuation ("see https://example.com.") in the text."""

    def url(match: re.Match) -> str:
        address = match.group()
        kept = address.rstrip(".,;:!?)]}'")
        return mark + address[len(kept) :]

    return _URL.subn(url, text)


def _replace_email(text: str, mark: str) -> tuple[str, int]:
    return _EMAIL.subn(mark, text) if "@" in text else (text, 0)


def _replace_card(text: str, mark: str) -> tuple[str, int]:
    if not _CARD_HINT.search(text):
        return text, 0
    found = 0

    def card(match: re.Match) -> str:
        nonlocal found
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            found += 1
            return mark
        return match.group()

    return _CARD.sub(card, text), found


def _replace_ip(text: str, mark: str) -> tuple[str, int]:
    text, found = _IPV4.subn(mark, text) if _IPV4_HINT.search(text) else (text, 0)
    if not _IPV6_HINT.search(text):
        return text, found
    ipv6 = 0

    def address(match: re.Match) -> str:
        nonlocal ipv6
        candidate = match.group().split("%")[0]
        if "::" not in candidate and candidate.count(":") < 7:
            return match.group()
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            return match.group()
        ipv6 += 1
        return mark

    return _IPV6.sub(address, text), found + ipv6


def _replace_phone(text: str, mark: str) -> tuple[str, int]:
    found = 0

    def phone(match: re.Match) -> str:
        nonlocal found
        digits = sum(c.isdigit() for c in match.group())
        if 8 <= digits <= 15:
            found += 1
            return mark
        return match.group()

    return _PHONE.sub(phone, text), found


_REPLACERS = {
    "url": _replace_url,
    "email": _replace_email,
    "credit_card": _replace_card,
    "ip": _replace_ip,
    "phone": _replace_phone,
}
