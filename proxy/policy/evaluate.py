"""Judges a request offline with the filters `sluice serve` uses, without calling any upstream.

Authentication is the one step skipped: the caller names the principal. Everything after it
runs for real, on a fresh in-memory rate limiter per `Judge.pipeline()`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proxy.app import model_pipeline
from proxy.classify.pool import ClassifierPool
from proxy.context import Deny, Principal, RequestContext, TrailEntry, WireFormat
from proxy.errors import ErrorKind
from proxy.filters.classify import Classify, Detection, detector_config
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline
from proxy.policy.loader import LoadedPolicy
from proxy.policy.outcome import Outcome, outcome_of
from proxy.policy.store import PolicySnapshot
from proxy.ratelimit.limiter import Limiter
from proxy.wire import parse_body

WIRES = {wire.endpoint: wire for wire in WireFormat if wire is not WireFormat.MODELS}
INJECTED = "principal given, not authenticated"


@dataclass(frozen=True, slots=True)
class Request:
    """A request as a client would send it, and who sends it."""

    principal: Principal
    wire: WireFormat
    body: dict[str, Any]


def request_body(
    wire: WireFormat,
    model: str,
    *,
    messages: Sequence[dict[str, Any]] | None = None,
    prompt: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body a client of `wire` would send for `messages` or a single `prompt`."""
    body: dict[str, Any] = {"model": model}
    if messages is None:
        messages = [{"role": "user", "content": prompt or ""}]
    if wire is WireFormat.OPENAI_EMBEDDINGS:
        texts = [m.get("content", "") for m in messages]
        body["input"] = texts[0] if len(texts) == 1 else texts
    elif wire is WireFormat.OPENAI_RESPONSES:
        body["input"] = prompt if prompt is not None else list(messages)
    else:
        body["messages"] = list(messages)
    if wire is WireFormat.ANTHROPIC_MESSAGES:
        body["max_tokens"] = 256
    body.update(extra or {})
    return body


class Judge:
    """Runs requests through the serving pipeline against one loaded policy."""

    def __init__(self, loaded: LoadedPolicy, detection: Detection) -> None:
        self.loaded = loaded
        self.snapshot = PolicySnapshot.from_loaded(loaded)
        self.detection = detection

    def pipeline(self, detection: Detection | None = None) -> Pipeline:
        """A pipeline of its own: fresh rate-limit counts (in memory, never Redis)."""
        return model_pipeline(Limiter(None, Metrics()), Classify(detection or self.detection))

    async def run(
        self, request: Request, pipeline: Pipeline, request_id: str = "offline"
    ) -> tuple[RequestContext, Deny | None]:
        """One pass through `pipeline`; what the pipeline holds is settled before returning."""
        ctx = RequestContext(
            request_id=request_id,
            received_at=time.time(),
            started=time.perf_counter(),
            wire=request.wire,
            policy=self.snapshot,
            headers={},
            client_address=None,
        )
        ctx.principal = request.principal
        ctx.trail.append(TrailEntry("authn", "pass", INJECTED, 0.0))
        raw = json.dumps(request.body).encode()
        limit = self.snapshot.policy.request_limits.max_body_bytes
        deny: Deny | None
        if len(raw) > limit:
            deny = Deny(ErrorKind.REQUEST_TOO_LARGE, f"The body is over {limit} bytes.")
        else:
            parsed = parse_body(request.wire, raw)
            deny = parsed if isinstance(parsed, Deny) else None
        if deny is not None:
            ctx.trail.append(TrailEntry("read", "deny", deny.message, 0.0))
            return ctx, deny
        assert not isinstance(parsed, Deny)
        ctx.body = parsed
        ctx.requested_model = parsed["model"]
        ctx.stream = parsed.get("stream") is True
        deny = await pipeline.run(ctx)
        pipeline.finish(ctx)
        return ctx, deny

    async def outcome(self, request: Request) -> Outcome:
        ctx, deny = await self.run(request, self.pipeline())
        return outcome_of(ctx, deny)


async def open_pool(loaded: LoadedPolicy) -> ClassifierPool:
    """One classification worker, warmed up for this policy (so its first case does not wait
    for the models to load, and does not run into the policy's classification timeout)."""
    pool = ClassifierPool(1)
    classification = loaded.policy.classification
    if classification.enabled:
        await pool.warm_up(detector_config(classification))
    return pool
