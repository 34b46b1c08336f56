"""When the provider or the client misbehaves, the other side still gets a well-formed answer.

Client disconnects reach the provider; provider failures (mid-stream cuts, in-stream errors,
unreachable hosts, timeouts, error statuses) reach the client in its provider's own shape.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import yaml
from openai.types.responses import ResponseErrorEvent

from proxy.testing import FakeAnthropic, FakeOpenAI
from tests.conftest import UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY, Sluice

HELLO: Any = [{"role": "user", "content": "Say hello"}]
CLAUDE = "claude-sonnet-4-6"

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"

CHAT_BODY = {"model": "gpt-4o", "messages": HELLO, "stream": True}
RESPONSES_BODY = {"model": "gpt-4o", "input": "Say hello", "stream": True}
MESSAGES_BODY = {"model": CLAUDE, "max_tokens": 64, "messages": HELLO, "stream": True}


# What the fakes send as their in-stream error (see proxy/testing.py).
FAKE_OPENAI_STREAM_ERROR = {
    "error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
FAKE_ANTHROPIC_STREAM_ERROR = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded"},
}


@pytest.fixture
async def http(
    sluice: Sluice, auth_headers: dict[str, str]
) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw client with an employee's credential, like the SDK clients'."""
    async with aiohttp.ClientSession(base_url=sluice.url, headers=auth_headers) as session:
        yield session


def closed_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def set_timeouts(sluice: Sluice, provider: str, **timeouts: float) -> None:
    """Give `provider` these timeouts in the policy and reload it."""
    path = sluice.policy_dir / "providers.yaml"
    document = yaml.safe_load(path.read_text())
    document["providers"][provider]["timeouts"] = timeouts
    path.write_text(yaml.safe_dump(document))
    assert sluice.store.reload()
    current = sluice.store.current.policy.providers[provider].timeouts
    assert all(getattr(current, name) == value for name, value in timeouts.items())


def sse_events(body: bytes) -> list[bytes]:
    """The events of an SSE body, each checked to be complete (ended by a blank line)."""
    assert body.endswith(b"\n\n"), body[-200:]
    events = body[:-2].split(b"\n\n")
    assert all(event.strip() for event in events), events
    return events


def event_data(event: bytes) -> Any:
    lines = [line for line in event.split(b"\n") if line.startswith(b"data: ")]
    assert len(lines) == 1, event
    return json.loads(lines[0][len(b"data: ") :])


def event_name(event: bytes) -> str | None:
    for line in event.split(b"\n"):
        if line.startswith(b"event: "):
            return line[len(b"event: ") :].decode()
    return None


async def raw_stream(http: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, bytes]:
    async with http.post(path, json=body) as resp:
        assert resp.headers["x-request-id"].startswith("req_")
        assert resp.content_type == "text/event-stream"
        return resp.status, await resp.read()


def assert_openai_error(
    exc: openai.APIStatusError, status: int, type_: str, code: str | None
) -> dict[str, Any]:
    """The SDK error is `status` with a complete OpenAI error body; returns the error object."""
    assert exc.status_code == status
    assert exc.response.headers["x-request-id"].startswith("req_")
    assert "Traceback" not in exc.response.text
    body = exc.response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type_
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert exc.body == error
    return error


def assert_anthropic_error(exc: anthropic.APIStatusError, status: int, type_: str) -> str:
    """The SDK error is `status` with a complete Anthropic error body; returns its message."""
    assert exc.status_code == status
    assert exc.response.headers["x-request-id"].startswith("req_")
    assert "Traceback" not in exc.response.text
    body = exc.response.json()
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == type_
    message: str = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


# --- The client goes away ---------------------------------------------------------------------


async def test_client_closing_an_openai_stream_closes_the_upstream(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviour.event_delay_s = 0.2
    stream = await openai_client.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True
    )
    first = await stream.__anext__()
    assert first.choices[0].delta.role == "assistant"
    await stream.close()
    await asyncio.wait_for(fake_openai.disconnected.wait(), 1.0)
    assert fake_openai.disconnects == 1
    assert fake_openai.in_flight == 0


