"""Keeps one upstream client per provider, reused across reloads that leave it unchanged.

Clients whose provider a reload changed or removed are closed once their last request must be done.
vLLM pools are started with each snapshot, so their health checks run before the first request.
"""

from __future__ import annotations

import asyncio

from proxy.metrics import Metrics
from proxy.policy.model import ProviderConfig
from proxy.policy.store import PolicySnapshot
from proxy.upstream.anthropic import AnthropicUpstream
from proxy.upstream.base import Upstream
from proxy.upstream.openai import OpenAIUpstream
from proxy.upstream.vllm import BreakerState, VLLMUpstream

_KINDS: dict[str, type[Upstream]] = {
    "openai": OpenAIUpstream,
    "openai_compatible": OpenAIUpstream,
    "anthropic": AnthropicUpstream,
    "vllm": VLLMUpstream,
}


def upstream_class(config: ProviderConfig) -> type[Upstream]:
    return _KINDS[config.kind]


class UpstreamRegistry:
    """The live upstream clients, keyed by provider name and settings digest."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._clients: dict[tuple[str, str], Upstream] = {}
        self._retired: set[Upstream] = set()
        self._closing: set[asyncio.Task[None]] = set()
        if metrics is not None:
            self._register_metrics(metrics)

    def get(self, snapshot: PolicySnapshot, provider: str) -> Upstream:
        key = (provider, snapshot.provider_digests[provider])
        client = self._clients.get(key)
        if client is None:
            config = snapshot.policy.providers[provider]
            client = self._clients[key] = upstream_class(config)(provider, config)
            client.start()
        return client

    def follow(self, snapshot: PolicySnapshot) -> None:
        """Adopt a new snapshot: start its vLLM pools now, retire clients it no longer uses."""
        self.retire_unused(snapshot)
        for name, config in snapshot.policy.providers.items():
            if config.kind == "vllm":
                self.get(snapshot, name)

    def pools(self) -> list[VLLMUpstream]:
        """The live vLLM pools."""
        return [c for c in self._clients.values() if isinstance(c, VLLMUpstream)]

    def _register_metrics(self, metrics: Metrics) -> None:
        up = metrics.gauge(
            "sluice_pool_endpoint_up",
            "1 while a vLLM pool endpoint is admitted, 0 while its circuit breaker has it ejected.",
        )
        outstanding = metrics.gauge(
            "sluice_pool_endpoint_outstanding", "Requests this gateway has in flight there."
        )
        waiting = metrics.gauge(
            "sluice_pool_endpoint_waiting", "vllm:num_requests_waiting at the last scrape."
        )
        kv_cache = metrics.gauge(
            "sluice_pool_endpoint_kv_cache_usage", "vllm:kv_cache_usage_perc at the last scrape."
        )
        ejections = metrics.counter(
            "sluice_pool_endpoint_ejections_total", "Times the circuit breaker ejected it."
        )

        def collect() -> None:
            for metric in (up, outstanding, waiting, kv_cache, ejections):
                metric.values.clear()
            for pool in self.pools():
                for endpoint in pool.endpoints:
                    labels = {"provider": pool.name, "endpoint": endpoint.label}
                    up.set(1.0 if endpoint.state is BreakerState.CLOSED else 0.0, **labels)
                    outstanding.set(endpoint.outstanding, **labels)
                    ejections.set(endpoint.ejections, **labels)
                    if endpoint.waiting is not None:
                        waiting.set(endpoint.waiting, **labels)
                    if endpoint.kv_cache is not None:
                        kv_cache.set(endpoint.kv_cache, **labels)

        metrics.on_scrape(collect)

    def retire_unused(self, snapshot: PolicySnapshot) -> None:
        """Close clients the new snapshot no longer uses, after their longest request ends."""
        live = set(snapshot.provider_digests.items())
        loop = asyncio.get_running_loop()
        for key in [k for k in self._clients if k not in live]:
            client = self._clients.pop(key)
            client.retire()
            self._retired.add(client)
            loop.call_later(client.config.timeouts.total + 1, self._close_soon, client)

    def _close_soon(self, client: Upstream) -> None:
        if client not in self._retired:
            return
        self._retired.discard(client)
        task = asyncio.ensure_future(client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        clients = [*self._clients.values(), *self._retired]
        self._clients, self._retired = {}, set()
        await asyncio.gather(*(c.close() for c in clients), *self._closing)
