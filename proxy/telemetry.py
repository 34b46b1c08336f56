"""Operational telemetry per request: the access log line, trace spans and request metrics.

Everything recorded here is an id, a count, a name the policy defines, a status or a type;
prompt text, credentials and detected values never are. Tracing costs nothing when it is off.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy.metrics import Histogram, Metric, Metrics, Series
from proxy.policy.outcome import deny_decision
from proxy.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
    from opentelemetry.sdk.metrics import MeterProvider

    from proxy.context import RequestContext
    from proxy.upstream.base import Upstream

log = structlog.get_logger("sluice.access")
lifecycle = structlog.get_logger("sluice")

_PROPAGATOR = TraceContextTextMapPropagator()
_NO_HEADERS: AbstractContextManager[dict[str, str] | None] = nullcontext(None)


def decision_of(ctx: RequestContext) -> str:
    """What the gateway did with the request: allowed, masked, rerouted, blocked (for its
    content), denied (who asked, how often, or an unreadable request) or failed."""
    trail = ctx.trail
    status = ctx.status
    if any(entry.verdict == "error" for entry in trail):
        return "failed"
    if ctx.denied is not None:
        # The same words `sluice policy test|replay` and shadow mode use for a refusal.
        return deny_decision(ctx.denied)
    if ctx.route is None:
        if status is not None and 400 <= status < 500 and status != 499:
            return "denied"
        return "allowed" if status is not None and status < 400 else "failed"
    if status is not None and status >= 400 and status != 499:
        return "failed"
    if ctx.route.kind == "sensitive":
        return "rerouted"
    if ctx.masker is not None:
        return "masked"
    return "allowed"


def requested_model_label(ctx: RequestContext) -> str:
    """The requested model when the policy names it; a client can put anything in `model`,
    so an unknown name is never logged or used as a label as it was sent."""
    model = ctx.requested_model
    if not model:
        return "none"
    if model in ctx.policy.policy.models:
        return model
    return "other"


def _unknown_model_digest(ctx: RequestContext) -> str | None:
    """A short hash of an unknown model name: enough to see one client repeating one typo."""
    model = ctx.requested_model
    if not model or model in ctx.policy.policy.models:
        return None
    return hashlib.sha256(model.encode()).hexdigest()[:12]


class RequestTrace:
    """The spans of one request: the server span, and children created from the pipeline's own
    timings (filters) or around the upstream exchange."""

    __slots__ = ("_anchor_ns", "_anchor_perf", "_parent", "_tracer", "span")

    def __init__(self, tracer: Tracer, span: Span, started_perf: float) -> None:
        self._tracer = tracer
        self.span = span
        self._parent = trace.set_span_in_context(span)
        self._anchor_ns = time.time_ns()
        self._anchor_perf = started_perf

    def _ns(self, perf: float) -> int:
        return self._anchor_ns + int((perf - self._anchor_perf) * 1e9)

    def filter_span(self, name: str, started: float, ended: float, verdict: str) -> None:
        """A finished child span for one filter, from the pipeline's perf_counter timings."""
        span = self._tracer.start_span(
            f"filter {name}",
            context=self._parent,
            start_time=self._ns(started),
            attributes={"sluice.filter": name, "sluice.verdict": verdict},
            record_exception=False,
            set_status_on_exception=False,
        )
        if verdict == "error":
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=self._ns(ended))

    @contextmanager
    def upstream_span(
        self, ctx: RequestContext, upstream: Upstream, propagate: bool
    ) -> Iterator[dict[str, str] | None]:
        """A client span around the whole upstream exchange (stream included); yields the
        `traceparent` header for the provider when it may see it."""
        span = self._tracer.start_span(
            f"upstream {upstream.name}",
            context=self._parent,
            kind=SpanKind.CLIENT,
            attributes={
                "sluice.request_id": ctx.request_id,
                "sluice.provider": upstream.name,
                "sluice.provider_trust": upstream.config.trust_level,
                "sluice.route": ctx.route.kind if ctx.route else "none",
                "sluice.model": ctx.route.model if ctx.route else "none",
            },
            record_exception=False,
            set_status_on_exception=False,
        )
        headers: dict[str, str] | None = None
        if propagate:
            headers = {}
            _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        try:
            yield headers
        except BaseException as exc:
            # The type only: an exception's message can quote what it failed on.
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR))
            raise
        finally:
            if ctx.status is not None:
                span.set_attribute("http.response.status_code", ctx.status)
            if ctx.upstream_ttfb_ms is not None:
                span.set_attribute("sluice.upstream.ttfb_ms", round(ctx.upstream_ttfb_ms, 3))
            span.end()


