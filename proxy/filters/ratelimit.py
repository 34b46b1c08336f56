"""Filter `ratelimit`: counts the request against the caller's and the model's limits.

Decides on the policy's per-role `limits`, `limits.users`, `limits.models` and
`limits.global_models`: requests and tokens per minute, requests per day, concurrency and a
daily USD budget. A refusal is 429 with `Retry-After`, naming the limit; limits that cannot be
checked (Redis down, policy `deny`) are 503. When the request ends, token estimates are
reconciled with the provider's usage, spending is charged and the concurrency slot released.
"""

from __future__ import annotations

import math
import time

from proxy.context import Deny, RequestContext
from proxy.errors import ErrorKind
from proxy.ratelimit.checks import Claim, Plan
from proxy.ratelimit.limiter import Limiter, LimitsUnavailable
from proxy.ratelimit.plan import (
    Ticket,
    add_limit_headers,
    caller,
    estimate_tokens,
    plan_checks,
    settlement,
)

_PLAN_CACHE_LIMIT = 10_000
_DAY = 86400.0


class RateLimit:
    name = "ratelimit"

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter
        # Plans per (policy version, subject, roles, model, day): merging the roles' limits and
        # naming the keys is the costly part, and the same for all of a caller's requests.
        self._plans: dict[tuple[str, str, tuple[str, ...], str, int], Plan] = {}

    def _plan(self, ctx: RequestContext, day: int) -> Plan:
        assert ctx.principal is not None, "authn runs first"
        principal = ctx.principal
        key = (ctx.policy.version, principal.subject, principal.roles, ctx.requested_model, day)
        found = self._plans.get(key)
        if found is None:
            if len(self._plans) >= _PLAN_CACHE_LIMIT:
                self._plans.clear()
            found = self._plans[key] = plan_checks(ctx, caller(ctx), day)
        return found

    async def on_request(self, ctx: RequestContext) -> Deny | None:
        now = time.time()
        day = int(now // _DAY)
        plan = self._plan(ctx, day)
        if not plan.checks:
            return None
        ceiling = plan.token_ceiling  # None: no limit counts tokens
        tokens = estimate_tokens(ctx.body) if ceiling is not None else 0
        if ceiling is not None and tokens > ceiling.limit:
            return Deny(
                ErrorKind.RATE_LIMITED,
                f"This request needs about {tokens} tokens, more than the limit of "
                f"{int(ceiling.limit)} tokens per minute allows at once.",
                code="rate_limit_exceeded",
            )
        claim = Claim(plan, tokens, ctx.request_id, _DAY - now % _DAY)
        try:
            decision, backend = await self._limiter.acquire(
                claim, ctx.policy.policy.limits.on_redis_failure
            )
        except LimitsUnavailable:
            return Deny(
                ErrorKind.UNAVAILABLE,
                "Rate limits cannot be checked right now (the shared store is unreachable); "
                "the request was not forwarded.",
            )
        if not decision.allowed:
            assert decision.failed is not None
            retry_after = max(1, math.ceil(decision.retry_after_s))
            return Deny(
                ErrorKind.RATE_LIMITED,
                f"Rate limit reached: {decision.failed.name} "
                f"({_amount(decision.failed.limit)}). Retry after {retry_after} s.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry_after)},
            )
        ctx.limit_ticket = Ticket(claim, backend)
        add_limit_headers(ctx, plan, decision)
        return None

    def on_finish(self, ctx: RequestContext) -> None:
        ticket = ctx.limit_ticket
        if ticket is None:
            return
        ctx.limit_ticket = None
        self._limiter.settle(ticket.backend, ticket.claim, settlement(ctx, ticket))


def _amount(limit: float) -> str:
    return f"{limit:g}"
