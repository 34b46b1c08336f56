"""Limits in Redis, shared by every replica: one Lua script per phase, atomic.

All of a request's checks (the caller's keys and the model's global keys) go to one script: one
round trip before the request, at most one after it (reconciling tokens, charging the budget,
releasing slots). One script means one atomic decision, so a ceiling that refuses leaves the
caller's counts untouched, with nothing to refund. It also means one Redis server (standalone,
or the primary behind a failover address): Redis Cluster would refuse a script whose keys live
in two slots. The keys keep one hash tag per caller and one per model, so a Cluster mode would
only have to send one script per tag.

The commands are built once per plan (keys and limits); per request only the token estimate,
the time to midnight and the slot name are added, and the settle is sent without a task
waiting for its answer.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

from redis.exceptions import NoScriptError, RedisError, ResponseError

from proxy.ratelimit.checks import Claim, Decision, Plan, Settlement
from proxy.ratelimit.resp import Reply, RespConnection, bulk, encode

# KEYS: the plan's keys. ARGV: the request's token estimate, its time to midnight and its slot
# name, then per check: kind, limit, period, unit (r: 1 per request, t: the tokens, u: 0). Time
# comes from Redis so every replica counts on the same clock. Floats travel as strings: Redis
# truncates Lua numbers to integers. One string back: "1 remaining reset ..." (one pair per
# check) when granted, "0 <check number> <retry after>" when refused.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens, to_midnight, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local n = #KEYS
local granted = {}
local out = {'1'}
for i = 1, n do
  local base = 3 + (i - 1) * 4
  local kind, limit = ARGV[base + 1], tonumber(ARGV[base + 2])
  local period, unit = tonumber(ARGV[base + 3]), ARGV[base + 4]
  local cost = 1
  if unit == 't' then cost = tokens elseif unit == 'u' then cost = 0 end
  if kind == 'rate' then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    local interval = period / limit
    local new_tat = tat + cost * interval
    local excess = new_tat - now - period
    if excess > 0 then return '0 ' .. i .. ' ' .. tostring(excess) end
    granted[i] = new_tat
    out[#out + 1] = tostring(math.floor((period - (new_tat - now)) / interval))
    out[#out + 1] = tostring(new_tat - now)
  elseif kind == 'daily' then
    local used = tonumber(redis.call('GET', KEYS[i]) or '0')
    if used >= limit or used + cost > limit then
      return '0 ' .. i .. ' ' .. tostring(to_midnight)
    end
    granted[i] = cost
    out[#out + 1] = tostring(limit - used - cost)
    out[#out + 1] = tostring(to_midnight)
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local held = redis.call('ZCARD', KEYS[i])
    if held >= limit then return '0 ' .. i .. ' 1' end
    granted[i] = now + period
    out[#out + 1] = tostring(limit - held - 1)
    out[#out + 1] = '0'
  end
end
for i = 1, n do
  local base = 3 + (i - 1) * 4
  local kind, period = ARGV[base + 1], tonumber(ARGV[base + 3])
  if kind == 'rate' then
    local ttl = math.ceil((granted[i] - now) * 1000) + 1000
    redis.call('SET', KEYS[i], tostring(granted[i]), 'PX', ttl)
  elseif kind == 'daily' then
    redis.call('INCRBYFLOAT', KEYS[i], tostring(granted[i]))
    redis.call('EXPIRE', KEYS[i], math.ceil(to_midnight) + 86400)
  else
    redis.call('ZADD', KEYS[i], granted[i], member)
    -- The set holds slots of requests to different providers: never shorten its life.
    local keep = math.ceil(period) + 1
    if redis.call('TTL', KEYS[i]) < keep then redis.call('EXPIRE', KEYS[i], keep) end
  end
end
return table.concat(out, ' ')
"""

# KEYS as for _ACQUIRE. ARGV: the amounts per unit (requests, tokens, USD), the time to midnight
# and the slot name, then the same four per check. Slots are released whatever the amounts.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local amounts = {r = tonumber(ARGV[1]), t = tonumber(ARGV[2]), u = tonumber(ARGV[3])}
local to_midnight, member = tonumber(ARGV[4]), ARGV[5]
for i = 1, #KEYS do
  local base = 5 + (i - 1) * 4
  local kind, limit = ARGV[base + 1], tonumber(ARGV[base + 2])
  local period, amount = tonumber(ARGV[base + 3]), amounts[ARGV[base + 4]]
  if kind == 'rate' then
    if amount ~= 0 then
      local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
      if tat < now then tat = now end
      local new_tat = tat + amount * period / limit
      if new_tat <= now then
        redis.call('DEL', KEYS[i])
      else
        local ttl = math.ceil((new_tat - now) * 1000) + 1000
        redis.call('SET', KEYS[i], tostring(new_tat), 'PX', ttl)
      end
    end
  elseif kind == 'daily' then
    if amount ~= 0 then
      redis.call('INCRBYFLOAT', KEYS[i], tostring(amount))
      redis.call('EXPIRE', KEYS[i], math.ceil(to_midnight) + 86400)
    end
  else
    redis.call('ZREM', KEYS[i], member)
  end
