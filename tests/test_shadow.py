"""Shadow mode: every call is judged by a second policy too; differences are counted, never
enforced, and the shadow's rate limits never touch the live counts."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest

from proxy.app import model_pipeline
from proxy.classify.pool import ClassifierPool
from proxy.context import Principal, RequestContext, WireFormat
from proxy.filters.classify import Classify, detector_config
from proxy.identity.tokens import LocalTokenStore, new_record, new_token, token_hash
from proxy.metrics import Metrics
from proxy.policy.shadow import Shadow, ShadowVerdict
from proxy.policy.store import PolicyStore
from proxy.ratelimit.limiter import Limiter
from proxy.settings import Settings
from tests.conftest import Sluice, free_port, running_sluice, stop_process, wait_until_ready
from tests.test_audit import settled_records

EMAIL_PROMPT = "Draft a reply to jane.roe@example.com about the invoice."
STRICTER = "  role_actions: {employee: {confidential: block}}\n  # role_actions:"


def _shadow_copy(policy_dir: Path, target: Path, old: str = "", new: str = "") -> Path:
    target.mkdir()
    for source in policy_dir.glob("*.yaml"):
        shutil.copy(source, target / source.name)
    if old:
        path = target / "classification.yaml"
        path.write_text(path.read_text().replace(old, new))
    return target


@pytest.fixture
def shadow_dir(policy_dir: Path, tmp_path: Path) -> Path:
    """The live policy, except that employees' confidential data is blocked, not rerouted."""
    return _shadow_copy(policy_dir, tmp_path / "shadow", "  # role_actions:", STRICTER)


@pytest.fixture
async def gateway(
    policy_dir: Path, shadow_dir: Path, settings: Settings, classifier_pool: ClassifierPool
) -> AsyncIterator[Sluice]:
    shadow = PolicyStore.open(shadow_dir)
    async with running_sluice(policy_dir, settings, classifier_pool, shadow_store=shadow) as it:
        yield it


