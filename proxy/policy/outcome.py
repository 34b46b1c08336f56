"""What the filter pipeline decided about one request, in the audit log's vocabulary.

One definition shared by `sluice policy test|explain|replay` and shadow mode, so "blocked" means
the same thing in a test case, a replay report and a shadow metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.context import Deny, RequestContext

# Denials that come from what the request carries, not from who sent it.
BLOCK_CODES = frozenset(
    {"sensitive_data_blocked", "sensitive_data_no_internal_route", "non_text_blocked"}
)
DECISIONS = ("allowed", "masked", "rerouted", "blocked", "denied", "failed")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The pipeline's verdict: the decision, what a client would see, and why."""

    decision: str  # one of DECISIONS
    status: int  # what the client would get (200 when the request would go upstream)
    code: str | None = None  # the error code in the provider-shaped body
    denied_by: str | None = None  # the filter that said no
    route_kind: str | None = None  # direct | sensitive (| fallback)
    route_model: str | None = None
    provider: str | None = None
    level: str | None = None
    action: str | None = None
    entities: dict[str, int] = field(default_factory=dict)
    masked: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        """Whether the request would be forwarded at all (as it is, masked or rerouted)."""
        return self.decision in ("allowed", "masked", "rerouted")

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "allowed": self.allowed,
            "status": self.status,
            "code": self.code,
            "denied_by": self.denied_by,
            "route": self.route_kind,
            "route_model": self.route_model,
            "provider": self.provider,
            "level": self.level,
            "action": self.action,
            "entities": dict(self.entities),
            "masked": list(self.masked),
        }


def deny_decision(deny: Deny) -> str:
    """A refusal in the audit log's vocabulary: `failed` when the gateway could not decide
    (5xx), `blocked` for what the request carries, `denied` for who sent it or how."""
    if deny.kind.status >= 500:
        return "failed"
    if deny.code in BLOCK_CODES:
        return "blocked"
    return "denied"


def outcome_of(ctx: RequestContext, deny: Deny | None) -> Outcome:
    """The outcome of a pipeline run that ended with `deny` (None: it passed)."""
    verdict = ctx.classification
    level = verdict.level.label if verdict is not None else None
    action = verdict.action if verdict is not None else None
    entities = verdict.entity_counts if verdict is not None else {}
    if deny is not None:
        status = deny.kind.status
        code = deny.code or deny.kind.value.openai_code
        denied_by = next((e.filter for e in reversed(ctx.trail) if e.verdict != "pass"), None)
        decision = deny_decision(deny)
        return Outcome(decision, status, code, denied_by, None, None, None, level, action, entities)
    route = ctx.route
    masked: tuple[str, ...] = ()
    if ctx.masker is not None and verdict is not None:
        masked = tuple(verdict.entity_types)
    if masked:
        decision = "masked"
    elif route is not None and route.kind == "sensitive":
        decision = "rerouted"
    else:
        decision = "allowed"
    return Outcome(
        decision,
        200,
        route_kind=route.kind if route else None,
        route_model=route.model if route else None,
        provider=route.provider if route else None,
        level=level,
        action=action,
        entities=entities,
        masked=masked,
    )
