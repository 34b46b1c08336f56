"""Rate limits, token limits, daily limits, budgets and concurrency, end to end.

Every test runs real Sluice apps on loopback in front of the fake providers, with the official
SDKs as clients. Limits are counted in the app's memory (no `REDIS_URL`) or in a private
`redis-server` of the test's own (`redis_server`); tests that make sense for both backends are
parametrized over them. Limits come from the test's copy of `roles.yaml`, edited and reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import web

from proxy.app import build_app, start_server
from proxy.handler import GATEWAY
from proxy.identity.tokens import new_record, new_token, open_token_store, token_hash
from proxy.policy.store import PolicyStore
from proxy.ratelimit.limiter import Limiter
from proxy.ratelimit.redis import RedisLimits
from proxy.settings import Settings
from proxy.testing import FakeAnthropic, FakeOIDCIssuer, FakeOpenAI
from tests.conftest import RedisServer, shared_classifier, trust_oidc_issuer

SUBJECT = "alice@corp.example"  # what Sluice.issue_token and FakeOIDCIssuer use by default
CALLER = hashlib.sha256(SUBJECT.encode()).hexdigest()[:20]
CALLER_PREFIX = f"sluice:{{u:{CALLER}}}"
CONC_KEY = f"{CALLER_PREFIX}:conc"

HELLO: Any = [{"role": "user", "content": "Say hello"}]
MINI = "gpt-4o-mini"  # no global ceiling in the default policy
GPT4O = "gpt-4o"  # has a global ceiling (limits.global_models) in the default policy
CLAUDE = "claude-sonnet-4-6"

BACKENDS = ["memory", "redis"]


# --- Gateways ---------------------------------------------------------------------------------


@dataclass
class Gate:
    """One running Sluice app and what a test needs to reach into it."""

    url: str
    app: web.Application
    store: PolicyStore
    policy_dir: Path
    settings: Settings
    runner: web.AppRunner

    @property
    def limiter(self) -> Limiter:
        return self.app[GATEWAY].limiter

    @property
    def shared(self) -> RedisLimits:
        shared = self.limiter.shared
        assert shared is not None, "this gateway counts in memory"
        return shared

    async def token(self, role: str = "employee", subject: str = SUBJECT) -> str:
        """A personal token in the store this gateway reads (Redis when it has REDIS_URL)."""
        token = new_token()
        store = open_token_store(self.settings.redis_url, self.settings.data_dir)
        try:
            await store.add(token_hash(token), new_record(subject, (role,), ttl_seconds=3600))
        finally:
            await store.close()
        return token

    def openai(self, credential: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=credential, max_retries=0)

    def anthropic(self, credential: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.url, api_key=credential, max_retries=0)


@contextlib.asynccontextmanager
async def running_gate(
    policy_dir: Path, data_dir: Path, redis_url: str | None
) -> AsyncIterator[Gate]:
    store = PolicyStore.open(policy_dir)
    settings = Settings(data_dir=data_dir, redis_url=redis_url)
    app = build_app(store, settings, watch_interval=0, classifier=shared_classifier())
    runner, url = await start_server(app, "127.0.0.1", 0)
    try:
        yield Gate(url, app, store, policy_dir, settings, runner)
    finally:
        await runner.cleanup()


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """None: limits in the app's memory; else the URL of this test's own redis-server."""
    if request.param == "memory":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
async def gate(policy_dir: Path, tmp_path: Path, backend_url: str | None) -> AsyncIterator[Gate]:
    async with running_gate(policy_dir, tmp_path / "var", backend_url) as running:
        yield running


@pytest.fixture
async def redis_gate(
    policy_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[Gate]:
    async with running_gate(policy_dir, tmp_path / "var", redis_server.url) as running:
        yield running


@pytest.fixture
async def token(gate: Gate) -> str:
    return await gate.token()


@pytest.fixture
async def oai(gate: Gate, token: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with gate.openai(token) as client:
        yield client


@pytest.fixture
async def ant(gate: Gate, token: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with gate.anthropic(token) as client:
        yield client


@pytest.fixture
async def rdb(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the test's redis-server, to look at the limiter's keys."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


# --- Policy edits -----------------------------------------------------------------------------


def write_limits(
    policy_dir: Path,
    limits: dict[str, Any] | None = None,
    *,
    role: str = "employee",
    section: dict[str, Any] | None = None,
) -> None:
    """Replace `roles.<role>.limits` (None: leave it), and update the top-level `limits`."""
    path = policy_dir / "roles.yaml"
    document = yaml.safe_load(path.read_text())
    if limits is not None:
        document["roles"][role]["limits"] = limits
    if section is not None:
        document.setdefault("limits", {}).update(section)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def write_price(policy_dir: Path, model: str, input_pm: float, output_pm: float) -> None:
    path = policy_dir / "models.yaml"
    document = yaml.safe_load(path.read_text())
    document["models"][model]["price"] = {
        "input_per_million": input_pm,
        "output_per_million": output_pm,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def configure(gate: Gate, limits: dict[str, Any] | None = None, **section: Any) -> None:
    """Give the employee role `limits` (and the `limits` section `section`), then reload."""
    write_limits(gate.policy_dir, limits, section=section or None)
    assert gate.store.reload(), gate.store.last_error


# --- Requests ---------------------------------------------------------------------------------


async def chat(client: openai.AsyncOpenAI, model: str = MINI, **kwargs: Any) -> Any:
    """A chat completion; returns the raw response (headers) after reading the body."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=HELLO, **kwargs
    )
    raw.parse()
    return raw


