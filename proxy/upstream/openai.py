"""OpenAI and OpenAI-compatible providers (any service speaking OpenAI's REST API).

The base URL includes the version prefix, as in `OPENAI_BASE_URL` (`https://api.openai.com/v1`).
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.context import WireFormat
from proxy.upstream.base import Upstream

PATHS = {
    WireFormat.OPENAI_CHAT: "/chat/completions",
    WireFormat.OPENAI_EMBEDDINGS: "/embeddings",
    WireFormat.OPENAI_RESPONSES: "/responses",
}


class OpenAIUpstream(Upstream):
    """Chat completions, embeddings and the Responses API on one base URL."""

    serves = frozenset(PATHS)

    def base_url(self) -> str:
        return self.config.urls[0]

    def url(self, wire: WireFormat) -> str:
        return self.base_url() + PATHS[wire]

    def headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        if self.config.api_key is None:
            return {}
        return {"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"}
