"""The answer side of classification: findings in the model's output are recorded on the
context, and with `output.action: mask` a whole answer reaches the client masked."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import yaml

from proxy.classify.output import StreamText
from proxy.classify.pool import ClassifierPool
from proxy.context import Principal, RequestContext, WireFormat
from proxy.filters.classify import Classify
from proxy.policy.loader import load_policy
from proxy.policy.store import PolicySnapshot
from proxy.testing import FakeAnthropic, FakeOpenAI
from proxy.upstream.sse import SSEParser
from tests.conftest import Sluice

POLICIES = Path(__file__).resolve().parent.parent / "policies"
ANSWER = "Sure: write to jane.doe@example.org or call +44 20 7946 0018."


def _output(sluice: Sluice, **output: Any) -> None:
    path = sluice.policy_dir / "classification.yaml"
    document = yaml.safe_load(path.read_text())
    document["classification"]["output"] = output
    path.write_text(yaml.safe_dump(document))
    assert sluice.store.reload(), sluice.store.last_error


def _user(text: str) -> Any:
    return [{"role": "user", "content": text}]


async def test_a_whole_answer_is_masked_when_policy_says_so(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    _output(sluice, scan=True, action="mask")
    fake_openai.behaviour.reply_text = ANSWER
    answer = await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user("How do I reach support?")
    )
    content = answer.choices[0].message.content or ""
    assert "jane.doe@example.org" not in content
    assert "+44 20 7946 0018" not in content
    assert "<EMAIL_ADDRESS_1>" in content and "<PHONE_NUMBER_1>" in content


async def test_anthropic_answers_are_masked_too(
    sluice: Sluice, anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic
) -> None:
    _output(sluice, scan=True, action="mask")
    fake_anthropic.behaviour.reply_text = ANSWER
    message = await anthropic_client.messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=_user("How do I reach support?")
    )
    text = "".join(block.text for block in message.content if block.type == "text")
    assert "jane.doe@example.org" not in text and "<EMAIL_ADDRESS_1>" in text


async def test_recording_leaves_answers_and_streams_untouched(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    _output(sluice, scan=True, action="record")
    fake_openai.behaviour.reply_text = ANSWER
    answer = await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user("How do I reach support?")
    )
    assert answer.choices[0].message.content == ANSWER
    _output(sluice, scan=True, action="mask")  # streams are recorded, never masked
    stream = await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user("How do I reach support?"), stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(pieces) == ANSWER


def _context(snapshot: PolicySnapshot, wire: WireFormat) -> RequestContext:
    ctx = RequestContext(
        request_id="output-test",
        received_at=time.time(),
        started=time.perf_counter(),
        wire=wire,
        policy=snapshot,
        headers={},
        client_address="127.0.0.1",
    )
    ctx.body = {"model": "gpt-4o", "messages": _user("How do I reach support?")}
    ctx.principal = Principal(subject="a@corp.example", roles=("employee",), auth_method="token")
    return ctx


async def test_findings_in_answers_are_recorded_as_types_and_counts(
    classifier_pool: ClassifierPool,
) -> None:
    snapshot = PolicySnapshot.from_loaded(load_policy(POLICIES))
    assert snapshot.policy.classification.output.scan  # the default policy records answers
    classify = Classify(classifier_pool)

    whole = _context(snapshot, WireFormat.OPENAI_CHAT)
    assert await classify.on_request(whole) is None
    assert whole.output_scanner is not None
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}}]}
    data = json.dumps(body).encode()
    assert await whole.output_scanner.scan_body(whole, data) == data  # recorded, not masked
    assert whole.output_findings == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}

    streamed = _context(snapshot, WireFormat.ANTHROPIC_MESSAGES)
    assert await classify.on_request(streamed) is None
    assert streamed.output_scanner is not None
    collected = StreamText(WireFormat.ANTHROPIC_MESSAGES)
    parser = SSEParser()
    for piece in ("Sure: write to jane.d", "oe@example.org today."):
        event = {"type": "content_block_delta", "index": 0, "delta": {"text": piece}}
        raw = f"event: content_block_delta\ndata: {json.dumps(event)}\n\n".encode()
        collected.feed(parser.feed(raw))
    assert collected.text == "Sure: write to jane.doe@example.org today."
    await streamed.output_scanner.scan_text(streamed, collected.text)
    assert streamed.output_findings == {"EMAIL_ADDRESS": 1}


def test_stream_text_reads_every_wire_format() -> None:
    cases = {
        WireFormat.OPENAI_CHAT: {
            "choices": [
                {
                    "delta": {
                        "content": "a",
                        "tool_calls": [{"function": {"arguments": '{"to": "b"}'}}],
                    }
                }
            ]
        },
        WireFormat.OPENAI_RESPONSES: {"type": "response.output_text.delta", "delta": "a"},
    }
    for wire, event in cases.items():
        collected = StreamText(wire)
        collected.feed(SSEParser().feed(f"data: {json.dumps(event)}\n\n".encode()))
        assert collected.text.startswith("a")
