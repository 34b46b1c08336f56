"""Builds the aiohttp application: routes, middleware and the startup/shutdown of its parts.

Everything the handlers use is created in one cleanup context and hung off the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import structlog
from aiohttp import web, web_protocol
from aiohttp.web_request import BaseRequest
from opentelemetry.sdk.trace.export import SpanExporter

from proxy.admin import policy_status, reload_policy
from proxy.audit.chain import Chain
from proxy.audit.recorder import AuditRecorder
from proxy.audit.sink import AuditSink
from proxy.classify.pool import ClassifierPool
from proxy.context import MODEL_CALLS
from proxy.dashboard import setup_dashboard
from proxy.errors import WireFamily, error_response, kind_for_status
from proxy.filters.authn import Authenticate
from proxy.filters.authz import Authorize
from proxy.filters.body_limits import BodyLimits
from proxy.filters.classify import Classify, detector_config
from proxy.filters.ratelimit import RateLimit
from proxy.filters.route import ModelRoute
from proxy.handler import (
    GATEWAY,
    Gateway,
    health,
    list_models,
    metrics_text,
    model_endpoint,
    new_request_id,
    ready,
    request_ids,
)
from proxy.identity.jwks import KeySets
from proxy.identity.oidc import OidcVerifier
from proxy.identity.tokens import PersonalTokenVerifier, open_token_store
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline
from proxy.policy.shadow import Shadow
from proxy.policy.store import PolicyStore
from proxy.ratelimit.limiter import Limiter
from proxy.settings import Settings
from proxy.telemetry import TELEMETRY, Telemetry, Tracing, start_metrics_export
from proxy.upstream.registry import UpstreamRegistry

log = structlog.get_logger("sluice")

# The same server options for `sluice serve` and for tests: a client that disconnects
# cancels its handler, and with it the upstream call.
# Header lines up to 64 KiB, so an oversized token reaches authn and gets a proper 401.
RUNNER_OPTIONS: dict[str, Any] = {
    "handler_cancellation": True,
    "access_log": None,
    "max_field_size": 64 * 1024,
}


def model_pipeline(limiter: Limiter, classify: Classify) -> Pipeline:
    """The filters every model call passes, in order. Routing is last before egress.

    The one list of them: `sluice serve`, shadow mode and the offline policy tools
    (`sluice policy test|explain|replay`) all judge requests with what this builds.
    """
    return Pipeline([BodyLimits(), Authorize(), RateLimit(limiter), classify, ModelRoute()])


def build_app(
    store: PolicyStore,
    settings: Settings | None = None,
    *,
    watch_interval: float = 1.0,
    reload_on_sighup: bool = False,
    classifier: ClassifierPool | None = None,
    shadow_store: PolicyStore | None = None,
    span_exporter: SpanExporter | None = None,
) -> web.Application:
    """The gateway app. `classifier` lets several apps (tests, benchmarks) share one worker
    pool; without it the app starts and stops its own. `shadow_store` is a second policy every
    model call is also judged by, without enforcing it (shadow mode). `span_exporter` receives
    every span (tests pass an in-memory one); without it spans go to OTLP when the environment
    names a collector, and are not made at all otherwise."""
    settings = settings or Settings.from_env()
    app = web.Application(middlewares=[request_ids])

    async def telemetry(app: web.Application) -> AsyncIterator[None]:
        # First up, last down: spans and metrics of requests settling at shutdown still count.
        tracing = Tracing.start(settings, span_exporter)
        app[TELEMETRY] = Telemetry(settings, Metrics(), tracing)
        try:
            yield
        finally:
            if tracing is not None:
                await tracing.close()

    async def gateway(app: web.Application) -> AsyncIterator[None]:
        metrics = app[TELEMETRY].metrics
        # What startup opens is closed again if a later step fails (an unwritable audit
        # directory, say); once started, the `finally` below closes it all in its own order.
        async with contextlib.AsyncExitStack() as startup:
            upstreams = UpstreamRegistry(metrics)
            startup.push_async_callback(upstreams.close)
            # vLLM pools start checking their endpoints now, and again after each reload.
            upstreams.follow(store.current)
            store.on_change(upstreams.follow)
            idp_session = aiohttp.ClientSession()
            startup.push_async_callback(idp_session.close)
            tokens = open_token_store(settings.redis_url, settings.data_dir)
            startup.push_async_callback(tokens.close)
            limiter = Limiter(settings.redis_url, metrics)
            startup.push_async_callback(limiter.close)
            pool = classifier or ClassifierPool(settings.classify_workers)
            if classifier is None:
                startup.push_async_callback(pool.close)
            if store.current.policy.classification.enabled:
                await pool.warm_up(detector_config(store.current.policy.classification))
            classify = Classify(pool)
            shadow = None
            if shadow_store is not None:
                shadow = await _start_shadow(shadow_store, classify, pool, metrics)
                startup.push_async_callback(shadow.close)
            audit = await _open_audit(store, settings)
            startup.pop_all()
        app[GATEWAY] = Gateway(
            store,
            upstreams,
            # Only headers are needed to authenticate: before the body is read.
            identify=Pipeline(
                [Authenticate(OidcVerifier(KeySets(idp_session)), PersonalTokenVerifier(tokens))]
            ),
            pipeline=model_pipeline(limiter, classify),
            limiter=limiter,
            metrics=metrics,
            shadow=shadow,
            audit=audit,
        )
        stores = [store] if shadow_store is None else [store, shadow_store]
        watchers = (
            [asyncio.create_task(s.watch(watch_interval)) for s in stores]
            if watch_interval > 0
            else []
        )
        loop = asyncio.get_running_loop()
        if reload_on_sighup:
            loop.add_signal_handler(signal.SIGHUP, lambda: [s.reload() for s in stores])
        log.info(
            "gateway_started",
            policy_version=store.current.version,
            policy_files=len(store.current.files),
            redis=settings.redis_url is not None,
            tracing=app[TELEMETRY].tracing is not None,
            otlp_metrics=settings.otlp_metrics,
        )
        try:
            yield
        finally:
            log.info("gateway_stopping", in_flight_settling=len(app[GATEWAY].settling))
            if reload_on_sighup:
                loop.remove_signal_handler(signal.SIGHUP)
            for watcher in watchers:
                watcher.cancel()
            if shadow is not None:
                await shadow.close()
            gateway_state = app[GATEWAY]
            if gateway_state.settling:
                await asyncio.gather(*gateway_state.settling, return_exceptions=True)
            await audit.close()
            await upstreams.close()
            await idp_session.close()
            await tokens.close()
            await limiter.close()
            if classifier is None:
                await pool.close()
            log.info("gateway_stopped")

    async def metrics_export(app: web.Application) -> AsyncIterator[None]:
        # After the gateway, so every metric its parts registered is exported.
        provider = start_metrics_export(settings, app[TELEMETRY].metrics)
        try:
            yield
        finally:
            if provider is not None:
                await asyncio.to_thread(provider.shutdown)

    app.cleanup_ctx.append(telemetry)
    app.cleanup_ctx.append(gateway)
    app.cleanup_ctx.append(metrics_export)
    for wire in MODEL_CALLS:
        app.router.add_post(wire.path, model_endpoint(wire))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/admin/policy", policy_status)
    app.router.add_post("/admin/reload", reload_policy)
    setup_dashboard(app, store, settings)  # the security team's web UI under /dashboard
    return app


async def _start_shadow(
    store: PolicyStore, classify: Classify, pool: ClassifierPool, metrics: Metrics
) -> Shadow:
    """Shadow mode's pipeline: the live filters (sharing the classify filter, so a text the
    live pipeline classified is not classified again) with rate limits counted in memory of
    their own, never in the live counts."""
    classification = store.current.policy.classification
    if classification.enabled:
        await pool.warm_up(detector_config(classification))
    return Shadow(store, model_pipeline(Limiter(None, Metrics()), classify), metrics)


async def _open_audit(store: PolicyStore, settings: Settings) -> AuditRecorder:
    """The audit log named by the policy at startup; reloads change its limits, not its place.
    A directory that cannot be written stops startup: no audit, no egress."""
    config = store.current.policy.audit
    if not config.enabled:
        return AuditRecorder(None)
    directory = settings.audit_dir(config.dir)
    sink = await AuditSink.open(directory, Chain(settings.audit_hmac_key), config)
    store.on_change(lambda snapshot: sink.configure(snapshot.policy.audit))
    log.info("audit_log_open", directory=str(directory), keyed=settings.audit_hmac_key is not None)
    return AuditRecorder(sink)


class _QuietRequestHandler(web_protocol.RequestHandler):
    """aiohttp's own answer to a request it cannot parse (a header line over the limit, bad
    framing) echoes the offending bytes into the response and the error log; a header can be
    a credential, so this one says only what kind of error it was."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log.warning(
            "http_protocol_error",
            status=status,
            error_type=type(exc).__name__ if exc else None,
            client_address=request.remote,
        )
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is dropped")
        if status >= 500:
            text = "The gateway failed to handle this request."
        else:
            text = "The request could not be read as HTTP (for example, a header is too long)."
        response = error_response(
            WireFamily.OPENAI, kind_for_status(status), text, request_id=new_request_id()
        )
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` with the quiet protocol error handler."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp offers no hook for the protocol handler class; the server it built is
        # otherwise unchanged.
        server.__class__ = _Server
        return server


async def start_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Start `app` on host:port (0 for a free port); return the runner and its base URL."""
    runner = GatewayRunner(app, **RUNNER_OPTIONS)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{bound_host}:{bound_port}"


async def _serve_until_stopped(app: web.Application, host: str, port: int) -> None:
    runner, url = await start_server(app, host, port)
    # Everything allocated at startup lives as long as the process: keep it out of the
    # collector's full passes, which otherwise pause every request in flight for ~30 ms.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("listening", url=url)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await runner.cleanup()


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's report of an error nobody awaited ("Task exception was never retrieved"):
    its default message quotes the exception and the task's repr, which can carry request
    data, so only the error's type and the report's kind are logged."""
    exc = context.get("exception")
    log.error(
        "event_loop_error",
        what=str(context.get("message", ""))[:80],
        error_type=type(exc).__name__ if exc is not None else None,
    )


def run(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, on uvloop when it is installed."""
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(_loop_exception)
    try:
        loop.run_until_complete(_serve_until_stopped(app, host, port))
    finally:
        loop.close()
