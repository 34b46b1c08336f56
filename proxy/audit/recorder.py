"""The handler's view of the audit log: no audit, no egress; a response record however it ends.

`before_egress` makes the request record durable before the upstream call (or raises
`AuditUnavailable`); `finish` queues the response record, and the request record too when the
request never got that far, built later so the answer is not delayed.
"""

from __future__ import annotations

import time

import structlog

from proxy.audit.record import request_record, response_record
from proxy.audit.sink import AuditSink, AuditUnavailable, Record
from proxy.context import RequestContext

log = structlog.get_logger("sluice.audit")


class AuditRecorder:
    """Records requests in `sink`; with `sink` None (policy `audit.enabled: false`) it records
    nothing and lets everything through."""

    def __init__(self, sink: AuditSink | None) -> None:
        self.sink = sink

    async def before_egress(self, ctx: RequestContext) -> None:
        """Durably record the request; raises `AuditUnavailable` when that fails."""
        sink = self.sink
        if sink is None or not ctx.policy.policy.audit.enabled:
            return
        mode = ctx.policy.policy.audit.content
        if mode != "none" and ctx.stream:
            ctx.answer_events = []
        record = request_record(ctx, mode)
        ctx.audit_request = sink.submit([record])
        try:
            await sink.wait(ctx.audit_request)
        except AuditUnavailable:
            log.error("audit_unavailable", request_id=ctx.request_id)
            raise

    def finish(self, ctx: RequestContext) -> None:
        """Record how the request ended, without delaying the answer: the records are built
        when their batch is written. Called from the handler's `finally`, also when the
        handler is being cancelled."""
        sink = self.sink
        if sink is None or not ctx.policy.policy.audit.enabled:
            return
        total_ms = (time.perf_counter() - ctx.started) * 1000
        sink.defer(lambda: _closing_records(ctx, total_ms))

    async def close(self) -> None:
        """Write the records still queued, then close the log."""
        if self.sink is not None:
            await self.sink.close()

    @property
    def idle(self) -> bool:
        return self.sink is None or self.sink.idle


def _closing_records(ctx: RequestContext, total_ms: float) -> list[Record]:
    """The response record, after the request record when that was never made durable
    (denied before egress, or its write failed). By the time this runs, a request record
    submitted earlier has its outcome, since batches are written in order."""
    mode = ctx.policy.policy.audit.content
    records: list[Record] = []
    written = ctx.audit_request
    if written is None or (written.done() and written.exception() is not None):
        records.append(request_record(ctx, mode))
    records.append(response_record(ctx, mode, total_ms))
    return records
