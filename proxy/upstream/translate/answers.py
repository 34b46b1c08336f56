"""Answer translation for whole JSON bodies: an OpenAI chat completion as an Anthropic message,
an Anthropic message as an OpenAI chat completion, and provider errors in the client's shape.

Also the tables the stream translators share: stop reasons and ids.
"""

from __future__ import annotations

import json
import time
from typing import Any

from proxy.errors import WireFamily, error_body, kind_for_status

# OpenAI finish_reason -> Anthropic stop_reason. `stop` is end_turn unless a stop sequence
# matched (see `anthropic_stop`).
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Anthropic stop_reason -> OpenAI finish_reason.
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class BadAnswer(Exception):
    """The provider's answer cannot be expressed in the client's wire format."""


def anthropic_stop(
    finish_reason: str | None, matched: Any, request: dict[str, Any]
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for an OpenAI finish. vLLM names the stop string that
    matched in the choice's `stop_reason`; when it is one of the client's stop sequences the
    answer says so, as Anthropic would."""
    stops = request.get("stop_sequences") or ()
    if finish_reason == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn"), None


def openai_finish(stop_reason: str | None) -> str:
    return _FINISH_REASONS.get(stop_reason or "end_turn", "stop")


def message_id(upstream_id: Any) -> str:
    """An Anthropic-looking message id carrying the provider's id, for tracing."""
    suffix = str(upstream_id or "").removeprefix("chatcmpl-")
    return "msg_" + (suffix or str(int(time.time() * 1000)))


def completion_id(upstream_id: Any) -> str:
    suffix = str(upstream_id or "").removeprefix("msg_")
    return "chatcmpl-" + (suffix or str(int(time.time() * 1000)))


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments (a JSON text in OpenAI) as Anthropic's `input` object."""
    if arguments is None or arguments == "":
        return {}
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        raise BadAnswer("the model's tool call arguments are not JSON") from None
    if not isinstance(value, dict):
        raise BadAnswer("the model's tool call arguments are not a JSON object")
    return value


def anthropic_usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    return {
        "input_tokens": _int(usage.get("prompt_tokens")),
        "output_tokens": _int(usage.get("completion_tokens")),
    }


def openai_usage(usage: Any) -> dict[str, int]:
    """Anthropic counts cached prompt tokens apart from `input_tokens`; OpenAI counts them in."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = (
        _int(usage.get("input_tokens"))
        + _int(usage.get("cache_creation_input_tokens"))
        + _int(usage.get("cache_read_input_tokens"))
    )
    completion = _int(usage.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def message_from_chat(answer: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion as the Anthropic message the client asked for."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadAnswer("the answer has no choice")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise BadAnswer("the answer has no message")
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise BadAnswer("a tool call has no function")
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + str(len(content)),
                "name": function.get("name", ""),
                "input": tool_input(function.get("arguments")),
            }
        )
    stop_reason, stop_sequence = anthropic_stop(
        choice.get("finish_reason"), choice.get("stop_reason"), request
    )
    return {
        "id": message_id(answer.get("id")),
        "type": "message",
        "role": "assistant",
        "model": answer.get("model", ""),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": anthropic_usage(answer.get("usage")),
    }


def chat_from_message(answer: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic message as the OpenAI chat completion the client asked for."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in answer.get("content") or ():
        if not isinstance(block, dict):
            raise BadAnswer("a content block is not an object")
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": json.dumps(block.get("input", {}), ensure_ascii=False),
                    },
                }
            )
        elif kind not in ("thinking", "redacted_thinking"):
            raise BadAnswer(f"the model answered with a `{kind}` block")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id(answer.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": openai_finish(answer.get("stop_reason")),
            }
        ],
        "usage": openai_usage(answer.get("usage")),
    }


def _error_message(data: bytes, fallback: str) -> str:
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return fallback
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else fallback


def anthropic_error_from_openai(status: int, data: bytes) -> dict[str, Any]:
    message = _error_message(data, f"The model's server answered with HTTP {status}.")
    return error_body(WireFamily.ANTHROPIC, kind_for_status(status), message)


def openai_error_from_anthropic(status: int, data: bytes) -> dict[str, Any]:
    message = _error_message(data, f"The model's server answered with HTTP {status}.")
    return error_body(WireFamily.OPENAI, kind_for_status(status), message)
