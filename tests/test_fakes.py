"""The fake upstreams in proxy.testing, exercised with the official SDKs over real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pydantic
import pytest
from anthropic.types import Message, MessageParam, RawMessageStreamEvent
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.responses import Response, ResponseStreamEvent

from proxy.testing import Behaviour, FakeAnthropic, FakeOpenAI, FakeVLLM, ReceivedRequest

REPLY = Behaviour().reply_text
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]
ANT_CHAT: list[MessageParam] = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
async def oai(fake_openai: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=fake_openai.url + "/v1", api_key="sk-test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def ant(fake_anthropic: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=fake_anthropic.url, api_key="sk-ant-test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def sse_payloads(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) for each SSE event in a complete stream body."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name = None
        data = []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        out.append((name, "\n".join(data)))
    return out


# --- OpenAI chat completions -------------------------------------------------------------


async def test_chat_non_stream(fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(model="gpt-4o-mini", messages=CHAT)

    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 7)
    assert completion.usage.total_tokens == 18

    [seen] = fake_openai.received
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.body["messages"] == CHAT
    assert json.loads(seen.raw_body) == seen.body


async def test_chat_non_stream_wire_shape_validates_strictly(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-4o", "messages": CHAT}
    async with http.post(fake_openai.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        raw = await resp.json()
    ChatCompletion.model_validate(raw, strict=False)
    assert raw["choices"][0]["message"]["refusal"] is None
    assert raw["object"] == "chat.completion"
    assert "system_fingerprint" in raw


async def test_chat_stream_without_usage(fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI) -> None:
    fake_openai.behaviour.reply_text = "  spaced   out words "
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=CHAT,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "  spaced   out words "
    assert sum(1 for c in chunks if c.choices[0].delta.content) == 4
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.choices for c in chunks)


async def test_chat_stream_with_include_usage(
    fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI
) -> None:
    fake_openai.behaviour.prompt_tokens, fake_openai.behaviour.completion_tokens = 5, 9
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == REPLY
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 9)


async def test_chat_stream_wire_format(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {
        "model": "gpt-4o",
        "messages": CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post(fake_openai.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        raw = await resp.read()

    assert raw.endswith(b"data: [DONE]\n\n")
    events = sse_payloads(raw)
    assert all(name is None for name, _ in events)
    chunks = [json.loads(data) for _, data in events[:-1]]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    # OpenAI marks usage as null on every chunk but the last when usage is requested.
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["usage"]["total_tokens"] == 18


async def test_legacy_completions(fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI) -> None:
    completion = await oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi")
    assert completion.choices[0].text == REPLY

    stream = await oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == REPLY


# --- OpenAI embeddings ----------------------------------------------------------------------


async def test_embeddings_base64_default_and_float(
    fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI
) -> None:
    inputs = ["alpha", "beta", "gamma"]
    default = await oai.embeddings.create(model="text-embedding-3-small", input=inputs)
    floats = await oai.embeddings.create(
        model="text-embedding-3-small", input=inputs, encoding_format="float"
    )

    assert [r.body["encoding_format"] for r in fake_openai.received] == ["base64", "float"]
    assert [d.index for d in default.data] == [0, 1, 2]
    assert all(len(d.embedding) == 8 for d in default.data)
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert default.data[0].embedding != default.data[1].embedding
    assert default.usage.prompt_tokens == default.usage.total_tokens == 11
    assert default.model == "text-embedding-3-small"


async def test_embeddings_single_string_and_token_arrays(oai: openai.AsyncOpenAI) -> None:
    one = await oai.embeddings.create(model="m", input="hello", encoding_format="float")
    tokens = await oai.embeddings.create(model="m", input=[[1, 2, 3], [4, 5]])
    single_tokens = await oai.embeddings.create(model="m", input=[1, 2, 3])
    assert len(one.data) == 1
    assert len(tokens.data) == 2
    assert len(single_tokens.data) == 1


async def test_embeddings_wire_shape(fake_openai: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    body = {"model": "m", "input": ["a", "b"], "encoding_format": "float", "dimensions": 3}
    async with http.post(fake_openai.url + "/v1/embeddings", json=body) as resp:
        raw = await resp.json()
    CreateEmbeddingResponse.model_validate(raw)
    assert raw["object"] == "list"
    assert [len(d["embedding"]) for d in raw["data"]] == [3, 3]


# --- OpenAI Responses API -------------------------------------------------------------------


async def test_responses_non_stream(fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI) -> None:
    response = await oai.responses.create(model="gpt-4o", input="Say hello.")

    assert response.output_text == REPLY
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.model == "gpt-4o"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 7)
    assert response.usage.total_tokens == 18
    assert fake_openai.received[0].path == "/v1/responses"


async def test_responses_wire_shape_validates(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        fake_openai.url + "/v1/responses", json={"model": "gpt-4o", "input": "x"}
    ) as resp:
        Response.model_validate(await resp.json())

    body = {"model": "gpt-4o", "input": "x", "stream": True}
    async with http.post(fake_openai.url + "/v1/responses", json=body) as resp:
        events = sse_payloads(await resp.read())
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
    for name, data in events:
        payload = json.loads(data)
        assert payload["type"] == name
        adapter.validate_python(payload)
    assert [json.loads(d)["sequence_number"] for _, d in events] == list(range(len(events)))


async def test_responses_stream(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(model="gpt-4o", input="Say hello.", stream=True)
    events = [event async for event in stream]

    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 5
    assert "".join(deltas) == REPLY
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == REPLY
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 7


async def test_responses_stream_helper(oai: openai.AsyncOpenAI) -> None:
    async with oai.responses.stream(model="gpt-4o", input="Say hello.") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == REPLY


# --- OpenAI models and errors ---------------------------------------------------------------


async def test_models(oai: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in oai.models.list()]
    assert len(models) >= 2
    assert "gpt-4o" in models


async def test_fail_status_429_is_rate_limit_error(
    fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI
) -> None:
    fake_openai.behaviour.fail_status = 429
    with pytest.raises(openai.RateLimitError) as caught:
        await oai.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"
    assert len(fake_openai.received) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_fail_status_maps_to_sdk_errors(
    fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI, status: int, error: type[Exception]
) -> None:
    fake_openai.behaviour.fail_status = status
    with pytest.raises(error):
        await oai.embeddings.create(model="m", input="x")


async def test_fail_body_overrides_error_bytes(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.behaviour.fail_status = 502
    fake_openai.behaviour.fail_body = b"<html><body>Bad Gateway</body></html>"
    async with http.get(fake_openai.url + "/v1/models") as resp:
        assert resp.status == 502
        assert resp.content_type == "text/html"
        assert await resp.read() == b"<html><body>Bad Gateway</body></html>"


async def test_error_body_shape(fake_openai: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake_openai.behaviour.fail_status = 500
    async with http.post(fake_openai.url + "/v1/chat/completions", json={}) as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"


async def test_bad_request_and_unknown_route(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    async with http.post(fake_openai.url + "/v1/chat/completions", json={"model": "m"}) as resp:
        assert resp.status == 400
        assert "messages" in (await resp.json())["error"]["message"]
    async with http.post(fake_openai.url + "/v1/nope", json={}) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["message"] == "Invalid URL (POST /v1/nope)"


# --- Anthropic ------------------------------------------------------------------------------


async def test_anthropic_non_stream(
    fake_anthropic: FakeAnthropic, ant: anthropic.AsyncAnthropic
) -> None:
    message = await ant.messages.create(
        model="claude-test",
        max_tokens=64,
        messages=ANT_CHAT,
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == REPLY
    assert message.stop_reason == "end_turn"
    assert message.model == "claude-test"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 7)

    [seen] = fake_anthropic.received
    assert seen.path == "/v1/messages"
    # SDK versions differ in which header carries the key.
    assert "sk-ant-test" in (
        seen.headers.get("x-api-key"),
        seen.headers.get("authorization", "")[7:],
    )
    assert "anthropic-version" in seen.headers


async def test_anthropic_stream_helper(
    fake_anthropic: FakeAnthropic, ant: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.behaviour.prompt_tokens, fake_anthropic.behaviour.completion_tokens = 3, 4
    async with ant.messages.stream(
        model="claude-test",
        max_tokens=64,
        messages=ANT_CHAT,
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()

    assert text == REPLY
    assert final.content[0].type == "text"
    assert final.content[0].text == REPLY
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)


async def test_anthropic_wire_format(
    fake_anthropic: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    body = {"model": "claude", "max_tokens": 8, "messages": CHAT}
    async with http.post(fake_anthropic.url + "/v1/messages", json=body) as resp:
        Message.model_validate(await resp.json())

    async with http.post(
        fake_anthropic.url + "/v1/messages", json={**body, "stream": True}
    ) as resp:
        assert resp.content_type == "text/event-stream"
        events = sse_payloads(await resp.read())
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert names.count("content_block_delta") == 5
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)
    for name, data in events:
        payload = json.loads(data)
        assert payload["type"] == name
        if name != "ping":
            adapter.validate_python(payload)
    start = json.loads(events[0][1])["message"]
    assert start["content"] == []
    assert start["usage"]["output_tokens"] == 1


async def test_anthropic_fail_status_429(
    fake_anthropic: FakeAnthropic, ant: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.behaviour.fail_status = 429
    with pytest.raises(anthropic.RateLimitError) as caught:
        await ant.messages.create(model="claude", max_tokens=8, messages=ANT_CHAT)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (500, "api_error"), (529, "overloaded_error")],
)
async def test_anthropic_error_types(
    fake_anthropic: FakeAnthropic, http: aiohttp.ClientSession, status: int, kind: str
) -> None:
    fake_anthropic.behaviour.fail_status = status
    async with http.post(fake_anthropic.url + "/v1/messages", json={}) as resp:
        assert resp.status == status
        assert (await resp.json())["error"]["type"] == kind


async def test_anthropic_in_stream_error_event(
    fake_anthropic: FakeAnthropic, ant: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.behaviour.stream_error_after_events = 4
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with ant.messages.stream(
            model="claude",
            max_tokens=8,
            messages=ANT_CHAT,
        ) as stream:
            async for _ in stream:
                pass
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "overloaded_error"


# --- Stream faults shared by all providers --------------------------------------------------


async def test_chunk_size_1_still_parses_openai(
    fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI
) -> None:
    fake_openai.behaviour.chunk_size = 1
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].usage is not None


async def test_chunk_size_1_still_parses_anthropic(
    fake_anthropic: FakeAnthropic, ant: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.behaviour.chunk_size = 1
    async with ant.messages.stream(
        model="claude",
        max_tokens=8,
        messages=ANT_CHAT,
    ) as stream:
        assert "".join([t async for t in stream.text_stream]) == REPLY


async def test_chunk_size_splits_writes_at_arbitrary_offsets(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.behaviour.chunk_size = 7
    body = {"model": "m", "messages": CHAT, "stream": True}
    async with http.post(fake_openai.url + "/v1/chat/completions", json=body) as resp:
        pieces = [chunk async for chunk, _ in resp.content.iter_chunks()]
    raw = b"".join(pieces)
    assert raw.endswith(b"data: [DONE]\n\n")
    # Every HTTP chunk is one 7-byte write, so SSE events straddle chunk boundaries.
    assert {len(p) for p in pieces[:-1]} == {7}
    assert 0 < len(pieces[-1]) <= 7


async def test_cut_after_events_openai_raises(
    fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI
) -> None:
    fake_openai.behaviour.cut_after_events = 2
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=CHAT,
        stream=True,
    )
    seen = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 2
    assert fake_openai.disconnects == 0


async def test_cut_after_events_anthropic_raises(
    fake_anthropic: FakeAnthropic, ant: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.behaviour.cut_after_events = 4
    fake_anthropic.behaviour.chunk_size = 5
    # The anthropic SDK lets transport errors raised mid-stream escape unwrapped.
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
        async with ant.messages.stream(
            model="claude",
            max_tokens=8,
            messages=ANT_CHAT,
        ) as stream:
            async for _ in stream:
                pass
    assert fake_anthropic.disconnects == 0


async def test_cut_after_events_raw_stream_is_truncated(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.behaviour.cut_after_events = 3
    body = {"model": "m", "messages": CHAT, "stream": True}
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(fake_openai.url + "/v1/chat/completions", json=body) as resp:
            async for chunk in resp.content.iter_any():
                received += chunk
    assert len(sse_payloads(received)) == 3
    assert b"[DONE]" not in received


async def test_openai_stream_error_after_events(
    fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI
) -> None:
    fake_openai.behaviour.stream_error_after_events = 3
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=CHAT,
        stream=True,
    )
    seen = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 3
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "server_error"


async def test_event_delay_spaces_events(fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI) -> None:
    fake_openai.behaviour.event_delay_s = 0.02
    loop = asyncio.get_running_loop()
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=CHAT,
        stream=True,
    )
    started = loop.time()
    chunks = [c async for c in stream]
    # 7 chunks + [DONE] means 7 gaps between events.
    assert loop.time() - started >= 0.02 * 6
    assert len(chunks) == 7


# --- Request recording, delays, disconnects, reset ------------------------------------------


async def test_request_is_recorded_before_delay(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake_openai.behaviour.delay_s = 30
    body = {"model": "m", "messages": CHAT}
    task = asyncio.create_task(http.post(fake_openai.url + "/v1/chat/completions", json=body))
    await eventually(lambda: bool(fake_openai.received))
    assert fake_openai.received == [
        ReceivedRequest(
            method="POST",
            path="/v1/chat/completions",
            headers=fake_openai.received[0].headers,
            body=body,
            raw_body=fake_openai.received[0].raw_body,
        )
    ]
    assert fake_openai.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake_openai.disconnected.wait(), 2)
    assert fake_openai.disconnects == 1
    assert fake_openai.in_flight == 0


async def test_client_timeout_during_delay_counts_disconnect(
    fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI
) -> None:
    fake_openai.behaviour.delay_s = 5
    with pytest.raises(openai.APITimeoutError):
        await oai.chat.completions.create(
            model="gpt-4o",
            messages=CHAT,
            timeout=0.1,
        )
    await asyncio.wait_for(fake_openai.disconnected.wait(), 2)
    assert fake_openai.disconnects == 1


@pytest.mark.parametrize("fake_cls", [FakeOpenAI, FakeAnthropic])
async def test_client_abort_mid_stream_counts_disconnect(
    fake_cls: type[FakeOpenAI] | type[FakeAnthropic],
) -> None:
    async with fake_cls() as fake:
        fake.behaviour.event_delay_s = 0.05
        path = "/v1/messages" if fake_cls is FakeAnthropic else "/v1/chat/completions"
        body = {"model": "m", "max_tokens": 8, "messages": CHAT, "stream": True}
        session = aiohttp.ClientSession()
        try:
            resp = await session.post(fake.url + path, json=body)
            first = await resp.content.readuntil(b"\n\n")
            assert first.startswith((b"data: ", b"event: "))
        finally:
            await session.close()
        await asyncio.wait_for(fake.disconnected.wait(), 2)
        assert fake.disconnects == 1
        assert fake.in_flight == 0


async def test_reset(fake_openai: FakeOpenAI, oai: openai.AsyncOpenAI) -> None:
    fake_openai.behaviour.reply_text = "changed"
    await oai.chat.completions.create(model="gpt-4o", messages=CHAT)
    fake_openai.disconnects = 3
    fake_openai.disconnected.set()

    fake_openai.reset()

    assert fake_openai.behaviour == Behaviour()
    assert fake_openai.received == []
    assert fake_openai.disconnects == 0
    assert not fake_openai.disconnected.is_set()


async def test_url_and_restart() -> None:
    fake = FakeOpenAI()
    await fake.start()
    try:
        assert fake.url.startswith("http://127.0.0.1:")
        assert not fake.url.endswith("/")
        with pytest.raises(RuntimeError):
            await fake.start()
    finally:
        await fake.close()
    await fake.close()


async def test_close_with_hanging_request_is_quick(http: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI()
    await fake.start()
    fake.behaviour.delay_s = 30
    task = asyncio.create_task(
        http.post(fake.url + "/v1/chat/completions", json={"model": "m", "messages": CHAT})
    )
    await eventually(lambda: bool(fake.received))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await fake.close()
    assert loop.time() - started < 2
    assert fake.disconnects == 0
    with pytest.raises(aiohttp.ClientError):
        await task


# --- vLLM -----------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """{metric name: {label string: value}} from Prometheus text exposition."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        out.setdefault(name, {})[labels.rstrip("}")] = float(value)
    return out


