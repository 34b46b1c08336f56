"""Classification end to end: what the cloud upstream receives for each action, through the SDKs.

Allow passes the prompt untouched; block refuses naming entity types (never values); reroute
sends the request to the self-hosted model only; mask sends placeholders and restores the real
values in the answer, streamed or not, with placeholders split across events at any point.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from proxy.testing import FakeAnthropic, FakeOpenAI, FakeVLLM
from tests.conftest import Sluice

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
AWS_KEY = "AKIA" + "Q3EGRTZP7JXL2M4B"


def _edit_classification(sluice: Sluice, **changes: Any) -> None:
    path = sluice.policy_dir / "classification.yaml"
    document = yaml.safe_load(path.read_text())
    document["classification"].update(changes)
    path.write_text(yaml.safe_dump(document))
    assert sluice.store.reload(), sluice.store.last_error


def _user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def _seen(fake: FakeOpenAI | FakeAnthropic | FakeVLLM) -> str:
    return json.dumps([r.body for r in fake.received])


async def test_clean_prompt_is_forwarded_untouched(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=_user("What is the capital of France?")
    )
    assert raw.headers["x-sluice-route"] == "direct"
    assert fake_openai.received[0].body["messages"] == _user("What is the capital of France?")


@pytest.mark.parametrize(
    ("text", "entity"),
    [
        (f"My card is {CARD}, can you check it?", "CREDIT_CARD"),
        (f"Why does boto fail with aws_access_key_id={AWS_KEY}?", "AWS_ACCESS_KEY_ID"),
    ],
)
async def test_restricted_data_is_blocked_naming_types_not_values(
    openai_client: openai.AsyncOpenAI,
    fake_openai: FakeOpenAI,
    fake_vllm: FakeVLLM,
    text: str,
    entity: str,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(model="gpt-4o", messages=_user(text))
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "sensitive_data_blocked"
    assert entity in body["message"]
    assert CARD not in json.dumps(body) and AWS_KEY not in json.dumps(body)
    assert fake_openai.received == [] and fake_vllm.received == []


async def test_anthropic_block_has_anthropic_shape(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await anthropic_client.messages.create(
            model="claude-sonnet-4-6", max_tokens=32, messages=_user(f"card {CARD}")
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert fake_anthropic.received == []


async def test_confidential_data_is_rerouted_to_the_self_hosted_model(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI, fake_vllm: FakeVLLM
) -> None:
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=_user(f"Draft a reply to {EMAIL} about the invoice.")
    )
    answer = raw.parse()
    assert raw.headers["x-sluice-route"] == "sensitive"
    assert answer.choices[0].message.content == fake_vllm.behaviour.reply_text
    assert fake_openai.received == []
    assert fake_vllm.received[0].body["model"] == "meta-llama/Llama-3.3-70B-Instruct"


async def test_sensitive_request_the_internal_model_cannot_take_is_refused_not_sent_to_cloud(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic, fake_vllm: FakeVLLM
) -> None:
    # The Messages API reaches the internal model through translation to OpenAI chat, which
    # cannot carry a PDF document: refused, and sent nowhere.
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}
    content: Any = [{"type": "document", "source": pdf}, {"type": "text", "text": f"To {EMAIL}"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await anthropic_client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=32,
            messages=[{"role": "user", "content": content}],
        )
    assert "document" in str(caught.value)
    assert fake_anthropic.received == [] and fake_vllm.received == []


async def test_tool_arguments_and_results_are_scanned(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    messages: Any = [
        {"role": "user", "content": "Look up the customer"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": json.dumps({"card": CARD})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
    ]
    with pytest.raises(openai.BadRequestError):
        await openai_client.chat.completions.create(model="gpt-4o", messages=messages)
    messages[1]["tool_calls"][0]["function"]["arguments"] = "{}"
    messages[2]["content"] = f"customer card {CARD}"
    with pytest.raises(openai.BadRequestError):
        await openai_client.chat.completions.create(model="gpt-4o", messages=messages)
    assert fake_openai.received == []


async def test_mask_sends_placeholders_and_restores_the_answer(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    _edit_classification(sluice, actions={"confidential": "mask", "restricted": "block"})
    fake_openai.behaviour.reply_text = "I will write to <EMAIL_ADDRESS_1> today."
    answer = await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user(f"Please email {EMAIL} and cc {EMAIL}.")
    )
    sent = fake_openai.received[0].body["messages"][0]["content"]
    assert sent == "Please email <EMAIL_ADDRESS_1> and cc <EMAIL_ADDRESS_1>."
    assert EMAIL not in _seen(fake_openai)
    assert answer.choices[0].message.content == f"I will write to {EMAIL} today."


@pytest.mark.parametrize("delta_chars", [1, 2, 3, 5, 7])
async def test_mask_restores_placeholders_split_across_openai_stream_events(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI, delta_chars: int
) -> None:
    _edit_classification(sluice, actions={"confidential": "mask", "restricted": "block"})
    fake_openai.behaviour.reply_text = "Sent to <EMAIL_ADDRESS_1>, ok <EMAIL_ADDRESS_1>"
    fake_openai.behaviour.delta_chars = delta_chars
    fake_openai.behaviour.chunk_size = 3  # and the SSE bytes split mid-event too
    stream = await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user(f"mail {EMAIL}"), stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == f"Sent to {EMAIL}, ok {EMAIL}"
    assert EMAIL not in _seen(fake_openai)


@pytest.mark.parametrize("delta_chars", [1, 4, 6])
async def test_mask_restores_placeholders_split_across_anthropic_stream_events(
    sluice: Sluice,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_anthropic: FakeAnthropic,
    delta_chars: int,
) -> None:
    _edit_classification(sluice, actions={"confidential": "mask", "restricted": "block"})
    fake_anthropic.behaviour.reply_text = "Hello <EMAIL_ADDRESS_1>!"
    fake_anthropic.behaviour.delta_chars = delta_chars
    async with anthropic_client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=_user(f"Greet {EMAIL}")
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
    assert text == f"Hello {EMAIL}!"
    assert EMAIL not in _seen(fake_anthropic)


async def test_custom_yaml_recognizer_works_without_code(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    path = sluice.policy_dir / "classification.yaml"
    document = yaml.safe_load(path.read_text())
    document["classification"]["recognizers"].append(
        {"entity": "CUSTOMER_NAME", "level": "restricted", "terms": ["Globex Corporation"]}
    )
    path.write_text(yaml.safe_dump(document))
    assert sluice.store.reload(), sluice.store.last_error
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(
            model="gpt-4o", messages=_user("Summarise the globex corporation contract")
        )
    assert "CUSTOMER_NAME" in str(caught.value)
    assert fake_openai.received == []


async def test_classification_timeout_fails_closed(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    _edit_classification(sluice, timeout_seconds=0.000001)
    # Long enough to keep a worker busy for a while: a short text can come back from the worker
    # before a busy event loop gets round to the timer (Qarvessa: no word list knows it, so
    # spaCy reads a window around each).
    text = " ".join(f"Call {i} with Ravi Okonkwo about the Qarvessa contract." for i in range(3000))
    with pytest.raises(openai.InternalServerError) as caught:
        await openai_client.chat.completions.create(model="gpt-4o", messages=_user(text))
    assert caught.value.status_code == 503
    assert fake_openai.received == []
    _edit_classification(sluice, timeout_seconds=10)
    answer = await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user("and the pool works again afterwards")
    )
    assert answer.choices[0].message.content


async def test_a_killed_worker_fails_closed_and_the_pool_recovers(
    sluice: Sluice,
    openai_client: openai.AsyncOpenAI,
    fake_openai: FakeOpenAI,
    classifier_pool: Any,
) -> None:
    await openai_client.chat.completions.create(model="gpt-4o", messages=_user("warm"))
    for pid in classifier_pool.worker_pids():
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(openai.InternalServerError) as caught:
        await openai_client.chat.completions.create(
            model="gpt-4o", messages=_user("a sentence sent after the worker died")
        )
    assert caught.value.status_code == 503
    assert len(fake_openai.received) == 1
    answer = await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user("the replacement worker answers")
    )
    assert answer.choices[0].message.content


def test_default_policy_names_an_internal_sensitive_route() -> None:
    document = yaml.safe_load(
        (Path(__file__).parent.parent / "policies" / "classification.yaml").read_text()
    )
    assert document["classification"]["sensitive_route"] == "llama-3.3-70b"
