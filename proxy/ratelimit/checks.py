"""The checks one request is counted against, and what a backend answers.

Three kinds, each with the same meaning in every backend:
- `RATE`: GCRA over `period` seconds (requests or tokens per minute).
- `DAILY`: a counter for the UTC day (requests per day, USD spent), kept until midnight. A
  budget check costs 0 when asked and is charged when the answer's cost is known.
- `SLOTS`: concurrent requests; each holds a slot named after the request that expires after
  `period` seconds, so a replica that dies cannot hold slots forever.

A `Plan` (the checks) is the same for every request of one caller to one model under one policy
version on one day, so it is built once and reused; a `Claim` adds what differs per request.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# What each check counts; also what a refused caller is told was hit.
REQUESTS_PER_MINUTE = "requests per minute"
TOKENS_PER_MINUTE = "tokens per minute"
REQUESTS_PER_DAY = "requests per day"
DAILY_BUDGET = "daily budget (USD)"
CONCURRENT = "concurrent requests"


class Kind(enum.Enum):
    RATE = "rate"
    DAILY = "daily"
    SLOTS = "slots"


class Unit(enum.Enum):
    """What a check counts, which says what it costs when granted and what settles it."""

    REQUESTS = "r"  # 1 per request
    TOKENS = "t"  # the request's token estimate, reconciled with the provider's usage
    USD = "u"  # 0 when asked, the answer's cost once known


@dataclass(frozen=True, slots=True)
class Check:
    key: str
    kind: Kind
    limit: float
    period: float  # RATE: the window; SLOTS: a slot's life; DAILY: unused (time to midnight)
    unit: Unit
    name: str  # one of the names above


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """A request's checks in groups that each live in one Redis Cluster slot (the caller's
    keys, the model's global keys). Compared by identity: backends may keep what they derive
    from a plan (encoded commands) keyed by it."""

    groups: tuple[tuple[Check, ...], ...]
    checks: tuple[Check, ...] = field(init=False)
    token_ceiling: Check | None = field(init=False)  # the smallest tokens-per-minute limit
    has_slots: bool = field(init=False)
    cache: dict[str, Any] = field(init=False)  # for backends, by backend

    def __post_init__(self) -> None:
        checks = tuple(c for group in self.groups for c in group)
        object.__setattr__(self, "checks", checks)
        tokens = [c for c in checks if c.unit is Unit.TOKENS]
        ceiling = min(tokens, key=lambda c: c.limit) if tokens else None
        object.__setattr__(self, "token_ceiling", ceiling)
        object.__setattr__(self, "has_slots", any(c.kind is Kind.SLOTS for c in checks))
        object.__setattr__(self, "cache", {})


@dataclass(frozen=True, slots=True)
class Claim:
    """One request's use of a plan."""

    plan: Plan
    tokens: int  # the token estimate (0 when no check counts tokens)
    member: str  # the request's slot name: its request id
    to_midnight: float  # seconds left in the UTC day the plan's daily keys are for

    def cost(self, check: Check) -> float:
        if check.unit is Unit.REQUESTS:
            return 1.0
        return float(self.tokens) if check.unit is Unit.TOKENS else 0.0

    def period(self, check: Check) -> float:
        return self.to_midnight if check.kind is Kind.DAILY else check.period


@dataclass(frozen=True, slots=True)
class Settlement:
    """A change after the fact, per unit: counted requests (-1 refunds one), tokens to add
    (negative gives back), USD spent. Slots are always released."""

    requests: float = 0.0
    tokens: float = 0.0
    usd: float = 0.0

    def amount(self, check: Check) -> float:
        if check.unit is Unit.REQUESTS:
            return self.requests
        return self.tokens if check.unit is Unit.TOKENS else self.usd


RELEASE = Settlement()  # slots given back, nothing else changed


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # When allowed: per check of the plan, in order, what is left and in how many seconds it
    # is all back, as (remaining, reset_s) pairs laid flat. Numbers, or their text as Redis
    # sent it (float() reads both; most are never read).
    standings: Sequence[float | bytes] = ()
    failed: Check | None = None
    retry_after_s: float = 0.0
