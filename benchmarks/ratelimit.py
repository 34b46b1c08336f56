"""Measures what rate limits counted in Redis cost: Sluice with limits vs the same Sluice without,
through the gateway, and the Redis round trips each request makes.

Run `python benchmarks/ratelimit.py`; it prints the tables and writes them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import overhead  # the sibling benchmark: processes, load generator, doc writing

if TYPE_CHECKING:
    import redis

REPO = overhead.REPO
MARKERS = ("<!-- ratelimit:start -->", "<!-- ratelimit:end -->")
COMMAND = "python benchmarks/ratelimit.py"
REDIS_SERVER = "/usr/bin/redis-server"
SLUICE_CPU, LOAD_CPU = overhead.SLUICE_CPU, overhead.LOAD_CPU
PATH = overhead.PATH

# Limits in Redis vs no limits at concurrency 16: what one core serves, judged on Sluice's CPU
# time per request (the machine is shared: wall-clock req/s follow whoever else uses CPU 0).
TARGET_RATIO = 0.80
MAX_BEFORE, MAX_AFTER = 1, 1  # Redis round trips before the response, and after it
ROLE, SUBJECT = "employee", "bench@corp.example"
# High enough never to refuse, so every limit is counted and none is hit.
ROLE_LIMITS = {
    "requests_per_minute": 10_000_000,
    "requests_per_day": 1_000_000_000,
    "tokens_per_minute": 1_000_000_000_000,
    "concurrent": 10_000,
    "daily_budget_usd": 1_000_000_000,
}
MODEL_CEILING = {
    "requests_per_minute": 10_000_000,
    "tokens_per_minute": 1_000_000_000_000,
    "concurrent": 10_000,
}
MAX_EVALSHA = 2  # per request: one script before the response, at most one after it
TARGETS = ("no limits", "limits")

SCENARIOS = (
    overhead.Scenario(stream=False, concurrency=16),
    overhead.Scenario(stream=True, concurrency=16),
    overhead.Scenario(stream=False, concurrency=1),
)


# Policies: the same providers, models and role, with and without limits.


def write_policies(directory: Path, limited: bool) -> Path:
    directory.mkdir(parents=True)
    for name in ("providers.yaml", "models.yaml", "identity.yaml"):
        shutil.copy(REPO / "policies" / name, directory / name)
    role: dict[str, Any] = {"models": ["gpt-4o"], "endpoints": ["chat"]}
    document: dict[str, Any] = {"roles": {ROLE: role}}
    if limited:
        role["limits"] = ROLE_LIMITS
        document["limits"] = {
            "on_redis_failure": "deny",
            "global_models": {"gpt-4o": MODEL_CEILING},
        }
    # JSON is YAML; written by benchmarks/ratelimit.py.
    (directory / "roles.yaml").write_text(json.dumps(document, indent=2) + "\n")
    return directory


# A private redis-server, as tests/conftest.py::RedisServer starts one: never the shared 6379.


@dataclass(frozen=True)
class RedisProcess:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(stack: ExitStack, tmp: Path) -> RedisProcess:
    """redis-server on a free loopback port, no persistence, on the load generator's core."""
    for attempt in range(3):  # another process may take the free port before redis binds it
        port = overhead.free_port()
        argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
        log = stack.enter_context((tmp / f"redis-{attempt}.log").open("wb"))
        proc = stack.enter_context(overhead.spawn(argv, LOAD_CPU, cwd=tmp, stdout=log, stderr=log))
        try:
            overhead.wait_until(functools.partial(ping, port), proc, "redis-server")
        except RuntimeError:
            overhead.stop(proc)
            continue
        return RedisProcess(proc, port)
    raise RuntimeError("redis-server did not start: " + (tmp / "redis-2.log").read_text()[-2000:])