@dataclass(frozen=True, slots=True)
class Tracing:
    """The tracer provider of this app (never the process-global one) and its tracer."""

    provider: TracerProvider
    tracer: Tracer

    @classmethod
    def start(cls, settings: Settings, exporter: SpanExporter | None) -> Tracing | None:
        """None when there is nowhere to send spans: then no span is ever made."""
        if exporter is not None:
            processor: SimpleSpanProcessor | BatchSpanProcessor = SimpleSpanProcessor(exporter)
        elif settings.otlp_traces:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter())
        else:
            return None
        provider = TracerProvider(resource=_resource(settings))
        provider.add_span_processor(processor)
        return cls(provider, provider.get_tracer("sluice"))

    async def close(self) -> None:
        # Flushing a batch exporter is blocking network I/O: off the event loop.
        await asyncio.to_thread(self.provider.shutdown)


def _resource(settings: Settings) -> Resource:
    return Resource.create({"service.name": settings.service_name})


class Telemetry:
    """Per-request telemetry, hung off the app. `begin` when a request arrives, `end` once
    however it ended; `upstream_call` around the exchange with the provider."""

    def __init__(self, settings: Settings, metrics: Metrics, tracing: Tracing | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        self._tracer = tracing.tracer if tracing is not None else None
        self._requests = metrics.counter(
            "sluice_requests_total",
            "Requests by endpoint, requested model, route, status and decision.",
        )
        self._tokens = metrics.counter(
            "sluice_tokens_total", "Tokens the providers reported, by model and direction."
        )
        self._findings = metrics.counter(
            "sluice_findings_total", "Sensitive-data findings in requests, by entity type."
        )
        self._blocked = metrics.counter(
            "sluice_blocked_total", "Requests blocked for their content, by level."
        )
        self._rerouted = metrics.counter(
            "sluice_rerouted_total", "Requests rerouted to the sensitive route, by level."
        )
        self._filter_seconds = metrics.histogram(
            "sluice_filter_duration_seconds", "Time each filter took on a request."
        )
        self._overhead_seconds = metrics.histogram(
            "sluice_gateway_overhead_seconds",
            "Time a request spent in the gateway itself (total minus the upstream exchange).",
        )
        self._upstream_seconds = metrics.histogram(
            "sluice_upstream_duration_seconds",
            "The whole upstream exchange, stream included, by provider.",
        )
        self._ttfb_seconds = metrics.histogram(
            "sluice_upstream_ttfb_seconds",
            "Upstream time to first byte (first event of a stream), by provider.",
        )
        # Each histogram's series by its one label's value: filters, endpoints and providers
        # are few, and looking a series up this way is the cheap part of a request's metrics.
        self._series: dict[tuple[str, str], Series] = {}

    def _series_of(self, histogram: Histogram, label: str, value: str) -> Series:
        series = self._series.get((histogram.name, value))
        if series is None:
            series = self._series[histogram.name, value] = histogram.labels(**{label: value})
        return series

    def begin(self, ctx: RequestContext, method: str) -> None:
        """Start the server span, continuing the client's trace if it sent `traceparent`."""
        if self._tracer is None:
            return
        parent: Context | None = None
        traceparent = ctx.headers.get("traceparent")
        if traceparent is not None:
            # `tracestate` is not taken: it is free text a client could fill with anything,
            # and it would travel on to the providers and the collector.
            parent = _PROPAGATOR.extract({"traceparent": traceparent})
        span = self._tracer.start_span(
            f"{method} {ctx.wire.path}",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=time.time_ns(),
            attributes={
                "sluice.request_id": ctx.request_id,
                "sluice.endpoint": ctx.wire.value,
                "http.request.method": method,
                "url.path": ctx.wire.path,
            },
            record_exception=False,
            set_status_on_exception=False,
        )
        ctx.trace = RequestTrace(self._tracer, span, time.perf_counter())

    def upstream_call(
        self, ctx: RequestContext, upstream: Upstream
    ) -> AbstractContextManager[dict[str, str] | None]:
        """Around the exchange with `upstream`: its span, and the trace headers it may see.
        Internal providers always get `traceparent`; cloud ones only when settings say so."""
        if ctx.trace is None:
            return _NO_HEADERS
        propagate = (
            upstream.config.trust_level == "internal" or self.settings.trace_external_upstreams
        )
        return ctx.trace.upstream_span(ctx, upstream, propagate)

    def end(self, ctx: RequestContext) -> None:
        """The access line, the request's metrics and the end of its server span. Never raises:
        telemetry must not turn an answered request into a failed one."""
        try:
            self._end(ctx)
        except Exception as exc:
            lifecycle.error(
                "telemetry_failed", request_id=ctx.request_id, error_type=type(exc).__name__
            )

    def _end(self, ctx: RequestContext) -> None:
        total_ms = (time.perf_counter() - ctx.started) * 1000
        upstream_ms = ctx.upstream_ms
        overhead_ms = total_ms - upstream_ms if upstream_ms is not None else total_ms
        status = ctx.status if ctx.status is not None else 499
        decision = decision_of(ctx)
        model = requested_model_label(ctx)
        route = ctx.route
        classified = ctx.classification
        level = classified.level.label if classified is not None else None
        entities = classified.entity_counts if classified is not None else {}
        principal = ctx.principal
        usage = ctx.usage

        log.info(
            "access",
            request_id=ctx.request_id,
            endpoint=ctx.wire.value,
            subject=principal.subject if principal else None,
            auth_method=principal.auth_method if principal else None,
            token_id=principal.token_id if principal else None,
            model_requested=model,
            model_requested_sha256=_unknown_model_digest(ctx),
            stream=ctx.stream,
            route=route.kind if route else None,
            provider=route.provider if route else None,
            model_answered=route.model if route and ctx.upstream_ttfb_ms is not None else None,
            status=status,
            decision=decision,
            level=level,
            entity_types=sorted(entities),
            entity_counts=entities,
            latency_ms={
                "total": round(total_ms, 3),
                "overhead": round(overhead_ms, 3),
                "upstream_ttfb": _round(ctx.upstream_ttfb_ms),
                "upstream": _round(upstream_ms),
            },
            usage={
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            },
            policy_version=ctx.policy.version,
            trace_id=_trace_id(ctx),
        )

        route_label = route.kind if route else "none"
        self._requests.add(
            endpoint=ctx.wire.value,
            model=model,
            route=route_label,
            status=str(status),
            decision=decision,
        )
        if usage.reported and route is not None:
            self._tokens.add(usage.prompt_tokens, model=route.model, direction="in")
            self._tokens.add(usage.completion_tokens, model=route.model, direction="out")
        for entity, count in entities.items():
            self._findings.add(count, entity_type=entity)
        if decision == "blocked":
            self._blocked.add(level=level or "none")
        elif decision == "rerouted":
            self._rerouted.add(level=level or "none")
        series = self._series_of
        for entry in ctx.trail:
            series(self._filter_seconds, "filter", entry.filter).observe(entry.ms / 1000)
        series(self._overhead_seconds, "endpoint", ctx.wire.value).observe(overhead_ms / 1000)
        if route is not None and upstream_ms is not None:
            provider = route.provider
            series(self._upstream_seconds, "provider", provider).observe(upstream_ms / 1000)
            if ctx.upstream_ttfb_ms is not None:
                ttfb = ctx.upstream_ttfb_ms / 1000
                series(self._ttfb_seconds, "provider", provider).observe(ttfb)

        if ctx.trace is not None:
            span = ctx.trace.span
            span.set_attributes(
                {
                    "http.response.status_code": status,
                    "sluice.model": model,
                    "sluice.route": route_label,
                    "sluice.decision": decision,
                    "sluice.stream": ctx.stream,
                    "sluice.usage.prompt_tokens": usage.prompt_tokens,
                    "sluice.usage.completion_tokens": usage.completion_tokens,
                }
            )
            if level is not None:
                span.set_attribute("sluice.level", level)
                span.set_attribute("sluice.entity_types", sorted(entities))
            if route is not None:
                span.set_attribute("sluice.provider", route.provider)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()


def _round(ms: float | None) -> float | None:
    return round(ms, 3) if ms is not None else None


def _trace_id(ctx: RequestContext) -> str | None:
    if ctx.trace is None:
        return None
    return format(ctx.trace.span.get_span_context().trace_id, "032x")


def bridge_metrics(metrics: Metrics, meter: Meter) -> None:
    """Export the Prometheus registry through OTLP too: counters and gauges are read at each
    export, histogram observations are mirrored as they happen."""
    from opentelemetry.metrics import Observation

    for metric in metrics.scalars():

        def observe(options: CallbackOptions, metric: Metric = metric) -> Iterable[Observation]:
            if metric.kind == "gauge":
                metrics.collect()
            return [Observation(v, dict(k)) for k, v in list(metric.values.items())]

        if metric.kind == "counter":
            meter.create_observable_counter(metric.name, [observe], description=metric.help)
        else:
            meter.create_observable_gauge(metric.name, [observe], description=metric.help)
    for histogram in metrics.histograms():
        instrument = meter.create_histogram(
            histogram.name,
            unit="s",
            description=histogram.help,
            explicit_bucket_boundaries_advisory=list(histogram.buckets),
        )
        histogram.mirror = lambda value, labels, i=instrument: i.record(value, labels)


def start_metrics_export(settings: Settings, metrics: Metrics) -> MeterProvider | None:
    """An OTLP metrics exporter of this app's registry, when the environment names a collector."""
    if not settings.otlp_metrics:
        return None
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    provider = MeterProvider(metric_readers=[reader], resource=_resource(settings))
    bridge_metrics(metrics, provider.get_meter("sluice"))
    return provider


TELEMETRY = web.AppKey("telemetry", Telemetry)
