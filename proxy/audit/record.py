"""Builds the `request` and `response` audit records from a request's context.

Content follows the policy's mode: `full` (text as the caller sent it and as the caller got
it), `redacted` (every finding replaced by a typed placeholder), `hash` (sha256 per message),
`none`. Everything else is ids, counts, entity types, positions and timings.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from proxy.audit.answer import body_text, stream_text
from proxy.classify.extract import _NON_TEXT_TYPES, _NOT_CONTENT, Path, extract_texts
from proxy.classify.findings import Finding
from proxy.classify.masking import Masker
from proxy.context import RequestContext, WireFormat
from proxy.policy.model import AuditContent
from proxy.ratelimit.plan import cost_usd
from proxy.telemetry import decision_of

Record = dict[str, Any]

# Top-level keys whose list items are messages with their own `role`.
_MESSAGE_LISTS = ("messages", "input")
_SYSTEM_KEYS = ("system", "instructions")
# Each wire format's name, looked up once: an Enum's `.value` is a Python-level property.
_ENDPOINTS = {wire: wire.value for wire in WireFormat}


def principal_of(ctx: RequestContext) -> Record | None:
    p = ctx.principal
    if p is None:
        return None
    return {
        "subject": p.subject,
        "roles": p.roles,  # a tuple: serialized as the same JSON array, without a copy
        "auth_method": p.auth_method,
        "issuer": p.issuer,
        "token_id": p.token_id,
    }


def request_record(ctx: RequestContext, mode: AuditContent) -> Record:
    return {
        "kind": "request",
        "ts": time.time(),
        "request_id": ctx.request_id,
        "received_at": ctx.received_at,
        "principal": principal_of(ctx),
        "client": ctx.client_address,
        "endpoint": _ENDPOINTS[ctx.wire],
        "requested_model": ctx.requested_model or None,
        "stream": ctx.stream,
        "policy_version": ctx.policy.version,
        "content_mode": mode,
        "content": request_content(ctx, mode),
    }


def request_content(ctx: RequestContext, mode: AuditContent) -> Record | None:
    if mode == "none":
        return None
    messages = prompt_messages(ctx, redacted=mode == "redacted")
    if mode == "hash":
        return {
            "messages": [
                {"role": role, "sha256": hashlib.sha256(text.encode()).hexdigest()}
                for role, text in messages
            ]
        }
    return {"messages": [{"role": role, "text": text} for role, text in messages]}


def prompt_messages(ctx: RequestContext, *, redacted: bool) -> list[tuple[str, str]]:
    """(role, text) per message of the request, texts of one message joined by newlines.

    `ctx.body` is what goes upstream: already masked when the classifier masked. Without
    masking, findings' spans are masked here for the redacted view."""
    masker = ctx.masker
    redactor = _redactor(ctx) if redacted and masker is None else None
    if redactor is None:
        messages = _messages(ctx.body)
        if masker is not None and not redacted:
            return [(role, masker.unmask(text)) for role, text in messages]
        return messages
    slots = extract_texts(ctx.body).slots
    grouped: dict[tuple[str | int, ...], tuple[str, list[str]]] = {}
    for slot in slots:
        text = slot.text
        found = redactor[1].get(slot.path)
        if found:
            text = redactor[0].mask(text, found)
        key, role = _message_of(ctx.body, slot.path)
        entry = grouped.get(key)
        if entry is None:
            grouped[key] = (role, [text])
        else:
            entry[1].append(text)
    return [(role, "\n".join(texts)) for role, texts in grouped.values()]


def _messages(body: dict[str, Any]) -> list[tuple[str, str]]:
    """What `extract_texts` finds, grouped as `_message_of` groups it, in one walk without a
    path per text (the request record is built for every request; positions are only needed
    to redact findings, which takes the walk with paths)."""
    if body.get("type") in _NON_TEXT_TYPES:
        return []
    messages: list[tuple[str, str]] = []
    for head, value in body.items():
        if head in _MESSAGE_LISTS and isinstance(value, list):
            for item in value:
                texts: list[str] = []
                _texts(item, False, texts)
                if texts:
                    role = item.get("role") if isinstance(item, dict) else None
                    messages.append((role if isinstance(role, str) else "user", "\n".join(texts)))
            continue
        texts = []
        _texts(value, head in _NOT_CONTENT, texts)
        if texts:
            if head in _SYSTEM_KEYS:
                role = "system"
            elif head in _MESSAGE_LISTS or head == "prompt":
                role = "user"
            else:
                role = str(head)
            messages.append((role, "\n".join(texts)))
    return messages


def _texts(value: Any, vocabulary: bool, out: list[str]) -> None:
    """Append the texts in `value` in document order, as `extract_texts` finds them;
    `vocabulary` when `value` sits under a key whose value is protocol, not content."""
    if isinstance(value, str):
        if value and not vocabulary:
            out.append(value)
    elif isinstance(value, dict):
        if value.get("type") in _NON_TEXT_TYPES:
            return
        for key, item in value.items():
            _texts(item, key in _NOT_CONTENT, out)
    elif isinstance(value, list):
        for item in value:
            _texts(item, False, out)


