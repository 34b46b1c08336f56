"""Finds every text in a request body that the upstream would see, with its path, so findings
can be masked in place; and notes parts that are not text (images, files, audio).

Deliberately a walk over the whole body, not a list of known fields: a field this code has
never heard of still reaches the provider, so it is scanned too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Values of these keys are protocol vocabulary, not content.
_NOT_CONTENT = frozenset(
    {
        "model",
        "role",
        "type",
        "id",
        "tool_call_id",
        "tool_use_id",
        "media_type",
        "detail",
        "encoding_format",
        "reasoning_effort",
        "service_tier",
        "finish_reason",
        "stop_reason",
        "tool_choice",
        "previous_response_id",
        "truncation",
    }
)
_NON_TEXT_TYPES = frozenset(
    {"image", "image_url", "input_image", "document", "file", "input_file", "input_audio"}
)

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class TextSlot:
    path: Path
    text: str


@dataclass(frozen=True, slots=True)
class Extracted:
    slots: tuple[TextSlot, ...]
    non_text_parts: int  # images, files and audio parts (not scanned)


def extract_texts(body: Any) -> Extracted:
    slots: list[TextSlot] = []
    non_text = 0
    stack: list[tuple[Path, Any]] = [((), body)]
    push = stack.append
    # Runs on every request, cached or not: plain loops, and vocabulary strings never pushed.
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if value:
                slots.append(TextSlot(path, value))
        elif isinstance(value, dict):
            if value.get("type") in _NON_TEXT_TYPES:
                non_text += 1
                continue
            for key, item in value.items():
                if not (key in _NOT_CONTENT and isinstance(item, str)):
                    push(((*path, key), item))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                push(((*path, index), item))
    slots.reverse()  # document order, for readable audits and stable placeholders
    return Extracted(tuple(slots), non_text)


def rewrite_texts(body: Any, slots: tuple[TextSlot, ...], change: Callable[[TextSlot], str]) -> Any:
    """A copy of `body` with the text at each slot replaced by `change(slot)`."""
    result = copy.deepcopy(body)
    for slot in slots:
        new_text = change(slot)
        if new_text == slot.text:
            continue
        parent = result
        for step in slot.path[:-1]:
            parent = parent[step]
        parent[slot.path[-1]] = new_text
    return result
