"""Stream translation: OpenAI chat chunks as Anthropic stream events, and Anthropic stream events
as OpenAI chat chunks, one upstream event at a time.

Each translator is stateful (one per answer). It emits only complete, ordered streams: an
Anthropic client gets message_start, then each content block's start / deltas / stop, then
message_delta (stop reason and usage) and message_stop; an OpenAI client gets the role delta
first, content and tool_calls deltas, the finish_reason chunk, a usage chunk and `[DONE]`. A
provider stream that never finishes produces no end, so the relay reports it as broken.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from proxy.errors import ErrorKind, WireFamily, error_body, kind_for_status
from proxy.upstream.sse import SSEEvent, json_object
from proxy.upstream.translate.answers import (
    anthropic_stop,
    anthropic_usage,
    completion_id,
    message_id,
    openai_finish,
    openai_usage,
)

_DONE = SSEEvent(b"data: [DONE]\n\n", None, b"[DONE]")

# Anthropic error types -> the kind whose OpenAI shape the client gets.
_ANTHROPIC_ERROR_KINDS = {
    "invalid_request_error": ErrorKind.INVALID_REQUEST,
    "authentication_error": ErrorKind.AUTHENTICATION,
    "permission_error": ErrorKind.PERMISSION,
    "not_found_error": ErrorKind.NOT_FOUND,
    "request_too_large": ErrorKind.REQUEST_TOO_LARGE,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "overloaded_error": ErrorKind.UNAVAILABLE,
    "timeout_error": ErrorKind.UPSTREAM_TIMEOUT,
}


class StreamTranslator(Protocol):
    def feed(self, events: list[SSEEvent]) -> list[SSEEvent]:
        """The client-format events for these upstream events (possibly none)."""

    def end(self) -> list[SSEEvent]:
        """Events still owed once the upstream stream has ended cleanly."""


def _event(name: str | None, body: Any) -> SSEEvent:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    head = f"event: {name}\n".encode() if name else b""
    return SSEEvent(head + b"data: " + data + b"\n\n", name, data)


def _dict(value: Any) -> dict[str, Any]:
    """`value` if it is an object, else an empty one: a malformed piece of a provider's stream
    is skipped, it never breaks the answer already being written."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _error_message(error: Any) -> str:
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else "The model's server failed."


class ChatToMessagesStream:
    """OpenAI chat completion chunks in, Anthropic Messages stream events out."""

    def __init__(self, request: dict[str, Any]) -> None:
        self._request = request
        self._started = False
        self._done = False
        self._blocks = 0  # content blocks opened so far
        self._open: str | None = None  # "text" or "tool": the block now open
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> content block index
        self._finish: str | None = None
        self._matched: Any = None
        self._usage: dict[str, Any] = {}

    def feed(self, events: list[SSEEvent]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for event in events:
            if self._done:
                break
            if event.data == b"[DONE]":
                out += self._end()
                continue
            chunk = json_object(event.data)
            if chunk is None:
                continue
            if "error" in chunk and not chunk.get("choices"):
                out.append(self._error(chunk["error"]))
                continue
            if not self._started:
                out.append(self._message_start(chunk))
            for choice in _list(chunk.get("choices")):
                out += self._choice(choice)
            if isinstance(chunk.get("usage"), dict):
                self._usage = chunk["usage"]
        return out

    def end(self) -> list[SSEEvent]:
        return [] if self._done else self._end()

    def _message_start(self, chunk: dict[str, Any]) -> SSEEvent:
        self._started = True
        message = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Known only at the end of an OpenAI stream; message_delta carries the counts.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _choice(self, choice: dict[str, Any]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        delta = _dict(choice.get("delta"))
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._open != "text":
                out += self._close()
                out.append(self._start({"type": "text", "text": ""}, "text"))
            out.append(self._delta({"type": "text_delta", "text": text}))
        for call in _list(delta.get("tool_calls")):
            out += self._tool_call(call)
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
            self._matched = choice.get("stop_reason")
            out += self._close()
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        index = call["index"] if isinstance(call.get("index"), int) else 0
        function = _dict(call.get("function"))
        if index not in self._tools:
            out += self._close()
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{self._blocks}",
                "name": function.get("name") or "",
                "input": {},
            }
            out.append(self._start(block, "tool"))
            self._tools[index] = self._blocks - 1
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(self._delta(delta, self._tools[index]))
        return out

    def _start(self, block: dict[str, Any], kind: str) -> SSEEvent:
        self._open = kind
        self._blocks += 1
        body = {"type": "content_block_start", "index": self._blocks - 1, "content_block": block}
        return _event("content_block_start", body)

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> SSEEvent:
        at = self._blocks - 1 if index is None else index
        return _event(
            "content_block_delta", {"type": "content_block_delta", "index": at, "delta": delta}
        )

    def _close(self) -> list[SSEEvent]:
        if self._open is None:
            return []
        self._open = None
        body = {"type": "content_block_stop", "index": self._blocks - 1}
        return [_event("content_block_stop", body)]

    def _end(self) -> list[SSEEvent]:
        self._done = True
        if self._finish is None:
            return []  # the provider stopped without finishing: the relay reports it broken
        out = self._close()
        stop_reason, stop_sequence = anthropic_stop(self._finish, self._matched, self._request)
        usage = anthropic_usage(self._usage)
        out.append(
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": usage,
                },
            )
        )
        out.append(_event("message_stop", {"type": "message_stop"}))
        return out

    def _error(self, error: Any) -> SSEEvent:
        self._done = True
        code = error.get("code") if isinstance(error, dict) else None
        kind = kind_for_status(code) if isinstance(code, int) else ErrorKind.INTERNAL
        return _event("error", error_body(WireFamily.ANTHROPIC, kind, _error_message(error)))


