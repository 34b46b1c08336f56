"""Runs the ordered request filters: first denial stops, an exception is a denial.

The one place that decides filter order semantics; each filter's verdict and time go on the trail.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import structlog

from proxy.context import Deny, RequestContext, TrailEntry
from proxy.errors import ErrorKind

log = structlog.get_logger("sluice.pipeline")


class RequestFilter(Protocol):
    """One decision about a request. Returns a `Deny` to stop it, None to let it go on."""

    name: str

    async def on_request(self, ctx: RequestContext) -> Deny | None: ...


@runtime_checkable
class FinishingFilter(RequestFilter, Protocol):
    """A filter that holds something for the request (a concurrency slot, a token estimate)
    and settles it when the request ends, however it ends.

    `on_finish` starts what it needs and returns at once (it runs in the handler's `finally`,
    also while the handler is being cancelled, and must not delay the answer): a filter that
    talks to a store sends and leaves the reply to a callback."""

    def on_finish(self, ctx: RequestContext) -> None: ...


class Pipeline:
    """An ordered chain of filters that fails closed."""

    __slots__ = ("filters", "finishing")

    def __init__(self, filters: Sequence[RequestFilter]) -> None:
        self.filters = tuple(filters)
        # Worked out once: an isinstance check against a runtime Protocol costs ~10 us.
        self.finishing = tuple(f for f in reversed(self.filters) if isinstance(f, FinishingFilter))

    async def run(self, ctx: RequestContext) -> Deny | None:
        for request_filter in self.filters:
            started = time.perf_counter()
            try:
                deny = await request_filter.on_request(ctx)
            except Exception as exc:
                # Fail closed: a filter that cannot decide never lets the request through.
                ended = time.perf_counter()
                ms = (ended - started) * 1000
                error_type = type(exc).__name__
                ctx.trail.append(TrailEntry(request_filter.name, "error", error_type, ms))
                if ctx.trace is not None:
                    ctx.trace.filter_span(request_filter.name, started, ended, "error")
                log.error(
                    "filter_failed",
                    request_id=ctx.request_id,
                    filter=request_filter.name,
                    error_type=error_type,
                )
                return Deny(
                    ErrorKind.INTERNAL,
                    f"The gateway could not check this request ({request_filter.name}); "
                    f"it was not forwarded. Request id: {ctx.request_id}",
                )
            ended = time.perf_counter()
            ms = (ended - started) * 1000
            verdict = "pass" if deny is None else "deny"
            if ctx.trace is not None:
                ctx.trace.filter_span(request_filter.name, started, ended, verdict)
            if deny is not None:
                ctx.trail.append(TrailEntry(request_filter.name, "deny", deny.message, ms))
                return deny
            ctx.trail.append(TrailEntry(request_filter.name, "pass", None, ms))
        return None

    def finish(self, ctx: RequestContext) -> None:
        """Let each filter that passed this request settle it, last first, without delaying
        the answer (see `FinishingFilter`). Never raises."""
        if not self.finishing:
            return
        passed = {entry.filter for entry in ctx.trail if entry.verdict == "pass"}
        for request_filter in self.finishing:
            if request_filter.name not in passed:
                continue
            try:
                request_filter.on_finish(ctx)
            except Exception as exc:
                log.error(
                    "filter_finish_failed",
                    request_id=ctx.request_id,
                    filter=request_filter.name,
                    error_type=type(exc).__name__,
                )
