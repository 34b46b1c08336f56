"""An upstream provider: one pooled HTTP client, its credentials and its timeouts.

Subclasses say where each wire format goes and which headers authenticate the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

from proxy.context import WireFormat
from proxy.errors import ErrorKind
from proxy.policy.model import ProviderConfig

USER_AGENT = "sluice/0.1"


class UpstreamError(Exception):
    """The provider could not be reached or did not answer in time.

    `retry_after` (seconds) is set when the gateway knows when trying again makes sense, such
    as a vLLM pool whose every endpoint is ejected. `fall_back` is False when another provider
    would not help (the answer came, but could not be checked), so no fallback is tried.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        retry_after: float | None = None,
        fall_back: bool = True,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.fall_back = fall_back


class Upstream:
    """Base for providers. `serves` lists the wire formats the provider speaks natively."""

    serves: frozenset[WireFormat] = frozenset()
    response_class: type[aiohttp.ClientResponse] = aiohttp.ClientResponse

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=config.max_connections, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.timeouts.connect),
            headers={"User-Agent": USER_AGENT},
            response_class=self.response_class,
        )

    def start(self) -> None:
        """Start the background work the client needs (a pool's health checks); none here."""

    def retire(self) -> None:
        """Stop background work: a reload replaced this client. Requests in flight go on."""

    def answer_broke(self, response: aiohttp.ClientResponse) -> None:
        """The connection broke (or the stream ended early) after `response`'s headers: the
        provider's fault, not the caller's. A pool counts it against the endpoint; no-op here."""

    def url(self, wire: WireFormat) -> str:
        raise NotImplementedError

    def headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        """Headers for the upstream call. The caller's credentials are never among them."""
        raise NotImplementedError

    async def send(
        self,
        wire: WireFormat,
        payload: bytes,
        client_headers: Mapping[str, str],
        trace_headers: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """POST `payload`; return once the response headers are in (the first-byte timeout).
        `trace_headers` is the gateway's own `traceparent`, when this provider may see it."""
        return await self.post(
            self.url(wire), payload, self.request_headers(client_headers, trace_headers)
        )

    def request_headers(
        self, client_headers: Mapping[str, str], trace_headers: Mapping[str, str] | None
    ) -> dict[str, str]:
        """Everything the upstream call sends as headers: credentials, JSON, trace context."""
        headers = self.headers(client_headers)
        headers["Content-Type"] = "application/json"
        if trace_headers:
            headers.update(trace_headers)
        return headers

    async def post(
        self, url: str, payload: bytes, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        """One POST within the connect and first-byte timeouts; failures as `UpstreamError`."""
        timeouts = self.config.timeouts
        try:
            async with asyncio.timeout(timeouts.first_byte):
                return await self.session.post(url, data=payload, headers=headers)
        except TimeoutError:
            raise UpstreamError(
                ErrorKind.UPSTREAM_TIMEOUT,
                f"Provider {self.name!r} did not answer within {timeouts.first_byte:g} s.",
            ) from None
        except (aiohttp.ClientError, OSError):
            raise UpstreamError(
                ErrorKind.UPSTREAM_UNREACHABLE, f"Provider {self.name!r} could not be reached."
            ) from None

    async def close(self) -> None:
        await self.session.close()
