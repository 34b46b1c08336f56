"""What one request carries through the gateway: the context every filter reads and writes.

Also the small values filters hand back (`Deny`) and leave behind (`TrailEntry`, `Route`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.errors import ErrorKind, WireFamily

if TYPE_CHECKING:
    import asyncio

    from proxy.classify.decision import Classified
    from proxy.classify.masking import Masker
    from proxy.classify.output import OutputScanner
    from proxy.policy.shadow import ShadowVerdict
    from proxy.policy.store import PolicySnapshot
    from proxy.ratelimit.plan import Ticket
    from proxy.telemetry import RequestTrace
    from proxy.upstream.sse import SSEEvent


class WireFormat(enum.Enum):
    """The API a request speaks; its value is the name used in logs, trails and the audit."""

    OPENAI_CHAT = "openai.chat"
    OPENAI_EMBEDDINGS = "openai.embeddings"
    OPENAI_RESPONSES = "openai.responses"
    ANTHROPIC_MESSAGES = "anthropic.messages"
    MODELS = "openai.models"  # the model list; no body, no upstream call

    @property
    def family(self) -> WireFamily:
        if self is WireFormat.ANTHROPIC_MESSAGES:
            return WireFamily.ANTHROPIC
        return WireFamily.OPENAI

    @property
    def endpoint(self) -> str:
        """The short endpoint name policy uses (chat, embeddings, responses, messages)."""
        return self.value.split(".", 1)[1]

    @property
    def path(self) -> str:
        """The HTTP path clients call."""
        return _PATHS[self]


_PATHS = {
    WireFormat.OPENAI_CHAT: "/v1/chat/completions",
    WireFormat.OPENAI_EMBEDDINGS: "/v1/embeddings",
    WireFormat.OPENAI_RESPONSES: "/v1/responses",
    WireFormat.ANTHROPIC_MESSAGES: "/v1/messages",
    WireFormat.MODELS: "/v1/models",
}
MODEL_CALLS = (
    WireFormat.OPENAI_CHAT,
    WireFormat.OPENAI_EMBEDDINGS,
    WireFormat.OPENAI_RESPONSES,
    WireFormat.ANTHROPIC_MESSAGES,
)


@dataclass(frozen=True, slots=True)
class Deny:
    """A filter's refusal. The pipeline turns it into a provider-shaped error response."""

    kind: ErrorKind
    message: str
    param: str | None = None
    code: str | None = None
    headers: Mapping[str, str] | None = None


def model_not_found(model: str) -> Deny:
    """The one answer for a model that is unknown or not granted: which models exist is not told."""
    return Deny(
        ErrorKind.MODEL_NOT_FOUND,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
    )


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as authentication established it."""

    subject: str
    roles: tuple[str, ...]
    auth_method: str  # "oidc" or "token"
    issuer: str | None = None  # the OIDC issuer, for "oidc"
    token_id: str | None = None  # the personal token's public id, for "token"
    models: tuple[str, ...] | None = None  # a personal token's own narrower model globs


@dataclass(frozen=True, slots=True)
class TrailEntry:
    """One step of the decision trail: which filter said what, and how long it took."""

    filter: str
    verdict: str  # "pass", "deny" or "error"
    reason: str | None
    ms: float


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: the public model asked for, the provider and its model name.

    `upstream_wire` is set when the provider does not speak the client's wire format: the
    request is translated to it before egress and the answer translated back.
    """

    model: str
    provider: str
    upstream_model: str
    kind: str = "direct"
    upstream_wire: WireFormat | None = None

    def wire_for(self, client: WireFormat) -> WireFormat:
        """The wire format the provider is called in."""
        return self.upstream_wire or client

    def translates(self, client: WireFormat) -> bool:
        return self.upstream_wire is not None and self.upstream_wire is not client


@dataclass(slots=True)
class Usage:
    """Token counts as the provider reported them (zero until it does)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: bool = False

    def record(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        if prompt_tokens is not None:
            self.prompt_tokens = prompt_tokens
            self.reported = True
        if completion_tokens is not None:
            self.completion_tokens = completion_tokens
            self.reported = True


@dataclass(slots=True, eq=False)
class RequestContext:
    """Everything known about one request; owned by its handler, passed to every filter.

    `policy` is the snapshot pinned when the request arrived: a reload mid-request never
    changes the rules this request is judged by.
    """

    request_id: str
    received_at: float  # wall clock, seconds since the epoch
    started: float  # perf_counter at arrival, for latency
    wire: WireFormat
    policy: PolicySnapshot
    headers: Mapping[str, str]
    client_address: str | None
    body: dict[str, Any] = field(default_factory=dict)
    requested_model: str = ""
    stream: bool = False
    principal: Principal | None = None
    classification: Classified | None = None
    masker: Masker | None = None  # placeholders sent upstream, restored in the answer
    output_scanner: OutputScanner | None = None  # set by `classify` when policy scans answers
    output_findings: dict[str, int] | None = None  # entity type -> count in the answer
    route: Route | None = None
    limit_ticket: Ticket | None = None  # rate-limit counts held until the request ends
    answer_headers: dict[str, str] = field(default_factory=dict)  # filters' headers for the client
    trail: list[TrailEntry] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    status: int | None = None
    denied: Deny | None = None  # the refusal the client got, when a check refused the request
    upstream_ttfb_ms: float | None = None
    upstream_ms: float | None = None
    shadow: ShadowVerdict | None = None  # the shadow policy's decision, when one is loaded
    trace: RequestTrace | None = None  # the request's spans; None when tracing is off
    # For the audit log: how the request ended when not by an answer ("denied", "error",
    # "upstream_error", "client_disconnect"), the request record's write, and the answer as
    # relayed (a whole body, or the stream's events when content is recorded).
    ended: str | None = None
    audit_request: asyncio.Future[None] | None = None
    answer_body: bytes | None = None
    answer_events: list[SSEEvent] | None = None
