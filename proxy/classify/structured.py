"""Structured personal data: e-mail addresses, phone numbers, cards, IBANs, SSNs, IP addresses
and any other type Presidio has a pattern recognizer for.

Presidio's own pattern recognizers (regexes, checksums) run directly, without its analyzer
engine and its spaCy pass, which they do not need; context words are weighed here in a
window of characters. On top, what Presidio gets wrong on technical text:
- phone numbers: Presidio scores them 0.4 without a context word, under any sensible
  `min_score`; here a number in a strongly phone-like format that python-phonenumbers finds
  valid stands on its own;
- cards: the 2-series Mastercard range (2221-2720) is missing from Presidio's pattern;
- e-mail: `pkg@1.2.3` and `cdn.example/npm/chart.js@4.4.0` are package specifiers;
- IP addresses: `version = "1.2.3.4"` is a version.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import phonenumbers

from proxy.classify.findings import Finding

_CONTEXT_BEFORE = 60  # characters before a match in which a context word counts
_CONTEXT_AFTER = 30
_CONTEXT_BOOST = 0.35  # as Presidio's context enhancer
_CONTEXT_FLOOR = 0.4

_PHONE_CONTEXT = (
    "phone",
    "tel",
    "mobile",
    "cell",
    "call",
    "fax",
    "whatsapp",
    "reach",
    "contact",
    "dial",
    "number",
)
# A phone number as people write one: optional +country code, area code perhaps in brackets,
# groups of digits separated by single spaces, dots or hyphens (or none, after a +).
_PHONE = re.compile(
    r"""(?<![\w+.\-/:#@])
    (?:
        \+\d{1,3}(?:[ .\-]?\(\d{1,4}\))?(?:[ .\-]?\d{1,5}){2,5}      # +44 20 7946 0958, +1-202-…
      | \+\d{8,14}                                                  # +34914829279
      | \(\d{2,5}\)[ .\-]?\d{2,5}(?:[ .\-]\d{2,5}){0,3}             # (202) 555-0143
      | \d{2,5}(?:[ .\-]\d{2,8}){1,4}                               # 202-555-0143, 089 9210895
    )
    (?![\w\-]|\.\d)""",
    re.VERBOSE,
)
_DATE_LIKE = re.compile(
    r"^\d{4}[.\-/ ]\d{1,2}[.\-/ ]\d{1,2}$|^\d{1,2}[.\-/ ]\d{1,2}[.\-/ ]\d{2,4}$"
)
_PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CH", "AT", "IN", "CA", "AU", "IE")
_VERSION_CONTEXT = re.compile(
    r"(?:(?:version|\bver\b|release|build|agent|firmware|upgrade|rolled out)[\w\s\"'=:(,?<>]{0,24}"
    r"|\bv|==|>=|<=|~=|\^)$",
    re.I,
)
_PACKAGE_BEFORE = frozenset("/:")
_MASTERCARD_2 = r"\b(?:2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720))[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}\b"


@dataclass(frozen=True, slots=True)
class _Pattern:
    entity: str
    recognizer: Any  # a Presidio PatternRecognizer
    context: tuple[str, ...]


def _context_near(lowered: str, start: int, end: int, words: tuple[str, ...]) -> bool:
    window = lowered[max(0, start - _CONTEXT_BEFORE) : end + _CONTEXT_AFTER]
    return any(word in window for word in words)


class StructuredFinder:
    """Every pattern type of `entities` that Presidio or this module knows."""

    def __init__(self, entities: frozenset[str]) -> None:
        self.entities = entities
        self.patterns = _presidio_patterns(entities)
        self.phone = "PHONE_NUMBER" in entities
        self.covered = frozenset({p.entity for p in self.patterns} | ({"PHONE_NUMBER"} & entities))

    def find(self, text: str) -> list[Finding]:
        lowered = text.lower()
        found: list[Finding] = []
        for pattern in self.patterns:
            for result in pattern.recognizer.analyze(text, [pattern.entity], None):
                start, end, score = result.start, result.end, float(result.score)
                if not _plausible(pattern.entity, text, start, end):
                    continue
                if (
                    score < 1.0
                    and pattern.context
                    and _context_near(lowered, start, end, pattern.context)
                ):
                    score = min(1.0, max(score + _CONTEXT_BOOST, _CONTEXT_FLOOR))
                found.append(Finding(pattern.entity, start, end, score, "presidio"))
        if self.phone:
            found += _phones(text, lowered)
        return found


def _presidio_patterns(entities: frozenset[str]) -> list[_Pattern]:
    # tldextract (under Presidio's e-mail and URL recognizers) would fetch the public suffix
    # list from the network; empty, it uses the snapshot it ships.
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    from presidio_analyzer import Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer

    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(languages=["en"])
    patterns = []
    for recognizer in registry.recognizers:
        if not isinstance(recognizer, PatternRecognizer):
            continue
        entity = recognizer.supported_entities[0]
        if entity not in entities:
            continue
        if isinstance(recognizer, CreditCardRecognizer):
            recognizer = CreditCardRecognizer(
                patterns=[
                    *CreditCardRecognizer.PATTERNS,
                    Pattern("Mastercard 2-series (weak)", _MASTERCARD_2, 0.3),
                ]
            )
        context = tuple(word.strip().lower() for word in recognizer.context or ())
        patterns.append(_Pattern(entity, recognizer, context))
    return patterns


def _plausible(entity: str, text: str, start: int, end: int) -> bool:
    """False for the technical look-alikes Presidio's patterns take for personal data."""
    value = text[start:end]
    if entity == "EMAIL_ADDRESS":
        domain = value.rsplit("@", 1)[-1]
        tld = domain.rsplit(".", 1)[-1]
        if not tld.isalpha():
            return False  # pkg@1.2.3
        before = text[max(0, start - 1) : start]
        return before not in _PACKAGE_BEFORE  # .../npm/chart.js@4.4.0
    if entity == "IP_ADDRESS" and "." in value:
        # The cue sits within a few dozen characters of the same line: look no further, so
        # that long lines stay linear.
        reach = max(0, start - 48)
        line_start = text.rfind("\n", reach, start) + 1 or reach
        if _VERSION_CONTEXT.search(text, max(line_start, reach), start):
            return False
        after = text[end : end + 1]
        return not (after == "-" or after.isalpha())  # 1.2.3.4-beta
    return True


def _phones(text: str, lowered: str) -> list[Finding]:
    found = []
    for match in _PHONE.finditer(text):
        value = match.group()
        digits = sum(c.isdigit() for c in value)
        if not 8 <= digits <= 15 or _DATE_LIKE.match(value):
            continue
        number = _parse_phone(value)
        if number is None:
            continue
        start, end = match.span()
        context = _context_near(lowered, start, end, _PHONE_CONTEXT)
        strong = value.startswith(("+", "(")) or _formatted_nationally(number, value)
        score = 0.9 if context else 0.75 if strong else 0.4
        found.append(Finding("PHONE_NUMBER", start, end, score, "phone"))
    return found


def _parse_phone(value: str) -> phonenumbers.PhoneNumber | None:
    regions = (None,) if value.startswith("+") else _PHONE_REGIONS
    for region in regions:
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return number
    return None


def _formatted_nationally(number: phonenumbers.PhoneNumber, value: str) -> bool:
    """True when the digits are grouped as the number's own country groups them
    (`202-555-0143`, `030 1234 5678`), which an order number or a count rarely is."""
    national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    groups = [len(g) for g in re.split(r"[ .\-]+", value) if g]
    expected = [len(g) for g in re.split(r"\D+", national) if g]
    return len(groups) >= 2 and groups == expected
