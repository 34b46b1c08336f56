"""The `mask` action: typed placeholders out, real values back, one mapping per request in memory.

Restores complete texts, parsed JSON answers, and text streamed in pieces split anywhere.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from proxy.classify.findings import Finding

# Anything shaped like one of our placeholders. Broader than what we issue (leading zeros, any
# tag) on purpose: a client's literal that merely looks like a placeholder gets reserved, which
# costs nothing, while missing one that equals an issued placeholder would restore the wrong text.
_LOOKALIKE = re.compile(r"<([A-Z][A-Z0-9_]*)_[0-9]+>")
_NOT_TAG = re.compile(r"[^A-Z0-9]+")


def _tag(entity: str) -> str:
    # Org detectors take entity names from YAML; squeeze them into the placeholder grammar so
    # every issued placeholder is matched by _LOOKALIKE and none contains "<" or ">" inside.
    tag = _NOT_TAG.sub("_", entity.upper()).strip("_")
    return tag if tag[:1].isalpha() else f"ENTITY_{tag}".rstrip("_")


def _resolve_overlaps(text: str, findings: Sequence[Finding]) -> list[Finding]:
    for finding in findings:
        if not 0 <= finding.start < finding.end <= len(text):
            # A span outside the text is a detector bug; masking around it could let the value out.
            raise ValueError(
                f"{finding.detector} finding {finding.entity} has span "
                f"{finding.start}:{finding.end} outside a text of length {len(text)}"
            )
    by_priority = sorted(
        findings, key=lambda f: (f.start - f.end, -f.score, f.start, f.entity, f.detector)
    )
    kept: list[Finding] = []
    starts: list[int] = []  # of the kept findings, which never overlap: sorted, so a new one is
    ends: list[int] = []  # checked against its two neighbours only
    for finding in by_priority:
        at = bisect_right(starts, finding.start)
        if (at and ends[at - 1] > finding.start) or (at < len(starts) and starts[at] < finding.end):
            continue
        kept.append(finding)
        starts.insert(at, finding.start)
        ends.insert(at, finding.end)
    return sorted(kept, key=lambda f: f.start)


def _restore(text: str, mapping: Mapping[str, str], json_escaped: bool) -> str:
    if not mapping or "<" not in text:
        return text

    def value_of(match: re.Match[str]) -> str:
        placeholder = match.group(0)
        value = mapping.get(placeholder)
        if value is None:
            return placeholder
        # Inside JSON text a placeholder can only sit in a string literal, so escaping the value
        # as a string literal's body keeps the JSON valid and decodes to the real value.
        return json.dumps(value, ensure_ascii=False)[1:-1] if json_escaped else value

    return _LOOKALIKE.sub(value_of, text)


class StreamUnmasker:
    """Restores placeholders in text that arrives in pieces split anywhere.

    Holds back only the longest tail that is a proper prefix of an issued placeholder, so it never
    holds more than the longest placeholder's length minus one character.
    """

    def __init__(self, masker: Masker, *, json_escaped: bool = False) -> None:
        self._masker = masker
        self._json_escaped = json_escaped
        self._held = ""

    def feed(self, piece: str) -> str:
        """Text safe to emit now, restored; keeps back a tail that may yet become a placeholder."""
        buffer = self._held + piece
        cut = self._held_from(buffer)
        self._held = buffer[cut:]
        return _restore(buffer[:cut], self._masker.mapping, self._json_escaped)

    def flush(self) -> str:
        """At the end of the stream: the held tail, which can never be a whole placeholder."""
        held, self._held = self._held, ""
        return _restore(held, self._masker.mapping, self._json_escaped)

    def _held_from(self, buffer: str) -> int:
        prefixes = self._masker._prefixes
        if not prefixes:
            return len(buffer)
        # Issued placeholders hold "<" only at their start, so only a tail from the last "<" can
        # still become one; a tail longer than the longest placeholder never can.
        start = buffer.rfind("<", max(0, len(buffer) - self._masker._longest + 1))
        return start if start != -1 and buffer[start:] in prefixes else len(buffer)


class Masker:
    """One per request: assigns placeholders consistently across all texts of the request.

    Placeholders are `<TAG_N>` with N counted per tag from 1, the same (entity, exact value)
    always getting the same one. A client's own text that already holds a placeholder-shaped
    string is made safe without a random salt: a literal seen before that placeholder is issued
    reserves it (numbering skips it and the literal goes upstream verbatim, never restored); a
    literal equal to a placeholder already issued is itself masked with a fresh placeholder that
    restores to the literal. So no issued placeholder ever reaches the model except where it
    stands for its value. This holds only if every text sent upstream passes through `mask`,
    with or without findings.

    Restoring matches exactly: a model answer that drops the brackets, changes case or escapes
    the "<" keeps the placeholder as written; guessing there could put a value where none was meant.
    """

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._values: dict[str, str] = {}
        self._counters: dict[str, int] = {}
        self._reserved: set[str] = set()
        # Every proper prefix of every issued placeholder, so a stream checks a tail in O(1).
        self._prefixes: set[str] = set()
        self._longest = 0

    @property
    def mapping(self) -> Mapping[str, str]:
        """Placeholder to original value, read-only; grows as `mask` issues placeholders."""
        return MappingProxyType(self._values)

    def mask(self, text: str, findings: Sequence[Finding]) -> str:
        """`text` with each finding's span replaced by its placeholder; overlaps keep the longest,
        then the highest score. Raises ValueError for a span outside the text."""
        kept = _resolve_overlaps(text, findings)
        gaps: list[str] = []
        position = 0
        for finding in kept:
            gaps.append(text[position : finding.start])
            position = finding.end
        gaps.append(text[position:])
        # Reserve first, so nothing issued for this very text collides with a literal in it.
        for gap in gaps:
            for match in _LOOKALIKE.finditer(gap):
                if match.group(0) not in self._values:
                    self._reserved.add(match.group(0))

        parts: list[str] = []
        for gap, after in zip(gaps, [*kept, None], strict=True):
            parts.append(_LOOKALIKE.sub(self._escape_issued, gap))
            if after is not None:
                value = text[after.start : after.end]
                parts.append(self._placeholder(_tag(after.entity), after.entity, value))
        return "".join(parts)

    def unmask(self, text: str, *, json_escaped: bool = False) -> str:
        """`text` with every issued placeholder replaced by its value; others stay as written.

        With `json_escaped`, values are escaped for the inside of a JSON string literal: for
        JSON text carried in a string, such as tool call arguments."""
        return _restore(text, self._values, json_escaped)

    def stream(self, *, json_escaped: bool = False) -> StreamUnmasker:
        """A fresh incremental restorer for one output stream (one content or arguments field)."""
        return StreamUnmasker(self, json_escaped=json_escaped)

    def _escape_issued(self, match: re.Match[str]) -> str:
        literal = match.group(0)
        if literal not in self._values:
            return literal
        # Same key space as findings: a PERSON finding whose text is "<PERSON_1>" restores alike.
        return self._placeholder(match.group(1), match.group(1), literal)

    def _placeholder(self, tag: str, entity: str, value: str) -> str:
        key = (entity, value)
        placeholder = self._by_value.get(key)
        if placeholder is not None:
            return placeholder
        number = self._counters.get(tag, 0)
        while True:
            number += 1
            placeholder = f"<{tag}_{number}>"
            if placeholder not in self._reserved:
                break
        self._counters[tag] = number
        self._by_value[key] = placeholder
        self._values[placeholder] = value
        self._prefixes.update(placeholder[:size] for size in range(1, len(placeholder)))
        self._longest = max(self._longest, len(placeholder))
        return placeholder


def restore_json_strings(value: Any, masker: Masker) -> Any:
    """A copy of a parsed JSON value with every string in it, keys included, unmasked.

    A string that is itself a JSON object or array (OpenAI's tool call `arguments`) gets its
    values JSON-escaped, so a name with a quote in it leaves the arguments parseable."""
    if isinstance(value, str):
        return masker.unmask(value, json_escaped=_is_json_container(value))
    if isinstance(value, list):
        return [restore_json_strings(item, masker) for item in value]
    if isinstance(value, dict):
        return {
            masker.unmask(key) if isinstance(key, str) else key: restore_json_strings(item, masker)
            for key, item in value.items()
        }
    return value


def _is_json_container(text: str) -> bool:
    if "<" not in text or text.lstrip()[:1] not in ("{", "["):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
