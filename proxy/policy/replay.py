"""`sluice policy replay`: judges the requests of an audit log again, under another policy.

Reads the audit segments (`audit-*.jsonl`, the shared record schema), pairs each request record
with its response record, runs the request through the serving pipeline as the recorded
principal, and groups the decisions that would change. What the log did not keep cannot be
judged again; the report says what was not re-run, and why.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.classify.engine import DetectorConfig
from proxy.classify.findings import Finding
from proxy.context import Principal
from proxy.filters.classify import Detection
from proxy.policy.evaluate import WIRES, Judge, Request, request_body
from proxy.policy.outcome import outcome_of

WIRES_BY_ENDPOINT = {
    "openai.chat": "chat",
    "anthropic.messages": "messages",
    "openai.embeddings": "embeddings",
    "openai.responses": "responses",
}
# Stands in for text the log did not keep; long enough to carry the recorded findings.
NOT_RECORDED = "[content not recorded]"

LIMITATIONS = {
    "redacted": (
        "detectors re-ran on the redacted text, and the entity types recorded at the time were "
        "added: values masked in the log cannot be detected again, so a new recognizer or a "
        "new entity level cannot see them"
    ),
    "hash": (
        "detectors could not re-run (only hashes were recorded): the entity types recorded at "
        "the time were judged under the new levels and actions; new recognizers and entity "
        "types not recorded then cannot apply; token estimates have no text"
    ),
    "none": (
        "detectors could not re-run (no content was recorded): the entity types recorded at "
        "the time were judged under the new levels and actions; new recognizers and entity "
        "types not recorded then cannot apply; token estimates have no text"
    ),
}
ALWAYS = (
    "authentication was not re-run: the recorded subject and roles are used as they are",
    "rate limits: each request is judged alone on fresh counts; the traffic's timing is not "
    "replayed, and requests refused by a rate limit at the time are skipped",
)


class AuditError(Exception):
    """The audit directory cannot be read as an audit log."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its outcome, as the audit log recorded them."""

    request_id: str
    request: dict[str, Any] | None
    response: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class AuditLog:
    files: tuple[str, ...]
    exchanges: tuple[Exchange, ...]
    unreadable_lines: int


def read_audit(directory: Path) -> AuditLog:
    """Every exchange in the segments of `directory`, in the order their requests arrived."""
    if not directory.is_dir():
        raise AuditError(f"{directory} is not a directory")
    files = sorted(directory.glob("audit-*.jsonl"))
    if not files:
        raise AuditError(f"no audit segments (audit-*.jsonl) in {directory}")
    requests: dict[str, dict[str, Any]] = {}
    responses: dict[str, dict[str, Any]] = {}
    unreadable = 0
    for path in files:
        with path.open(encoding="utf-8") as segment:
            for line in segment:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    unreadable += 1  # a torn last line after a crash
                    continue
                if not isinstance(record, dict) or not isinstance(record.get("request_id"), str):
                    continue
                if record.get("kind") == "request":
                    requests.setdefault(record["request_id"], record)
                elif record.get("kind") == "response":
                    responses.setdefault(record["request_id"], record)
    ids = list(requests) + [i for i in responses if i not in requests]
    exchanges = tuple(Exchange(i, requests.get(i), responses.get(i)) for i in ids)
    return AuditLog(tuple(p.name for p in files), exchanges, unreadable)


class ReplayDetection:
    """Detection for a replayed request: the real detectors on whatever text was recorded
    (if any), plus the entity types the log recorded, attached to the first text."""

    def __init__(self, inner: Detection | None, recorded: Sequence[str]) -> None:
        self._inner = inner
        self._recorded = tuple(recorded)

    async def detect(
        self, config: DetectorConfig, texts: Sequence[str], time_limit: float
    ) -> list[list[Finding]]:
        if self._inner is not None:
            found = await self._inner.detect(config, texts, time_limit)
        else:
            found = [[] for _ in texts]
        if texts and self._recorded:
            end = len(texts[0])
            found[0] = [*found[0], *(Finding(e, 0, end, 1.0, "audit") for e in self._recorded)]
        return found


@dataclass
class Group:
    """Requests whose decision changes the same way."""

    before: str
    after: str
    count: int = 0
    roles: Counter[str] = field(default_factory=Counter)
    entities: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.before,
            "to": self.after,
            "count": self.count,
            "roles": dict(self.roles),
            "entities": dict(self.entities),
            "models": dict(self.models),
            "examples": list(self.examples),
        }


@dataclass
class Report:
    policy_version: str
    files: tuple[str, ...]
    read: int = 0
    replayed: int = 0
    unchanged: int = 0
    recorded_versions: Counter[str] = field(default_factory=Counter)
    groups: dict[tuple[str, str], Group] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    content_modes: Counter[str] = field(default_factory=Counter)
    unreadable_lines: int = 0

    @property
    def changed(self) -> int:
        return sum(g.count for g in self.groups.values())

    @property
    def limitations(self) -> list[str]:
        found = [
            f"{mode} ({self.content_modes[mode]} request(s)): {LIMITATIONS[mode]}"
            for mode in LIMITATIONS
            if self.content_modes[mode]
        ]
        return [*found, *ALWAYS]

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "audit_files": list(self.files),
            "read": self.read,
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "changed": self.changed,
            "recorded_policy_versions": dict(self.recorded_versions),
            "changes": [g.as_dict() for g in self.ordered()],
            "skipped": dict(self.skipped),
            "content_modes": dict(self.content_modes),
            "not_rerun": self.limitations,
            "unreadable_lines": self.unreadable_lines,
        }

    def ordered(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-g.count, g.before, g.after))


