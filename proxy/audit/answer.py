"""The text of a provider's answer, for the audit record: from a whole JSON body or from the
stream's events, read after the answer has gone out so the relay never waits for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import orjson

from proxy.context import WireFormat
from proxy.upstream.sse import SSEEvent

_RESPONSES_DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta")


def body_text(wire: WireFormat, data: bytes) -> str:
    """The generated text of a whole (non-streamed) answer; "" when it has none."""
    if wire is WireFormat.OPENAI_EMBEDDINGS:
        return ""
    body = _loads(data)
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    if wire is WireFormat.OPENAI_CHAT:
        for choice in _dicts(body.get("choices")):
            message = choice.get("message")
            if isinstance(message, dict):
                _add(parts, message.get("content"))
                _add(parts, message.get("refusal"))
                for call in _dicts(message.get("tool_calls")):
                    function = call.get("function")
                    if isinstance(function, dict):
                        _add(parts, function.get("arguments"))
    elif wire is WireFormat.ANTHROPIC_MESSAGES:
        for block in _dicts(body.get("content")):
            _add(parts, block.get("text"))
            if block.get("type") == "tool_use":
                parts.append(json.dumps(block.get("input"), sort_keys=True))
    elif wire is WireFormat.OPENAI_RESPONSES:
        for item in _dicts(body.get("output")):
            for content in _dicts(item.get("content")):
                _add(parts, content.get("text"))
            _add(parts, item.get("arguments"))
    return "".join(parts)


def stream_text(wire: WireFormat, events: Iterable[SSEEvent]) -> str:
    """The generated text of a streamed answer, joined from its delta events."""
    parts: list[str] = []
    for event in events:
        if wire is WireFormat.OPENAI_CHAT:
            chunk = _json(event.data)
            for choice in _dicts(chunk.get("choices") if chunk else None):
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    _add(parts, delta.get("content"))
                    _add(parts, delta.get("refusal"))
                    for call in _dicts(delta.get("tool_calls")):
                        function = call.get("function")
                        if isinstance(function, dict):
                            _add(parts, function.get("arguments"))
        elif wire is WireFormat.ANTHROPIC_MESSAGES:
            if event.event == "content_block_delta":
                body = _json(event.data)
                delta = body.get("delta") if body else None
                if isinstance(delta, dict):
                    _add(parts, delta.get("text"))
                    _add(parts, delta.get("partial_json"))
        elif wire is WireFormat.OPENAI_RESPONSES and event.event in _RESPONSES_DELTAS:
            body = _json(event.data)
            if body:
                _add(parts, body.get("delta"))
    return "".join(parts)


def _add(parts: list[str], value: Any) -> None:
    if isinstance(value, str):
        parts.append(value)


def _dicts(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def _json(data: bytes) -> dict[str, Any] | None:
    if not data.startswith(b"{"):
        return None
    value = _loads(data)
    return value if isinstance(value, dict) else None


def _loads(data: bytes) -> Any:
    """Parsed JSON, or None when it is not JSON. orjson first (several times faster on the
    answers this reads after every request); json for what orjson refuses but json takes (a
    lone surrogate escape, an integer beyond 64 bits)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except ValueError:
        return None
