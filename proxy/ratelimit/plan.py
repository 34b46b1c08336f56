"""Which checks a request is counted against, from the policy and the caller, and the rate
limit headers a granted request carries back.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

from proxy.context import RequestContext, WireFormat
from proxy.policy.model import Limits, Policy
from proxy.ratelimit.checks import (
    CONCURRENT,
    DAILY_BUDGET,
    RELEASE,
    REQUESTS_PER_DAY,
    REQUESTS_PER_MINUTE,
    TOKENS_PER_MINUTE,
    Check,
    Claim,
    Decision,
    Kind,
    Plan,
    Settlement,
    Unit,
)
from proxy.ratelimit.limiter import LimitBackend

_LIMIT_FIELDS = tuple(Limits.model_fields)
_NON_TEXT_PARTS = frozenset({"image", "image_url", "input_image", "document", "file", "input_file"})
# Bytes per token for the estimate made before sending; the provider's usage corrects it after.
_BYTES_PER_TOKEN = 4
_PER_MESSAGE_TOKENS = 4


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a granted request holds until it ends: its claim and where it was counted."""

    claim: Claim
    backend: LimitBackend


@dataclass(frozen=True, slots=True)
class Caller:
    """A caller's key prefix and effective limits under one policy version."""

    prefix: str
    limits: Limits


def caller(ctx: RequestContext) -> Caller:
    """The most generous of the caller's roles, then the per-user override, field by field."""
    assert ctx.principal is not None, "authn runs first"
    policy = ctx.policy.policy
    merged: dict[str, Any] = {}
    roles = [policy.roles[r] for r in ctx.principal.roles if r in policy.roles]
    for name in _LIMIT_FIELDS:
        values = [getattr(role.limits, name) for role in roles]
        merged[name] = None if not values or None in values else max(values)
    override = policy.limits.users.get(ctx.principal.subject)
    if override is not None:
        merged.update({k: v for k, v in override.model_dump().items() if v is not None})
    subject = hashlib.sha256(ctx.principal.subject.encode()).hexdigest()[:20]
    return Caller(f"sluice:{{u:{subject}}}", Limits(**merged))


def estimate_tokens(body: Any) -> int:
    """A quick, generous count of the prompt's tokens: text bytes / 4, images and files skipped."""
    total = 0
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item.encode("utf-8", "surrogatepass"))
        elif isinstance(item, dict):
            if item.get("type") in _NON_TEXT_PARTS:
                continue
            stack.extend(item.values())
        elif isinstance(item, list):
            total += _PER_MESSAGE_TOKENS * _BYTES_PER_TOKEN * len(item)
            stack.extend(item)
    return max(1, math.ceil(total / _BYTES_PER_TOKEN))


def plan_checks(ctx: RequestContext, who: Caller, day: int) -> Plan:
    """The checks of this caller's requests to this model on UTC day `day` (days since the
    epoch), in two groups: the caller's keys, and the model's global keys."""
    policy = ctx.policy.policy
    model = ctx.requested_model
    per_model = policy.limits.models.get(model)
    ceiling = policy.limits.global_models.get(model)
    slot_ttl = _slot_ttl(ctx, policy)
    mine = _checks(who.prefix, who.limits, day, slot_ttl)
    if per_model is not None:
        mine += _checks(f"{who.prefix}:m:{model}", per_model, day, slot_ttl)
    model_wide = _checks(f"sluice:{{m:{model}}}", ceiling, day, slot_ttl) if ceiling else ()
    return Plan((mine, model_wide))


def _checks(prefix: str, limits: Limits, day: int, slot_ttl: float) -> tuple[Check, ...]:
    checks: list[Check] = []
    if limits.requests_per_minute:
        checks.append(
            Check(
                f"{prefix}:rpm",
                Kind.RATE,
                limits.requests_per_minute,
                60,
                Unit.REQUESTS,
                REQUESTS_PER_MINUTE,
            )
        )
    if limits.tokens_per_minute:
        checks.append(
            Check(
                f"{prefix}:tpm",
                Kind.RATE,
                limits.tokens_per_minute,
                60,
                Unit.TOKENS,
                TOKENS_PER_MINUTE,
            )
        )
    if limits.requests_per_day:
        checks.append(
            Check(
                f"{prefix}:rpd:{day}",
                Kind.DAILY,
                limits.requests_per_day,
                0,
                Unit.REQUESTS,
                REQUESTS_PER_DAY,
            )
        )
    if limits.daily_budget_usd:
        checks.append(
            Check(
                f"{prefix}:usd:{day}",
                Kind.DAILY,
                limits.daily_budget_usd,
                0,
                Unit.USD,
                DAILY_BUDGET,
            )
        )
    if limits.concurrent:
        checks.append(
            Check(
                f"{prefix}:conc", Kind.SLOTS, limits.concurrent, slot_ttl, Unit.REQUESTS, CONCURRENT
            )
        )
    return tuple(checks)


