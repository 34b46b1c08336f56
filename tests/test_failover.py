"""Failover: a failing cloud provider hands the request to a policy fallback; sensitive traffic
never leaves the company's own models, even when the whole self-hosted pool is down.

Real fakes on loopback behind a real Sluice; the client is the openai SDK with retries off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import yaml

from proxy.policy.loader import PolicyError, load_policy
from proxy.testing import FakeAnthropic, FakeOpenAI, FakeVLLM
from tests.conftest import Sluice

HELLO: Any = [{"role": "user", "content": "hi"}]
SENSITIVE: Any = [{"role": "user", "content": "Draft a reply to jane.doe@example.com."}]
LLAMA = "llama-3.3-70b"
LLAMA_UPSTREAM = "meta-llama/Llama-3.3-70B-Instruct"
POOL = {"check_interval": 0.05, "check_timeout": 0.5, "failure_threshold": 1, "cooldown": 30}


def edit(policy_dir: Path, name: str, change: Any) -> None:
    path = policy_dir / name
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture
def policy_dir(policy_dir: Path) -> Path:
    """gpt-4o falls back to the self-hosted model; the self-hosted model to gpt-4o-mini."""

    def models(doc: Any) -> None:
        doc["models"]["gpt-4o"]["fallbacks"] = [LLAMA]
        doc["models"][LLAMA]["fallbacks"] = ["gpt-4o-mini"]
        doc["models"]["claude-sonnet-4-6"]["fallbacks"] = [LLAMA]

    def providers(doc: Any) -> None:
        doc["providers"]["onprem"]["pool"] = POOL

    edit(policy_dir, "models.yaml", models)
    edit(policy_dir, "providers.yaml", providers)
    return policy_dir


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_cloud_error_status_falls_back_to_the_self_hosted_model(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI, fake_vllm: FakeVLLM, status: int
) -> None:
    fake_openai.behaviour.fail_status = status
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO
    )
    answer = raw.parse()
    assert raw.headers["x-sluice-route"] == "fallback"
    assert answer.model == LLAMA_UPSTREAM  # the model that really answered
    assert answer.choices[0].message.content == fake_vllm.behaviour.reply_text
    assert len(fake_openai.received) == 1
    assert fake_vllm.received[0].body["model"] == LLAMA_UPSTREAM


async def test_cloud_outage_falls_back_when_streaming(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI, fake_vllm: FakeVLLM
) -> None:
    await fake_openai.close()  # the provider is unreachable: connection refused
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, stream=True
    )
    assert raw.headers["x-sluice-route"] == "fallback"
    chunks = [chunk async for chunk in raw.parse()]
    assert {c.model for c in chunks} == {LLAMA_UPSTREAM}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake_vllm.behaviour.reply_text
    assert len(fake_vllm.received) == 1


async def test_cloud_timeout_before_first_byte_falls_back(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    def short_timeout(doc: Any) -> None:
        doc["providers"]["openai"]["timeouts"] = {"first_byte": 0.2}

    edit(sluice.policy_dir, "providers.yaml", short_timeout)
    assert sluice.store.reload()
    fake_openai.behaviour.delay_s = 2
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO
    )
    assert raw.headers["x-sluice-route"] == "fallback"
    assert raw.parse().model == LLAMA_UPSTREAM


async def test_client_error_is_not_a_reason_to_fall_back(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI, fake_vllm: FakeVLLM
) -> None:
    fake_openai.behaviour.fail_status = 400
    with pytest.raises(openai.BadRequestError):
        await openai_client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert fake_vllm.received == []


async def test_when_every_target_fails_the_client_sees_the_first_failure(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI, fake_vllm: FakeVLLM
) -> None:
    fake_openai.behaviour.fail_status = 503
    await fake_vllm.close()
    with pytest.raises(openai.InternalServerError) as caught:
        await openai_client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["x-sluice-route"] == "direct"
    # gpt-4o's own error body, from the provider the caller asked for.
    assert caught.value.response.json()["error"]["type"] == "server_error"
    assert len(fake_openai.received) == 1


async def test_fallback_the_caller_may_not_use_is_skipped(
    sluice: Sluice, fake_openai: FakeOpenAI, fake_vllm: FakeVLLM
) -> None:
    token = await sluice.issue_token("employee", models=("gpt-*",))
    fake_openai.behaviour.fail_status = 503
    async with openai.AsyncOpenAI(
        base_url=sluice.url + "/v1", api_key=token, max_retries=0
    ) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert fake_vllm.received == []


async def test_sensitive_request_with_the_pool_down_gets_503_and_nothing_reaches_the_cloud(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI, fake_vllm: FakeVLLM
) -> None:
    await fake_vllm.stop()
    # The self-hosted model lists a cloud fallback, and the caller asked for a cloud model:
    # neither may see this request.
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            await openai_client.chat.completions.create(
                model="gpt-4o", messages=SENSITIVE, stream=stream
            )
        response = caught.value.response
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-sluice-route"] == "sensitive"
        error = response.json()["error"]
        assert error["code"] == "service_unavailable"
        assert "self-hosted model pool 'onprem' is unavailable" in error["message"]
        assert "not sent to any other provider" in error["message"]
        assert "jane.doe" not in response.text
    assert fake_openai.received == []


async def test_sensitive_request_falls_back_only_to_internal_models(
    sluice: Sluice,
    openai_client: openai.AsyncOpenAI,
    fake_openai: FakeOpenAI,
    fake_vllm: FakeVLLM,
) -> None:
    async with FakeVLLM(served_model="meta-llama/Llama-3.1-8B-Instruct") as small:

        def second_pool(doc: Any) -> None:
            doc["providers"]["onprem-small"] = {
                "kind": "vllm",
                "endpoints": small.url + "/v1",
                "trust": "internal",
            }

        def small_fallback(doc: Any) -> None:
            doc["models"]["llama-3.1-8b"] = {
                "provider": "onprem-small",
                "upstream_model": "meta-llama/Llama-3.1-8B-Instruct",
            }
            doc["models"][LLAMA]["fallbacks"] = ["gpt-4o-mini", "llama-3.1-8b"]

        edit(sluice.policy_dir, "providers.yaml", second_pool)
        edit(sluice.policy_dir, "models.yaml", small_fallback)
        assert sluice.store.reload(), sluice.store.last_error
        await fake_vllm.stop()
        raw = await openai_client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=SENSITIVE
        )
        assert raw.headers["x-sluice-route"] == "fallback"
        assert raw.parse().model == "meta-llama/Llama-3.1-8B-Instruct"
        assert len(small.received) == 1
    assert fake_openai.received == []


async def test_non_sensitive_request_for_the_pool_may_fall_back_to_the_cloud(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI, fake_vllm: FakeVLLM
) -> None:
    await fake_vllm.stop()
    raw = await openai_client.chat.completions.with_raw_response.create(model=LLAMA, messages=HELLO)
    assert raw.headers["x-sluice-route"] == "fallback"
    assert fake_openai.received[0].body["model"] == "gpt-4o-mini"


async def test_fallbacks_are_counted_in_metrics(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviour.fail_status = 503
    await openai_client.chat.completions.create(model="gpt-4o", messages=HELLO)
    async with aiohttp.ClientSession() as http, http.get(sluice.url + "/metrics") as resp:
        text = await resp.text()
    assert 'sluice_upstream_fallbacks_total{from_model="gpt-4o",to_model="llama-3.3-70b"} 1' in (
        text
    )


@pytest.mark.parametrize(
    ("fallbacks", "message"),
    [
        (["gpt-5-ultra"], "names fallback 'gpt-5-ultra', which is not defined"),
        (["gpt-4o"], "lists itself as a fallback"),
        ([LLAMA, LLAMA], f"lists fallback {LLAMA!r} twice"),
    ],
)
def test_policy_rejects_fallbacks_that_do_not_resolve(
    policy_dir: Path, fallbacks: list[str], message: str
) -> None:
    def bad(doc: Any) -> None:
        doc["models"]["gpt-4o"]["fallbacks"] = fallbacks

    edit(policy_dir, "models.yaml", bad)
    with pytest.raises(PolicyError) as caught:
        load_policy(policy_dir)
    problems = caught.value.problems
    assert any(message in p.message for p in problems), problems
    assert all(p.file == "models.yaml" and p.line > 0 for p in problems)


async def test_anthropic_client_falls_back_to_the_pool_through_translation(
    anthropic_client: anthropic.AsyncAnthropic,
    fake_anthropic: FakeAnthropic,
    fake_vllm: FakeVLLM,
) -> None:
    """The fallback speaks OpenAI chat: the Messages request is translated for it, and the
    answer translated back, so the Anthropic SDK still gets a valid message."""
    fake_anthropic.behaviour.fail_status = 529
    raw = await anthropic_client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=HELLO
    )
    message = await raw.parse()
    assert raw.headers["x-sluice-route"] == "fallback"
    assert message.content[0].type == "text"
    assert message.content[0].text == fake_vllm.behaviour.reply_text
    assert len(fake_anthropic.received) == 1
    assert fake_vllm.received[0].body["messages"] == [{"role": "user", "content": "hi"}]
