"""Operational telemetry through real requests: the access line, spans and `/metrics`.

Logs are captured with structlog's own capture, spans with an in-memory exporter handed to the
app; the fakes record the headers they receive, so trace propagation is seen as a provider sees it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import structlog
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from proxy.app import build_app, start_server
from proxy.classify.pool import ClassifierPool
from proxy.context import Deny, RequestContext, Route, TrailEntry, WireFormat
from proxy.errors import kind_for_status
from proxy.policy.store import PolicyStore
from proxy.settings import Settings
from proxy.telemetry import decision_of
from proxy.testing import FakeOpenAI, FakeVLLM
from tests.conftest import Sluice, running_sluice, scrape_metrics

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
PIPELINE = ["authn", "body_limits", "authz", "ratelimit", "classify", "route"]


def _user(text: str) -> Any:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def sluice(
    policy_dir: Path,
    settings: Settings,
    classifier_pool: ClassifierPool,
    spans: InMemorySpanExporter,
) -> AsyncIterator[Sluice]:
    """The usual gateway, with every span it makes kept in memory."""
    async with running_sluice(policy_dir, settings, classifier_pool, span_exporter=spans) as it:
        yield it


def _access(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "access"]


async def _until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """The access line of a stream is written after its last byte reached the client."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    parent_id = parent.context.span_id
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent_id]


async def test_one_access_line_with_the_request_outcome(
    logs: list[dict[str, Any]], openai_client: openai.AsyncOpenAI
) -> None:
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=_user("What is two plus two?")
    )
    [line] = _access(logs)
    assert line["request_id"] == raw.headers["x-request-id"]
    assert line["log_level"] == "info"
    assert line["endpoint"] == "openai.chat"
    assert line["subject"] == "alice@corp.example"
    assert line["auth_method"] == "token"
    assert line["model_requested"] == "gpt-4o"
    assert line["route"] == "direct" and line["provider"] == "openai"
    assert line["model_answered"] == "gpt-4o"
    assert line["status"] == 200 and line["decision"] == "allowed"
    assert line["level"] == "public" and line["entity_types"] == []
    assert line["usage"] == {"prompt_tokens": 11, "completion_tokens": 7}
    latency = line["latency_ms"]
    assert latency["total"] >= latency["upstream"] >= latency["upstream_ttfb"] > 0
    assert latency["overhead"] == pytest.approx(latency["total"] - latency["upstream"], abs=0.01)
    assert line["trace_id"] is not None


async def test_access_line_names_entity_types_of_rerouted_and_blocked_requests(
    logs: list[dict[str, Any]], openai_client: openai.AsyncOpenAI
) -> None:
    await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user(f"Please write to {EMAIL}.")
    )
    with pytest.raises(openai.BadRequestError):
        await openai_client.chat.completions.create(
            model="gpt-4o", messages=_user(f"My card is {CARD}.")
        )
    rerouted, blocked = _access(logs)
    assert rerouted["decision"] == "rerouted" and rerouted["route"] == "sensitive"
    assert rerouted["model_requested"] == "gpt-4o"
    assert rerouted["model_answered"] == "llama-3.3-70b"
    assert rerouted["level"] == "confidential"
    assert rerouted["entity_types"] == ["EMAIL_ADDRESS"]
    assert rerouted["entity_counts"] == {"EMAIL_ADDRESS": 1}
    assert blocked["decision"] == "blocked" and blocked["status"] == 400
    assert blocked["level"] == "restricted" and blocked["entity_types"] == ["CREDIT_CARD"]
    assert blocked["model_answered"] is None and blocked["latency_ms"]["upstream"] is None
    assert EMAIL not in repr(logs) and CARD not in repr(logs)


async def test_unknown_model_is_hashed_not_logged(
    logs: list[dict[str, Any]], openai_client: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.NotFoundError):
        await openai_client.chat.completions.create(
            model="my-secret-project-model", messages=_user("hi")
        )
    [line] = _access(logs)
    assert line["decision"] == "denied" and line["status"] == 404
    assert line["model_requested"] == "other"
    assert len(line["model_requested_sha256"]) == 12
    assert "my-secret-project-model" not in repr(logs)


