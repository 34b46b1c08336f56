"""Shadow mode: every model call is judged again under a second policy; nothing is enforced.

The shadow judgement starts once the live pipeline has decided and runs while the request goes
upstream, on a copy of the request as the client sent it. Its rate limits count in a limiter
of their own (this replica's memory), never the live counts. Differences are counted in
`sluice_shadow_decisions_total` and left on `ctx.shadow` for the audit record.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog

from proxy.context import Deny, RequestContext
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline
from proxy.policy.outcome import outcome_of
from proxy.policy.store import PolicyStore

log = structlog.get_logger("sluice.shadow")

# How long `settled` waits for a shadow judgement before the audit record goes without it.
_SETTLE_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class ShadowVerdict:
    """What the shadow policy would have decided: the audit record's `shadow` field."""

    policy_version: str
    decision: str
    differs: bool


class Shadow:
    """The shadow policy store and the pipeline that judges with it."""

    def __init__(self, store: PolicyStore, pipeline: Pipeline, metrics: Metrics) -> None:
        self.store = store
        self._pipeline = pipeline
        self._decisions = metrics.counter(
            "sluice_shadow_decisions_total",
            "Model calls judged again under the shadow policy: whether its decision is the same "
            "as the live one, and both decisions.",
        )
        self._running: dict[str, asyncio.Task[None]] = {}

    def judge(self, ctx: RequestContext, received: dict[str, Any], deny: Deny | None) -> None:
        """Start judging `ctx` (whose live pipeline ended with `deny`) under the shadow policy.

        `received` is the body as the client sent it: the live classify filter may have put a
        masked copy on `ctx.body`. Returns at once; the work is a task of its own."""
        if ctx.principal is None:
            return
        try:
            live = outcome_of(ctx, deny).decision
            task = asyncio.get_running_loop().create_task(self._judge(ctx, received, live))
        except Exception as exc:  # the shadow never affects the live request
            log.error("shadow_failed", request_id=ctx.request_id, error_type=type(exc).__name__)
            return
        self._running[ctx.request_id] = task
        task.add_done_callback(lambda _: self._running.pop(ctx.request_id, None))

    async def _judge(self, ctx: RequestContext, received: dict[str, Any], live: str) -> None:
        snapshot = self.store.current
        copy = RequestContext(
            request_id=ctx.request_id,
            received_at=ctx.received_at,
            started=time.perf_counter(),
            wire=ctx.wire,
            policy=snapshot,
            headers=ctx.headers,
            client_address=ctx.client_address,
            body=received,
            requested_model=ctx.requested_model,
            stream=ctx.stream,
            principal=ctx.principal,
        )
        try:
            deny = await self._pipeline.run(copy)
            self._pipeline.finish(copy)
            decision = outcome_of(copy, deny).decision
        except Exception as exc:  # the shadow never affects the live request
            log.error("shadow_failed", request_id=ctx.request_id, error_type=type(exc).__name__)
            decision = "failed"
        differs = decision != live
        ctx.shadow = ShadowVerdict(snapshot.version, decision, differs)
        self._decisions.add(outcome="differs" if differs else "same", live=live, shadow=decision)
        if differs:
            log.info(
                "shadow_decision_differs",
                request_id=ctx.request_id,
                live=live,
                shadow=decision,
                shadow_policy_version=snapshot.version,
            )

    def judging(self, ctx: RequestContext) -> bool:
        """Whether `ctx`'s shadow judgement is still running."""
        return ctx.request_id in self._running

    async def settled(self, ctx: RequestContext) -> None:
        """Wait (briefly) for `ctx`'s shadow judgement, for a writer that records it."""
        task = self._running.get(ctx.request_id)
        if task is not None:
            await asyncio.wait([task], timeout=_SETTLE_WAIT_S)

    async def close(self) -> None:
        """Let the judgements still running finish (shutdown)."""
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=_SETTLE_WAIT_S)