async def chat_stream(client: openai.AsyncOpenAI, model: str = MINI) -> Any:
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=HELLO, stream=True
    )
    stream = raw.parse()
    text = ""
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text
    return raw


async def message(client: anthropic.AsyncAnthropic, **kwargs: Any) -> Any:
    raw = await client.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=64, messages=HELLO, **kwargs
    )
    await raw.parse()
    return raw


async def message_stream(client: anthropic.AsyncAnthropic) -> Any:
    raw = await client.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=64, messages=HELLO, stream=True
    )
    stream = await raw.parse()
    events = [event.type async for event in stream]
    assert events[-1] == "message_stop"
    return raw


async def responses_stream(client: openai.AsyncOpenAI) -> Any:
    raw = await client.responses.with_raw_response.create(
        model=MINI, input="Say hello", stream=True
    )
    stream = raw.parse()
    events = [event.type async for event in stream]
    assert events[-1] == "response.completed"
    return raw


async def settled() -> None:
    """A stream's end reaches the client just before its handler settles (reconciles tokens,
    charges the budget, frees the slot); give it that moment before a check that depends on it.
    Never used to wait for a limit to refill."""
    await asyncio.sleep(0.15)


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def retry_after(exc: openai.APIStatusError | anthropic.APIStatusError) -> int:
    value = exc.response.headers["retry-after"]
    assert re.fullmatch(r"[0-9]+", value), value
    seconds = int(value)
    assert seconds >= 1
    return seconds


_DURATION = re.compile(r"(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9.]+)s|(?P<ms>[0-9]+)ms)")


def duration_s(text: str) -> float:
    """OpenAI's reset durations: `20ms`, `1.5s`, `6m0s`."""
    match = _DURATION.fullmatch(text)
    assert match, text
    if match["ms"]:
        return int(match["ms"]) / 1000
    return int(match["m"] or 0) * 60 + float(match["s"])


def rfc3339(text: str) -> float:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def to_midnight_utc() -> float:
    return 86400 - time.time() % 86400


async def limiter_keys(rdb: aioredis.Redis) -> list[str]:
    return sorted([key async for key in rdb.scan_iter("sluice:{*")])


# --- 1. Requests per minute -------------------------------------------------------------------