def recorded_decision(response: dict[str, Any]) -> str | None:
    """The decision the log recorded, as the policy made it. A request the policy let through
    whose upstream then failed counts as the policy's own decision (allowed or rerouted)."""
    decision = response.get("decision")
    if decision != "failed":
        return decision if isinstance(decision, str) else None
    if response.get("ended") not in ("upstream_error", "client_disconnect"):
        return None  # the gateway itself failed: nothing the policy decided
    route = response.get("route")
    return "rerouted" if isinstance(route, dict) and route.get("kind") == "sensitive" else "allowed"


def _skip_reason(exchange: Exchange) -> str | None:
    request, response = exchange.request, exchange.response
    if request is None:
        return "no request record"
    if response is None:
        return "no response record (still running, or the log ends before it)"
    if not isinstance(request.get("principal"), dict):
        return "not authenticated at the time (nothing for a policy to judge)"
    if request.get("endpoint") not in WIRES_BY_ENDPOINT:
        return "endpoint not replayable"
    if not isinstance(request.get("requested_model"), str):
        return "no model recorded"
    trail = response.get("trail") or []
    if any(
        isinstance(t, dict) and t.get("filter") == "ratelimit" and t.get("verdict") == "deny"
        for t in trail
    ):
        return "refused by a rate limit at the time (depends on traffic timing)"
    if any(isinstance(t, dict) and t.get("verdict") == "error" for t in trail):
        return "a filter failed at the time"
    if recorded_decision(response) is None:
        return "failed in the gateway at the time"
    return None


def replay_request(exchange: Exchange) -> tuple[Request, str, list[str]]:
    """The request to judge again, its content mode, and the entity types recorded for it."""
    assert exchange.request is not None and exchange.response is not None
    record, response = exchange.request, exchange.response
    who = record["principal"]
    principal = Principal(
        str(who.get("subject", "")),
        tuple(str(r) for r in who.get("roles") or ()),
        str(who.get("auth_method") or "token"),
        issuer=who.get("issuer"),
        token_id=who.get("token_id"),
    )
    wire = WIRES[WIRES_BY_ENDPOINT[record["endpoint"]]]
    mode = str(record.get("content_mode") or "none")
    content = record.get("content")
    messages: list[dict[str, Any]]
    if mode in ("full", "redacted") and isinstance(content, dict):
        messages = [
            {"role": str(m.get("role", "user")), "content": str(m.get("text", ""))}
            for m in content.get("messages") or ()
            if isinstance(m, dict)
        ]
    elif mode == "hash" and isinstance(content, list) and content:
        messages = [
            {
                "role": str(m.get("role", "user")) if isinstance(m, dict) else "user",
                "content": NOT_RECORDED,
            }
            for m in content
        ]
    else:
        mode = mode if mode in ("hash", "none") else "none"
        messages = [{"role": "user", "content": NOT_RECORDED}]
    if not messages:
        messages = [{"role": "user", "content": ""}]
    entities = response.get("entities")
    recorded = sorted(entities) if isinstance(entities, dict) else []
    body = request_body(wire, record["requested_model"], messages=messages)
    return Request(principal, wire, body), mode, recorded


async def replay(judge: Judge, log: AuditLog, examples: int = 3) -> Report:
    report = Report(judge.loaded.version, log.files, unreadable_lines=log.unreadable_lines)
    for exchange in log.exchanges:
        report.read += 1
        reason = _skip_reason(exchange)
        if reason is not None:
            report.skipped[reason] += 1
            continue
        assert exchange.response is not None
        request, mode, recorded = replay_request(exchange)
        report.content_modes[mode] += 1
        report.recorded_versions[str(exchange.response.get("policy_version"))[:12]] += 1
        inner = judge.detection if mode in ("full", "redacted") else None
        extra = recorded if mode != "full" else []
        pipeline = judge.pipeline(ReplayDetection(inner, extra))
        ctx, deny = await judge.run(request, pipeline, request_id=exchange.request_id)
        after = outcome_of(ctx, deny)
        report.replayed += 1
        before = recorded_decision(exchange.response)
        assert before is not None
        if before == after.decision:
            report.unchanged += 1
            continue
        group = report.groups.setdefault((before, after.decision), Group(before, after.decision))
        group.count += 1
        group.roles.update(request.principal.roles)
        group.entities.update(set(recorded) | set(after.entities))
        group.models[str(request.body.get("model"))] += 1
        if len(group.examples) < examples:
            group.examples.append(exchange.request_id)
    return report


def _top(counter: Counter[str]) -> str:
    return ", ".join(name for name, _ in counter.most_common(5)) or "-"


def render(report: Report) -> str:
    versions = ", ".join(f"{v} ({n})" for v, n in report.recorded_versions.items())
    lines = [
        f"replayed {report.replayed} of {report.read} request(s) from "
        f"{len(report.files)} segment(s) under policy {report.policy_version[:12]}",
        f"  recorded under policy: {versions or '-'}",
        f"unchanged: {report.unchanged}",
        f"changed: {report.changed}",
    ]
    for group in report.ordered():
        lines.append(
            f"  {group.count} {group.before} -> {group.after} (roles: {_top(group.roles)}; "
            f"entities: {_top(group.entities)}; models: {_top(group.models)})"
        )
        if group.examples:
            lines.append(f"      e.g. {', '.join(group.examples)}")
    if report.skipped:
        lines.append(f"skipped: {sum(report.skipped.values())}")
        for reason, count in report.skipped.most_common():
            lines.append(f"  {count} {reason}")
    if report.unreadable_lines:
        lines.append(f"unreadable lines: {report.unreadable_lines}")
    lines.append("not re-run:")
    lines += [f"  - {limitation}" for limitation in report.limitations]
    return "\n".join(lines)
