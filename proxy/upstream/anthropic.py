"""Anthropic's Messages API.

The base URL excludes the version prefix, as in `ANTHROPIC_BASE_URL` (`https://api.anthropic.com`).
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.context import WireFormat
from proxy.upstream.base import Upstream

DEFAULT_VERSION = "2023-06-01"


class AnthropicUpstream(Upstream):
    """`POST /v1/messages`, authenticated with the gateway's `x-api-key`."""

    serves = frozenset({WireFormat.ANTHROPIC_MESSAGES})

    def url(self, wire: WireFormat) -> str:
        return self.config.urls[0] + "/v1/messages"

    def headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        # The API version and beta flags are the client's to choose; the credential is not.
        headers = {"anthropic-version": client_headers.get("anthropic-version", DEFAULT_VERSION)}
        beta = client_headers.get("anthropic-beta")
        if beta:
            headers["anthropic-beta"] = beta
        if self.config.api_key is not None:
            headers["x-api-key"] = self.config.api_key.get_secret_value()
        return headers