async def test_streamed_request_and_model_list_get_one_line_each(
    logs: list[dict[str, Any]], openai_client: openai.AsyncOpenAI
) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user("Tell me a story."), stream=True
    )
    async for _chunk in stream:
        pass
    await _until(lambda: len(_access(logs)) == 1)
    [line] = _access(logs)
    assert line["stream"] is True and line["status"] == 200
    assert line["usage"] == {"prompt_tokens": 11, "completion_tokens": 7}
    assert line["latency_ms"]["upstream_ttfb"] is not None

    await openai_client.models.list()
    listed = _access(logs)[1]
    assert listed["endpoint"] == "openai.models" and listed["status"] == 200
    assert listed["decision"] == "allowed" and listed["route"] is None


async def test_lifecycle_events_are_logged(
    policy_dir: Path, settings: Settings, classifier_pool: ClassifierPool
) -> None:
    with structlog.testing.capture_logs() as captured:
        app = build_app(PolicyStore.open(policy_dir), settings, classifier=classifier_pool)
        runner, _url = await start_server(app, "127.0.0.1", 0)
        await runner.cleanup()
    events = [entry["event"] for entry in captured]
    assert events[:2] == ["audit_log_open", "gateway_started"]
    # The audit chain's head as it closes: an anchor for `sluice audit verify --anchors`.
    assert events[-3:] == ["gateway_stopping", "audit_head", "gateway_stopped"]
    assert captured[1]["tracing"] is False
    head = captured[-2]
    assert head["seq"] >= 1 and len(head["hash"]) == 64
    assert head["segment"].startswith("audit-")


async def test_one_server_span_with_a_child_per_filter_and_the_upstream_call(
    spans: InMemorySpanExporter, openai_client: openai.AsyncOpenAI
) -> None:
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=_user("What is two plus two?")
    )
    finished = list(spans.get_finished_spans())
    [server] = [s for s in finished if s.kind is SpanKind.SERVER]
    assert server.name == "POST /v1/chat/completions"
    assert server.parent is None
    attributes = dict(server.attributes or {})
    assert attributes["sluice.request_id"] == raw.headers["x-request-id"]
    assert attributes["sluice.model"] == "gpt-4o"
    assert attributes["sluice.route"] == "direct"
    assert attributes["http.response.status_code"] == 200
    assert attributes["sluice.decision"] == "allowed"
    assert attributes["sluice.level"] == "public"
    children = _children(finished, server)
    assert [s.name for s in children if s.name.startswith("filter ")] == [
        f"filter {name}" for name in PIPELINE
    ]
    [upstream] = [s for s in children if s.kind is SpanKind.CLIENT]
    assert upstream.name == "upstream openai"
    upstream_attributes = dict(upstream.attributes or {})
    assert upstream_attributes["sluice.provider_trust"] == "external"
    assert upstream_attributes["http.response.status_code"] == 200
    for child in children:
        assert child.start_time is not None and server.start_time is not None
        assert server.start_time <= child.start_time
        assert child.end_time is not None and server.end_time is not None
        assert child.end_time <= server.end_time


async def test_a_denied_request_has_filter_spans_up_to_the_denial(
    spans: InMemorySpanExporter, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError):
        await openai_client.chat.completions.create(
            model="gpt-4o", messages=_user(f"My card is {CARD}.")
        )
    finished = list(spans.get_finished_spans())
    [server] = [s for s in finished if s.kind is SpanKind.SERVER]
    children = _children(finished, server)
    assert [s.name for s in children] == [f"filter {n}" for n in PIPELINE[:5]]
    assert dict(children[-1].attributes or {})["sluice.verdict"] == "deny"
    attributes = dict(server.attributes or {})
    assert attributes["sluice.decision"] == "blocked"
    assert attributes["sluice.entity_types"] == ("CREDIT_CARD",)
    assert fake_openai.received == []


async def test_traceparent_is_continued_and_reaches_internal_upstreams_only(
    spans: InMemorySpanExporter,
    openai_client: openai.AsyncOpenAI,
    fake_openai: FakeOpenAI,
    fake_vllm: FakeVLLM,
) -> None:
    header, trace_id, client_span = _traceparent()
    await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user("hi"), extra_headers={"traceparent": header}
    )
    assert "traceparent" not in fake_openai.received[0].headers

    await openai_client.chat.completions.create(
        model="llama-3.3-70b",
        messages=_user("hi"),
        extra_headers={"traceparent": header, "tracestate": "vendor=anything-a-client-says"},
    )
    assert "tracestate" not in fake_vllm.received[0].headers
    sent = fake_vllm.received[0].headers["traceparent"]
    assert sent != header  # the gateway's own span, in the client's trace
    finished = list(spans.get_finished_spans())
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    assert len(servers) == 2
    for server in servers:
        assert _hex(server.context.trace_id, 32) == trace_id
        assert server.parent is not None and _hex(server.parent.span_id, 16) == client_span
    [to_vllm] = [s for s in finished if s.name == "upstream onprem"]
    assert sent == f"00-{trace_id}-{_hex(to_vllm.context.span_id, 16)}-01"