@dataclass(frozen=True)
class RedisCounters:
    """What Redis says it did: calls per command (the scripts' own `redis.call`s included),
    server µs per command, read events, and the requests the caller's daily counter counted."""

    calls: dict[str, int]
    usec: dict[str, int]
    reads: int  # `total_reads_processed`: one per batch of commands a client sent at once
    cpu_s: float
    granted: int  # the `requests per day` counters: one per request the limits let through

    @classmethod
    def read(cls, client: redis.Redis, pid: int) -> RedisCounters:
        info = client.info("all")
        stats = {k[len("cmdstat_") :]: v for k, v in info.items() if k.startswith("cmdstat_")}
        keys = client.keys("sluice:*:rpd:*")
        granted = sum(int(float(v)) for v in client.mget(keys) if v) if keys else 0
        return cls(
            {name: int(s["calls"]) for name, s in stats.items()},
            {name: int(s["usec"]) for name, s in stats.items()},
            int(info["total_reads_processed"]),
            overhead.cpu_seconds(pid),
            granted,
        )

    @classmethod
    def settled(cls, client: redis.Redis, pid: int, timeout: float = 3.0) -> RedisCounters:
        """Counters once requests still in flight when the load generator stopped have
        finished (their settle would otherwise land in the next run's numbers)."""
        current = cls.read(client, pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            again = cls.read(client, pid)
            if again.calls.get("evalsha", 0) == current.calls.get("evalsha", 0):
                return again
            current = again
        return current

    def __sub__(self, other: RedisCounters) -> RedisCounters:
        def minus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) - b.get(k, 0) for k in a.keys() | b.keys()}

        return RedisCounters(
            minus(self.calls, other.calls),
            minus(self.usec, other.usec),
            self.reads - other.reads,
            self.cpu_s - other.cpu_s,
            self.granted - other.granted,
        )

    def __add__(self, other: RedisCounters) -> RedisCounters:
        def plus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}

        return RedisCounters(
            plus(self.calls, other.calls),
            plus(self.usec, other.usec),
            self.reads + other.reads,
            self.cpu_s + other.cpu_s,
            self.granted + other.granted,
        )


# `sluice serve` twice: with limits and without, both counting and looking tokens up in Redis.


def issue_token(policies: Path, env: dict[str, str], data_dir: Path) -> str:
    """`sluice token issue` with REDIS_URL set: the token lives in Redis, for both gateways."""
    argv = [
        *overhead.sluice_command(),
        *("token", "issue", "--sub", SUBJECT, "--role", ROLE, "--ttl", "1d"),
        *("--name", "benchmarks/ratelimit.py", "--policies", str(policies)),
        *("--data-dir", str(data_dir)),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, cwd=REPO)
    lines = done.stdout.split()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"sluice token issue failed: {done.stdout}{done.stderr}")
    return lines[0]