def _slot_ttl(ctx: RequestContext, policy: Policy) -> float:
    """A slot outlives the longest request its provider allows (plus a minute), then frees
    itself."""
    model = policy.models.get(ctx.requested_model)
    provider = policy.providers.get(model.provider) if model else None
    return (provider.timeouts.total if provider else 600.0) + 60.0


def settlement(ctx: RequestContext, ticket: Ticket) -> Settlement:
    """After the answer: true token counts, money spent (slots are given back anyway)."""
    usage = ctx.usage
    if not usage.reported:
        return RELEASE
    delta = usage.prompt_tokens + usage.completion_tokens - ticket.claim.tokens
    return Settlement(tokens=float(delta), usd=cost_usd(ctx))


def cost_usd(ctx: RequestContext) -> float:
    """What the answer cost at the price of the model that really answered it (a sensitive
    reroute or a fallback is billed as the model it went to, not the one asked for)."""
    answered = ctx.route.model if ctx.route is not None else ctx.requested_model
    model = ctx.policy.policy.models.get(answered)
    if model is None or model.price is None:
        return 0.0
    usage = ctx.usage
    price = model.price
    return (
        usage.prompt_tokens * price.input_per_million
        + usage.completion_tokens * price.output_per_million
    ) / 1_000_000


_HEADERS = "headers"  # add_limit_headers' entry in Plan.cache


@dataclass(frozen=True, slots=True)
class _Shown:
    """One check the headers describe: where its standing is, and its header names."""

    index: int  # of its (remaining, reset) pair in Decision.standings
    limit: str
    openai: tuple[str, str, str]  # limit, remaining, reset
    anthropic: tuple[str, str, str]


def add_limit_headers(ctx: RequestContext, plan: Plan, decision: Decision) -> None:
    """OpenAI's `x-ratelimit-*` (or Anthropic's `anthropic-ratelimit-*`) for the caller's own
    per-minute request and token limits, into the answer's headers."""
    shown = plan.cache.get(_HEADERS)
    if shown is None:
        shown = plan.cache[_HEADERS] = _shown(plan)
    if not shown:
        return
    standings = decision.standings
    anthropic = ctx.wire is WireFormat.ANTHROPIC_MESSAGES
    headers = ctx.answer_headers
    for entry in shown:
        if entry.index + 1 >= len(standings):
            continue
        remaining = str(max(0, int(float(standings[entry.index]))))
        reset_s = float(standings[entry.index + 1])
        if anthropic:
            limit_name, remaining_name, reset_name = entry.anthropic
            reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + reset_s))
        else:
            limit_name, remaining_name, reset_name = entry.openai
            reset = duration(reset_s)
        headers[limit_name] = entry.limit
        headers[remaining_name] = remaining
        headers[reset_name] = reset


def _shown(plan: Plan) -> tuple[_Shown, ...]:
    shown = []
    for index, check in enumerate(plan.checks):
        if not check.key.startswith("sluice:{u:") or ":m:" in check.key:
            continue
        if check.name == REQUESTS_PER_MINUTE:
            unit = "requests"
        elif check.name == TOKENS_PER_MINUTE:
            unit = "tokens"
        else:
            continue
        shown.append(
            _Shown(
                2 * index,
                str(int(check.limit)),
                (
                    f"x-ratelimit-limit-{unit}",
                    f"x-ratelimit-remaining-{unit}",
                    f"x-ratelimit-reset-{unit}",
                ),
                (
                    f"anthropic-ratelimit-{unit}-limit",
                    f"anthropic-ratelimit-{unit}-remaining",
                    f"anthropic-ratelimit-{unit}-reset",
                ),
            )
        )
    return tuple(shown)


def duration(seconds: float) -> str:
    """A duration the way OpenAI writes it in rate limit headers: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text
