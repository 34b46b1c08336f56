"""HTTP handlers: wire format in, filter pipeline, upstream, wire format out.

Every model call is judged against the policy snapshot pinned when it arrived.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from proxy.audit.recorder import AuditRecorder
from proxy.audit.sink import AuditUnavailable
from proxy.context import Deny, RequestContext, Route, TrailEntry, WireFormat
from proxy.errors import (
    ErrorKind,
    WireFamily,
    error_response,
    family_for_path,
    kind_for_status,
)
from proxy.filters.authz import granted_roles, may_use_model
from proxy.filters.route import fallback_routes
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline
from proxy.policy.shadow import Shadow
from proxy.policy.store import PolicyStore
from proxy.ratelimit.limiter import Limiter
from proxy.telemetry import TELEMETRY
from proxy.upstream.base import UpstreamError
from proxy.upstream.registry import UpstreamRegistry
from proxy.upstream.relay import relay
from proxy.wire import parse_body, upstream_payload

log = structlog.get_logger("sluice.handler")

REQUEST_ID = web.RequestKey("request_id", str)
_READ_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class Gateway:
    """What the handlers need, created at startup and hung off the application.

    `identify` runs on the headers alone, before the body is read, so an unauthenticated
    caller cannot make the gateway read and parse a large body; `pipeline` runs on the parsed
    request.
    """

    store: PolicyStore
    upstreams: UpstreamRegistry
    identify: Pipeline
    pipeline: Pipeline
    limiter: Limiter
    metrics: Metrics
    shadow: Shadow | None = None  # a second policy every model call is also judged by
    # No audit, no egress: the request record is durable before the upstream call.
    audit: AuditRecorder = field(default_factory=lambda: AuditRecorder(None))
    # Closing audit records waiting for the shadow policy's judgement; shutdown waits for them.
    settling: set[asyncio.Task[None]] = field(default_factory=set)

    def record(self, ctx: RequestContext) -> None:
        """Queue `ctx`'s closing audit records; with a shadow policy, once its judgement of
        this request is in (it is written into the response record)."""
        if self.shadow is None or not self.shadow.judging(ctx):
            self.audit.finish(ctx)
            return
        task = asyncio.get_running_loop().create_task(self._record_after_shadow(ctx))
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)

    async def _record_after_shadow(self, ctx: RequestContext) -> None:
        assert self.shadow is not None
        try:
            await self.shadow.settled(ctx)
        finally:
            self.audit.finish(ctx)


GATEWAY = web.AppKey("gateway", Gateway)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id and every refusal from the router a provider-shaped body."""
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            message = f"Method {request.method} is not allowed on {request.path}; use {allowed}."
        elif exc.status == 404:
            message = f"Invalid URL ({request.method} {request.path})."
        else:
            message = exc.reason
        response = error_response(
            family_for_path(request.path),
            kind_for_status(exc.status),
            message,
            request_id=request_id,
            headers={"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None,
        )
    if not response.prepared:
        response.headers["x-request-id"] = request_id
    return response


def model_endpoint(wire: WireFormat) -> Handler:
    """The handler for one model-calling endpoint."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await handle_model_call(request, wire)

    return handle


def new_context(request: web.Request, gateway: Gateway, wire: WireFormat) -> RequestContext:
    return RequestContext(
        request_id=request[REQUEST_ID],
        received_at=time.time(),
        started=time.perf_counter(),
        wire=wire,
        policy=gateway.store.current,
        headers=request.headers,
        client_address=request.remote,
    )


async def handle_model_call(request: web.Request, wire: WireFormat) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    telemetry = request.app[TELEMETRY]
    ctx = new_context(request, gateway, wire)
    telemetry.begin(ctx, request.method)
    response: web.StreamResponse | None = None
    try:
        response = await answer_model_call(request, ctx, gateway)
        await send_answer(request, ctx, response)
    except asyncio.CancelledError:
        ctx.ended = "client_disconnect"
        ctx.status = 499
        raise
    finally:
        # However the request ended (answered, denied, failed, client gone), and only once
        # the answer is out: what settles the request (releasing slots, reconciling tokens)
        # is no round trip the client waits for.
        if ctx.status is None and response is not None:
            ctx.status = response.status
        gateway.pipeline.finish(ctx)  # never awaits
        telemetry.end(ctx)
        gateway.record(ctx)
    return response


async def send_answer(
    request: web.Request, ctx: RequestContext, response: web.StreamResponse
) -> None:
    """Write an answer that is not out yet (all but a relayed stream), as aiohttp would once
    the handler returns, so that the handler's `finally` runs after it."""
    if response.prepared:
        return
    response.headers["x-request-id"] = ctx.request_id
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:  # the client left; aiohttp, finishing, gives up on it too
        ctx.ended = "client_disconnect"
        ctx.status = 499


async def answer_model_call(
    request: web.Request, ctx: RequestContext, gateway: Gateway
) -> web.StreamResponse:
    """The answer to a model call: the provider's, relayed, or a protocol-shaped error."""
    wire = ctx.wire
    try:
        deny = await gateway.identify.run(ctx)
        if deny is None:
            deny = await read_request(request, ctx)
        if deny is None:
            received = ctx.body  # classify may put a masked copy on ctx.body; the shadow needs this
            deny = await gateway.pipeline.run(ctx)
            if gateway.shadow is not None:
                gateway.shadow.judge(ctx, received, deny)
        if deny is not None:
            ctx.ended = "denied"
            return deny_response(ctx, deny)
        await gateway.audit.before_egress(ctx)
        response = await call_upstream(request, ctx, gateway)
        if ctx.status is None:
            ctx.status = response.status
        return response
    except AuditUnavailable:
        ctx.ended = "error"
        ctx.status = ErrorKind.UNAVAILABLE.status
        return error_response(
            wire.family,
            ErrorKind.UNAVAILABLE,
            "The request could not be recorded in the audit log, so it was not forwarded. "
            f"Request id: {ctx.request_id}",
            request_id=ctx.request_id,
        )
    except UpstreamError as exc:
        ctx.ended = "upstream_error"
        ctx.status = exc.kind.status
        return upstream_error_response(ctx, exc)
    except Exception as exc:
        log.error(
            "request_failed",
            request_id=ctx.request_id,
            error_type=type(exc).__name__,
            where=_where(exc),
        )
        ctx.ended = "error"
        ctx.status = ErrorKind.INTERNAL.status
        return error_response(
            wire.family,
            ErrorKind.INTERNAL,
            f"The gateway failed to handle this request. Request id: {ctx.request_id}",
            request_id=ctx.request_id,
        )


def _may_fall_back(status: int) -> bool:
    """A provider status worth another target: its outage or overload, not the request's fault."""
    return status >= 500 or status == 429


async def call_upstream(
    request: web.Request, ctx: RequestContext, gateway: Gateway
) -> web.StreamResponse:
    """Relay to the route's provider. If it fails before anything reached the client (no
    connection, a timeout, a 5xx or 429 status), try the route model's fallbacks in order.

    When every target fails, the client gets the first failure, under the route it asked for.
    """
    assert ctx.route is not None, "the route filter is the pipeline's last"
    telemetry = request.app[TELEMETRY]
    primary = route = ctx.route
    fallbacks: list[Route] | None = None
    first_failure: web.StreamResponse | UpstreamError | None = None
    tried = 0
    while True:
        upstream = gateway.upstreams.get(ctx.policy, route.provider)
        started = time.perf_counter()
        try:
            with telemetry.upstream_call(ctx, upstream) as trace_headers:
                response = await relay(request, ctx, upstream, upstream_payload(ctx), trace_headers)
                final = response.prepared or not _may_fall_back(response.status)
                if final and ctx.status is None:
                    ctx.status = response.status  # the upstream span records it
        except UpstreamError as exc:
            if not exc.fall_back:
                raise
            outcome: web.StreamResponse | UpstreamError = exc
            why = exc.kind.name.lower()
        else:
            if final:
                return response
            outcome, why = response, f"status {response.status}"
        if first_failure is None:
            first_failure = outcome
            fallbacks = fallback_routes(ctx)
        assert fallbacks is not None
        if tried >= len(fallbacks):
            break
        target = fallbacks[tried]
        tried += 1
        log.warning(
            "upstream_fallback",
            request_id=ctx.request_id,
            from_model=route.model,
            to_model=target.model,
            why=why,
        )
        gateway.metrics.counter(
            "sluice_upstream_fallbacks_total",
            "Requests a failing provider handed to a fallback model, by model pair.",
        ).add(from_model=route.model, to_model=target.model)
        ctx.trail.append(
            TrailEntry(
                "failover",
                "pass",
                f"{route.model}: {why}; trying {target.model}",
                (time.perf_counter() - started) * 1000,
            )
        )
        ctx.route = route = target
        ctx.answer_headers["x-sluice-route"] = target.kind
    ctx.route = primary
    ctx.answer_headers["x-sluice-route"] = primary.kind
    if isinstance(first_failure, UpstreamError):
        raise first_failure
    assert first_failure is not None
    return first_failure


def upstream_error_response(ctx: RequestContext, exc: UpstreamError) -> web.Response:
    """The provider-shaped error for a provider that failed, with `Retry-After` when known.

    Sensitive traffic is told that it went nowhere else.
    """
    message = exc.message
    if ctx.route is not None and ctx.route.kind == "sensitive":
        message += (
            " This request carries data that must stay on the company's own models, so it was"
            " not sent to any other provider."
        )
    headers = dict(ctx.answer_headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return error_response(
        ctx.wire.family, exc.kind, message, request_id=ctx.request_id, headers=headers
    )


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame: enough to find a bug, nothing of the data."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"


def deny_response(
    ctx: RequestContext, deny: Deny, family: WireFamily | None = None
) -> web.Response:
    ctx.status = deny.kind.status
    ctx.denied = deny
    return error_response(
        family or ctx.wire.family,
        deny.kind,
        deny.message,
        request_id=ctx.request_id,
        param=deny.param,
        code=deny.code,
        headers=deny.headers,
    )


async def read_request(request: web.Request, ctx: RequestContext) -> Deny | None:
    """Read and parse the body within the policy's size limit."""
    if request.content_type != "application/json":
        return Deny(
            ErrorKind.UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json.",
        )
    limit = ctx.policy.policy.request_limits.max_body_bytes
    too_large = Deny(
        ErrorKind.REQUEST_TOO_LARGE,
        f"The request body is larger than this gateway accepts ({limit} bytes).",
    )
    length = request.content_length
    if length is not None and length > limit:
        return too_large
    # Always a bounded loop: Content-Length can be absent (chunked), zero, or count compressed
    # bytes that aiohttp inflates, so the limit applies to what is actually read.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    parsed = parse_body(ctx.wire, raw)
    if isinstance(parsed, Deny):
        return parsed
    ctx.body = parsed
    ctx.requested_model = parsed["model"]
    ctx.stream = parsed.get("stream") is True
    return None


async def list_models(request: web.Request) -> web.Response:
    """`GET /v1/models`: the models the caller may use, in OpenAI's list format, or Anthropic's
    when the request carries `anthropic-version`."""
    gateway = request.app[GATEWAY]
    telemetry = request.app[TELEMETRY]
    ctx = new_context(request, gateway, WireFormat.MODELS)
    telemetry.begin(ctx, request.method)
    try:
        response = await _list_models(request, ctx, gateway)
        ctx.status = response.status
        return response
    finally:
        telemetry.end(ctx)


async def _list_models(request: web.Request, ctx: RequestContext, gateway: Gateway) -> web.Response:
    anthropic = "anthropic-version" in request.headers
    deny = await gateway.identify.run(ctx)
    if deny is None:
        deny = _may_list_models(ctx)
    if deny is not None:
        return deny_response(ctx, deny, WireFamily.ANTHROPIC if anthropic else None)
    assert ctx.principal is not None
    snapshot = ctx.policy
    roles = granted_roles(ctx.principal, snapshot.policy)
    names = sorted(m for m in snapshot.policy.models if may_use_model(m, ctx.principal, roles))
    body: dict[str, Any]
    if anthropic:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snapshot.loaded_at))
        data = [{"type": "model", "id": n, "display_name": n, "created_at": created} for n in names]
        body = {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    else:
        models = snapshot.policy.models
        created_at = int(snapshot.loaded_at)
        body = {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": created_at, "owned_by": models[n].provider}
                for n in names
            ],
        }
    return web.json_response(body)


def _may_list_models(ctx: RequestContext) -> Deny | None:
    assert ctx.principal is not None
    roles = granted_roles(ctx.principal, ctx.policy.policy)
    if not any("models" in role.endpoints for role in roles):
        return Deny(ErrorKind.PERMISSION, "Your role may not list models.")
    return None


async def metrics_text(request: web.Request) -> web.Response:
    """Prometheus scrape endpoint."""
    body = request.app[TELEMETRY].metrics.render()
    return web.Response(text=body, content_type="text/plain", charset="utf-8")


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: which policy version is live, and why the last reload failed if it did."""
    store = request.app[GATEWAY].store
    snapshot = store.current
    return web.json_response(
        {
            "status": "ready",
            "policy_version": snapshot.version,
            "policy_files": list(snapshot.files),
            "loaded_at": snapshot.loaded_at,
            "last_reload_error": store.last_error,
            "last_reload_error_at": store.last_error_at,
        }
    )
