"""The self-hosted vLLM pool: least-outstanding balancing, queue-depth tie-break, circuit breaker.

Three real fake `vllm serve` endpoints on loopback behind a real Sluice; the client is the
openai SDK. Endpoints are killed and restarted on the same port as a crash and a recovery would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from proxy.policy.loader import PolicyError, load_policy
from proxy.testing import FakeVLLM
from proxy.upstream.vllm import parse_vllm_metrics
from tests.conftest import Sluice, scrape_metrics

HELLO: Any = [{"role": "user", "content": "hi"}]
LLAMA = "llama-3.3-70b"

# Fast enough for tests: checks every 50 ms, ejected after 2 failures, probed after 0.5 s.
POOL = {
    "check_interval": 0.05,
    "check_timeout": 0.5,
    "failure_threshold": 2,
    "cooldown": 0.5,
    "max_attempts": 3,
}


@pytest.fixture
async def pool() -> AsyncIterator[list[FakeVLLM]]:
    fakes = [FakeVLLM(), FakeVLLM(), FakeVLLM()]
    for fake in fakes:
        await fake.start()
    try:
        yield fakes
    finally:
        for fake in fakes:
            await fake.close()


def use_pool(policy_dir: Path, monkeypatch: pytest.MonkeyPatch, fakes: list[FakeVLLM]) -> None:
    """Point the policy's `onprem` provider at `fakes`, with test-speed pool settings."""
    monkeypatch.setenv("VLLM_BASE_URLS", ",".join(f.url + "/v1" for f in fakes))
    path = policy_dir / "providers.yaml"
    document = yaml.safe_load(path.read_text())
    document["providers"]["onprem"]["pool"] = POOL
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    # Load tests send more than an employee's per-minute allowance.
    path = policy_dir / "roles.yaml"
    document = yaml.safe_load(path.read_text())
    document["roles"]["employee"]["limits"] = {"concurrent": 64}
    path.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture
def policy_dir(policy_dir: Path, monkeypatch: pytest.MonkeyPatch, pool: list[FakeVLLM]) -> Path:
    use_pool(policy_dir, monkeypatch, pool)
    return policy_dir


def endpoint_metric(name: str, fake: FakeVLLM) -> str:
    return f'{name}{{endpoint="127.0.0.1:{fake.port}",provider="onprem"}}'