class MessagesToChatStream:
    """Anthropic Messages stream events in, OpenAI chat completion chunks out."""

    def __init__(self) -> None:
        self._head: dict[str, Any] = {
            "id": completion_id(None),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "",
        }
        self._tools: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self._stop_reason: str | None = None
        self._usage: dict[str, Any] = {}
        self._done = False

    def feed(self, events: list[SSEEvent]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for event in events:
            if self._done:
                break
            body = json_object(event.data)
            if body is None:
                continue
            kind = body.get("type")
            index = body["index"] if isinstance(body.get("index"), int) else 0
            if kind == "message_start":
                out.append(self._message_start(_dict(body.get("message"))))
            elif kind == "content_block_start":
                out += self._block_start(index, _dict(body.get("content_block")))
            elif kind == "content_block_delta":
                out += self._block_delta(index, _dict(body.get("delta")))
            elif kind == "message_delta":
                delta = _dict(body.get("delta"))
                self._stop_reason = delta.get("stop_reason") or self._stop_reason
                if isinstance(body.get("usage"), dict):
                    # Counts on message_delta are running totals: they replace, not add.
                    self._usage.update(
                        {k: v for k, v in body["usage"].items() if isinstance(v, int)}
                    )
            elif kind == "message_stop":
                out += self._end()
            elif kind == "error":
                out.append(self._error(body.get("error")))
        return out

    def end(self) -> list[SSEEvent]:
        return []  # no message_stop means an unfinished answer: the relay reports it broken

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> SSEEvent:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event(None, {**self._head, "choices": [choice]})

    def _message_start(self, message: dict[str, Any]) -> SSEEvent:
        self._head["id"] = completion_id(message.get("id"))
        self._head["model"] = message.get("model", "")
        if isinstance(message.get("usage"), dict):
            self._usage.update({k: v for k, v in message["usage"].items() if isinstance(v, int)})
        return self._chunk({"role": "assistant", "content": ""})

    def _block_start(self, index: int, block: dict[str, Any]) -> list[SSEEvent]:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if kind != "tool_use":
            return []  # an empty text block, or reasoning the client did not ask for
        number = self._tools[index] = len(self._tools)
        arguments = json.dumps(block["input"]) if block.get("input") else ""
        call = {
            "index": number,
            "id": block.get("id", ""),
            "type": "function",
            "function": {"name": block.get("name", ""), "arguments": arguments},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[SSEEvent]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "input_json_delta" and index in self._tools and delta.get("partial_json"):
            call = {"index": self._tools[index], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []

    def _end(self) -> list[SSEEvent]:
        self._done = True
        usage = openai_usage(self._usage)
        return [
            self._chunk({}, openai_finish(self._stop_reason)),
            # Always sent: the relay reads usage from it and hides it unless the client asked.
            _event(None, {**self._head, "choices": [], "usage": usage}),
            _DONE,
        ]

    def _error(self, error: Any) -> SSEEvent:
        self._done = True
        kind_name = error.get("type") if isinstance(error, dict) else None
        kind = _ANTHROPIC_ERROR_KINDS.get(str(kind_name), ErrorKind.INTERNAL)
        return _event(None, error_body(WireFamily.OPENAI, kind, _error_message(error)))
