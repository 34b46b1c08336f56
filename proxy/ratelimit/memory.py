"""Limits kept in this process: the embedded default for a single replica, and the fallback
when Redis is down and policy says `on_redis_failure: local`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from proxy.ratelimit.checks import Check, Claim, Decision, Kind, Settlement

_PRUNE_EVERY = 1024


class MemoryLimits:
    """The same semantics as the Redis scripts, on dictionaries. Never awaits, so it is atomic."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[float, float]] = {}  # key -> (value, expires at)
        self._slots: dict[str, dict[str, float]] = {}  # key -> member -> expires at
        self._calls = 0

    async def acquire(self, claim: Claim) -> Decision:
        now = time.time()
        self._prune(now)
        standings: list[float] = []
        updates: list[tuple[Check, float]] = []
        for check in claim.plan.checks:
            cost = claim.cost(check)
            if check.kind is Kind.RATE:
                tat = max(self._value(check.key, now), now)
                new_tat = tat + cost * check.period / check.limit
                excess = new_tat - now - check.period
                if excess > 0:
                    return Decision(False, failed=check, retry_after_s=excess)
                updates.append((check, new_tat))
                interval = check.period / check.limit
                remaining = math.floor((check.period - (new_tat - now)) / interval)
                standings += (remaining, new_tat - now)
            elif check.kind is Kind.DAILY:
                used = self._value(check.key, now)
                if used >= check.limit or used + cost > check.limit:
                    return Decision(False, failed=check, retry_after_s=claim.to_midnight)
                updates.append((check, used + cost))
                standings += (check.limit - used - cost, claim.to_midnight)
            else:
                held = self._live_slots(check.key, now)
                if len(held) >= check.limit:
                    return Decision(False, failed=check, retry_after_s=1.0)
                updates.append((check, 0.0))
                standings += (check.limit - len(held) - 1, 0.0)
        for check, value in updates:
            if check.kind is Kind.SLOTS:
                self._live_slots(check.key, now)[claim.member] = now + check.period
            elif check.kind is Kind.RATE:
                self._values[check.key] = (value, value)
            else:
                self._values[check.key] = (value, now + claim.to_midnight + 86400)
        return Decision(True, tuple(standings))

    async def settle(self, claim: Claim, settlement: Settlement) -> None:
        self._settle(claim, settlement)

    def _settle(self, claim: Claim, settlement: Settlement) -> None:
        now = time.time()
        for check in claim.plan.checks:
            amount = settlement.amount(check)
            if check.kind is Kind.SLOTS:
                self._live_slots(check.key, now).pop(claim.member, None)
            elif not amount:
                continue
            elif check.kind is Kind.RATE:
                tat = max(self._value(check.key, now), now)
                new_tat = max(tat + amount * check.period / check.limit, now)
                self._values[check.key] = (new_tat, new_tat)
            else:
                used = self._value(check.key, now) + amount
                self._values[check.key] = (max(used, 0.0), now + claim.to_midnight + 86400)

    def settle_soon(
        self, claim: Claim, settlement: Settlement, failed: Callable[[BaseException], None]
    ) -> None:
        """The same as `settle`, which never waits here."""
        self._settle(claim, settlement)

    async def close(self) -> None:
        return None

    def _value(self, key: str, now: float) -> float:
        found = self._values.get(key)
        if found is None or found[1] < now:
            return 0.0
        return found[0]

    def _live_slots(self, key: str, now: float) -> dict[str, float]:
        slots = self._slots.setdefault(key, {})
        for member in [m for m, expires in slots.items() if expires <= now]:
            del slots[member]
        return slots

    def _prune(self, now: float) -> None:
        self._calls += 1
        if self._calls % _PRUNE_EVERY:
            return
        self._values = {k: v for k, v in self._values.items() if v[1] >= now}
        self._slots = {k: s for k, s in self._slots.items() if self._live_slots(k, now)}