async def wait_for_metric(url: str, key: str, wanted: float, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while (await scrape_metrics(url)).get(key) != wanted:
            await asyncio.sleep(0.05)


async def test_load_goes_to_the_endpoint_with_fewest_outstanding_requests(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, pool: list[FakeVLLM]
) -> None:
    slow, fast, _ = pool
    await pool[2].stop()  # two endpoints make the comparison plain
    slow.behaviour.delay_s = 0.6
    fast.behaviour.delay_s = 0.02
    await wait_for_metric(sluice.url, endpoint_metric("sluice_pool_endpoint_up", pool[2]), 0)

    async def worker(until: float) -> None:
        while time.monotonic() < until:
            answer = await openai_client.chat.completions.create(model=LLAMA, messages=HELLO)
            assert answer.choices[0].message.content == fast.behaviour.reply_text

    until = time.monotonic() + 1.5
    await asyncio.gather(*(worker(until) for _ in range(4)))
    # Round robin would split them evenly; by outstanding requests the slow one gets few.
    assert len(slow.received) >= 1
    assert len(fast.received) >= 3 * len(slow.received), (len(fast.received), len(slow.received))


async def test_scraped_queue_depth_breaks_ties(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, pool: list[FakeVLLM]
) -> None:
    busy, idle, other = pool
    busy.extra_waiting = 12  # other gateways' requests queue there
    other.kv_cache_usage = 0.9  # and this one's KV cache is nearly full
    await wait_for_metric(sluice.url, endpoint_metric("sluice_pool_endpoint_waiting", busy), 12)
    await wait_for_metric(
        sluice.url, endpoint_metric("sluice_pool_endpoint_kv_cache_usage", other), 0.9
    )
    for _ in range(6):
        await openai_client.chat.completions.create(model=LLAMA, messages=HELLO)
    assert len(idle.received) == 6
    assert busy.received == [] and other.received == []


async def test_idle_endpoints_share_sequential_requests(
    openai_client: openai.AsyncOpenAI, pool: list[FakeVLLM]
) -> None:
    for _ in range(6):
        await openai_client.chat.completions.create(model=LLAMA, messages=HELLO)
    assert [len(f.received) for f in pool] == [2, 2, 2]


async def test_killed_endpoint_is_ejected_its_requests_succeed_elsewhere_and_it_returns(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, pool: list[FakeVLLM]
) -> None:
    victim, *survivors = pool
    for fake in pool:
        fake.behaviour.delay_s = 0.4
    calls = [
        asyncio.ensure_future(openai_client.chat.completions.create(model=LLAMA, messages=HELLO))
        for _ in range(9)
    ]
    async with asyncio.timeout(5):
        while victim.in_flight < 3 or sum(f.in_flight for f in pool) < 9:
            await asyncio.sleep(0.01)
    await victim.stop()  # a crash under load: its requests in flight are cut

    answers = await asyncio.gather(*calls)
    assert all(a.choices[0].message.content == victim.behaviour.reply_text for a in answers)
    assert len(victim.received) == 3
    assert sum(len(f.received) for f in survivors) == 9  # six of their own, three retried
    up = endpoint_metric("sluice_pool_endpoint_up", victim)
    metrics = await scrape_metrics(sluice.url)
    assert metrics[up] == 0
    assert metrics[endpoint_metric("sluice_pool_endpoint_ejections_total", victim)] == 1

    # While it is out, requests go to the others and succeed.
    for fake in pool:
        fake.behaviour.delay_s = 0
    for _ in range(4):
        await openai_client.chat.completions.create(model=LLAMA, messages=HELLO)
    assert sum(len(f.received) for f in survivors) == 13

    # Back on the same port: the half-open probe after the cooldown readmits it.
    await victim.restart()
    await wait_for_metric(sluice.url, up, 1)
    before = len(victim.received)
    for _ in range(6):
        await openai_client.chat.completions.create(model=LLAMA, messages=HELLO)
    assert len(victim.received) - before == 2


async def test_unhealthy_endpoint_is_ejected_before_any_request_fails(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, pool: list[FakeVLLM]
) -> None:
    sick = pool[0]
    sick.behaviour.fail_status = 503  # /health answers 503 too
    up = endpoint_metric("sluice_pool_endpoint_up", sick)
    await wait_for_metric(sluice.url, up, 0)
    for _ in range(4):
        await openai_client.chat.completions.create(model=LLAMA, messages=HELLO)
    assert sick.received == []
    sick.behaviour.fail_status = None
    await wait_for_metric(sluice.url, up, 1)


async def test_5xx_is_retried_on_another_endpoint_before_the_client_sees_it(
    openai_client: openai.AsyncOpenAI, pool: list[FakeVLLM]
) -> None:
    broken = pool[0]
    broken.behaviour.fail_status = 500
    broken.health_status = 200  # only its answers fail, so only requests can eject it
    for _ in range(3):
        answer = await openai_client.chat.completions.create(model=LLAMA, messages=HELLO)
        assert answer.choices[0].message.content == pool[1].behaviour.reply_text
    # It failed twice (the threshold) and was ejected; the retries answered every request.
    assert 1 <= len(broken.received) <= 2


async def test_streaming_request_is_retried_when_the_endpoint_is_down(
    openai_client: openai.AsyncOpenAI, pool: list[FakeVLLM]
) -> None:
    await pool[0].stop()
    for _ in range(3):
        stream = await openai_client.chat.completions.create(
            model=LLAMA, messages=HELLO, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == pool[1].behaviour.reply_text


async def test_pool_with_every_endpoint_down_answers_503_with_retry_after(
    openai_client: openai.AsyncOpenAI, pool: list[FakeVLLM]
) -> None:
    for fake in pool:
        await fake.stop()
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as caught:
            await openai_client.chat.completions.create(model=LLAMA, messages=HELLO)
        assert caught.value.status_code == 503
        assert int(caught.value.response.headers["retry-after"]) >= 1
        body = caught.value.response.json()
        assert body["error"]["code"] == "service_unavailable"
        assert "self-hosted model pool 'onprem' is unavailable" in body["error"]["message"]


def test_vllm_metrics_text_is_read_like_vllm_writes_it() -> None:
    text = (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 4.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 1.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75\n'
        'vllm:num_requests_waiting_by_reason{reason="x"} 9.0\n'
        "vllm:num_requests_running_total 99\n"
        "garbage line\n"
    )
    assert parse_vllm_metrics(text) == {
        "vllm:num_requests_running": 5.0,
        "vllm:num_requests_waiting": 5.0,
        "vllm:kv_cache_usage_perc": 0.75,
    }


async def test_fake_vllm_reports_its_real_load(pool: list[FakeVLLM]) -> None:
    fake = pool[0]
    fake.max_num_seqs = 2
    fake.behaviour.delay_s = 0.5
    async with aiohttp.ClientSession() as http:
        body = {"model": "m", "messages": HELLO}
        calls = [
            asyncio.ensure_future(http.post(fake.url + "/v1/chat/completions", json=body))
            for _ in range(3)
        ]
        async with asyncio.timeout(5):
            while fake.in_flight < 3:
                await asyncio.sleep(0.01)
        async with http.get(fake.url + "/metrics") as resp:
            values = parse_vllm_metrics(await resp.text())
        for response in await asyncio.gather(*calls):
            response.release()
    assert values["vllm:num_requests_running"] == 2
    assert values["vllm:num_requests_waiting"] == 1


def test_pool_settings_are_only_for_vllm_providers(policy_dir: Path) -> None:
    path = policy_dir / "providers.yaml"
    document = yaml.safe_load(path.read_text())
    document["providers"]["openai"]["pool"] = {"cooldown": 5}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(PolicyError) as caught:
        load_policy(policy_dir)
    assert any("`pool` is only for kind vllm" in str(p) for p in caught.value.problems)
    assert all(p.file == "providers.yaml" and p.line > 0 for p in caught.value.problems)


async def test_reload_that_changes_the_endpoints_checks_the_new_set(
    sluice: Sluice,
    openai_client: openai.AsyncOpenAI,
    pool: list[FakeVLLM],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept, dropped = pool[:2], pool[2]
    await wait_for_metric(sluice.url, endpoint_metric("sluice_pool_endpoint_up", dropped), 1)
    use_pool(sluice.policy_dir, monkeypatch, kept)
    assert sluice.store.reload(), sluice.store.last_error
    metrics = await scrape_metrics(sluice.url)
    assert endpoint_metric("sluice_pool_endpoint_up", dropped) not in metrics
    assert all(metrics[endpoint_metric("sluice_pool_endpoint_up", f)] == 1 for f in kept)
    for _ in range(4):
        await openai_client.chat.completions.create(model=LLAMA, messages=HELLO)
    assert dropped.received == []
    assert [len(f.received) for f in kept] == [2, 2]


async def test_stream_that_had_started_is_not_retried_but_ends_with_an_error_event(
    openai_client: openai.AsyncOpenAI, pool: list[FakeVLLM]
) -> None:
    victim = pool[0]
    for fake in pool:
        fake.behaviour.event_delay_s = 0.2
    stream = await openai_client.chat.completions.create(model=LLAMA, messages=HELLO, stream=True)
    assert victim.in_flight == 1  # the first pick of a fresh pool
    first = await stream.__anext__()
    assert first.choices[0].delta.role == "assistant"
    await victim.stop()
    with pytest.raises(openai.APIError) as caught:
        async for _chunk in stream:
            pass
    assert "broke during the stream" in str(caught.value)
    assert sum(len(f.received) for f in pool[1:]) == 0  # bytes had gone out: no retry


async def test_answers_that_break_off_count_against_their_endpoint(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, pool: list[FakeVLLM]
) -> None:
    """A server that accepts requests and then drops them mid-answer (its health check still
    fine) is ejected like one that refuses them; answers that end whole keep the others in."""
    victim, *others = pool
    victim.behaviour.cut_after_events = 1
    broken = 0
    for _ in range(12):
        if len(victim.received) == POOL["failure_threshold"]:
            break
        stream = await openai_client.chat.completions.create(
            model=LLAMA, messages=HELLO, stream=True
        )
        try:
            async for _chunk in stream:
                pass
        except openai.APIError as exc:
            assert "broke during the stream" in str(exc)
            broken += 1
    assert broken == len(victim.received) == POOL["failure_threshold"]
    metrics = await scrape_metrics(sluice.url)
    # (Not `sluice_pool_endpoint_up`: on a slow machine the cooldown may end, and the healthy
    # check readmit it, before the scrape.)
    assert metrics[endpoint_metric("sluice_pool_endpoint_ejections_total", victim)] == 1
    for fake in others:
        assert metrics[endpoint_metric("sluice_pool_endpoint_ejections_total", fake)] == 0