async def test_client_dropping_a_raw_stream_closes_the_upstream(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviour.event_delay_s = 0.2
    resp = await http.post(RESPONSES, json=RESPONSES_BODY)
    try:
        assert resp.status == 200
        first = await resp.content.readuntil(b"\n\n")
        assert event_name(first) == "response.created"
    finally:
        resp.close()  # drops the connection, unread
    await asyncio.wait_for(fake_openai.disconnected.wait(), 1.0)
    assert fake_openai.disconnects == 1


async def test_client_closing_an_anthropic_stream_closes_the_upstream(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.behaviour.event_delay_s = 0.2
    stream = await anthropic_client.messages.create(
        model=CLAUDE, max_tokens=64, messages=HELLO, stream=True
    )
    first = await stream.__anext__()
    assert first.type == "message_start"
    await stream.close()
    await asyncio.wait_for(fake_anthropic.disconnected.wait(), 1.0)
    assert fake_anthropic.disconnects == 1
    assert fake_anthropic.in_flight == 0


async def test_client_giving_up_on_a_slow_answer_closes_the_upstream(
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_openai.behaviour.delay_s = 30
    with pytest.raises(openai.APITimeoutError):
        await openai_client.with_options(timeout=0.3).chat.completions.create(
            model="gpt-4o", messages=HELLO
        )
    await asyncio.wait_for(fake_openai.disconnected.wait(), 1.0)
    assert fake_openai.disconnects == 1
    assert len(fake_openai.received) == 1

    fake_anthropic.behaviour.delay_s = 30
    with pytest.raises(anthropic.APITimeoutError):
        await anthropic_client.with_options(timeout=0.3).messages.create(
            model=CLAUDE, max_tokens=8, messages=HELLO
        )
    await asyncio.wait_for(fake_anthropic.disconnected.wait(), 1.0)
    assert fake_anthropic.disconnects == 1


# --- The upstream dies mid-stream -------------------------------------------------------------


async def test_openai_stream_cut_midway_raises_in_the_sdk(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviour.cut_after_events = 3
    stream = await openai_client.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True
    )
    chunks = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            chunks.append(chunk)
    assert len(chunks) == 3
    assert info.value.body == {
        "message": info.value.message,
        "type": "server_error",
        "param": None,
        "code": "upstream_unreachable",
    }
    assert "'openai'" in info.value.message


async def test_responses_stream_cut_midway_ends_with_the_apis_error_event(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    # The Responses API reports stream failures as its own `error` event, which the SDK yields
    # (it does not raise), exactly as it does for OpenAI's own mid-stream errors.
    fake_openai.behaviour.cut_after_events = 3
    stream = await openai_client.responses.create(model="gpt-4o", input="Hi", stream=True)
    events = [event async for event in stream]
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "error",
    ]
    error = events[-1]
    assert isinstance(error, ResponseErrorEvent)
    assert error.code == "upstream_unreachable"
    assert error.sequence_number == 3


async def test_anthropic_stream_cut_midway_raises_in_the_sdk(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.behaviour.cut_after_events = 4
    stream = await anthropic_client.messages.create(
        model=CLAUDE, max_tokens=64, messages=HELLO, stream=True
    )
    kinds = []
    with pytest.raises(anthropic.APIError) as info:
        async for event in stream:
            kinds.append(event.type)
    # The fake's 3rd event is a ping, which the SDK does not yield.
    assert kinds == ["message_start", "content_block_start", "content_block_delta"]
    body: Any = info.value.body
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == "api_error"
    assert "'anthropic'" in body["error"]["message"]


async def test_anthropic_stream_helper_raises_when_cut(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.behaviour.cut_after_events = 5
    pieces = []
    with pytest.raises(anthropic.APIError):
        async with anthropic_client.messages.stream(
            model=CLAUDE, max_tokens=64, messages=HELLO
        ) as stream:
            async for piece in stream.text_stream:
                pieces.append(piece)
    assert "".join(pieces) == "Hello from"


@pytest.mark.parametrize(
    ("path", "body", "cut", "family"),
    [
        (CHAT, CHAT_BODY, 3, "openai"),
        (RESPONSES, RESPONSES_BODY, 3, "openai"),
        (MESSAGES, MESSAGES_BODY, 3, "anthropic"),
    ],
)
@pytest.mark.parametrize("chunk_size", [None, 7])
async def test_stream_cut_midway_ends_with_one_complete_error_event(
    http: aiohttp.ClientSession,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    path: str,
    body: Any,
    cut: int,
    family: str,
    chunk_size: int | None,
) -> None:
    fake = fake_anthropic if family == "anthropic" else fake_openai
    fake.behaviour.cut_after_events = cut
    fake.behaviour.chunk_size = chunk_size
    status, raw = await raw_stream(http, path, body)
    assert status == 200
    events = sse_events(raw)
    assert len(events) == cut + 1
    last = events[-1]
    data = event_data(last)
    if family == "anthropic":
        assert event_name(last) == "error"
        assert set(data) == {"type", "error"}
        assert data["type"] == "error"
        assert data["error"]["type"] == "api_error"
        assert set(data["error"]) == {"type", "message"}
    elif path == "/v1/responses":
        assert event_name(last) == "error"
        assert set(data) == {"type", "code", "message", "param", "sequence_number"}
        assert data["type"] == "error"
        assert data["code"] == "upstream_unreachable"
        assert data["sequence_number"] == cut
    else:
        assert last.startswith(b"data: ")
        assert set(data) == {"error"}
        assert data["error"]["type"] == "server_error"
        assert data["error"]["code"] == "upstream_unreachable"
        assert set(data["error"]) == {"message", "type", "param", "code"}
    # Everything before the error is the provider's own events, whole; only the last is an error.
    for event in events[:-1]:
        data = event_data(event)
        assert event_name(event) != "error"
        assert not isinstance(data.get("error"), dict), event


# --- Streams split at every byte --------------------------------------------------------------


async def test_chat_stream_split_at_every_byte_arrives_intact(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviour.chunk_size = 1
    stream = await openai_client.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake_openai.behaviour.reply_text
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The usage chunk Sluice asked for on the client's behalf is still hidden.
    assert all(chunk.usage is None for chunk in chunks)


async def test_messages_stream_split_at_every_byte_arrives_intact(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.behaviour.chunk_size = 1
    async with anthropic_client.messages.stream(
        model=CLAUDE, max_tokens=64, messages=HELLO
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == fake_anthropic.behaviour.reply_text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == fake_anthropic.behaviour.completion_tokens


async def test_responses_stream_split_at_every_byte_arrives_intact(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviour.chunk_size = 1
    stream = await openai_client.responses.create(model="gpt-4o", input="Hi", stream=True)
    events = [event async for event in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == fake_openai.behaviour.reply_text
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == fake_openai.behaviour.reply_text


# --- The upstream reports an error inside the stream ------------------------------------------


async def test_openai_in_stream_error_is_relayed_as_is(
    http: aiohttp.ClientSession, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviour.stream_error_after_events = 2
    stream = await openai_client.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True
    )
    chunks = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            chunks.append(chunk)
    assert len(chunks) == 2
    assert info.value.message == FAKE_OPENAI_STREAM_ERROR["error"]["message"]
    assert info.value.body == FAKE_OPENAI_STREAM_ERROR["error"]

    # On the wire: the provider's two events, its error event, and nothing after it.
    # BUG (proxy/upstream/relay.py StreamWatcher._chat_event): when the gateway hides the usage
    # chunk (the client did not ask for usage), it returns before noting that an `{"error"`
    # event finished the stream, so it then appends its own "ended the stream before it was
    # complete" error event (and records the request as a 502).
    status, raw = await raw_stream(http, CHAT, CHAT_BODY)
    assert status == 200
    events = sse_events(raw)
    assert [event_data(e) for e in events[2:]] == [FAKE_OPENAI_STREAM_ERROR]
    assert len(events) == 3


async def test_openai_in_stream_error_with_usage_requested_is_relayed_as_is(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviour.stream_error_after_events = 2
    body = {**CHAT_BODY, "stream_options": {"include_usage": True}}
    status, raw = await raw_stream(http, CHAT, body)
    assert status == 200
    events = sse_events(raw)
    assert [event_data(e) for e in events[2:]] == [FAKE_OPENAI_STREAM_ERROR]


async def test_anthropic_in_stream_error_is_relayed_as_is(
    http: aiohttp.ClientSession,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.behaviour.stream_error_after_events = 2
    stream = await anthropic_client.messages.create(
        model=CLAUDE, max_tokens=64, messages=HELLO, stream=True
    )
    with pytest.raises(anthropic.APIError) as info:
        async for _ in stream:
            pass
    assert info.value.body == FAKE_ANTHROPIC_STREAM_ERROR

    status, raw = await raw_stream(http, MESSAGES, MESSAGES_BODY)
    assert status == 200
    events = sse_events(raw)
    assert len(events) == 3
    assert event_name(events[-1]) == "error"
    assert event_data(events[-1]) == FAKE_ANTHROPIC_STREAM_ERROR


async def test_responses_in_stream_error_is_relayed_as_is(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviour.stream_error_after_events = 2
    status, raw = await raw_stream(http, RESPONSES, RESPONSES_BODY)
    assert status == 200
    events = sse_events(raw)
    assert len(events) == 3
    assert event_name(events[-1]) == "error"
    assert event_data(events[-1]) == {
        "type": "error",
        "code": "server_error",
        "message": "The server had an error while processing your request.",
        "param": None,
        "sequence_number": 2,
    }


# --- The upstream cannot be reached, or does not answer in time -------------------------------


async def test_unreachable_upstream_is_502(
    monkeypatch: pytest.MonkeyPatch,
    sluice: Sluice,
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    assert sluice.store.reload()

    with pytest.raises(openai.InternalServerError) as chat_info:
        await openai_client.chat.completions.create(model="gpt-4o", messages=HELLO)
    error = assert_openai_error(chat_info.value, 502, "server_error", "upstream_unreachable")
    assert "'openai'" in error["message"]
    assert "127.0.0.1" not in error["message"]

    with pytest.raises(openai.InternalServerError) as stream_info:
        await openai_client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    assert_openai_error(stream_info.value, 502, "server_error", "upstream_unreachable")

    with pytest.raises(openai.InternalServerError) as embeddings_info:
        await openai_client.embeddings.create(model="text-embedding-3-small", input="x")
    assert_openai_error(embeddings_info.value, 502, "server_error", "upstream_unreachable")

    with pytest.raises(anthropic.InternalServerError) as messages_info:
        await anthropic_client.messages.create(model=CLAUDE, max_tokens=8, messages=HELLO)
    message = assert_anthropic_error(messages_info.value, 502, "api_error")
    assert "'anthropic'" in message

    with pytest.raises(anthropic.InternalServerError) as messages_stream_info:
        await anthropic_client.messages.create(
            model=CLAUDE, max_tokens=8, messages=HELLO, stream=True
        )
    assert_anthropic_error(messages_stream_info.value, 502, "api_error")


async def test_upstream_first_byte_timeout_is_504(
    sluice: Sluice,
    openai_client: openai.AsyncOpenAI,
    fake_openai: FakeOpenAI,
) -> None:
    set_timeouts(sluice, "openai", first_byte=0.3)
    fake_openai.behaviour.delay_s = 30
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        await openai_client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert time.monotonic() - started < 10
    error = assert_openai_error(info.value, 504, "server_error", "upstream_timeout")
    assert "0.3 s" in error["message"]
    # Sluice gave up on the provider, and hung up on it.
    await asyncio.wait_for(fake_openai.disconnected.wait(), 1.0)

    with pytest.raises(openai.InternalServerError) as stream_info:
        await openai_client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    assert_openai_error(stream_info.value, 504, "server_error", "upstream_timeout")


async def test_anthropic_first_byte_timeout_is_504(
    sluice: Sluice,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_anthropic: FakeAnthropic,
) -> None:
    set_timeouts(sluice, "anthropic", first_byte=0.3)
    fake_anthropic.behaviour.delay_s = 30
    with pytest.raises(anthropic.InternalServerError) as info:
        await anthropic_client.messages.create(model=CLAUDE, max_tokens=8, messages=HELLO)
    assert_anthropic_error(info.value, 504, "timeout_error")
    await asyncio.wait_for(fake_anthropic.disconnected.wait(), 1.0)


async def test_stream_over_its_total_timeout_ends_with_a_timeout_event(
    sluice: Sluice,
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    set_timeouts(sluice, "openai", total=0.5)
    set_timeouts(sluice, "anthropic", total=0.5)
    fake_openai.behaviour.event_delay_s = 0.2
    fake_anthropic.behaviour.event_delay_s = 0.2

    stream = await openai_client.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True
    )
    chunks = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            chunks.append(chunk)
    assert len(chunks) < 8  # cut short, however slow this machine is
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "upstream_timeout"
    await asyncio.wait_for(fake_openai.disconnected.wait(), 1.0)

    anthropic_stream = await anthropic_client.messages.create(
        model=CLAUDE, max_tokens=64, messages=HELLO, stream=True
    )
    with pytest.raises(anthropic.APIError) as anthropic_info:
        async for _ in anthropic_stream:
            pass
    assert isinstance(anthropic_info.value.body, dict)
    assert anthropic_info.value.body["error"]["type"] == "timeout_error"


# --- The upstream answers with an error status ------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exception", "type_", "code", "message"),
    [
        (400, openai.BadRequestError, "invalid_request_error", None, "Invalid request."),
        (
            404,
            openai.NotFoundError,
            "invalid_request_error",
            "model_not_found",
            "The model does not exist or you do not have access to it.",
        ),
        (
            429,
            openai.RateLimitError,
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached for requests.",
        ),
        (
            500,
            openai.InternalServerError,
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        ),
        (
            503,
            openai.InternalServerError,
            "server_error",
            None,
            "The engine is currently overloaded, please try again later.",
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_openai_error_status_is_relayed_with_the_providers_body(
    openai_client: openai.AsyncOpenAI,
    fake_openai: FakeOpenAI,
    status: int,
    exception: type[openai.APIStatusError],
    type_: str,
    code: str | None,
    message: str,
    stream: bool,
) -> None:
    fake_openai.behaviour.fail_status = status
    with pytest.raises(exception) as info:
        await openai_client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=stream)
    error = assert_openai_error(info.value, status, type_, code)
    assert error["message"] == message
    assert info.value.message.endswith(message) or message in info.value.message


@pytest.mark.parametrize(
    ("status", "exception", "type_"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_error_status_is_relayed_with_the_providers_body(
    anthropic_client: anthropic.AsyncAnthropic,
    fake_anthropic: FakeAnthropic,
    status: int,
    exception: type[anthropic.APIStatusError],
    type_: str,
    stream: bool,
) -> None:
    fake_anthropic.behaviour.fail_status = status
    with pytest.raises(exception) as info:
        await anthropic_client.messages.create(
            model=CLAUDE, max_tokens=8, messages=HELLO, stream=stream
        )
    assert_anthropic_error(info.value, status, type_)
    # The provider's own body, untouched (its request_id included).
    assert info.value.response.json()["request_id"].startswith("req_")


@pytest.mark.parametrize(
    ("status", "fail_body", "openai_type", "openai_code", "anthropic_type"),
    [
        (502, b"<html>bad gateway</html>", "server_error", "upstream_unreachable", "api_error"),
        (429, b"Too Many Requests", "requests", "rate_limit_exceeded", "rate_limit_error"),
        (404, b'{"detail": "Not Found"}', "invalid_request_error", "not_found", "not_found_error"),
        (500, b"", "server_error", "internal_error", "api_error"),
    ],
)
async def test_malformed_upstream_error_becomes_a_provider_shaped_error(
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    status: int,
    fail_body: bytes,
    openai_type: str,
    openai_code: str,
    anthropic_type: str,
) -> None:
    for fake in (fake_openai, fake_anthropic):
        fake.behaviour.fail_status = status
        fake.behaviour.fail_body = fail_body

    with pytest.raises(openai.APIStatusError) as openai_info:
        await openai_client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert openai_info.value.response.headers["Content-Type"].startswith("application/json")
    error = assert_openai_error(openai_info.value, status, openai_type, openai_code)
    assert error["message"] == f"Provider 'openai' answered with HTTP {status}."
    assert error["param"] is None

    with pytest.raises(anthropic.APIStatusError) as anthropic_info:
        await anthropic_client.messages.create(model=CLAUDE, max_tokens=8, messages=HELLO)
    message = assert_anthropic_error(anthropic_info.value, status, anthropic_type)
    assert message == f"Provider 'anthropic' answered with HTTP {status}."
    if fail_body:
        for exc in (openai_info.value, anthropic_info.value):
            assert fail_body.decode() not in exc.response.text


async def test_openai_shaped_error_from_anthropic_upstream_is_reshaped(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic
) -> None:
    # A body that is JSON and has an `error` object, but is not Anthropic's envelope.
    fake_anthropic.behaviour.fail_status = 500
    fake_anthropic.behaviour.fail_body = b'{"error": {"message": "boom", "type": "server_error"}}'
    with pytest.raises(anthropic.InternalServerError) as info:
        await anthropic_client.messages.create(model=CLAUDE, max_tokens=8, messages=HELLO)
    assert assert_anthropic_error(info.value, 500, "api_error") == (
        "Provider 'anthropic' answered with HTTP 500."
    )


@pytest.mark.parametrize("status", [401, 403])
async def test_provider_rejecting_the_gateway_key_does_not_leak_its_message(
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    status: int,
) -> None:
    fake_openai.behaviour.fail_status = status
    fake_openai.behaviour.fail_body = json.dumps(
        {
            "error": {
                "message": f"Incorrect API key provided: {UPSTREAM_OPENAI_KEY}.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    ).encode()
    fake_anthropic.behaviour.fail_status = status
    fake_anthropic.behaviour.fail_body = json.dumps(
        {
            "type": "error",
            "error": {
                "type": "authentication_error",
                "message": f"invalid x-api-key {UPSTREAM_ANTHROPIC_KEY}",
            },
        }
    ).encode()
    openai_exception = openai.AuthenticationError if status == 401 else openai.PermissionDeniedError
    anthropic_exception = (
        anthropic.AuthenticationError if status == 401 else anthropic.PermissionDeniedError
    )

    with pytest.raises(openai_exception) as openai_info:
        await openai_client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert openai_info.value.status_code == status
    text = openai_info.value.response.text
    assert UPSTREAM_OPENAI_KEY not in text and UPSTREAM_OPENAI_KEY[:12] not in text
    assert "Incorrect API key" not in text
    body = openai_info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == "Provider 'openai' rejected the gateway's credentials."

    with pytest.raises(anthropic_exception) as anthropic_info:
        await anthropic_client.messages.create(model=CLAUDE, max_tokens=8, messages=HELLO)
    message = assert_anthropic_error(
        anthropic_info.value,
        status,
        "authentication_error" if status == 401 else "permission_error",
    )
    assert message == "Provider 'anthropic' rejected the gateway's credentials."
    assert UPSTREAM_ANTHROPIC_KEY[:12] not in anthropic_info.value.response.text


async def test_provider_default_401_body_is_not_passed_on(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviour.fail_status = 401
    with pytest.raises(openai.AuthenticationError) as info:
        await openai_client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    assert "Incorrect API key provided" not in info.value.response.text
    assert "rejected the gateway's credentials" in info.value.message