async def test_requests_per_minute_openai(
    gate: Gate, oai: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    configure(gate, {"requests_per_minute": 3})
    for _ in range(3):
        await chat(oai)
    with pytest.raises(openai.RateLimitError) as refused:
        await chat(oai)
    error = refused.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert "requests per minute" in error.message
    # Three back-to-back requests filled the bucket; the next one is due 60/3 s after the first.
    assert retry_after(error) == 20
    assert error.response.headers.get("x-request-id", "").startswith("req_")
    assert len(fake_openai.received) == 3


async def test_requests_per_minute_anthropic(
    gate: Gate,
    ant: anthropic.AsyncAnthropic,
    oai: openai.AsyncOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
) -> None:
    configure(gate, {"requests_per_minute": 3})
    await message(ant)
    await message(ant)
    await chat(oai)  # the same caller: one limit over every API
    with pytest.raises(anthropic.RateLimitError) as refused:
        await message(ant)
    error = refused.value
    assert error.status_code == 429
    assert isinstance(error.body, dict)
    assert error.body["type"] == "error"
    assert error.body["error"]["type"] == "rate_limit_error"
    assert "requests per minute" in error.body["error"]["message"]
    assert 1 <= retry_after(error) <= 20
    assert len(fake_anthropic.received) == 2
    with pytest.raises(openai.RateLimitError):
        await chat(oai)
    assert len(fake_openai.received) == 1


async def test_requests_per_minute_refill(
    gate: Gate, oai: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    """30 per minute: a burst of 30, then one more every 2 s, as `Retry-After` says."""
    configure(gate, {"requests_per_minute": 30})
    await asyncio.gather(*(chat(oai) for _ in range(30)))
    with pytest.raises(openai.RateLimitError) as refused:
        await chat(oai)
    wait = retry_after(refused.value)
    assert wait in (1, 2)
    await asyncio.sleep(wait)
    await chat(oai)  # Retry-After was enough
    with pytest.raises(openai.RateLimitError):
        await chat(oai)  # and one request came back, not more
    assert len(fake_openai.received) == 31


async def test_users_override_and_per_model_limits(
    gate: Gate, oai: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    """`limits.users` replaces the role's value; `limits.models` adds a limit per model."""
    configure(
        gate,
        {"requests_per_minute": 100},
        users={SUBJECT: {"requests_per_minute": 2}},
        models={GPT4O: {"requests_per_minute": 1}},
    )
    await chat(oai, model=GPT4O)
    with pytest.raises(openai.RateLimitError) as refused:
        await chat(oai, model=GPT4O)
    assert "requests per minute (1)" in refused.value.message
    await chat(oai, model=MINI)
    with pytest.raises(openai.RateLimitError) as refused:
        await chat(oai, model=MINI)
    assert "requests per minute (2)" in refused.value.message
    assert len(fake_openai.received) == 2


# --- 2. Headers on granted requests -----------------------------------------------------------


async def test_openai_rate_limit_headers(gate: Gate, oai: openai.AsyncOpenAI) -> None:
    configure(gate, {"requests_per_minute": 5, "tokens_per_minute": 600})
    seen = []
    for _ in range(3):
        raw = await chat(oai)
        headers = raw.headers
        assert headers["x-ratelimit-limit-requests"] == "5"
        assert headers["x-ratelimit-limit-tokens"] == "600"
        seen.append(
            (
                int(headers["x-ratelimit-remaining-requests"]),
                duration_s(headers["x-ratelimit-reset-requests"]),
                int(headers["x-ratelimit-remaining-tokens"]),
                duration_s(headers["x-ratelimit-reset-tokens"]),
            )
        )
    assert [s[0] for s in seen] == [4, 3, 2]
    # The request bucket refills one every 12 s: after n requests it is full again in 12n s.
    for n, (_, reset, _, _) in enumerate(seen, 1):
        assert 12 * n - 1 <= reset <= 12 * n
    # Tokens: the estimate (10 for this body) is counted before, the answer's 18 after.
    tokens = [s[2] for s in seen]
    assert 589 <= tokens[0] <= 591
    assert tokens[0] > tokens[1] > tokens[2]
    assert tokens[1] <= 600 - 18 - 10 + 2
    assert all(0 < s[3] <= 60 for s in seen)
    assert seen[0][3] < seen[1][3] < seen[2][3]


async def test_anthropic_rate_limit_headers(gate: Gate, ant: anthropic.AsyncAnthropic) -> None:
    configure(gate, {"requests_per_minute": 4, "tokens_per_minute": 6000})
    remaining = []
    for _ in range(2):
        before = time.time()
        raw = await message(ant)
        headers = raw.headers
        assert "x-ratelimit-limit-requests" not in headers
        assert headers["anthropic-ratelimit-requests-limit"] == "4"
        assert headers["anthropic-ratelimit-tokens-limit"] == "6000"
        remaining.append(
            (
                int(headers["anthropic-ratelimit-requests-remaining"]),
                int(headers["anthropic-ratelimit-tokens-remaining"]),
            )
        )
        for unit in ("requests", "tokens"):
            reset = rfc3339(headers[f"anthropic-ratelimit-{unit}-reset"])
            assert before - 1 <= reset <= time.time() + 61
    assert [r[0] for r in remaining] == [3, 2]
    assert remaining[0][1] > remaining[1][1]


async def test_streams_carry_rate_limit_headers(
    gate: Gate, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    configure(gate, {"requests_per_minute": 10, "tokens_per_minute": 6000})
    raw = await chat_stream(oai)
    assert raw.headers["x-ratelimit-remaining-requests"] == "9"
    raw = await message_stream(ant)
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "8"


# --- 3. One limit over several replicas -------------------------------------------------------


async def test_two_replicas_share_one_limit(
    policy_dir: Path, tmp_path: Path, redis_server: RedisServer, fake_openai: FakeOpenAI
) -> None:
    write_limits(policy_dir, {"requests_per_minute": 4})
    async with (
        running_gate(policy_dir, tmp_path / "a", redis_server.url) as a,
        running_gate(policy_dir, tmp_path / "b", redis_server.url) as b,
    ):
        token = await a.token()
        async with a.openai(token) as on_a, b.openai(token) as on_b:
            await chat(on_a)
            await chat(on_b)
            raw = await chat(on_a)
            assert raw.headers["x-ratelimit-remaining-requests"] == "1"
            await chat(on_b)
            with pytest.raises(openai.RateLimitError):
                await chat(on_a)
            with pytest.raises(openai.RateLimitError):
                await chat(on_b)
    assert len(fake_openai.received) == 4


# --- 4. Tokens per minute, reconciled with the provider's usage --------------------------------

TPM_KINDS = ["chat", "chat-stream", "messages", "messages-stream", "responses-stream"]


async def _call(kind: str, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic) -> Any:
    if kind == "chat":
        return await chat(oai)
    if kind == "chat-stream":
        return await chat_stream(oai)
    if kind == "messages":
        return await message(ant)
    if kind == "messages-stream":
        return await message_stream(ant)
    return await responses_stream(oai)


def _usage(
    kind: str, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, p: int, c: int
) -> None:
    fake = fake_anthropic if kind.startswith("messages") else fake_openai
    fake.behaviour.prompt_tokens = p
    fake.behaviour.completion_tokens = c


@pytest.mark.parametrize("kind", TPM_KINDS)
async def test_tokens_per_minute_counts_real_usage(
    kind: str,
    gate: Gate,
    oai: openai.AsyncOpenAI,
    ant: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    """The first request is estimated at a few tokens but used 1200: the next is refused."""
    configure(gate, {"tokens_per_minute": 1000})
    _usage(kind, fake_openai, fake_anthropic, 600, 600)
    await _call(kind, oai, ant)
    await settled()
    error: openai.APIStatusError | anthropic.APIStatusError
    if kind.startswith("messages"):
        with pytest.raises(anthropic.RateLimitError) as refused_a:
            await _call(kind, oai, ant)
        error = refused_a.value
        assert isinstance(error.body, dict)
        assert "tokens per minute" in error.body["error"]["message"]
    else:
        with pytest.raises(openai.RateLimitError) as refused_o:
            await _call(kind, oai, ant)
        error = refused_o.value
        assert "tokens per minute" in error.message
    # 1200 tokens used of 1000 a minute: 200 (12 s) over, plus this request's estimate.
    assert 11 <= retry_after(error) <= 14
    assert len(fake_openai.received) + len(fake_anthropic.received) == 1


@pytest.mark.parametrize("kind", TPM_KINDS)
async def test_remaining_tokens_reflect_real_usage(
    kind: str,
    gate: Gate,
    oai: openai.AsyncOpenAI,
    ant: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    configure(gate, {"tokens_per_minute": 1000})
    _usage(kind, fake_openai, fake_anthropic, 400, 400)
    name = (
        "anthropic-ratelimit-tokens-remaining"
        if kind.startswith("messages")
        else "x-ratelimit-remaining-tokens"
    )
    first = int((await _call(kind, oai, ant)).headers[name])
    await settled()
    second = int((await _call(kind, oai, ant)).headers[name])
    assert first >= 1000 - 40  # only the estimate was counted
    # 800 used plus two estimates; a few tokens refill while the test runs (16.7 a second).
    assert 1000 - 800 - 2 * (1000 - first) - 1 <= second <= 1000 - 800 + 10


async def test_request_estimated_over_tokens_per_minute(
    gate: Gate,
    oai: openai.AsyncOpenAI,
    ant: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    configure(gate, {"tokens_per_minute": 50})
    big: Any = [{"role": "user", "content": "word " * 100}]
    with pytest.raises(openai.RateLimitError) as refused:
        await oai.chat.completions.create(model=MINI, messages=big)
    assert refused.value.code == "rate_limit_exceeded"
    assert "more than the limit of 50 tokens per minute" in refused.value.message
    with pytest.raises(anthropic.RateLimitError) as refused_a:
        await ant.messages.create(model=CLAUDE, max_tokens=16, messages=big)
    assert isinstance(refused_a.value.body, dict)
    assert refused_a.value.body["error"]["type"] == "rate_limit_error"
    assert fake_openai.received == [] and fake_anthropic.received == []
    # Refused before anything was counted: a small request still has the whole minute.
    raw = await chat(oai)
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) >= 40


# --- 5. Requests per day and the daily budget ---------------------------------------------------


async def test_requests_per_day(
    gate: Gate, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic, fake_openai: FakeOpenAI
) -> None:
    configure(gate, {"requests_per_day": 2})
    await chat(oai)
    await chat(oai)
    with pytest.raises(openai.RateLimitError) as refused:
        await chat(oai)
    assert "requests per day" in refused.value.message
    assert abs(retry_after(refused.value) - to_midnight_utc()) <= 2
    with pytest.raises(anthropic.RateLimitError):
        await message(ant)
    assert len(fake_openai.received) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_daily_budget(
    stream: bool, gate: Gate, oai: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    """One request costs 11 prompt tokens x 1 USD: the 5 USD budget is spent after it."""
    write_price(gate.policy_dir, MINI, 1_000_000, 0)
    configure(gate, {"daily_budget_usd": 5})
    await (chat_stream(oai) if stream else chat(oai))
    await settled()
    with pytest.raises(openai.RateLimitError) as refused:
        await chat(oai)
    assert "daily budget" in refused.value.message
    assert abs(retry_after(refused.value) - to_midnight_utc()) <= 2
    assert len(fake_openai.received) == 1


async def test_daily_budget_not_charged_for_free_models(
    gate: Gate, oai: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    write_price(gate.policy_dir, MINI, 0, 0)
    configure(gate, {"daily_budget_usd": 0.000001})
    for _ in range(3):
        await chat(oai)
    assert len(fake_openai.received) == 3


# --- 6. Concurrency ---------------------------------------------------------------------------


async def test_concurrent_requests(
    gate: Gate, oai: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    configure(gate, {"concurrent": 2})
    fake_openai.behaviour.delay_s = 0.6
    held = [asyncio.create_task(chat(oai)) for _ in range(2)]
    await until(lambda: fake_openai.in_flight == 2)
    with pytest.raises(openai.RateLimitError) as refused:
        await chat(oai)
    assert "concurrent requests" in refused.value.message
    assert retry_after(refused.value) == 1
    await asyncio.gather(*held)
    fake_openai.behaviour.delay_s = 0
    await chat(oai)
    assert len(fake_openai.received) == 3


async def _slots_free(rdb: aioredis.Redis | None) -> None:
    """Wait for the handlers of cancelled requests to settle; for Redis, see the slots go."""
    if rdb is None:
        await settled()
        return
    await until(lambda: _absent(rdb), timeout=2.0)


async def _absent(rdb: aioredis.Redis) -> bool:
    return not await rdb.exists(CONC_KEY)


CANCELS = [
    "chat-cancel-waiting",  # the client gives up before any byte of the answer
    "chat-stream-cancel-waiting",  # a stream request given up before its headers
    "chat-stream-close-early",  # a stream closed after its first chunk
    "messages-stream-close-early",
    "messages-cancel-waiting",
]


@pytest.mark.parametrize("how", CANCELS)
async def test_cancelled_requests_free_their_slots(
    how: str,
    backend_url: str | None,
    gate: Gate,
    oai: openai.AsyncOpenAI,
    ant: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    slots = 2
    configure(gate, {"concurrent": slots})
    rdb = None if backend_url is None else aioredis.Redis.from_url(backend_url)
    try:
        await _abandon_and_reuse(how, slots, rdb, oai, ant, fake_openai, fake_anthropic)
    finally:
        if rdb is not None:
            await rdb.aclose()


async def _abandon_and_reuse(
    how: str,
    slots: int,
    rdb: aioredis.Redis | None,
    oai: openai.AsyncOpenAI,
    ant: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    fake = fake_anthropic if how.startswith("messages") else fake_openai

    def request(stream: bool) -> Coroutine[Any, Any, Any]:
        if how.startswith("messages"):
            return ant.messages.create(model=CLAUDE, max_tokens=64, messages=HELLO, stream=stream)
        return oai.chat.completions.create(model=MINI, messages=HELLO, stream=stream)

    async def abandon_all() -> None:
        """Fill every slot with a request, then have the client walk away from all of them."""
        if how.endswith("cancel-waiting"):
            fake.behaviour.delay_s = 30
            tasks = [asyncio.create_task(request("stream" in how)) for _ in range(slots)]
            await until(lambda: fake.in_flight == slots)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        else:
            fake.behaviour.event_delay_s = 5
            streams = []
            for _ in range(slots):
                stream = await request(True)
                async for _event in stream:
                    break  # the first event is in; the rest would take seconds
                streams.append(stream)
            for stream in streams:
                await stream.close()

    for _round in range(2):  # twice the concurrency: a leak of every slot would show
        fake.disconnects = 0
        await abandon_all()
        await until(lambda: fake.disconnects == slots)
        await _slots_free(rdb)
    assert len(fake.received) == 2 * slots

    fake.behaviour.delay_s = 0.3
    fake.behaviour.event_delay_s = 0
    if how.startswith("messages"):
        await asyncio.gather(*(message(ant) for _ in range(slots)))
    else:
        await asyncio.gather(*(chat(oai) for _ in range(slots)))
    # The gateway releases slots just after the answer has gone out, so the client can read
    # the answer before Redis has seen the release: wait for it rather than race it.
    await _slots_free(rdb)


# --- 7. Redis down ----------------------------------------------------------------------------


@pytest.fixture
async def oidc_gate(
    policy_dir: Path, tmp_path: Path, redis_server: RedisServer, oidc_issuer: FakeOIDCIssuer
) -> AsyncIterator[Gate]:
    """Limits in Redis, callers identified by OIDC (personal tokens live in Redis too)."""
    trust_oidc_issuer(policy_dir, oidc_issuer.url)
    async with running_gate(policy_dir, tmp_path / "var", redis_server.url) as running:
        yield running


@pytest.fixture
def sso(oidc_issuer: FakeOIDCIssuer) -> str:
    return oidc_issuer.mint({"groups": ["engineering"]}, lifetime_s=600)


async def test_redis_down_fails_closed_then_recovers(
    oidc_gate: Gate,
    sso: str,
    redis_server: RedisServer,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    configure(oidc_gate, {"requests_per_minute": 100}, on_redis_failure="deny")
    async with oidc_gate.openai(sso) as oai, oidc_gate.anthropic(sso) as ant:
        await chat(oai)
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as refused:
            await chat(oai)
        first_refusal_s = time.monotonic() - started
        assert refused.value.status_code == 503
        assert refused.value.code == "service_unavailable"
        assert "Rate limits cannot be checked" in refused.value.message
        with pytest.raises(anthropic.APIStatusError) as refused_a:
            await message(ant)
        assert refused_a.value.status_code == 503
        assert isinstance(refused_a.value.body, dict)
        assert refused_a.value.body["error"]["type"] == "api_error"
        with pytest.raises(openai.APIStatusError):
            await chat_stream(oai)
        assert len(fake_openai.received) == 1 and fake_anthropic.received == []

        redis_server.start()
        deadline = time.monotonic() + 3.0
        while True:
            try:
                await chat(oai)
                break
            except openai.APIStatusError as exc:
                assert exc.status_code == 503
                assert time.monotonic() < deadline, "not recovered within 3 s of Redis's return"
                await asyncio.sleep(0.1)
        await message(ant)
        assert not oidc_gate.limiter.outage
    # Fail fast: Redis refuses connections at once, so the refusal should too (the client's
    # socket timeout is 0.5 s; the limiter promises to ask Redis at most once a second).
    assert first_refusal_s < 1.5, f"the first 503 took {first_refusal_s:.2f} s"


async def test_redis_down_counts_locally(
    oidc_gate: Gate,
    sso: str,
    redis_server: RedisServer,
    rdb: aioredis.Redis,
    fake_openai: FakeOpenAI,
) -> None:
    configure(oidc_gate, {"requests_per_minute": 3}, on_redis_failure="local")
    async with oidc_gate.openai(sso) as oai:
        await chat(oai)  # counted in Redis
        assert await rdb.exists(f"{CALLER_PREFIX}:rpm")
        redis_server.stop()
        for _ in range(3):  # counted in this replica's memory, from zero
            await chat(oai)
        with pytest.raises(openai.RateLimitError) as refused:
            await chat(oai)
        assert "requests per minute" in refused.value.message
        assert oidc_gate.limiter.outage
        assert len(fake_openai.received) == 4

        redis_server.start()  # empty: counting starts again there
        await rdb.connection_pool.disconnect()  # the test's own client: forget dead sockets
        deadline = time.monotonic() + 3.0
        while True:
            try:
                await chat(oai)
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "still counting locally 3 s after recovery"
                await asyncio.sleep(0.1)
        assert not oidc_gate.limiter.outage
        assert await rdb.exists(f"{CALLER_PREFIX}:rpm")


# --- 8. Keys: TTLs and hash tags --------------------------------------------------------------


async def test_every_limiter_key_has_a_ttl(
    redis_gate: Gate,
    rdb: aioredis.Redis,
    fake_openai: FakeOpenAI,
) -> None:
    every = {
        "requests_per_minute": 50,
        "tokens_per_minute": 100000,
        "requests_per_day": 1000,
        "daily_budget_usd": 100,
        "concurrent": 5,
    }
    configure(
        redis_gate,
        every,
        models={GPT4O: every},
        global_models={GPT4O: every},
    )
    token = await redis_gate.token()
    async with redis_gate.openai(token) as oai, redis_gate.anthropic(token) as ant:
        await chat(oai, model=GPT4O)
        await chat_stream(oai, model=GPT4O)
        await message(ant)
        await message_stream(ant)
        fake_openai.behaviour.delay_s = 0.5
        slow = asyncio.create_task(chat(oai, model=GPT4O))
        await until(lambda: fake_openai.in_flight == 1)
        keys = await limiter_keys(rdb)
        for conc in (CONC_KEY, f"{CALLER_PREFIX}:m:{GPT4O}:conc", f"sluice:{{m:{GPT4O}}}:conc"):
            assert conc in keys
            assert await rdb.type(conc) == "zset"
            assert await rdb.ttl(conc) > 0
        await slow
        await settled()

    keys = await limiter_keys(rdb)
    for key in keys:
        assert await rdb.ttl(key) > 0, f"{key} has no TTL"
    caller = [k.removeprefix(CALLER_PREFIX + ":") for k in keys if k.startswith(CALLER_PREFIX)]
    model_wide = [k.removeprefix(f"sluice:{{m:{GPT4O}}}:") for k in keys if "{m:" in k]
    assert len(caller) + len(model_wide) == len(keys)
    # Per-minute keys, and per-day keys named after the UTC day (one day: one key each).
    kinds = ["rpd", "rpm", "tpm", "usd"]
    assert sorted(k.split(":")[0] for k in caller if not k.startswith("m:")) == kinds
    assert sorted(k.split(":")[2] for k in caller if k.startswith(f"m:{GPT4O}:")) == kinds
    assert sorted(k.split(":")[0] for k in model_wide) == kinds
    # Slots were all given back, and their sets with them.
    assert not any(k.endswith(":conc") for k in keys)
    # One hash tag per caller, one per model: each group is one Cluster slot.
    assert {k[: k.index("}") + 1] for k in keys} == {CALLER_PREFIX, f"sluice:{{m:{GPT4O}}}"}


async def test_refusal_by_a_ceiling_refunds_the_callers_counts(
    backend_url: str | None, gate: Gate, oai: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    """The caller's group was granted in the same round trip as a model ceiling refused: the
    caller is not charged for a request that was never sent."""
    configure(
        gate,
        {"requests_per_minute": 10, "requests_per_day": 100, "concurrent": 3},
        global_models={GPT4O: {"requests_per_minute": 1}},
    )
    raw = await chat(oai, model=GPT4O)
    assert raw.headers["x-ratelimit-remaining-requests"] == "9"
    for _ in range(3):
        with pytest.raises(openai.RateLimitError) as refused:
            await chat(oai, model=GPT4O)
        assert "requests per minute (1)" in refused.value.message
    raw = await chat(oai, model=MINI)
    assert raw.headers["x-ratelimit-remaining-requests"] == "8"
    # Three refusals held no slots: three slow requests fit.
    fake_openai.behaviour.delay_s = 0.2
    await asyncio.gather(*(chat(oai, model=MINI) for _ in range(3)))
    assert len(fake_openai.received) == 5
    if backend_url is not None:  # refunds leave no key without a TTL either
        async with aioredis.Redis.from_url(backend_url, decode_responses=True) as rdb:
            keys = await limiter_keys(rdb)
            assert f"{CALLER_PREFIX}:rpm" in keys
            for key in keys:
                assert await rdb.ttl(key) > 0, f"{key} has no TTL"


# --- 9. Round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", [MINI, GPT4O], ids=["caller-only", "with-ceiling"])
async def test_round_trips_per_request(
    model: str, redis_gate: Gate, fake_openai: FakeOpenAI
) -> None:
    if model == GPT4O:
        assert GPT4O in redis_gate.store.current.policy.limits.global_models
    else:
        assert MINI not in redis_gate.store.current.policy.limits.global_models
    token = await redis_gate.token()
    shared = redis_gate.shared
    async with redis_gate.openai(token) as oai:
        await chat(oai, model=model)  # loads the scripts
        await chat_stream(oai, model=model)
        await settled()
        fake_openai.behaviour.delay_s = 0.2
        for stream in (False, True, False):
            before = shared.round_trips
            call = chat_stream(oai, model=model) if stream else chat(oai, model=model)
            task = asyncio.create_task(call)
            await until(lambda: fake_openai.in_flight == 1)
            assert shared.round_trips - before == 1, "one round trip before the request"
            await task
            await settled()
            # The employee role has `concurrent`, so a settle (releasing the slot) always follows.
            assert shared.round_trips - before == 2, "one round trip after it"


# --- Redis slow while a request is being counted ------------------------------------------------

# Keeps Redis busy (it runs one script at a time) for ARGV[1] seconds.
_BUSY = """
local t = redis.call('TIME')
local start = tonumber(t[1]) + tonumber(t[2]) / 1000000
while true do
  local n = redis.call('TIME')
  if tonumber(n[1]) + tonumber(n[2]) / 1000000 - start > tonumber(ARGV[1]) then return 1 end
end
"""


@contextlib.asynccontextmanager
async def redis_busy(url: str, seconds: float) -> AsyncIterator[asyncio.Task[Any]]:
    """Redis answers nobody for `seconds` from (about) the moment this is entered."""
    client = aioredis.Redis.from_url(url, socket_timeout=seconds + 5)
    await client.ping()

    async def busy() -> Any:
        return await client.eval(_BUSY, 0, str(seconds))

    task = asyncio.create_task(busy())
    try:
        await asyncio.sleep(0.05)  # the script is running: later commands queue behind it
        yield task
        await task
    finally:
        await client.aclose()


async def test_client_gone_while_counted_leaks_no_slot(
    oidc_gate: Gate, sso: str, redis_server: RedisServer, fake_openai: FakeOpenAI
) -> None:
    """The client disconnects while its request waits for Redis to count it: the slot the
    script then takes in Redis must still be given back."""
    configure(oidc_gate, {"concurrent": 1})
    shared = oidc_gate.shared
    async with oidc_gate.openai(sso) as oai:
        await chat(oai)  # keys fetched, scripts loaded
        async with redis_busy(redis_server.url, 0.4):
            before = shared.round_trips
            task = asyncio.create_task(chat(oai))
            await until(lambda: shared.round_trips > before)  # the acquire is waiting on Redis
            await asyncio.sleep(0.05)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.3)
        async with aioredis.Redis.from_url(redis_server.url) as rdb:
            held = await rdb.zrange(CONC_KEY, 0, -1)
        assert len(fake_openai.received) == 1
        assert held == [], f"slot leaked by a request that was never sent: {held}"
        await chat(oai)


async def test_redis_timeout_while_counted_leaks_no_slot(
    oidc_gate: Gate, sso: str, redis_server: RedisServer, fake_openai: FakeOpenAI
) -> None:
    """Redis answers after the limiter gave up (503): the slot its script took then must not
    stay held for the slot TTL (the provider's total timeout plus a minute)."""
    configure(oidc_gate, {"concurrent": 1}, on_redis_failure="deny")
    async with oidc_gate.openai(sso) as oai:
        await chat(oai)
        async with redis_busy(redis_server.url, 0.9):
            with pytest.raises(openai.APIStatusError) as refused:
                await chat(oai)
            assert refused.value.status_code == 503
        await asyncio.sleep(1.1)  # past the limiter's retry window
        async with aioredis.Redis.from_url(redis_server.url) as rdb:
            held = await rdb.zrange(CONC_KEY, 0, -1)
        assert len(fake_openai.received) == 1
        assert held == [], f"slot held by a request that got 503: {held}"
        await chat(oai)


@pytest.mark.parametrize("kind", ["chat-stream", "messages-stream", "responses-stream"])
async def test_back_to_back_streams_with_one_slot(
    kind: str, gate: Gate, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    """A client that starts its next stream as soon as the last one ended is not refused:
    the slot is free by the time the client has seen the end of the stream."""
    configure(gate, {"concurrent": 1})
    for _ in range(20):
        await _call(kind, oai, ant)


def write_timeouts(policy_dir: Path, provider: str, **timeouts: float) -> None:
    path = policy_dir / "providers.yaml"
    document = yaml.safe_load(path.read_text())
    document["providers"][provider]["timeouts"] = timeouts
    path.write_text(yaml.safe_dump(document, sort_keys=False))


async def test_slot_set_outlives_every_slot_in_it(
    redis_gate: Gate, rdb: aioredis.Redis, fake_openai: FakeOpenAI
) -> None:
    """A caller's slots share one sorted set across providers. A request to a provider with a
    short `timeouts.total` must not shorten the set's TTL below a longer request's slot: the
    set would vanish, and with it the slot of a request still in flight."""
    write_timeouts(redis_gate.policy_dir, "anthropic", total=5)
    configure(redis_gate, {"concurrent": 4})
    token = await redis_gate.token()
    async with redis_gate.openai(token) as oai, redis_gate.anthropic(token) as ant:
        fake_openai.behaviour.delay_s = 1.0
        slow = asyncio.create_task(chat(oai))  # an openai slot: 600 + 60 s
        await until(lambda: fake_openai.in_flight == 1)
        await message(ant)  # an anthropic slot: 5 + 60 s, taken and given back
        slots = await rdb.zrange(CONC_KEY, 0, -1, withscores=True)
        assert len(slots) == 1
        member, expires = str(slots[0][0]), float(slots[0][1])
        seconds, micros = await rdb.time()
        slot_left = expires - (seconds + micros / 1e6)
        set_left = await rdb.pttl(CONC_KEY) / 1000
        await slow
    assert slot_left > 600
    assert set_left >= slot_left, (
        f"the slot set expires in {set_left:.0f} s, the slot {member} in it in {slot_left:.0f} s"
    )


# --- 10. Many requests on one connection, scripts lost mid-request ----------------------------


async def test_concurrent_requests_counted_exactly_once(
    redis_gate: Gate, rdb: aioredis.Redis, fake_openai: FakeOpenAI
) -> None:
    """Commands of many requests share writes and reads on one connection: each request is
    still counted once, and each refusal or grant reaches the request it belongs to."""
    configure(redis_gate, {"requests_per_minute": 25, "concurrent": 100})
    token = await redis_gate.token()
    fake_openai.behaviour.delay_s = 0.05
    async with redis_gate.openai(token) as oai:
        results = await asyncio.gather(*(chat(oai) for _ in range(40)), return_exceptions=True)
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert (len(granted), len(refused)) == (25, 15)
    assert len(fake_openai.received) == 25
    # Each grant saw its own place in the count (give or take the refill meanwhile).
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in granted)
    assert remaining[0] <= 1 and remaining[-1] <= 24 and len(set(remaining)) >= 20
    await settled()
    assert not await rdb.exists(CONC_KEY), "every slot was given back"


async def test_scripts_lost_mid_request_still_settle(
    redis_gate: Gate, rdb: aioredis.Redis, fake_openai: FakeOpenAI
) -> None:
    """Redis forgets its scripts (SCRIPT FLUSH, as after a restart) while a request is in
    flight: the settle, sent without anyone waiting for it, loads them again and frees the
    slot; the next request is not refused."""
    configure(redis_gate, {"concurrent": 1})
    token = await redis_gate.token()
    async with redis_gate.openai(token) as oai:
        await chat(oai)  # scripts loaded
        fake_openai.behaviour.delay_s = 0.3
        task = asyncio.create_task(chat(oai))
        await until(lambda: fake_openai.in_flight == 1)
        assert await rdb.zcard(CONC_KEY) == 1
        await rdb.script_flush()
        await task

        async def slot_free() -> bool:
            return bool(await rdb.zcard(CONC_KEY) == 0)

        await until(slot_free)
        fake_openai.behaviour.delay_s = 0
        await chat(oai)
    assert len(fake_openai.received) == 3


def test_spend_is_priced_at_the_model_that_answered(policy_dir: Path) -> None:
    """A sensitive reroute or a fallback is billed as the model it went to."""
    from proxy.context import RequestContext, Route, WireFormat
    from proxy.ratelimit.plan import cost_usd

    snapshot = PolicyStore.open(policy_dir).current
    ctx = RequestContext(
        request_id="req_1",
        received_at=0.0,
        started=0.0,
        wire=WireFormat.OPENAI_CHAT,
        policy=snapshot,
        headers={},
        client_address=None,
    )
    ctx.requested_model = "gpt-4o"
    ctx.usage.record(1_000_000, 1_000_000)
    ctx.route = Route("gpt-4o", "openai", "gpt-4o", "direct")
    assert cost_usd(ctx) == 12.5  # gpt-4o: 2.5 in + 10 out per million
    ctx.route = Route("llama-3.3-70b", "onprem", "meta-llama/Llama-3.3-70B-Instruct", "sensitive")
    llama = snapshot.policy.models["llama-3.3-70b"].price
    expected = 0.0 if llama is None else llama.input_per_million + llama.output_per_million
    assert cost_usd(ctx) == expected