async def _shadow_counts(url: str, expected: int, timeout: float = 10) -> dict[str, float]:
    """The shadow counter's series once they add up to `expected` judgements."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url + "/metrics") as response:
                text = await response.text()
            series = {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("sluice_shadow_decisions_total{")
            }
            if sum(series.values()) >= expected or time.monotonic() > deadline:
                return series
            await asyncio.sleep(0.05)


async def test_shadow_counts_differences_and_enforces_nothing(gateway: Sluice) -> None:
    token = await gateway.issue_token("employee")
    contractor = await gateway.issue_token("contractor", "bob@vendor.example")
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=token, max_retries=0
    ) as client:
        # Live: rerouted to the self-hosted model and answered. Shadow: blocked.
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": EMAIL_PROMPT}]
        )
        assert raw.headers["x-sluice-route"] == "sensitive"
        assert raw.parse().choices[0].message.content
        # Nothing sensitive: both allow.
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Write a haiku."}]
        )
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=contractor, max_retries=0
    ) as client:
        with pytest.raises(openai.NotFoundError):  # both deny
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Hello"}]
            )
    series = await _shadow_counts(gateway.url, 3)
    assert series == {
        'sluice_shadow_decisions_total{live="rerouted",outcome="differs",shadow="blocked"}': 1,
        'sluice_shadow_decisions_total{live="allowed",outcome="same",shadow="allowed"}': 1,
        'sluice_shadow_decisions_total{live="denied",outcome="same",shadow="denied"}': 1,
    }
    # The audit log's response records carry the shadow's judgement.
    records = await settled_records(gateway, 3)
    judged = [r["shadow"] for r in records if r["kind"] == "response"]
    assert sorted((s["decision"], s["differs"]) for s in judged) == [
        ("allowed", False),
        ("blocked", True),
        ("denied", False),
    ]


@pytest.fixture
def policy_dir_two_per_minute(policy_dir: Path) -> Path:
    roles = policy_dir / "roles.yaml"
    roles.write_text(roles.read_text().replace("requests_per_minute: 60", "requests_per_minute: 2"))
    return policy_dir


async def test_shadow_does_not_consume_live_rate_limits(
    policy_dir_two_per_minute: Path, gateway: Sluice
) -> None:
    """Two requests a minute: if the shadow counted in the live limiter, the second would be
    refused."""
    token = await gateway.issue_token("employee")
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=token, max_retries=0
    ) as client:
        for sent in (1, 2):
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Write a haiku."}]
            )
            await _shadow_counts(gateway.url, sent)  # the shadow has judged it
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Write a haiku."}]
            )
    series = await _shadow_counts(gateway.url, 3)
    # The shadow's own counts (in memory of its own) reach the same limit at the same request.
    assert series == {
        'sluice_shadow_decisions_total{live="allowed",outcome="same",shadow="allowed"}': 2,
        'sluice_shadow_decisions_total{live="denied",outcome="same",shadow="denied"}': 1,
    }


async def test_shadow_policy_hot_reloads_and_shows_in_admin_status(
    gateway: Sluice, shadow_dir: Path
) -> None:
    headers = {"Authorization": f"Bearer {await gateway.issue_token('admin', 'ops@corp.example')}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/admin/policy", headers=headers) as response:
            before = (await response.json())["shadow"]
        assert before["policy_dir"] == str(shadow_dir)
        assert before["policy_version"] != gateway.store.current.version
        roles = shadow_dir / "roles.yaml"
        roles.write_text(
            roles.read_text().replace("requests_per_minute: 60", "requests_per_minute: 7")
        )
        deadline = time.monotonic() + 10
        while True:
            async with session.get(gateway.url + "/admin/policy", headers=headers) as response:
                after = (await response.json())["shadow"]
            if after["policy_version"] != before["policy_version"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert after["policy_version"] != before["policy_version"]
    assert after["loaded_at"] > before["loaded_at"]


async def test_shadow_verdict_is_left_on_the_context(
    policy_dir: Path, shadow_dir: Path, classifier_pool: ClassifierPool
) -> None:
    """What the audit record carries: {policy_version, decision, differs}."""
    live_store, shadow_store = PolicyStore.open(policy_dir), PolicyStore.open(shadow_dir)
    await classifier_pool.warm_up(detector_config(live_store.current.policy.classification))
    classify = Classify(classifier_pool)
    live = model_pipeline(Limiter(None, Metrics()), classify)
    metrics = Metrics()
    shadow = Shadow(shadow_store, model_pipeline(Limiter(None, Metrics()), classify), metrics)
    ctx = RequestContext(
        request_id="req_shadow_test",
        received_at=time.time(),
        started=time.perf_counter(),
        wire=WireFormat.OPENAI_CHAT,
        policy=live_store.current,
        headers={},
        client_address="127.0.0.1",
        body={"model": "gpt-4o", "messages": [{"role": "user", "content": EMAIL_PROMPT}]},
        requested_model="gpt-4o",
        principal=Principal("alice@corp.example", ("employee",), "token"),
    )
    received = ctx.body
    deny = await live.run(ctx)
    assert deny is None and ctx.route is not None and ctx.route.kind == "sensitive"
    shadow.judge(ctx, received, deny)
    await shadow.settled(ctx)
    assert ctx.shadow == ShadowVerdict(shadow_store.current.version, "blocked", True)
    live.finish(ctx)


async def test_serve_loads_shadow_policies_from_the_environment(
    policy_dir: Path, shadow_dir: Path, tmp_path: Path
) -> None:
    """`sluice serve` with SLUICE_SHADOW_POLICIES, as an operator starts it."""
    data_dir = tmp_path / "var"
    token = new_token()
    store = LocalTokenStore(data_dir / "tokens.sqlite3")
    try:
        record = new_record("ops@corp.example", ("admin", "employee"), ttl_seconds=3600)
        await store.add(token_hash(token), record)
    finally:
        await store.close()
    port = free_port()
    command = [sys.executable, "-m", "proxy", "serve", "--port", str(port)]
    command += ["--policies", str(policy_dir), "--data-dir", str(data_dir)]
    env = {**os.environ, "SLUICE_SHADOW_POLICIES": str(shadow_dir), "SLUICE_CLASSIFY_WORKERS": "1"}
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_ready(process, url)
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/admin/policy", headers=headers) as response,
        ):
            assert response.status == 200
            status = await response.json()
        assert status["shadow"]["policy_dir"] == str(shadow_dir)
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=token, max_retries=0) as client:
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": EMAIL_PROMPT}]
            )
        series = await _shadow_counts(url, 1)
        key = 'sluice_shadow_decisions_total{live="rerouted",outcome="differs",shadow="blocked"}'
        assert series == {key: 1}
    finally:
        stop_process(process)