async def test_traceparent_reaches_cloud_upstreams_when_settings_allow(
    policy_dir: Path, tmp_path: Path, classifier_pool: ClassifierPool, fake_openai: FakeOpenAI
) -> None:
    settings = Settings(data_dir=tmp_path / "var", trace_external_upstreams=True)
    store = PolicyStore.open(policy_dir)
    app = build_app(
        store,
        settings,
        classifier=classifier_pool,
        span_exporter=InMemorySpanExporter(),
    )
    runner, url = await start_server(app, "127.0.0.1", 0)
    try:
        token = await Sluice(url, store, app, policy_dir, settings).issue_token()
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=token) as client:
            await client.chat.completions.create(model="gpt-4o", messages=_user("hi"))
    finally:
        await runner.cleanup()
    assert fake_openai.received[0].headers["traceparent"].startswith("00-")


async def test_without_an_exporter_no_span_is_made_and_nothing_is_propagated(
    policy_dir: Path, settings: Settings, classifier_pool: ClassifierPool, fake_vllm: FakeVLLM
) -> None:
    # No exporter and no OTLP endpoint: tracing is off.
    store = PolicyStore.open(policy_dir)
    app = build_app(store, settings, classifier=classifier_pool)
    runner, url = await start_server(app, "127.0.0.1", 0)
    try:
        token = await Sluice(url, store, app, policy_dir, settings).issue_token()
        header, _, _ = _traceparent()
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=token) as client:
            await client.chat.completions.create(
                model="llama-3.3-70b", messages=_user("hi"), extra_headers={"traceparent": header}
            )
    finally:
        await runner.cleanup()
    assert "traceparent" not in fake_vllm.received[0].headers


async def test_request_metrics_after_requests(
    sluice: Sluice, openai_client: openai.AsyncOpenAI
) -> None:
    await openai_client.chat.completions.create(model="gpt-4o", messages=_user("hi"))
    await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user(f"Please write to {EMAIL}.")
    )
    with pytest.raises(openai.BadRequestError):
        await openai_client.chat.completions.create(
            model="gpt-4o", messages=_user(f"My card is {CARD}.")
        )
    m = await scrape_metrics(sluice.url)
    allowed = (
        'sluice_requests_total{decision="allowed",endpoint="openai.chat",model="gpt-4o",'
        'route="direct",status="200"}'
    )
    assert m[allowed] == 1
    rerouted = allowed.replace("allowed", "rerouted").replace("direct", "sensitive")
    assert m[rerouted] == 1
    blocked = (
        'sluice_requests_total{decision="blocked",endpoint="openai.chat",model="gpt-4o",'
        'route="none",status="400"}'
    )
    assert m[blocked] == 1
    assert m['sluice_tokens_total{direction="in",model="gpt-4o"}'] == 11
    assert m['sluice_tokens_total{direction="out",model="llama-3.3-70b"}'] == 7
    assert m['sluice_findings_total{entity_type="EMAIL_ADDRESS"}'] == 1
    assert m['sluice_findings_total{entity_type="CREDIT_CARD"}'] == 1
    assert m['sluice_blocked_total{level="restricted"}'] == 1
    assert m['sluice_rerouted_total{level="confidential"}'] == 1
    assert m['sluice_filter_duration_seconds_count{filter="classify"}'] == 3
    assert m['sluice_filter_duration_seconds_count{filter="route"}'] == 2
    assert m['sluice_filter_duration_seconds_bucket{filter="authn",le="+Inf"}'] == 3
    assert m['sluice_gateway_overhead_seconds_count{endpoint="openai.chat"}'] == 3
    assert m['sluice_upstream_duration_seconds_count{provider="openai"}'] == 1
    assert m['sluice_upstream_ttfb_seconds_count{provider="onprem"}'] == 1