def _message_of(body: dict[str, Any], path: Path) -> tuple[tuple[str | int, ...], str]:
    head = path[0] if path else ""
    if head in _MESSAGE_LISTS and len(path) > 1 and isinstance(path[1], int):
        item = body[str(head)][path[1]]
        role = item.get("role") if isinstance(item, dict) else None
        return (head, path[1]), role if isinstance(role, str) else "user"
    if head in _SYSTEM_KEYS:
        return (head,), "system"
    if head in _MESSAGE_LISTS or head == "prompt":
        return (head,), "user"
    return (head,), str(head)  # tools, metadata and anything else the upstream sees


def _redactor(ctx: RequestContext) -> tuple[Masker, dict[Path, list[Finding]]] | None:
    verdict = ctx.classification
    if verdict is None or not verdict.findings:
        return None
    by_path: dict[Path, list[Finding]] = {}
    for path, finding in verdict.findings:
        by_path.setdefault(path, []).append(finding)
    return Masker(), by_path


def redactions(ctx: RequestContext) -> dict[str, str]:
    """Value to placeholder, for every finding of the request, to redact the answer with."""
    if ctx.masker is not None:
        return {value: placeholder for placeholder, value in ctx.masker.mapping.items()}
    redactor = _redactor(ctx)
    if redactor is None:
        return {}
    masker, by_path = redactor
    for slot in extract_texts(ctx.body).slots:
        found = by_path.get(slot.path)
        if found:
            masker.mask(slot.text, found)
    return {value: placeholder for placeholder, value in masker.mapping.items()}


def answer_text(ctx: RequestContext) -> str:
    if ctx.answer_events is not None:
        return stream_text(ctx.wire, ctx.answer_events)
    if ctx.answer_body is not None:
        return body_text(ctx.wire, ctx.answer_body)
    return ""


def response_content(ctx: RequestContext, mode: AuditContent) -> Record | None:
    if mode == "none":
        return None
    text = answer_text(ctx)
    if mode == "hash":
        return {"response_sha256": hashlib.sha256(text.encode()).hexdigest()}
    if mode == "redacted" and text:
        # The values the request's findings matched; longest first so a value that contains
        # another is replaced whole.
        for value, placeholder in sorted(redactions(ctx).items(), key=lambda v: -len(v[0])):
            text = text.replace(value, placeholder)
    return {"response": text}


def ended_of(ctx: RequestContext) -> str:
    if ctx.ended is not None:
        return ctx.ended
    status = ctx.status
    if status == 499:
        return "client_disconnect"
    if status is not None and status >= 400:
        return "upstream_error"
    return "completed"


def cost_of(ctx: RequestContext) -> float | None:
    """Priced as the rate limiter's budget prices it; None until the provider reports usage."""
    return cost_usd(ctx) if ctx.usage.reported else None


def response_record(ctx: RequestContext, mode: AuditContent, total_ms: float) -> Record:
    ended = ended_of(ctx)
    principal = ctx.principal
    route = ctx.route
    verdict = ctx.classification
    upstream_ms = ctx.upstream_ms
    status = ctx.status if ctx.status is not None else 499
    return {
        "kind": "response",
        "ts": time.time(),
        "request_id": ctx.request_id,
        "status": status,
        "decision": decision_of(ctx),
        "ended": ended,
        "subject": principal.subject if principal else None,
        "roles": principal.roles if principal else (),
        "team": None,
        "endpoint": _ENDPOINTS[ctx.wire],
        "requested_model": ctx.requested_model or None,
        "route": (
            {
                "kind": route.kind,
                "model": route.model,
                "provider": route.provider,
                "upstream_model": route.upstream_model,
            }
            if route is not None
            else None
        ),
        "model_answered": (
            route.upstream_model if route is not None and ctx.upstream_ttfb_ms is not None else None
        ),
        "level": verdict.level.label if verdict is not None else None,
        "entities": verdict.entity_counts if verdict is not None else {},
        "findings": (
            [
                {"type": f.entity, "start": f.start, "end": f.end, "where": _where(path)}
                for path, f in verdict.findings
            ]
            if verdict is not None
            else []
        ),
        "output_entities": dict(ctx.output_findings or {}),
        "trail": [
            {"filter": e.filter, "verdict": e.verdict, "reason": e.reason, "ms": round(e.ms, 3)}
            for e in ctx.trail
        ],
        "usage": {
            "prompt_tokens": ctx.usage.prompt_tokens,
            "completion_tokens": ctx.usage.completion_tokens,
        },
        "cost_usd": cost_of(ctx),
        "latency_ms": {
            "total": round(total_ms, 3),
            "overhead": round(total_ms - (upstream_ms or 0.0), 3),
            "upstream_ttfb": _round(ctx.upstream_ttfb_ms),
            "upstream": _round(upstream_ms),
        },
        "policy_version": ctx.policy.version,
        "shadow": (
            {
                "policy_version": ctx.shadow.policy_version,
                "decision": ctx.shadow.decision,
                "differs": ctx.shadow.differs,
            }
            if ctx.shadow is not None
            else None
        ),
        "content_mode": mode,
        "content": response_content(ctx, mode),
    }


def _where(path: Path) -> str:
    return ".".join(str(step) for step in path)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