async def scrape(fake: FakeVLLM, http: aiohttp.ClientSession) -> dict[str, dict[str, float]]:
    async with http.get(fake.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return parse_metrics(await resp.text())


def value(metrics: dict[str, dict[str, float]], name: str) -> float:
    return sum(metrics[name].values())


async def test_vllm_health(fake_vllm: FakeVLLM, http: aiohttp.ClientSession) -> None:
    async with http.get(fake_vllm.url + "/health") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    fake_vllm.behaviour.fail_status = 503
    async with http.get(fake_vllm.url + "/health") as resp:
        assert resp.status == 503
    assert fake_vllm.received == []


async def test_vllm_metrics_names_and_labels(
    fake_vllm: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    metrics = await scrape(fake_vllm, http)
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
    ):
        assert name in metrics
        assert all(
            'model_name="meta-llama/Llama-3.3-70B-Instruct"' in labels for labels in metrics[name]
        )
    assert value(metrics, "vllm:num_requests_running") == 0


async def test_vllm_metrics_track_in_flight_and_counters(
    fake_vllm: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    fake_vllm.behaviour.delay_s = 0.3
    fake_vllm.extra_waiting = 4
    body = {"model": fake_vllm.served_model, "messages": CHAT}
    url = fake_vllm.url + "/v1/chat/completions"

    async def call() -> int:
        async with http.post(url, json=body) as resp:
            await resp.read()
            return resp.status

    tasks = [asyncio.create_task(call()) for _ in range(2)]
    await eventually(lambda: fake_vllm.in_flight == 2)
    during = await scrape(fake_vllm, http)
    assert value(during, "vllm:num_requests_running") == 2
    assert value(during, "vllm:num_requests_waiting") == 4
    assert await asyncio.gather(*tasks) == [200, 200]

    after = await scrape(fake_vllm, http)
    assert value(after, "vllm:num_requests_running") == 0
    assert value(after, "vllm:prompt_tokens_total") == 22
    assert value(after, "vllm:generation_tokens_total") == 14
    assert (
        after["vllm:request_success_total"][
            'model_name="meta-llama/Llama-3.3-70B-Instruct",engine="0",finished_reason="stop"'
        ]
        == 2
    )


async def test_vllm_openai_api(fake_vllm: FakeVLLM, http: aiohttp.ClientSession) -> None:
    async with openai.AsyncOpenAI(
        base_url=fake_vllm.url + "/v1", api_key="EMPTY", max_retries=0
    ) as client:
        models = [m async for m in client.models.list()]
        assert [m.id for m in models] == [fake_vllm.served_model]
        card = models[0].model_dump()
        assert card["owned_by"] == "vllm"
        assert card["root"] == fake_vllm.served_model
        assert card["max_model_len"] == 131072

        completion = await client.chat.completions.create(
            model="my-alias",
            messages=CHAT,
        )
        assert completion.model == "my-alias"
        assert completion.choices[0].message.content == REPLY

        stream = await client.chat.completions.create(
            model="my-alias",
            messages=CHAT,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 7

        embedding = await client.embeddings.create(model="e5", input=["a", "b"])
        assert len(embedding.data) == 2

    # vLLM, unlike OpenAI, leaves usage out of the intermediate chunks entirely.
    body = {
        "model": "m",
        "messages": CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post(fake_vllm.url + "/v1/chat/completions", json=body) as resp:
        events = sse_payloads(await resp.read())
    chunks_raw = [json.loads(d) for _, d in events[:-1]]
    assert all("usage" not in c for c in chunks_raw[:-1])


async def test_vllm_errors(fake_vllm: FakeVLLM, http: aiohttp.ClientSession) -> None:
    fake_vllm.behaviour.fail_status = 400
    async with http.post(fake_vllm.url + "/v1/chat/completions", json={}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == {
            "message": "Bad Request",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    fake_vllm.reset()
    async with http.get(fake_vllm.url + "/v2/nothing") as resp:
        assert resp.status == 404
        assert await resp.json() == {"detail": "Not Found"}


# --- tool calls and stop sequences -------------------------------------------------------


TOOL_CALLS = (("get_weather", {"city": "Oslo"}), ("get_time", {"zone": "CET"}))


@pytest.mark.parametrize("fake_kind", ["openai", "vllm"])
async def test_chat_tool_calls_non_stream_and_stream(
    fake_kind: str, fake_openai: FakeOpenAI, fake_vllm: FakeVLLM
) -> None:
    fake = fake_openai if fake_kind == "openai" else fake_vllm
    fake.behaviour.tool_calls = TOOL_CALLS
    async with openai.AsyncOpenAI(
        base_url=fake.url + "/v1", api_key="sk-test", max_retries=0
    ) as client:
        completion = await client.chat.completions.create(model="m", messages=CHAT)
        async with client.chat.completions.stream(model="m", messages=CHAT) as stream:
            final = await stream.get_final_completion()
    for answer in (completion, final):
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
            (name, arguments) for name, arguments in TOOL_CALLS
        ]
        assert all(c.id.startswith("call_") for c in calls)


async def test_vllm_names_the_stop_sequence_it_stopped_on(fake_vllm: FakeVLLM) -> None:
    fake_vllm.behaviour.stopped_by = "###"
    async with openai.AsyncOpenAI(
        base_url=fake_vllm.url + "/v1", api_key="sk-test", max_retries=0
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=CHAT, stop=["###"]
        )
    choice = json.loads(raw.content)["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "###")


async def test_anthropic_tool_use_non_stream_and_stream(
    fake_anthropic: FakeAnthropic, ant: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.behaviour.tool_calls = TOOL_CALLS
    message = await ant.messages.create(model="claude-test", max_tokens=64, messages=ANT_CHAT)
    async with ant.messages.stream(model="claude-test", max_tokens=64, messages=ANT_CHAT) as stream:
        final = await stream.get_final_message()
    for answer in (message, final):
        assert answer.stop_reason == "tool_use"
        assert answer.content[0].type == "text" and answer.content[0].text == REPLY
        uses = [(b.name, b.input) for b in answer.content if b.type == "tool_use"]
        assert uses == list(TOOL_CALLS)


async def test_anthropic_stop_sequence(
    fake_anthropic: FakeAnthropic, ant: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.behaviour.stopped_by = "###"
    message = await ant.messages.create(
        model="claude-test", max_tokens=64, messages=ANT_CHAT, stop_sequences=["###"]
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "###")