async def test_otlp_export_reaches_a_collector(
    policy_dir: Path,
    tmp_path: Path,
    classifier_pool: ClassifierPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, spans and metrics go out over OTLP/HTTP."""
    received: dict[str, int] = {}

    async def collect(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        received[request.path] = received.get(request.path, 0) + len(await request.read())
        return web.Response(status=200)

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    collector.router.add_post("/v1/metrics", collect)
    collector_runner, collector_url = await start_server(collector, "127.0.0.1", 0)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url)
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector_url, "SLUICE_DATA_DIR": str(tmp_path)}
    settings = Settings.from_env(environ)
    assert settings.otlp_traces and settings.otlp_metrics
    app = build_app(PolicyStore.open(policy_dir), settings, classifier=classifier_pool)
    runner, url = await start_server(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http, http.get(url + "/v1/models") as resp:
            assert resp.status == 401
    finally:
        await runner.cleanup()  # flushes both exporters
        await collector_runner.cleanup()
    assert received.get("/v1/traces", 0) > 0
    assert received.get("/v1/metrics", 0) > 0


def test_settings_read_the_standard_otel_variables() -> None:
    assert not Settings.from_env({}).otlp_traces
    only_traces = Settings.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"})
    assert only_traces.otlp_traces and not only_traces.otlp_metrics
    named = Settings.from_env(
        {"OTEL_SERVICE_NAME": "gw-eu", "SLUICE_TRACE_EXTERNAL_UPSTREAMS": "1"}
    )
    assert named.service_name == "gw-eu" and named.trace_external_upstreams


def test_logged_exceptions_keep_their_type_and_lose_their_text() -> None:
    """`sluice serve`'s logging: one JSON object a line for Sluice's events and the libraries'
    alike, and an exception's message and traceback (which can quote a request) never."""
    script = """
import logging, structlog
from proxy.log import configure_logging
configure_logging("info")
try:
    raise ValueError("sk-proj-canary-in-an-exception-message")
except ValueError:
    logging.getLogger("aiohttp.server").exception("Error handling request")
    structlog.get_logger("sluice").error("request_failed", exc_info=True)
structlog.get_logger("sluice.access").info("access", request_id="req_1")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["event"] for line in lines] == [
        "Error handling request",
        "request_failed",
        "access",
    ]
    assert lines[0]["error_type"] == lines[1]["error_type"] == "ValueError"
    assert lines[0]["logger"] == "aiohttp.server" and lines[0]["level"] == "error"
    assert "canary" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("trail", "status", "route", "decision"),
    [
        ([("authn", "deny")], 401, None, "denied"),
        ([("authn", "deny")], 503, None, "failed"),  # the identity provider was down
        ([("authn", "pass"), ("classify", "deny")], 400, None, "blocked"),
        ([("authn", "pass"), ("classify", "deny")], 503, None, "failed"),  # classifier down
        ([("authn", "pass"), ("ratelimit", "deny")], 429, None, "denied"),
        ([("authn", "pass"), ("authz", "error")], 500, None, "failed"),
        ([("authn", "pass")], 400, None, "denied"),  # unreadable body
        ([("authn", "pass"), ("route", "pass")], 200, "direct", "allowed"),
        ([("authn", "pass"), ("route", "pass")], 200, "sensitive", "rerouted"),
        ([("authn", "pass"), ("route", "pass")], 502, "direct", "failed"),
        ([("authn", "pass"), ("route", "pass")], 499, "direct", "allowed"),  # client left
    ],
)
def test_decision_names_what_the_gateway_did(
    policy_dir: Path, trail: list[tuple[str, str]], status: int, route: str | None, decision: str
) -> None:
    ctx = RequestContext(
        request_id="req_1",
        received_at=0.0,
        started=0.0,
        wire=WireFormat.OPENAI_CHAT,
        policy=PolicyStore.open(policy_dir).current,
        headers={},
        client_address=None,
    )
    ctx.trail = [TrailEntry(name, verdict, None, 0.1) for name, verdict in trail]
    ctx.status = status
    if trail[-1][1] == "deny":
        # The refusal the client got, as the handler records it with the status.
        blocked = trail[-1][0] == "classify" and status == 400
        code = "sensitive_data_blocked" if blocked else None
        ctx.denied = Deny(kind_for_status(status), "refused", code=code)
    if route is not None:
        ctx.route = Route("gpt-4o", "openai", "gpt-4o", route)
    assert decision_of(ctx) == decision
