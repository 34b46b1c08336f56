"""The official SDKs get the same answers through Sluice as they get from the provider directly."""

from __future__ import annotations

from typing import Any

import anthropic
import openai

from proxy.testing import FakeAnthropic, FakeOpenAI, FakeVLLM
from tests.conftest import UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY, Sluice

# Fields a fake makes up fresh for every answer; everything else must match to the letter.
_VOLATILE = {
    "id",
    "created",
    "created_at",
    "completed_at",
    "system_fingerprint",
    "item_id",
    "sequence_number",
}


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _direct_openai(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="direct", max_retries=0)


def _direct_anthropic(fake: FakeAnthropic) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.url, api_key="direct", max_retries=0)


MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


async def test_chat_completion_matches_direct(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    via = await openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    async with _direct_openai(fake_openai) as direct_client:
        direct = await direct_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert via.choices[0].message.content == fake_openai.behaviour.reply_text
    assert _stable(via.model_dump()) == _stable(direct.model_dump())
    assert via.usage is not None and via.usage.prompt_tokens == 11


async def test_chat_stream_matches_direct_without_usage_chunk(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    via = [chunk.model_dump(exclude_unset=True) async for chunk in stream]
    async with _direct_openai(fake_openai) as direct_client:
        stream = await direct_client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True
        )
        direct = [chunk.model_dump(exclude_unset=True) async for chunk in stream]
    assert _stable(via) == _stable(direct)
    assert all(chunk.get("usage") is None for chunk in via)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in via if c["choices"])
    assert text == fake_openai.behaviour.reply_text
    # Sluice asked the provider for usage on the client's behalf.
    assert fake_openai.received[0].body["stream_options"] == {"include_usage": True}


async def test_chat_stream_with_usage_when_asked(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == fake_openai.behaviour.completion_tokens


async def test_embeddings_match_direct(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    via = await openai_client.embeddings.create(
        model="text-embedding-3-small", input=["one", "two"]
    )
    async with _direct_openai(fake_openai) as direct_client:
        direct = await direct_client.embeddings.create(
            model="text-embedding-3-small", input=["one", "two"]
        )
    assert len(via.data) == 2
    assert _stable(via.model_dump()) == _stable(direct.model_dump())


async def test_models_lists_policy_models(
    openai_client: openai.AsyncOpenAI, sluice: Sluice
) -> None:
    page = await openai_client.models.list()
    assert sorted(m.id for m in page.data) == sorted(sluice.store.current.policy.models)


async def test_anthropic_models_list(anthropic_client: anthropic.AsyncAnthropic) -> None:
    page = await anthropic_client.models.list()
    assert "claude-sonnet-4-6" in [m.id for m in page.data]


async def test_responses_match_direct(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    via = await openai_client.responses.create(model="gpt-4o", input="Say hello")
    async with _direct_openai(fake_openai) as direct_client:
        direct = await direct_client.responses.create(model="gpt-4o", input="Say hello")
    assert via.output_text == fake_openai.behaviour.reply_text
    assert _stable(via.model_dump()) == _stable(direct.model_dump())


async def test_responses_stream_matches_direct(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    stream = await openai_client.responses.create(model="gpt-4o", input="Hi", stream=True)
    via = [event.model_dump() async for event in stream]
    async with _direct_openai(fake_openai) as direct_client:
        stream = await direct_client.responses.create(model="gpt-4o", input="Hi", stream=True)
        direct = [event.model_dump() async for event in stream]
    assert _stable(via) == _stable(direct)
    assert via[-1]["type"] == "response.completed"


async def test_messages_match_direct(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic
) -> None:
    via = await anthropic_client.messages.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES
    )
    async with _direct_anthropic(fake_anthropic) as direct_client:
        direct = await direct_client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES
        )
    assert _stable(via.model_dump()) == _stable(direct.model_dump())
    assert via.content[0].type == "text"
    assert via.content[0].text == fake_anthropic.behaviour.reply_text


async def test_messages_stream_matches_direct(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic
) -> None:
    async def events(client: anthropic.AsyncAnthropic) -> list[dict[str, Any]]:
        stream = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES, stream=True
        )
        return [event.model_dump() async for event in stream]

    via = await events(anthropic_client)
    async with _direct_anthropic(fake_anthropic) as direct_client:
        direct = await events(direct_client)
    assert _stable(via) == _stable(direct)
    kinds = {event["type"] for event in via}
    assert {"message_start", "content_block_start", "content_block_delta"} <= kinds
    assert {"content_block_stop", "message_delta", "message_stop"} <= kinds


async def test_messages_stream_helper_accumulates(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic
) -> None:
    async with anthropic_client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == fake_anthropic.behaviour.reply_text
    assert final.usage.output_tokens == fake_anthropic.behaviour.completion_tokens


async def test_vllm_model_gets_upstream_name(
    openai_client: openai.AsyncOpenAI, fake_vllm: FakeVLLM
) -> None:
    answer = await openai_client.chat.completions.create(model="llama-3.3-70b", messages=MESSAGES)
    assert answer.choices[0].message.content == fake_vllm.behaviour.reply_text
    assert fake_vllm.received[-1].body["model"] == "meta-llama/Llama-3.3-70B-Instruct"


async def test_gateway_key_replaces_client_credentials(
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    employee_token: str,
) -> None:
    await openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    await anthropic_client.messages.create(
        model="claude-sonnet-4-6", max_tokens=8, messages=MESSAGES
    )
    openai_headers = fake_openai.received[-1].headers
    anthropic_headers = fake_anthropic.received[-1].headers
    assert openai_headers["authorization"] == f"Bearer {UPSTREAM_OPENAI_KEY}"
    assert anthropic_headers["x-api-key"] == UPSTREAM_ANTHROPIC_KEY
    assert "authorization" not in anthropic_headers
    for headers in (openai_headers, anthropic_headers):
        assert all(employee_token not in value for value in headers.values())


async def test_every_response_has_request_id(openai_client: openai.AsyncOpenAI) -> None:
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES
    )
    assert raw.headers["x-request-id"].startswith("req_")
