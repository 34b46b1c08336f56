"""`/metrics`: a Redis outage of the rate limiter shows in Prometheus metrics, and heals; the
registry renders histograms and exports through OTLP instruments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from proxy.app import build_app, start_server
from proxy.metrics import Metrics
from proxy.policy.store import PolicyStore
from proxy.settings import Settings
from proxy.telemetry import bridge_metrics
from proxy.testing import FakeOIDCIssuer
from tests.conftest import RedisServer, scrape_metrics, shared_classifier, trust_oidc_issuer

HELLO: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gateway_url(
    policy_dir: Path, tmp_path: Path, redis_server: RedisServer, oidc_issuer: FakeOIDCIssuer
) -> AsyncIterator[str]:
    # OIDC identity needs no Redis, so only the limiter feels the outage.
    trust_oidc_issuer(policy_dir, oidc_issuer.url)
    roles_file = policy_dir / "roles.yaml"
    roles = yaml.safe_load(roles_file.read_text())
    roles["limits"]["on_redis_failure"] = "local"
    roles_file.write_text(yaml.safe_dump(roles))
    settings = Settings(data_dir=tmp_path / "var", redis_url=redis_server.url)
    runner, url = await start_server(
        build_app(PolicyStore.open(policy_dir), settings, classifier=shared_classifier()),
        "127.0.0.1",
        0,
    )
    try:
        yield url
    finally:
        await runner.cleanup()


async def test_redis_outage_is_counted_and_recovery_shows(
    gateway_url: str, redis_server: RedisServer, oidc_issuer: FakeOIDCIssuer
) -> None:
    token = oidc_issuer.mint({"groups": ["engineering"]})
    async with openai.AsyncOpenAI(
        base_url=gateway_url + "/v1", api_key=token, max_retries=0
    ) as client:
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert (await scrape_metrics(gateway_url))["sluice_ratelimit_redis_up"] == 1

        redis_server.stop()
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        during = await scrape_metrics(gateway_url)
        assert during["sluice_ratelimit_redis_up"] == 0
        assert during["sluice_ratelimit_redis_failures_total"] >= 1
        assert during['sluice_ratelimit_fallback_total{outcome="local"}'] >= 1

        redis_server.start()
        async with asyncio.timeout(10):
            while (await scrape_metrics(gateway_url))["sluice_ratelimit_redis_up"] != 1:
                await asyncio.sleep(0.3)
                await client.chat.completions.create(model="gpt-4o", messages=HELLO)


def test_histogram_renders_cumulative_buckets_sum_and_count() -> None:
    metrics = Metrics()
    seconds = metrics.histogram("sluice_x_seconds", "A test histogram.", buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        seconds.observe(value, filter="authz")
    lines = metrics.render().splitlines()
    assert "# TYPE sluice_x_seconds histogram" in lines
    assert 'sluice_x_seconds_bucket{filter="authz",le="0.1"} 2' in lines
    assert 'sluice_x_seconds_bucket{filter="authz",le="1"} 3' in lines
    assert 'sluice_x_seconds_bucket{filter="authz",le="+Inf"} 4' in lines
    assert 'sluice_x_seconds_sum{filter="authz"} 3.65' in lines
    assert 'sluice_x_seconds_count{filter="authz"} 4' in lines


def test_the_registry_is_exported_through_otlp_instruments() -> None:
    metrics = Metrics()
    requests = metrics.counter("sluice_requests_total", "Requests.")
    up = metrics.gauge("sluice_up", "Up.")
    metrics.on_scrape(lambda: up.set(1.0))
    seconds = metrics.histogram("sluice_x_seconds", "Seconds.")
    reader = InMemoryMetricReader()
    bridge_metrics(metrics, MeterProvider(metric_readers=[reader]).get_meter("test"))
    requests.add(2, decision="allowed")
    seconds.observe(0.2, filter="route")
    data = reader.get_metrics_data()
    assert data is not None
    exported: dict[str, list[Any]] = {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    [counted] = exported["sluice_requests_total"]
    assert counted.value == 2 and dict(counted.attributes or {}) == {"decision": "allowed"}
    assert exported["sluice_up"][0].value == 1
    [observed] = exported["sluice_x_seconds"]
    assert observed.count == 1 and dict(observed.attributes or {}) == {"filter": "route"}
