"""A self-hosted vLLM pool: several OpenAI-compatible endpoints serving the same model.

Each request goes to the endpoint with the fewest requests this gateway has in flight there
(vLLM's scraped queue depth breaks ties); a circuit breaker per endpoint ejects one that keeps
failing, and a background check of `/health` and `/metrics` readmits it once it recovers.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import structlog

from proxy.context import WireFormat
from proxy.errors import ErrorKind
from proxy.policy.model import PoolSettings, ProviderConfig
from proxy.upstream.base import UpstreamError
from proxy.upstream.openai import PATHS, OpenAIUpstream

log = structlog.get_logger("sluice.upstream.pool")

# The gauges Sluice reads from each endpoint's Prometheus text.
_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV_CACHE = "vllm:kv_cache_usage_perc"


class BreakerState(enum.Enum):
    """An endpoint's circuit breaker: admitted, ejected, or ejected and being probed."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True, eq=False)
class Endpoint:
    """One `vllm serve` endpoint: its load as Sluice sees it and as vLLM reports it."""

    url: str  # the OpenAI base URL, e.g. http://gpu-1:8000/v1
    root: str  # where /health and /metrics are served
    label: str  # host:port, for logs and metric labels
    outstanding: int = 0  # this gateway's requests in flight there
    running: float | None = None  # scraped; None until a scrape succeeds
    waiting: float | None = None
    kv_cache: float | None = None
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0  # consecutive, requests and health checks alike
    opened_at: float = 0.0  # monotonic time of the last ejection
    ejections: int = 0
    probing: bool = False  # a half-open trial is in flight

    @classmethod
    def for_url(cls, url: str) -> Endpoint:
        root = url[: -len("/v1")] if url.endswith("/v1") else url
        parts = urlsplit(url)
        label = parts.hostname or parts.netloc
        if parts.port is not None:
            label = f"{label}:{parts.port}"
        return cls(url=url, root=root, label=label)

    def load_key(self) -> tuple[int, float, float]:
        """Fewest outstanding first; vLLM's queue, then its KV cache use, break ties."""
        return (self.outstanding, self.waiting or 0.0, self.kv_cache or 0.0)


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """The three gauges Sluice balances on, from vLLM's Prometheus text.

    vLLM labels samples by model and engine (several with data parallelism): queue lengths
    are summed, KV cache use is the highest of any engine.
    """
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_end = len(line)
        for stop in ("{", " "):
            at = line.find(stop)
            if 0 <= at < name_end:
                name_end = at
        name = line[:name_end]
        if name not in (_RUNNING, _WAITING, _KV_CACHE):
            continue
        try:
            value = float(line.rsplit("}", 1)[-1].split()[0])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            found.setdefault(name, []).append(value)
    result: dict[str, float] = {}
    for name, values in found.items():
        result[name] = max(values) if name == _KV_CACHE else sum(values)
    return result


class _PoolResponse(aiohttp.ClientResponse):
    """A response that tells the pool when it is closed, which is when its request ends, and
    whether its answer broke off on the way."""

    on_close: Callable[[], None] | None = None
    broken = False

    def close(self) -> None:
        super().close()
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()


def _retryable_status(status: int) -> bool:
    return status >= 500 or status == 429