end
return 1
"""

_SCRIPTS = (_ACQUIRE, _SETTLE)
_SHA = {script: hashlib.sha1(script.encode()).hexdigest().encode() for script in _SCRIPTS}
_CACHE = "redis"  # this backend's entry in Plan.cache


class _Encoded:
    """A plan's two commands, less the request's own values: each script's EVALSHA up to the
    keys, and the checks' arguments that follow the request's values."""

    __slots__ = ("acquire", "settle", "tail")

    def __init__(self, plan: Plan) -> None:
        checks = plan.checks
        keys = b"".join(bulk(c.key.encode()) for c in checks)
        args = [
            bulk(v)
            for c in checks
            for v in (
                c.kind.value.encode(),
                repr(float(c.limit)).encode(),
                repr(float(c.period)).encode(),
                c.unit.value.encode(),
            )
        ]
        self.tail = b"".join(args)
        heads = []
        for script, values in ((_ACQUIRE, 3), (_SETTLE, 5)):
            head = b"*%d\r\n" % (3 + len(checks) + values + len(args))
            heads.append(
                head + bulk(b"EVALSHA") + bulk(_SHA[script]) + bulk(b"%d" % len(checks)) + keys
            )
        self.acquire, self.settle = heads


def _encoded(plan: Plan) -> _Encoded:
    found = plan.cache.get(_CACHE)
    if found is None:
        found = plan.cache[_CACHE] = _Encoded(plan)
    assert isinstance(found, _Encoded)
    return found


class RedisLimits:
    """Counts in Redis. Raises `redis.exceptions.RedisError` when Redis cannot answer."""

    def __init__(self, url: str) -> None:
        self._connection = RespConnection(url, timeout=0.5)
        self._loaded = False  # whether this connection's Redis is known to have the scripts
        self._settling: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # for benchmarks and tests: how often Redis was asked

    async def acquire(self, claim: Claim) -> Decision:
        plan = claim.plan
        if not plan.checks:
            return Decision(True)
        encoded = _encoded(plan)
        payload = b"".join(
            (
                encoded.acquire,
                b"$%d\r\n%d\r\n" % (len(b"%d" % claim.tokens), claim.tokens),
                bulk(repr(claim.to_midnight).encode()),
                bulk(claim.member.encode()),
                encoded.tail,
            )
        )
        if self._loaded and self._connection.is_open:
            # The common case, without the frames of `_run`: one command, one reply.
            self.round_trips += 1
            reply = (await self._connection.submit(payload, 1))[0]
            if isinstance(reply, NoScriptError):
                self._loaded = False
                reply = (await self._run(payload))[0]
            elif isinstance(reply, ResponseError):
                raise reply
        else:
            reply = (await self._run(payload))[0]
        fields = reply.split()
        if fields[0] == b"0":
            failed = plan.checks[int(fields[1]) - 1]
            return Decision(False, failed=failed, retry_after_s=float(fields[2]))
        return Decision(True, fields[1:])

    async def settle(self, claim: Claim, settlement: Settlement) -> None:
        payload = self._settle_payload(claim, settlement)
        if payload:
            await self._run(payload)

    def settle_soon(
        self, claim: Claim, settlement: Settlement, failed: Callable[[BaseException], None]
    ) -> None:
        """Send the settle and return: the request is over and nothing waits for the answer
        but `failed`, told if Redis refuses or does not answer."""
        payload = self._settle_payload(claim, settlement)
        if not payload:
            return
        if not self._loaded or not self._connection.is_open:
            self._settle_later(payload, failed)
            return
        self.round_trips += 1

        def answered(outcome: list[Reply] | Exception) -> None:
            error = outcome if isinstance(outcome, Exception) else outcome[0]
            if isinstance(error, NoScriptError):
                self._loaded = False
                self._settle_later(payload, failed)
            elif isinstance(error, Exception):
                failed(error)

        self._connection.send(payload, 1, answered)

    def _settle_later(self, payload: bytes, failed: Callable[[BaseException], None]) -> None:
        """The settle in a task: it has to open the connection or load the scripts first."""
        task = asyncio.get_running_loop().create_task(self._settle_now(payload, failed))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_now(self, payload: bytes, failed: Callable[[BaseException], None]) -> None:
        try:
            await self._run(payload)
        except (RedisError, OSError, TimeoutError) as exc:
            failed(exc)

    def _settle_payload(self, claim: Claim, settlement: Settlement) -> bytes:
        """The settle's command; nothing when it would change nothing."""
        plan = claim.plan
        if not plan.checks or (
            not plan.has_slots and not (settlement.requests or settlement.tokens or settlement.usd)
        ):
            return b""
        encoded = _encoded(plan)
        return b"".join(
            (
                encoded.settle,
                _number(settlement.requests),
                _number(settlement.tokens),
                _number(settlement.usd),
                bulk(repr(claim.to_midnight).encode()),
                bulk(claim.member.encode()),
                encoded.tail,
            )
        )

    async def _run(self, payload: bytes) -> list[Reply]:
        """Send one EVALSHA and wait for its reply, loading the scripts if Redis lost them (a
        restart empties its script cache)."""
        for attempt in (1, 2):
            if not self._loaded or attempt == 2:
                await self._load_scripts()
            self.round_trips += 1
            replies = await self._connection.call(payload, 1)
            if isinstance(replies[0], NoScriptError) and attempt == 1:
                self._loaded = False
                continue
            if isinstance(replies[0], ResponseError):
                raise replies[0]
            return replies
        raise AssertionError("unreachable")

    async def _load_scripts(self) -> None:
        """Both scripts at once: a settle that had to load its script first would reach Redis
        after the next request's acquire, which then would not see it."""
        self.round_trips += 1
        replies = await self._connection.call_many([encode("SCRIPT", "LOAD", s) for s in _SCRIPTS])
        for script, reply in zip(_SCRIPTS, replies, strict=True):
            if isinstance(reply, ResponseError):
                raise reply
            if reply != _SHA[script]:
                raise ResponseError("Redis named a script differently than expected")
        self._loaded = True

    async def close(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self._connection.close()


def _number(value: float) -> bytes:
    """A bulk string of `value`: an integer's digits when it is one (the common case)."""
    if not value:
        return _ZERO
    data = b"%d" % value if value == int(value) else repr(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


_ZERO = bulk(b"0")