def start_sluice(
    stack: ExitStack, tmp: Path, name: str, policies: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    port = overhead.free_port()
    argv = [
        *overhead.sluice_command(),
        *("serve", "--host", "127.0.0.1", "--port", str(port)),
        *("--policies", str(policies), "--log-level", "warning"),
        # A data directory each, as two deployments have: in one, the two audit logs would
        # share a directory and one dashboard index, which follows the newest segment only,
        # so one gateway's records would be indexed (twice, by both) and the other's never.
        *("--data-dir", str(tmp / f"data-{name.replace(' ', '-')}")),
    ]
    log_path = tmp / f"sluice-{name.replace(' ', '-')}.log"
    log = stack.enter_context(log_path.open("wb"))
    proc = stack.enter_context(overhead.spawn(argv, SLUICE_CPU, cwd=REPO, env=env, stderr=log))
    url = f"http://127.0.0.1:{port}"
    try:
        overhead.wait_until(lambda: overhead.http_status(url + "/ready") == 200, proc, name)
    except RuntimeError:
        sys.stderr.write(log_path.read_text())
        raise
    return proc, url


def limit_header(url: str, headers: dict[str, str]) -> str | None:
    """The `x-ratelimit-limit-requests` a gateway answers with: proof its limits are on."""
    body = overhead.SCENARIOS[0].body()
    request = urllib.request.Request(url + PATH, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        value: str | None = response.headers.get("x-ratelimit-limit-requests")
        return value


# Measurement through the gateway.


@dataclass(frozen=True)
class Side:
    """One gateway's rounds in one scenario: the load generator's numbers and Redis's."""

    summary: overhead.Summary
    completed: int  # requests the load generator saw answered
    seconds: float
    redis: RedisCounters

    @property
    def requests(self) -> int:
        """Requests the gateway handled: Redis's own count where limits count them (it also
        has those still in flight when the load generator stopped), else the generator's."""
        return self.redis.granted or self.completed

    def per_request(self, command: str) -> float:
        return self.redis.calls.get(command, 0) / self.requests if self.requests else 0.0

    @property
    def reads_per_request(self) -> float:
        return self.redis.reads / self.requests if self.requests else 0.0

    @property
    def gets_per_second(self) -> float:
        return self.redis.calls.get("get", 0) / self.seconds if self.seconds else 0.0

    @property
    def redis_cpu_us(self) -> float:
        return self.redis.cpu_s / self.requests * 1e6 if self.requests else 0.0

    @property
    def evalsha_server_us(self) -> float:
        calls = self.redis.calls.get("evalsha", 0)
        return self.redis.usec.get("evalsha", 0) / calls if calls else 0.0


@dataclass(frozen=True)
class Result:
    scenario: overhead.Scenario
    sides: dict[str, Side]

    @property
    def ratio(self) -> float:
        """Wall clock: req/s with limits over req/s without."""
        base = self.sides["no limits"].summary.rps
        return self.sides["limits"].summary.rps / base if base else 0.0

    @property
    def cpu_ratio(self) -> float:
        """CPU time: requests per Sluice CPU-second with limits over those without, i.e. the
        share of its no-limit throughput a saturated core keeps."""
        limited = self.sides["limits"].summary.cpu_us_per_request
        return self.sides["no limits"].summary.cpu_us_per_request / limited if limited else 0.0

    @property
    def target(self) -> str:
        failed = sum(s.summary.errors for s in self.sides.values())
        if failed:
            return f"INVALID ({failed} failed requests)"
        if self.scenario.concurrency != 16:
            return ""
        ok = self.cpu_ratio >= TARGET_RATIO
        return f"{'PASS' if ok else 'FAIL'} (≥ {TARGET_RATIO:.2f} on CPU time)"


def measure(
    benches: dict[str, overhead.Bench],
    scenario: overhead.Scenario,
    counters: Callable[[], RedisCounters],
) -> Result:
    """Warm both gateways, then alternate them round by round (ABBA), Redis counted around
    each run."""
    settings = next(iter(benches.values())).settings
    for bench in benches.values():
        overhead.load(bench, "sluice", scenario, settings.warmup)
    runs: dict[str, list[overhead.Run]] = {t: [] for t in benches}
    redis_deltas: dict[str, list[RedisCounters]] = {t: [] for t in benches}
    per_round = settings.seconds / settings.rounds
    for index in range(settings.rounds):
        order = list(benches) if index % 2 == 0 else list(reversed(benches))
        for target in order:
            before = counters()
            runs[target].append(overhead.measured(benches[target], "sluice", scenario, per_round))
            redis_deltas[target].append(counters() - before)
    sides = {}
    for target in benches:
        total = redis_deltas[target][0]
        for delta in redis_deltas[target][1:]:
            total = total + delta
        sides[target] = Side(
            overhead.Summary.of(runs[target]),
            sum(r.requests for r in runs[target]),
            sum(r.seconds for r in runs[target]),
            total,
        )
    return Result(scenario, sides)


# Exact round trips: `RedisLimits.round_trips` of a gateway built by `build_app`, in process.


@dataclass(frozen=True)
class Exact:
    scenario: str
    requests: int
    before: list[int]  # per request: round trips done when the response's headers went out
    after: list[int]  # per request: round trips after that, until the handler was done
    evalsha: int
    reads: int
    acquire_us: list[float]  # wall time of `Limiter.acquire`, sorted
    settle_us: list[float]
    acquire_cpu_us: list[float]  # this thread's CPU time in it (nothing else runs meanwhile)
    settle_cpu_us: list[float]

    @property
    def verdict(self) -> str:
        ok = max(self.before) <= MAX_BEFORE and max(self.after) <= MAX_AFTER
        return (
            f"{'PASS' if ok else 'FAIL'} (≤ {MAX_BEFORE} before the response, ≤ {MAX_AFTER} after)"
        )


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Run this process on `cpu` only, for a while."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


@asynccontextmanager
async def in_process_gateway(
    policies: Path, data_dir: Path, redis_url: str, fake_url: str
) -> AsyncIterator[tuple[Any, str, dict[str, int], dict[str, int]]]:
    """`build_app` on the limits policy and the private Redis, serving on loopback.

    Yields the app, its URL, and per request id the `round_trips` count when the response's
    headers were sent (`on_response_prepare`) and when the handler returned (a middleware
    innermost, so after the pipeline's `finish`).
    """
    from aiohttp import web

    from proxy.app import build_app, start_server
    from proxy.handler import GATEWAY, REQUEST_ID
    from proxy.policy.store import PolicyStore
    from proxy.settings import Settings

    with environment(overhead.sluice_env(fake_url)):
        store = PolicyStore.open(policies)
    app = build_app(store, Settings(data_dir=data_dir, redis_url=redis_url), watch_interval=0)
    at_prepare: dict[str, int] = {}
    at_end: dict[str, int] = {}

    def round_trips() -> int:
        shared = app[GATEWAY].limiter.shared
        assert shared is not None, "the gateway has REDIS_URL"
        return shared.round_trips

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        at_prepare[request[REQUEST_ID]] = round_trips()

    @web.middleware
    async def handler_done(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        at_end[request[REQUEST_ID]] = round_trips()
        return response

    app.on_response_prepare.append(on_prepare)
    app.middlewares.append(handler_done)
    runner, url = await start_server(app, "127.0.0.1", 0)
    try:
        yield app, url, at_prepare, at_end
    finally:
        await runner.cleanup()


async def exact_round_trips(
    policies: Path, data_dir: Path, redis_url: str, token: str, requests: int
) -> list[Exact]:
    import aiohttp
    import redis.asyncio as aioredis

    from proxy.handler import GATEWAY
    from proxy.testing import FakeOpenAI

    out = []
    stats = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with (
        stats,
        FakeOpenAI() as fake,
        in_process_gateway(policies, data_dir, redis_url, fake.url) as (app, url, prep, end),
        aiohttp.ClientSession() as client,
    ):
        limiter = app[GATEWAY].limiter
        shared = limiter.shared
        assert shared is not None
        timings: dict[str, list[float]] = {n: [] for n in ("acquire", "settle")}
        cpu: dict[str, list[float]] = {n: [] for n in ("acquire", "settle")}
        # Time the limiter's two calls on this instance (the benchmark's instrument only):
        # `acquire` is awaited, `settle` sends and returns (Redis's answer is not waited for).
        original_acquire, original_settle = limiter.acquire, limiter.settle

        async def timed_acquire(*args: Any, **kwargs: Any) -> Any:
            started, cpu_started = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return await original_acquire(*args, **kwargs)
            finally:
                timings["acquire"].append((time.perf_counter_ns() - started) / 1000)
                cpu["acquire"].append((time.thread_time_ns() - cpu_started) / 1000)

        def timed_settle(*args: Any, **kwargs: Any) -> Any:
            started, cpu_started = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return original_settle(*args, **kwargs)
            finally:
                timings["settle"].append((time.perf_counter_ns() - started) / 1000)
                cpu["settle"].append((time.thread_time_ns() - cpu_started) / 1000)

        limiter.acquire = timed_acquire
        limiter.settle = timed_settle
        headers = overhead.request_headers(token)
        for scenario in (overhead.SCENARIOS[0], overhead.SCENARIOS[2]):
            body = scenario.body()

            async def call(body: bytes = body) -> str:
                """One request; its id."""
                async with client.post(url + PATH, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"in-process gateway answered {response.status}")
                    return response.headers["x-request-id"]

            for _ in range(20):  # loads the scripts, fills the connection pool
                await call()
            for values in (*timings.values(), *cpu.values()):
                values.clear()
            info = await stats.info("all")
            evalsha0 = int(info.get("cmdstat_evalsha", {}).get("calls", 0))
            reads0 = int(info["total_reads_processed"])
            before, after = [], []
            for _ in range(requests):
                started = shared.round_trips
                request_id = await call()
                deadline = time.monotonic() + 2.0
                while request_id not in end and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)  # a stream's handler settles after its end
                if request_id not in end:
                    raise RuntimeError("the handler did not finish within 2 s")
                before.append(prep[request_id] - started)
                after.append(end[request_id] - prep[request_id])
            info = await stats.info("all")
            out.append(
                Exact(
                    scenario.name,
                    requests,
                    before,
                    after,
                    int(info["cmdstat_evalsha"]["calls"]) - evalsha0,
                    int(info["total_reads_processed"]) - reads0 - 1,  # less this INFO's own
                    sorted(timings["acquire"]),
                    sorted(timings["settle"]),
                    sorted(cpu["acquire"]),
                    sorted(cpu["settle"]),
                )
            )
    return out


# The run.


@dataclass(frozen=True)
class Report:
    results: list[Result]
    exact: list[Exact]
    limits_header: str  # `x-ratelimit-limit-requests` the gateway with limits answered


def benchmark(settings: overhead.Settings, exact_requests: int) -> Report:
    import redis
    import uvloop

    with (
        tempfile.TemporaryDirectory(prefix="sluice-ratelimit-bench-") as name,
        ExitStack() as stack,
    ):
        tmp = Path(name)
        fake, fake_url = overhead.start_fake(stack, tmp)
        server = start_redis(stack, tmp)
        client = stack.enter_context(redis.Redis(port=server.port, decode_responses=True))
        policies = {
            "no limits": write_policies(tmp / "policies-no-limits", limited=False),
            "limits": write_policies(tmp / "policies-limits", limited=True),
        }
        env = {**overhead.sluice_env(fake_url), "REDIS_URL": server.url}
        token = issue_token(policies["limits"], env, tmp / "data")
        headers = overhead.request_headers(token)
        benches = {}
        for target in TARGETS:
            proc, url = start_sluice(stack, tmp, target, policies[target], env)
            overhead.smoke_test(url, headers)
            benches[target] = overhead.Bench(settings, tmp, fake, proc, {"sluice": url}, headers)
        header = limit_header(benches["limits"].urls["sluice"], headers)
        if header is None or limit_header(benches["no limits"].urls["sluice"], headers):
            raise RuntimeError("only the gateway with limits should answer x-ratelimit-*")
        print("  round trips, in process ...", file=sys.stderr)
        with pinned(int(SLUICE_CPU)):
            exact = uvloop.run(
                exact_round_trips(
                    policies["limits"], tmp / "data", server.url, token, exact_requests
                )
            )
        results = []
        for scenario in SCENARIOS:
            print(f"  {scenario.name}, concurrency {scenario.concurrency} ...", file=sys.stderr)
            results.append(
                measure(benches, scenario, lambda: RedisCounters.settled(client, server.proc.pid))
            )
        return Report(results, exact, header)


# Report.


def throughput_table(results: Sequence[Result]) -> str:
    rows = [
        "| scenario | concurrency | no limits req/s | limits req/s | limits / no limits (req/s) "
        "| no limits p50/p99 ms | limits p50/p99 ms | added p50 ms "
        "| Sluice CPU µs/req no limits / limits (CPU 0 busy; others) "
        "| limits / no limits (CPU time) | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        a, b = r.sides["no limits"].summary, r.sides["limits"].summary
        rows.append(
            f"| {r.scenario.name} | {r.scenario.concurrency} | {a.rps:,.0f} | {b.rps:,.0f} "
            f"| {r.ratio:.2f} | {a.p50_ms:.2f} / {a.p99_ms:.2f} | {b.p50_ms:.2f} / {b.p99_ms:.2f} "
            f"| {b.p50_ms - a.p50_ms:+.2f} | {a.cpu_us_per_request:,.0f} / "
            f"{b.cpu_us_per_request:,.0f} ({a.sluice_core:.0%} / {b.sluice_core:.0%}; "
            f"{max(a.cpu0_others, b.cpu0_others):.0%}) | {r.cpu_ratio:.2f} | {r.target} |"
        )
    return "\n".join(rows)


def redis_table(results: Sequence[Result]) -> str:
    rows = [
        "| scenario | concurrency | gateway | requests | EVALSHA / req | Redis reads / req "
        "| EVALSHA server µs / call | Redis CPU µs / req | GET / s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for target in TARGETS:
            s = r.sides[target]
            # With limits, the scripts' own GETs are counted too: token lookups show only
            # on the gateway without limits.
            gets = f"{s.gets_per_second:.2f}" if target == "no limits" else "(scripts')"
            rows.append(
                f"| {r.scenario.name} | {r.scenario.concurrency} | {target} | {s.requests:,} "
                f"| {s.per_request('evalsha'):.3f} | {s.reads_per_request:.3f} "
                f"| {s.evalsha_server_us:.1f} | {s.redis_cpu_us:.0f} | {gets} |"
            )
    return "\n".join(rows)


def exact_table(exact: Sequence[Exact]) -> str:
    rows = [
        "| scenario | requests | round trips before the response | after it "
        "| EVALSHA / req | Redis reads / req | acquire p50/p99 µs (CPU p50) "
        "| settle p50/p99 µs (CPU p50) | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in exact:

        def spread(values: list[int]) -> str:
            low, high = min(values), max(values)
            if low == high:
                return str(low)
            return f"{low} to {high} (mean {statistics.mean(values):.2f})"

        def us(values: list[float], cpu: list[float]) -> str:
            p50, p99 = percentile(values, 50), percentile(values, 99)
            return f"{p50:.0f} / {p99:.0f} ({percentile(cpu, 50):.0f})"

        rows.append(
            f"| {e.scenario} | {e.requests:,} | {spread(e.before)} | {spread(e.after)} "
            f"| {e.evalsha / e.requests:.2f} | {e.reads / e.requests:.2f} "
            f"| {us(e.acquire_us, e.acquire_cpu_us)} | {us(e.settle_us, e.settle_cpu_us)} "
            f"| {e.verdict} |"
        )
    return "\n".join(rows)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def verdicts(report: Report) -> list[str]:
    lines = []
    for r in report.results:
        if r.scenario.concurrency == 16:
            lines.append(
                f"- Throughput, {r.scenario.name} at concurrency 16: limits in Redis keep "
                f"{r.cpu_ratio:.0%} of the no-limit throughput per CPU-second of Sluice "
                f"(wall clock: {r.ratio:.0%} of the no-limit req/s): **{r.target}**."
            )
    for r in report.results:
        limits = r.sides["limits"]
        per_request = limits.per_request("evalsha")
        ok = per_request <= MAX_EVALSHA + 0.01
        lines.append(
            f"- Redis calls, {r.scenario.name} at concurrency {r.scenario.concurrency}: "
            f"{per_request:.2f} EVALSHA per request, both key groups (the caller's and the "
            f"model's) in one script: **{'PASS' if ok else 'FAIL'}** (≤ {MAX_EVALSHA}: "
            "1 acquire + ≤ 1 settle)."
        )
    for e in report.exact:
        lines.append(f"- Round trips, {e.scenario}: **{e.verdict}**.")
    return lines


def findings(report: Report) -> list[str]:
    """What the numbers say about where the cost is, computed from this run."""
    lines = []
    exact = {e.scenario: e for e in report.exact}
    whole = exact.get("non-streaming")
    main = next((r for r in report.results if r.scenario == SCENARIOS[0]), None)
    if whole is not None and main is not None:
        base = main.sides["no limits"].summary.cpu_us_per_request
        added = main.sides["limits"].summary.cpu_us_per_request - base
        lines.append(
            f"- Where the cost is: under load (non-streaming, concurrency 16) limits add "
            f"{added:+,.0f} µs of Sluice CPU to a request that costs {base:,.0f} µs without "
            "them. One request at a time, `Limiter.acquire` takes "
            f"{percentile(whole.acquire_cpu_us, 50):,.0f} µs of CPU (p50; building the "
            "command from the plan's cached bytes, the loopback write and read, waking the "
            "request) and `Limiter.settle` "
            f"{percentile(whole.settle_cpu_us, 50):,.0f} µs (it queues the command and "
            "returns; the command rides in the next write, and a callback checks the reply). "
            "Under load the socket work is shared: Redis saw "
            f"{main.sides['limits'].reads_per_request:.2f} reads per request, i.e. one write "
            "carried the commands of several requests. Redis itself spends "
            f"{main.sides['limits'].evalsha_server_us:.0f} µs per script, on CPU {LOAD_CPU}."
        )
        if max(whole.before) > MAX_BEFORE:
            lines.append(
                "- Some answers waited for more than one round trip before they were sent; "
                "see the exact round trips above."
            )
    others = max(s.summary.cpu0_others for r in report.results for s in r.sides.values())
    if others >= overhead.NOISY:
        lines.append(
            f"- Noise: while a gateway was measured, other processes (and kernel work) used up "
            f"to {others:.0%} of CPU {SLUICE_CPU}; the machine is shared, so req/s and tail "
            "latencies here are pessimistic and swing from run to run, which is why the target "
            "is judged on Sluice's CPU time per request. Both gateways were measured in "
            "alternating rounds, so their ratio is steadier than either number."
        )
    return lines


def section(
    report: Report, settings: overhead.Settings, started: str, host: str, elapsed: float
) -> str:
    limits = json.dumps(ROLE_LIMITS).replace('"', "")
    ceiling = json.dumps(MODEL_CEILING).replace('"', "")
    gen = overhead.generator_name(settings.generator)
    gets = [r.sides["no limits"].gets_per_second for r in report.results]
    return "\n".join(
        [
            MARKERS[0],
            "## Rate limits in Redis: Sluice with limits vs. without",
            "",
            "What: requests per second and p50/p99 latency of `POST /v1/chat/completions` "
            "through two gateways that differ only in their limits, back to back in the same "
            "run, and how often each request goes to Redis.",
            "",
            f"How: two `sluice serve --log-level warning` share CPU {SLUICE_CPU} (`taskset`; "
            "only the one being measured gets traffic), both with `REDIS_URL` pointing at a "
            f"private `redis-server` (no persistence) on CPU {LOAD_CPU}, beside the fake "
            f"upstream and the load generator ({gen}). Both have the repository's providers "
            f"and models and one role, `{ROLE}`, granting `gpt-4o`; *limits* gives that role "
            f"`{limits}` and the model a global ceiling `limits.global_models.gpt-4o: "
            f"{ceiling}` (high enough never to refuse, so both key groups, the caller's and "
            "the model's, are counted on every request), *no limits* has no limits at all. "
            "Both keep the default audit log and dashboard (the policies have no audit.yaml "
            "and the repository's identity.yaml), each in a data directory of its own, as "
            "a deployment runs them. "
            "Requests carry one personal token issued with `sluice token issue` into Redis "
            "(REDIS_URL set). Before measuring, *limits* answered `x-ratelimit-limit-requests: "
            f"{report.limits_header}` and *no limits* no such header. Each scenario warms "
            f"both gateways for {settings.warmup:g} s, "
            f"then alternates them over {settings.rounds} rounds of "
            f"{settings.seconds / settings.rounds:g} s each (ABBA); the table shows the median "
            "round for req/s and latency; CPU µs per request are over all rounds (Sluice's "
            "user + system time from /proc over the requests it answered). *limits / no limits "
            "(CPU time)* is the no-limit CPU per request over the one with limits: the share "
            "of its no-limit throughput Sluice keeps on a saturated core. The target is judged "
            "on it because the machine is shared (*others*: the share of CPU 0 used by other "
            "processes meanwhile), which moves wall-clock req/s from run to run. Redis's own "
            "counters (`INFO`: `commandstats`, `total_reads_processed`) are read before and "
            "after every run.",
            "",
            f"Machine: {host}. Run {started}, Sluice at {overhead.revision()}.",
            "",
            f"Command: `{COMMAND}` (this run took {elapsed:.0f} s)",
            "",
            throughput_table(report.results),
            "",
            "Redis, per request, from Redis itself over all rounds, each run's counters read "
            "once the requests still in flight when the load generator stopped had settled. "
            "*requests*: with limits, the caller's `requests per day` counter (every request "
            "Sluice let through); without, the load generator's count. *Redis reads* "
            "(`total_reads_processed`): one per batch of commands arriving on a connection, "
            "so a pipelined round trip counts once. *EVALSHA server µs*: Redis's own time in "
            "one script (`commandstats`). *GET / s*: personal-token lookups; with limits the "
            "scripts' own `GET`s are counted there too, so they are shown for the gateway "
            "without limits only.",
            "",
            redis_table(report.results),
            "",
            "Exact round trips, counted by `RedisLimits.round_trips` "
            "(`app[GATEWAY].limiter.shared.round_trips`) of a gateway built by "
            "`proxy.app.build_app` in the benchmark's process on the *limits* policy and the "
            "same Redis, one request at a time: *before the response* is the count when the "
            "response's headers were sent (`on_response_prepare`), *after it* what was added "
            "until the handler returned (the settle, sent from the handler's `finally` once "
            "the answer is written). Acquire and settle are the limiter's "
            "two calls, timed around `Limiter.acquire` (awaited until Redis answers) and "
            "`Limiter.settle` (which queues the command and returns; it leaves with the next "
            "command that is awaited, or within 1 ms, and a callback checks the reply): wall time, "
            "and in parentheses the CPU time the thread spent meanwhile (one request at a time, "
            "so little else runs; the in-process client and fake upstream share the thread). "
            f"This part runs pinned to CPU {SLUICE_CPU}, while the two `sluice serve` are idle.",
            "",
            exact_table(report.exact),
            "",
            *verdicts(report),
            *findings(report),
            "",
            "Personal tokens live in Redis when `REDIS_URL` is set; each gateway remembers a "
            "lookup for 1 s, so a token costs about one `GET` per second per replica, not one "
            f"per request: {min(gets):.2f} to {max(gets):.2f} `GET`/s here (the gateway without "
            "limits, whose only Redis commands they are), at "
            "hundreds to thousands of requests per second.",
            MARKERS[1],
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=16.0, help="measured seconds per gateway per scenario"
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds per gateway (default 4)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (default 2)")
    parser.add_argument("--generator", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument(
        "--exact-requests", type=int, default=500, help="requests per in-process round-trip count"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    overhead.use_venv(__file__)
    args = parse_args(argv)
    overhead.exit_on_sigterm()
    if not Path(REDIS_SERVER).exists():
        print(f"{REDIS_SERVER} is needed (apt-get install redis-server)", file=sys.stderr)
        return 1
    from proxy.log import configure_logging

    configure_logging("warning")
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if Path(overhead.WRK).exists() else "aiohttp"
    settings = overhead.Settings(args.seconds, max(1, args.rounds), args.warmup, generator)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = overhead.machine()
    began = time.monotonic()
    report = benchmark(settings, args.exact_requests)
    elapsed = time.monotonic() - began
    print(throughput_table(report.results))
    print()
    print(redis_table(report.results))
    print()
    print(exact_table(report.exact))
    print()
    print("\n".join(verdicts(report) + findings(report)))
    if not args.no_write:
        text = section(report, settings, started, host, elapsed)
        overhead.write_section(text, markers=MARKERS)
        print(f"wrote {overhead.DOC.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