class VLLMUpstream(OpenAIUpstream):
    """OpenAI wire format over a pool of `vllm serve` endpoints, balanced and health-checked."""

    response_class = _PoolResponse

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.settings: PoolSettings = config.pool_settings
        self.endpoints = [Endpoint.for_url(url) for url in config.urls]
        self._turn = 0
        self._watcher: asyncio.Task[None] | None = None

    # Lifecycle.

    def start(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def retire(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await super().close()

    # Choosing an endpoint.

    def pick(self, tried: set[Endpoint]) -> Endpoint | None:
        """The admitted endpoint with the least load; else one ejected endpoint due for its
        half-open trial; else None."""
        candidates = [e for e in self.endpoints if e not in tried]
        admitted = [e for e in candidates if e.state is BreakerState.CLOSED]
        if admitted:
            # Rotating the start spreads ties evenly instead of always favouring the first.
            start = self._turn % len(admitted)
            self._turn += 1
            return min(admitted[start:] + admitted[:start], key=Endpoint.load_key)
        now = time.monotonic()
        for endpoint in candidates:
            if endpoint.probing:
                continue
            due = endpoint.opened_at + self.settings.cooldown
            if endpoint.state is BreakerState.HALF_OPEN or now >= due:
                endpoint.state = BreakerState.HALF_OPEN
                endpoint.probing = True
                return endpoint
        return None

    def retry_after(self) -> float:
        """Seconds until the first ejected endpoint is due for its trial (at least 1)."""
        now = time.monotonic()
        due = [
            e.opened_at + self.settings.cooldown - now
            for e in self.endpoints
            if e.state is not BreakerState.CLOSED
        ]
        return float(max(1, math.ceil(min(due, default=1.0))))

    @property
    def admitted(self) -> int:
        return sum(e.state is BreakerState.CLOSED for e in self.endpoints)

    # Outcomes.

    def _succeeded(self, endpoint: Endpoint) -> None:
        endpoint.failures = 0
        endpoint.probing = False
        if endpoint.state is not BreakerState.CLOSED:
            endpoint.state = BreakerState.CLOSED
            log.info("pool_endpoint_readmitted", provider=self.name, endpoint=endpoint.label)

    def _failed(self, endpoint: Endpoint, why: str) -> None:
        endpoint.failures += 1
        endpoint.probing = False
        if endpoint.state is BreakerState.HALF_OPEN:
            # The trial failed: rest for another cooldown.
            endpoint.state = BreakerState.OPEN
            endpoint.opened_at = time.monotonic()
            return
        if (
            endpoint.state is BreakerState.CLOSED
            and endpoint.failures >= self.settings.failure_threshold
        ):
            endpoint.state = BreakerState.OPEN
            endpoint.opened_at = time.monotonic()
            endpoint.ejections += 1
            log.warning(
                "pool_endpoint_ejected",
                provider=self.name,
                endpoint=endpoint.label,
                failures=endpoint.failures,
                why=why,
            )

    # Sending.

    async def send(
        self,
        wire: WireFormat,
        payload: bytes,
        client_headers: Mapping[str, str],
        trace_headers: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """POST to the least-loaded endpoint; on a connect error or a 5xx/429 status, try
        another (up to `max_attempts`). Nothing has reached the client yet, so a retry is safe."""
        headers = self.request_headers(client_headers, trace_headers)
        tried: set[Endpoint] = set()
        failure: UpstreamError | None = None
        attempts = min(self.settings.max_attempts, len(self.endpoints))
        for attempt in range(attempts):
            endpoint = self.pick(tried)
            if endpoint is None:
                break
            tried.add(endpoint)
            last = attempt == attempts - 1
            response = await self._attempt(endpoint, wire, payload, headers)
            if isinstance(response, UpstreamError):
                failure = response
                if response.kind is ErrorKind.UPSTREAM_TIMEOUT:
                    # The first-byte budget is spent; another endpoint would double it.
                    raise response
                continue
            if _retryable_status(response.status) and not last and self._has_another(tried):
                log.warning(
                    "pool_retry",
                    provider=self.name,
                    endpoint=endpoint.label,
                    status=response.status,
                )
                response.close()
                continue
            return response
        ejected = len(self.endpoints) - self.admitted
        if failure is not None:
            what = f"none of the {len(tried)} endpoint(s) tried could be reached"
        else:
            what = "every endpoint is ejected after failing"
        raise UpstreamError(
            ErrorKind.UNAVAILABLE,
            f"The self-hosted model pool {self.name!r} is unavailable: {what} "
            f"({ejected} of {len(self.endpoints)} ejected). Try again later.",
            retry_after=self.retry_after(),
        )

    def _has_another(self, tried: set[Endpoint]) -> bool:
        now = time.monotonic()
        return any(
            e.state is BreakerState.CLOSED
            or (not e.probing and now >= e.opened_at + self.settings.cooldown)
            for e in self.endpoints
            if e not in tried
        )

    async def _attempt(
        self,
        endpoint: Endpoint,
        wire: WireFormat,
        payload: bytes,
        headers: Mapping[str, str],
    ) -> aiohttp.ClientResponse | UpstreamError:
        """One try on one endpoint; the response's close ends its outstanding count."""
        endpoint.outstanding += 1
        settled = False

        def settle() -> None:
            nonlocal settled
            if not settled:
                settled = True
                endpoint.outstanding -= 1

        try:
            response = await self.post(endpoint.url + PATHS[wire], payload, headers)
        except UpstreamError as exc:
            settle()
            self._failed(endpoint, exc.kind.name)
            return exc
        except BaseException:
            settle()
            endpoint.probing = False
            raise
        failed = response.status >= 500
        if failed:
            self._failed(endpoint, f"status {response.status}")

        def ended() -> None:
            """The answer is over: it counts for the endpoint if it arrived whole (429 is load
            shedding by a healthy server, a 4xx the request's own fault, a client that went
            away nobody's), against it if the connection broke or the stream stopped short."""
            settle()
            if failed:
                return  # counted when the status came
            if isinstance(response, _PoolResponse) and response.broken:
                self._failed(endpoint, "answer broke off")
            else:
                self._succeeded(endpoint)

        if isinstance(response, _PoolResponse):
            response.on_close = ended
        else:  # pragma: no cover - the session always builds _PoolResponse
            ended()
        return response

    def answer_broke(self, response: aiohttp.ClientResponse) -> None:
        if isinstance(response, _PoolResponse):
            response.broken = True

    # Health checks and metrics.

    async def _watch(self) -> None:
        while True:
            try:
                await asyncio.gather(*(self.check(e) for e in self.endpoints))
            except Exception as exc:  # a bug here must not stop the checks for good
                log.error("pool_check_failed", provider=self.name, error_type=type(exc).__name__)
            await asyncio.sleep(self._next_check_in())

    def _next_check_in(self) -> float:
        """The check interval, or sooner when an ejected endpoint's cooldown ends first."""
        interval = self.settings.check_interval
        now = time.monotonic()
        for endpoint in self.endpoints:
            if endpoint.state is BreakerState.OPEN:
                due = endpoint.opened_at + self.settings.cooldown - now
                interval = min(interval, max(due, 0.01))
        return interval

    async def check(self, endpoint: Endpoint) -> None:
        """`/health` (a failure counts against the breaker; after the cooldown a success is
        the half-open probe that readmits) and, when healthy, `/metrics`."""
        now = time.monotonic()
        if endpoint.state is not BreakerState.CLOSED:
            if endpoint.probing or now < endpoint.opened_at + self.settings.cooldown:
                return
            endpoint.state = BreakerState.HALF_OPEN
            endpoint.probing = True
        healthy = await self._get(endpoint.root + "/health") is not None
        if not healthy:
            self._failed(endpoint, "health check")
            return
        if endpoint.state is BreakerState.HALF_OPEN:
            self._succeeded(endpoint)
        text = await self._get(endpoint.root + "/metrics")
        if text is None:
            endpoint.running = endpoint.waiting = endpoint.kv_cache = None
            return
        values = parse_vllm_metrics(text)
        endpoint.running = values.get(_RUNNING)
        endpoint.waiting = values.get(_WAITING)
        endpoint.kv_cache = values.get(_KV_CACHE)

    async def _get(self, url: str) -> str | None:
        """The body of a 200 answer to GET `url` within the check timeout, else None."""
        try:
            async with (
                asyncio.timeout(self.settings.check_timeout),
                self.session.get(url) as response,
            ):
                if response.status != 200:
                    return None
                return await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError, UnicodeDecodeError):
            return None
