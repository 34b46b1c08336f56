"""Format translation: Anthropic Messages <-> OpenAI chat, requests, answers, streams and errors.

Unit tests run the translators on real-shaped payloads; end-to-end tests send a confidential
Anthropic SDK request through Sluice to the vLLM fake, and an OpenAI SDK request for a claude-*
model to the Anthropic fake, and check both what the SDK gets and what the upstream received.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
import yaml
from anthropic.lib.streaming._messages import accumulate_event

from proxy.context import WireFormat
from proxy.testing import FakeAnthropic, FakeOpenAI, FakeVLLM
from proxy.upstream.sse import SSEEvent, SSEParser
from proxy.upstream.translate import (
    Untranslatable,
    stream_translator,
    translate_answer,
    translate_request,
    upstream_wire_for,
)
from proxy.upstream.translate.messages_request import DEFAULT_MAX_TOKENS
from tests.conftest import Sluice

MESSAGES = WireFormat.ANTHROPIC_MESSAGES
CHAT = WireFormat.OPENAI_CHAT
LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
SECRET_PROJECT = "Status of Project Bluebird?"  # a confidential codename: rerouted in-house
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
    "rkJggg=="
)
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
OPENAI_WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_TOOL["input_schema"],
    },
}


# --- which translations exist -------------------------------------------------------------------


def test_upstream_wire_prefers_native_then_translation() -> None:
    assert upstream_wire_for(CHAT, {CHAT}) is CHAT
    assert upstream_wire_for(MESSAGES, {MESSAGES}) is MESSAGES
    assert upstream_wire_for(MESSAGES, {CHAT, WireFormat.OPENAI_EMBEDDINGS}) is CHAT
    assert upstream_wire_for(CHAT, {MESSAGES}) is MESSAGES
    assert upstream_wire_for(WireFormat.OPENAI_RESPONSES, {MESSAGES}) is None
    assert upstream_wire_for(WireFormat.OPENAI_EMBEDDINGS, {MESSAGES}) is None


# --- requests: Anthropic Messages -> OpenAI chat ------------------------------------------------


def test_messages_request_to_chat_maps_every_part() -> None:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 512,
        "system": [
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Answer in English."},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris? Here is a photo."},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "they want weather", "signature": "sig"},
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": [{"type": "text", "text": "18 C, sunny"}],
                    },
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_02",
                        "content": "unknown city",
                        "is_error": True,
                    }
                ],
            },
        ],
        "tools": [{**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "u-42"},
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
    }
    translated = translate_request(MESSAGES, CHAT, body, LLAMA)
    assert translated.body == {
        "model": LLAMA,
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": "You are terse.\n\nAnswer in English."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris? Here is a photo."},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "toolu_01",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01", "content": "18 C, sunny"},
            {"role": "user", "content": "And tomorrow?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_02",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_02", "content": "Error: unknown city"},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["\n\nHuman:"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u-42",
        "tools": [{"type": "function", "function": OPENAI_WEATHER_TOOL["function"]}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    assert translated.dropped == ("thinking", "context_management")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
        ({"container": "c1"}, "container"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {
                                    "type": "base64",
                                    "media_type": "application/pdf",
                                    "data": "JVBERi0x",
                                },
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [
                                    {
                                        "type": "image",
                                        "source": {
                                            "type": "base64",
                                            "media_type": "image/png",
                                            "data": PNG,
                                        },
                                    }
                                ],
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].content[0].type",
        ),
        ({"system": [{"type": "image", "source": {}}]}, "system[0].type"),
        ({"output_config": {"format": {"type": "xml"}}}, "output_config.format.type"),
        (
            {
                "messages": [
                    {"role": "user", "content": "Name a colour."},
                    {"role": "assistant", "content": "The colour is"},
                ]
            },
            "messages[1].role",
        ),
    ],
)
def test_messages_request_refuses_what_chat_cannot_carry(
    change: dict[str, Any], param: str
) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(Untranslatable) as caught:
        translate_request(MESSAGES, CHAT, {**body, **change}, LLAMA)
    assert caught.value.param == param
    assert param in caught.value.detail


def test_messages_structured_output_maps_to_json_schema() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
    }
    translated = translate_request(MESSAGES, CHAT, body, LLAMA)
    assert translated.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }


# --- requests: OpenAI chat -> Anthropic Messages ------------------------------------------------


def test_chat_request_to_messages_maps_every_part() -> None:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "3 C"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "21 C"}],
            },
            {"role": "user", "content": "Which is warmer?"},
        ],
        "tools": [OPENAI_WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "stop": "END",
        "temperature": 0.5,
        "user": "u-7",
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
        "seed": 3,
    }
    translated = translate_request(CHAT, MESSAGES, body, "claude-sonnet-4-6")
    assert translated.dropped == ("seed",)
    assert translated.body == {
        "model": "claude-sonnet-4-6",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Use metric units."},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.jpg"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    },
                    {
                        "type": "tool_use",
                        "id": "call_2",
                        "name": "get_weather",
                        "input": {"city": "Rome"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "3 C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "21 C"},
                    {"type": "text", "text": "Which is warmer?"},
                ],
            },
        ],
        "temperature": 0.5,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "u-7"},
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    }


def test_chat_max_completion_tokens_wins_and_default_applies() -> None:
    base: dict[str, Any] = {"model": "c", "messages": [{"role": "user", "content": "hi"}]}
    assert translate_request(CHAT, MESSAGES, base, "c").body["max_tokens"] == 4096
    both = {**base, "max_tokens": 100, "max_completion_tokens": 200}
    assert translate_request(CHAT, MESSAGES, both, "c").body["max_tokens"] == 200


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"some_new_field": 1}, "some_new_field"),
        (
            {"messages": [{"role": "user", "content": "hi", "name": "bob"}]},
            "messages[0].name",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "system", "content": "late system"},
                ]
            },
            "messages[1].role",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{not json"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "x"},
                ]
            },
            "messages[1].role",
        ),
    ],
)
def test_chat_request_refuses_what_messages_cannot_carry(
    change: dict[str, Any], param: str
) -> None:
    body = {"model": "c", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(Untranslatable) as caught:
        translate_request(CHAT, MESSAGES, {**body, **change}, "c")
    assert caught.value.param == param


# --- answers ------------------------------------------------------------------------------------


def test_chat_completion_answer_as_anthropic_message() -> None:
    answer = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "model": LLAMA,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
                "stop_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30},
    }
    message = anthropic.types.Message.model_validate(
        translate_answer(MESSAGES, CHAT, answer, {"max_tokens": 5})
    )
    assert message.id == "msg_abc"
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 21 and message.usage.output_tokens == 9
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"city": "Oslo"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("finish", "matched", "stop_reason", "stop_sequence"),
    [
        ("stop", None, "end_turn", None),
        ("stop", "END", "stop_sequence", "END"),
        ("length", None, "max_tokens", None),
    ],
)
def test_finish_reasons_map_to_stop_reasons(
    finish: str, matched: str | None, stop_reason: str, stop_sequence: str | None
) -> None:
    answer = {
        "id": "x",
        "model": LLAMA,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "a"},
                "finish_reason": finish,
                "stop_reason": matched,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
    message = translate_answer(MESSAGES, CHAT, answer, {"stop_sequences": ["END"]})
    assert (message["stop_reason"], message["stop_sequence"]) == (stop_reason, stop_sequence)


def test_anthropic_message_answer_as_chat_completion() -> None:
    answer = {
        "id": "msg_01X",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 4},
    }
    completion = openai.types.chat.ChatCompletion.model_validate(
        translate_answer(CHAT, MESSAGES, answer, {})
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "toolu_1" and json.loads(call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (15, 4)


# --- streams ------------------------------------------------------------------------------------


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = b""
    for name, body in events:
        data = body if isinstance(body, str) else json.dumps(body)
        out += (f"event: {name}\n" if name else "").encode() + f"data: {data}\n\n".encode()
    return out


def _translate_stream(client: WireFormat, raw: bytes, request: dict[str, Any]) -> list[SSEEvent]:
    """Feed `raw` split at every 7 bytes, as a network would."""
    parser, translator = SSEParser(), stream_translator(client, request)
    out: list[SSEEvent] = []
    for at in range(0, len(raw), 7):
        out += translator.feed(parser.feed(raw[at : at + 7]))
    return out + translator.end()


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": LLAMA,
        "choices": [choice],
    }


def test_chat_chunks_become_a_complete_anthropic_stream() -> None:
    raw = _sse(
        [
            (None, _chunk({"role": "assistant", "content": ""})),
            (None, _chunk({"content": "Checking"})),
            (None, _chunk({"content": " now."})),
            (
                None,
                _chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_a",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ]
                    }
                ),
            ),
            (None, _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]})),
            (None, _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ':"Oslo"}'}}]})),
            (None, _chunk({"content": ""}, "tool_calls")),
            (
                None,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "model": LLAMA,
                    "choices": [],
                    "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
                },
            ),
            (None, "[DONE]"),
        ]
    )
    events = _translate_stream(MESSAGES, raw, {})
    assert [e.event for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    snapshot = None
    buffers: dict[int, bytes] = {}
    for event in events:
        snapshot = accumulate_event(
            event=json.loads(event.data), current_snapshot=snapshot, json_bufs=buffers
        )
    assert snapshot is not None
    assert snapshot.stop_reason == "tool_use"
    assert snapshot.usage.input_tokens == 30 and snapshot.usage.output_tokens == 12
    assert snapshot.content[0].text == "Checking now."  # type: ignore[union-attr]
    assert snapshot.content[1].input == {"city": "Oslo"}  # type: ignore[union-attr]


def test_chat_stream_without_finish_is_left_unfinished() -> None:
    raw = _sse([(None, _chunk({"role": "assistant", "content": "Hal"})), (None, "[DONE]")])
    events = _translate_stream(MESSAGES, raw, {})
    assert "message_stop" not in [e.event for e in events]


def test_chat_stream_error_becomes_anthropic_error_event() -> None:
    error = {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}
    raw = _sse([(None, _chunk({"role": "assistant", "content": ""})), (None, error)])
    events = _translate_stream(MESSAGES, raw, {})
    assert events[-1].event == "error"
    assert json.loads(events[-1].data) == {
        "type": "error",
        "error": {"type": "api_error", "message": "boom"},
    }


def test_anthropic_events_become_openai_chunks() -> None:
    message: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1},
    }
    tool = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    raw = _sse(
        [
            ("message_start", {"type": "message_start", "message": message}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ("ping", {"type": "ping"}),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "Hi"},
                },
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 1, "content_block": tool},
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": '{"city": "Rome"}'},
                },
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 1}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                    "usage": {"output_tokens": 15},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
    )
    events = _translate_stream(CHAT, raw, {})
    assert events[-1].data == b"[DONE]"
    chunks = [
        openai.types.chat.ChatCompletionChunk.model_validate(json.loads(e.data))
        for e in events[:-1]
    ]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    arguments = "".join(
        call.function.arguments or ""
        for c in chunks
        if c.choices
        for call in c.choices[0].delta.tool_calls or ()
        if call.function is not None
    )
    assert text == "Hi" and json.loads(arguments) == {"city": "Rome"}
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (25, 15)


# --- end to end: the Anthropic SDK rerouted to the vLLM fake ------------------------------------


def _user(text: str) -> Any:
    return [{"role": "user", "content": text}]


async def test_anthropic_sdk_rerouted_to_vllm(
    anthropic_client: anthropic.AsyncAnthropic, fake_vllm: FakeVLLM, fake_anthropic: FakeAnthropic
) -> None:
    fake_vllm.behaviour.prompt_tokens, fake_vllm.behaviour.completion_tokens = 31, 5
    raw = await anthropic_client.messages.with_raw_response.create(
        model="claude-sonnet-4-6",
        max_tokens=200,
        system="You are a project assistant.",
        messages=_user(SECRET_PROJECT),
        stop_sequences=["###"],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    message = await raw.parse()
    assert raw.headers["x-sluice-route"] == "sensitive"
    assert raw.headers["x-sluice-translated"] == "anthropic.messages->openai.chat"
    assert raw.headers["x-sluice-translation-dropped"] == "thinking"
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].text == fake_vllm.behaviour.reply_text  # type: ignore[union-attr]
    assert message.model == LLAMA
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (31, 5)
    assert fake_anthropic.received == []
    sent = fake_vllm.received[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body == {
        "model": LLAMA,
        "messages": [
            {"role": "system", "content": "You are a project assistant."},
            {"role": "user", "content": SECRET_PROJECT},
        ],
        "max_tokens": 200,
        "stop": ["###"],
    }


async def test_anthropic_sdk_tool_round_trip_through_vllm(
    anthropic_client: anthropic.AsyncAnthropic, fake_vllm: FakeVLLM, fake_anthropic: FakeAnthropic
) -> None:
    fake_vllm.behaviour.tool_calls = (("get_weather", {"city": "Oslo"}),)
    messages: Any = _user(SECRET_PROJECT + " Also, the weather in Oslo?")
    first = await anthropic_client.messages.create(
        model="claude-sonnet-4-6", max_tokens=200, messages=messages, tools=[WEATHER_TOOL]
    )
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Oslo"}
    assert fake_vllm.received[0].body["tools"] == [OPENAI_WEATHER_TOOL]

    fake_vllm.behaviour.tool_calls = ()
    messages += [
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "3 C, snow"}],
        },
    ]
    second = await anthropic_client.messages.create(
        model="claude-sonnet-4-6", max_tokens=200, messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.content[0].text == fake_vllm.behaviour.reply_text  # type: ignore[union-attr]
    sent = fake_vllm.received[1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "3 C, snow"}
    assert fake_anthropic.received == []


@pytest.mark.parametrize("chunk_size", [None, 5])
async def test_anthropic_sdk_stream_with_tools_through_vllm(
    anthropic_client: anthropic.AsyncAnthropic,
    fake_vllm: FakeVLLM,
    fake_anthropic: FakeAnthropic,
    chunk_size: int | None,
) -> None:
    fake_vllm.behaviour.tool_calls = (
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Rome"}),
    )
    fake_vllm.behaviour.chunk_size = chunk_size
    fake_vllm.behaviour.prompt_tokens, fake_vllm.behaviour.completion_tokens = 40, 18
    async with anthropic_client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=200,
        messages=_user(SECRET_PROJECT + " Weather in Oslo and Rome?"),
        tools=[WEATHER_TOOL],
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    assert [b.input for b in final.content if b.type == "tool_use"] == [
        {"city": "Oslo"},
        {"city": "Rome"},
    ]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 18)
    sent = fake_vllm.received[0].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert fake_anthropic.received == []


async def test_anthropic_sdk_text_stream_through_vllm(
    anthropic_client: anthropic.AsyncAnthropic, fake_vllm: FakeVLLM
) -> None:
    fake_vllm.behaviour.delta_chars = 3
    async with anthropic_client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=_user(SECRET_PROJECT)
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == fake_vllm.behaviour.reply_text
    assert final.stop_reason == "end_turn"


async def test_vllm_stop_sequence_reported_as_anthropic_stop_sequence(
    anthropic_client: anthropic.AsyncAnthropic, fake_vllm: FakeVLLM
) -> None:
    fake_vllm.behaviour.stopped_by = "###"
    message = await anthropic_client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=64,
        messages=_user(SECRET_PROJECT),
        stop_sequences=["###"],
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "###")


async def test_untranslatable_anthropic_feature_is_a_clear_400_sent_nowhere(
    anthropic_client: anthropic.AsyncAnthropic, fake_vllm: FakeVLLM, fake_anthropic: FakeAnthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await anthropic_client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=64,
            messages=_user(SECRET_PROJECT),
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert "tools[0].type" in body["error"]["message"]
    assert "must stay on the company's own models" in body["error"]["message"]
    assert fake_vllm.received == [] and fake_anthropic.received == []


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, anthropic.BadRequestError), (503, anthropic.InternalServerError)],
)
async def test_vllm_errors_reach_the_anthropic_sdk_in_its_shape(
    anthropic_client: anthropic.AsyncAnthropic,
    fake_vllm: FakeVLLM,
    status: int,
    error: type[anthropic.APIStatusError],
) -> None:
    fake_vllm.behaviour.fail_status = status
    with pytest.raises(error) as caught:
        await anthropic_client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=_user(SECRET_PROJECT)
        )
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert isinstance(body["error"]["message"], str)


@pytest.mark.parametrize("how", ["error_event", "cut"])
async def test_vllm_stream_failing_midway_reaches_the_anthropic_sdk(
    anthropic_client: anthropic.AsyncAnthropic, fake_vllm: FakeVLLM, how: str
) -> None:
    if how == "cut":
        fake_vllm.behaviour.cut_after_events = 3
    else:
        fake_vllm.behaviour.stream_error_after_events = 2
    with pytest.raises(anthropic.APIStatusError):
        async with anthropic_client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=64, messages=_user(SECRET_PROJECT)
        ) as stream:
            async for _ in stream:
                pass


async def test_translated_usage_counts_against_tokens_per_minute(
    sluice: Sluice, anthropic_client: anthropic.AsyncAnthropic, fake_vllm: FakeVLLM
) -> None:
    path = sluice.policy_dir / "roles.yaml"
    document = yaml.safe_load(path.read_text())
    document["roles"]["employee"]["limits"]["tokens_per_minute"] = 1000
    path.write_text(yaml.safe_dump(document))
    assert sluice.store.reload(), sluice.store.last_error
    fake_vllm.behaviour.prompt_tokens, fake_vllm.behaviour.completion_tokens = 600, 600
    async with anthropic_client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=_user(SECRET_PROJECT)
    ) as stream:
        await stream.get_final_message()
    for _ in range(100):  # usage is settled just after the answer
        try:
            await anthropic_client.messages.create(
                model="claude-sonnet-4-6", max_tokens=64, messages=_user(SECRET_PROJECT)
            )
        except anthropic.RateLimitError as exc:
            assert "tokens per minute" in str(exc)
            break
    else:
        pytest.fail("1200 tokens used through translation were not counted")
    assert len(fake_vllm.received) <= 3


# --- end to end: the OpenAI SDK asking for a claude-* model -------------------------------------


async def test_openai_sdk_gets_a_claude_answer(
    openai_client: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    fake_anthropic.behaviour.prompt_tokens, fake_anthropic.behaviour.completion_tokens = 12, 6
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-6",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
        max_tokens=100,
        stop=["END"],
    )
    completion = raw.parse()
    assert raw.headers["x-sluice-translated"] == "openai.chat->anthropic.messages"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == fake_anthropic.behaviour.reply_text
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "claude-sonnet-4-6"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 6)
    sent = fake_anthropic.received[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        "system": [{"type": "text", "text": "Be brief."}],
        "stop_sequences": ["END"],
    }
    assert fake_openai.received == []


async def test_openai_sdk_tools_with_claude(
    openai_client: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.behaviour.tool_calls = (("get_weather", {"city": "Oslo"}),)
    completion = await openai_client.chat.completions.create(
        model="claude-sonnet-4-6",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[OPENAI_WEATHER_TOOL],
        tool_choice="required",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]
    sent = fake_anthropic.received[0].body
    assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize("include_usage", [False, True])
async def test_openai_sdk_streams_a_claude_answer(
    openai_client: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic, include_usage: bool
) -> None:
    fake_anthropic.behaviour.tool_calls = (("get_weather", {"city": "Oslo"}),)
    fake_anthropic.behaviour.prompt_tokens, fake_anthropic.behaviour.completion_tokens = 9, 4
    extra: Any = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await openai_client.chat.completions.create(
        model="claude-sonnet-4-6",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[OPENAI_WEATHER_TOOL],
        stream=True,
        **extra,
    )
    chunks = [chunk async for chunk in stream]
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    arguments = "".join(
        call.function.arguments or ""
        for c in with_choices
        for call in c.choices[0].delta.tool_calls or ()
        if call.function is not None
    )
    assert text == fake_anthropic.behaviour.reply_text
    assert json.loads(arguments) == {"city": "Oslo"}
    assert with_choices[-1].choices[0].finish_reason == "tool_calls"
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0].usage is not None
        assert usage_chunks[0].usage.prompt_tokens == 9
        assert usage_chunks[0].usage.completion_tokens == 4
    else:
        assert usage_chunks == []
    assert fake_anthropic.received[0].body["stream"] is True


async def test_openai_sdk_stream_helper_with_claude(
    openai_client: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    async with openai_client.chat.completions.stream(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == fake_anthropic.behaviour.reply_text


async def test_untranslatable_openai_feature_is_a_clear_400(
    openai_client: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "Hi"}], n=2
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "n" and body["code"] == "untranslatable_feature"
    assert body["message"] == (
        "The model `claude-sonnet-4-6` is served through a translation to /v1/messages: `n` is "
        "not supported at this value, so it cannot be carried. Remove it or use another model."
    )
    assert fake_anthropic.received == []


async def test_anthropic_errors_reach_the_openai_sdk_in_its_shape(
    openai_client: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.behaviour.fail_status = 429
    with pytest.raises(openai.RateLimitError) as caught:
        await openai_client.chat.completions.create(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "Hi"}]
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "requests"
    assert "rate limit" in body["message"]


async def test_masked_values_are_restored_in_translated_streams(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic
) -> None:
    path = sluice.policy_dir / "classification.yaml"
    document = yaml.safe_load(path.read_text())
    document["classification"]["actions"]["confidential"] = "mask"
    path.write_text(yaml.safe_dump(document))
    assert sluice.store.reload(), sluice.store.last_error
    email = "jane.doe@example.com"
    fake_anthropic.behaviour.reply_text = "Sent to <EMAIL_ADDRESS_1>."
    fake_anthropic.behaviour.delta_chars = 3
    stream = await openai_client.chat.completions.create(
        model="claude-sonnet-4-6",
        messages=[{"role": "user", "content": f"Write to {email}"}],
        stream=True,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == f"Sent to {email}."
    assert email not in json.dumps([r.body for r in fake_anthropic.received])


async def test_answer_that_cannot_be_translated_is_a_502_in_the_clients_shape(
    anthropic_client: anthropic.AsyncAnthropic, fake_vllm: FakeVLLM
) -> None:
    fake_vllm.behaviour.fail_status = 200
    fake_vllm.behaviour.fail_body = b'{"id": "x", "choices": "none"}'
    with pytest.raises(anthropic.APIStatusError) as caught:
        await anthropic_client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=_user(SECRET_PROJECT)
        )
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert "could not be translated" in body["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_masked_values_are_restored_in_translated_anthropic_answers(
    sluice: Sluice, anthropic_client: anthropic.AsyncAnthropic, fake_vllm: FakeVLLM, stream: bool
) -> None:
    path = sluice.policy_dir / "classification.yaml"
    document = yaml.safe_load(path.read_text())
    document["classification"]["actions"]["confidential"] = "mask"
    path.write_text(yaml.safe_dump(document))
    assert sluice.store.reload(), sluice.store.last_error
    email = "jane.doe@example.com"
    fake_vllm.behaviour.reply_text = "Mail <EMAIL_ADDRESS_1> now"
    fake_vllm.behaviour.delta_chars = 2
    request: Any = {
        "model": "llama-3.3-70b",
        "max_tokens": 64,
        "messages": _user(f"Write to {email}"),
    }
    if stream:
        async with anthropic_client.messages.stream(**request) as events:
            text = "".join([piece async for piece in events.text_stream])
    else:
        message = await anthropic_client.messages.create(**request)
        text = message.content[0].text
    assert text == f"Mail {email} now"
    assert email not in json.dumps([r.body for r in fake_vllm.received])
