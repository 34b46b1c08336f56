"""Puts the real values back where a masked request's answer echoes placeholders: in whole
JSON answers, and event by event in OpenAI chat, Responses and Anthropic streams.

A placeholder can arrive split across events; each text stream holds back a possible
placeholder prefix and releases it with the next piece, or in an event of its own before the
stream's part ends.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.classify.masking import Masker, StreamUnmasker, restore_json_strings
from proxy.context import WireFormat
from proxy.upstream.sse import SSEEvent, parse_event


def restore_body(data: bytes, masker: Masker) -> bytes:
    """A whole JSON answer with every placeholder restored."""
    try:
        value = json.loads(data)
    except ValueError:
        return data
    return json.dumps(restore_json_strings(value, masker), ensure_ascii=False).encode()


def _event(name: str | None, body: Any) -> SSEEvent:
    data = json.dumps(body, ensure_ascii=False)
    raw = (f"event: {name}\n" if name else "") + f"data: {data}\n\n"
    return parse_event(raw.encode())


class StreamRestorer:
    """Rewrites a masked request's answer stream, one wire format's events at a time."""

    def __init__(self, wire: WireFormat, masker: Masker) -> None:
        self._wire = wire
        self._masker = masker
        self._streams: dict[tuple[Any, ...], StreamUnmasker] = {}

    def _feed(self, key: tuple[Any, ...], text: str, *, json_text: bool = False) -> str:
        """`json_text`: the stream is JSON being written piece by piece (tool arguments), so
        restored values are written JSON-escaped."""
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = self._masker.stream(json_escaped=json_text)
        return stream.feed(text)

    def _flush(self, key: tuple[Any, ...]) -> str:
        stream = self._streams.pop(key, None)
        return stream.flush() if stream is not None else ""

    def events(self, events: list[SSEEvent]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for event in events:
            try:
                body = json.loads(event.data) if event.data and event.data != b"[DONE]" else None
            except ValueError:
                body = None
            if not isinstance(body, dict):
                out.append(event)
            elif self._wire is WireFormat.OPENAI_CHAT:
                out.append(self._chat(event, body))
            elif self._wire is WireFormat.ANTHROPIC_MESSAGES:
                out += self._anthropic(event, body)
            else:
                out += self._responses(event, body)
        return out

    def _chat(self, event: SSEEvent, body: dict[str, Any]) -> SSEEvent:
        for choice in body.get("choices") or ():
            index = choice.get("index", 0)
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                delta["content"] = self._feed(("content", index), delta["content"])
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                if isinstance(function.get("arguments"), str):
                    key = ("tool", index, call.get("index", 0))
                    function["arguments"] = self._feed(key, function["arguments"], json_text=True)
            if choice.get("finish_reason") is not None:
                rest = self._flush(("content", index))
                if rest:
                    delta["content"] = (delta.get("content") or "") + rest
                    choice["delta"] = delta
                for key in [k for k in self._streams if k[0] == "tool" and k[1] == index]:
                    rest = self._flush(key)
                    if rest:
                        calls = delta.setdefault("tool_calls", [])
                        calls.append({"index": key[2], "function": {"arguments": rest}})
                        choice["delta"] = delta
        return _event(event.event, body)

    def _anthropic(self, event: SSEEvent, body: dict[str, Any]) -> list[SSEEvent]:
        kind = body.get("type")
        index = body.get("index", 0)
        if kind == "content_block_delta":
            delta = body.get("delta") or {}
            field = {"text_delta": "text", "input_json_delta": "partial_json"}.get(
                delta.get("type", "")
            )
            if field and isinstance(delta.get(field), str):
                delta[field] = self._feed(
                    (index, field), delta[field], json_text=field == "partial_json"
                )
            return [_event(event.event, body)]
        if kind == "content_block_stop":
            released = []
            for field, delta_type in (("text", "text_delta"), ("partial_json", "input_json_delta")):
                rest = self._flush((index, field))
                if rest:
                    delta = {"type": delta_type, field: rest}
                    released.append(
                        _event(
                            "content_block_delta",
                            {"type": "content_block_delta", "index": index, "delta": delta},
                        )
                    )
            return [*released, event]
        if kind in ("message_start", "content_block_start"):
            return [_event(event.event, restore_json_strings(body, self._masker))]
        return [event]

    def _responses(self, event: SSEEvent, body: dict[str, Any]) -> list[SSEEvent]:
        kind = body.get("type", "")
        key = (body.get("item_id"), body.get("output_index"), body.get("content_index"))
        if kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
            if isinstance(body.get("delta"), str):
                body["delta"] = self._feed(
                    (kind, *key), body["delta"], json_text="arguments" in kind
                )
            return [_event(event.event, body)]
        if kind in ("response.output_text.done", "response.function_call_arguments.done"):
            delta_kind = kind.replace(".done", ".delta")
            rest = self._flush((delta_kind, *key))
            released = []
            if rest:
                extra = {k: v for k, v in body.items() if k not in ("text", "arguments")}
                released.append(_event(delta_kind, {**extra, "type": delta_kind, "delta": rest}))
            return [*released, _event(event.event, restore_json_strings(body, self._masker))]
        if kind.startswith("response."):
            return [_event(event.event, restore_json_strings(body, self._masker))]
        return [event]
