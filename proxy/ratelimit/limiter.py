"""Chooses where limits are counted: Redis when configured, else (or as the fallback policy
allows) this process. When Redis fails, policy decides: `deny` fails closed, `local` counts in
memory until Redis answers again. Either way the change is logged once and counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, Protocol

import structlog
from redis.exceptions import RedisError

from proxy.metrics import Metrics
from proxy.ratelimit.checks import RELEASE, Claim, Decision, Settlement
from proxy.ratelimit.memory import MemoryLimits
from proxy.ratelimit.redis import RedisLimits

log = structlog.get_logger("sluice.ratelimit")

# After a failure, Redis is not asked again for this long: requests meanwhile are denied (or
# counted locally) at once instead of each waiting for a timeout.
_RETRY_REDIS_AFTER_S = 1.0


class LimitsUnavailable(Exception):
    """Limits cannot be checked and policy says to fail closed."""


class LimitBackend(Protocol):
    async def acquire(self, claim: Claim) -> Decision: ...
    async def settle(self, claim: Claim, settlement: Settlement) -> None: ...
    def settle_soon(
        self, claim: Claim, settlement: Settlement, failed: Callable[[BaseException], None]
    ) -> None: ...
    async def close(self) -> None: ...


class Limiter:
    def __init__(self, redis_url: str | None, metrics: Metrics) -> None:
        self.memory = MemoryLimits()
        self.shared = RedisLimits(redis_url) if redis_url else None
        self._retry_at = 0.0
        self._releases: set[asyncio.Task[None]] = set()
        self.outage = False
        self._failures = metrics.counter(
            "sluice_ratelimit_redis_failures_total", "Rate-limit calls to Redis that failed."
        )
        self._fallbacks = metrics.counter(
            "sluice_ratelimit_fallback_total",
            "Requests whose limits could not use Redis, by what happened instead.",
        )
        up = metrics.gauge(
            "sluice_ratelimit_redis_up",
            "1 when Redis answers rate-limit calls, 0 during an outage.",
        )
        if self.shared is not None:
            metrics.on_scrape(lambda: up.set(0.0 if self.outage else 1.0))

    async def acquire(
        self, claim: Claim, on_failure: Literal["deny", "local"]
    ) -> tuple[Decision, LimitBackend]:
        if self.shared is None:
            return await self.memory.acquire(claim), self.memory
        if time.monotonic() >= self._retry_at:
            try:
                decision = await self.shared.acquire(claim)
            except asyncio.CancelledError:
                # The script may already have run: give back any slot it took.
                self._release_slots_later(claim)
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._release_slots_later(claim)
                self._failed(exc, on_failure)
            else:
                if self.outage:
                    self.outage = False
                    log.warning("ratelimit_redis_recovered")
                return decision, self.shared
        self._fallbacks.add(outcome="local" if on_failure == "local" else "denied")
        if on_failure == "local":
            return await self.memory.acquire(claim), self.memory
        raise LimitsUnavailable

    def _failed(self, exc: BaseException, on_failure: str) -> None:
        self._failures.add()
        self._retry_at = time.monotonic() + _RETRY_REDIS_AFTER_S
        if not self.outage:
            self.outage = True
            log.warning(
                "ratelimit_redis_unavailable", error_type=type(exc).__name__, fallback=on_failure
            )

    def _release_slots_later(self, claim: Claim) -> None:
        """Remove this request's concurrency slots whether or not Redis took them: removing a
        slot that was never added does nothing, and a leaked one would block its caller until
        it expired. Rate and day counts cannot be undone safely; they heal on their own."""
        if not claim.plan.has_slots or self.shared is None:
            return
        task = asyncio.get_running_loop().create_task(self._release(self.shared, claim))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, shared: RedisLimits, claim: Claim) -> None:
        for attempt in range(3):
            try:
                await shared.settle(claim, RELEASE)
                return
            except (RedisError, OSError, TimeoutError):
                await asyncio.sleep(_RETRY_REDIS_AFTER_S * (attempt + 1))

    def settle(self, backend: LimitBackend, claim: Claim, settlement: Settlement) -> None:
        """Reconcile, charge and release after the request, without waiting for Redis. When it
        fails, slots expire by TTL and token counts heal within a minute; nothing to undo."""
        backend.settle_soon(claim, settlement, self._settle_failed)

    def _settle_failed(self, exc: BaseException) -> None:
        self._failed(exc, "settle")

    async def close(self) -> None:
        for task in self._releases:
            task.cancel()
        if self.shared is not None:
            await self.shared.close()
