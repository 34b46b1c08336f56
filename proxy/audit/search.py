"""Reads records back for `sluice audit search` and `sluice audit export`: filters by who,
which model, level, decision and time, and writes JSONL or CSV for a SIEM.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from proxy.audit.segments import list_segments

Kind = Literal["request", "response", "any"]

CSV_COLUMNS = (
    "seq",
    "ts",
    "kind",
    "request_id",
    "subject",
    "roles",
    "team",
    "client",
    "endpoint",
    "requested_model",
    "route_kind",
    "model_answered",
    "level",
    "entities",
    "decision",
    "ended",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_total_ms",
    "latency_overhead_ms",
    "latency_upstream_ttfb_ms",
    "policy_version",
)


@dataclass(frozen=True, slots=True)
class Query:
    user: str | None = None
    role: str | None = None
    model: str | None = None
    level: str | None = None
    decision: str | None = None
    since: float | None = None
    until: float | None = None
    kind: Kind = "response"

    def matches(self, record: dict[str, Any]) -> bool:
        kind = record.get("kind")
        if kind not in ("request", "response") or (self.kind != "any" and kind != self.kind):
            return False
        ts = record.get("ts")
        if not isinstance(ts, int | float):
            return False
        if self.since is not None and ts < self.since:
            return False
        if self.until is not None and ts >= self.until:
            return False
        principal = record.get("principal") if kind == "request" else None
        if self.user is not None:
            subject = principal.get("subject") if principal else record.get("subject")
            if subject != self.user:
                return False
        if self.role is not None:
            roles = principal.get("roles") if principal else record.get("roles")
            if not isinstance(roles, list) or self.role not in roles:
                return False
        if self.model is not None and self.model not in _models(record):
            return False
        if self.level is not None and record.get("level") != self.level:
            return False
        return self.decision is None or record.get("decision") == self.decision


def _models(record: dict[str, Any]) -> set[Any]:
    route = record.get("route")
    names = {record.get("requested_model"), record.get("model_answered")}
    if isinstance(route, dict):
        names.add(route.get("model"))
    return names


def read_records(directory: Path) -> Iterator[dict[str, Any]]:
    """Every readable record, oldest first (lines that do not parse are skipped: `verify`
    is the command that reports them)."""
    for _, path in list_segments(directory):
        with path.open("rb") as file:
            for line in file:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record


def search(directory: Path, query: Query) -> Iterator[dict[str, Any]]:
    for record in read_records(directory):
        if query.matches(record):
            yield record


def write_jsonl(records: Iterator[dict[str, Any]], out: TextIO) -> int:
    count = 0
    for record in records:
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
        count += 1
    return count


def write_csv(records: Iterator[dict[str, Any]], out: TextIO) -> int:
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    count = 0
    for record in records:
        writer.writerow([_cell(v) for v in csv_row(record)])
        count += 1
    return count


def csv_row(record: dict[str, Any]) -> list[Any]:
    principal = record.get("principal") if isinstance(record.get("principal"), dict) else None
    route = record.get("route") if isinstance(record.get("route"), dict) else {}
    usage = record.get("usage") if isinstance(record.get("usage"), dict) else {}
    latency = record.get("latency_ms") if isinstance(record.get("latency_ms"), dict) else {}
    entities = record.get("entities") if isinstance(record.get("entities"), dict) else {}
    assert route is not None and usage is not None and latency is not None
    roles = principal.get("roles") if principal else record.get("roles")
    return [
        record.get("seq"),
        record.get("ts"),
        record.get("kind"),
        record.get("request_id"),
        principal.get("subject") if principal else record.get("subject"),
        ";".join(roles) if isinstance(roles, list) else None,
        record.get("team"),
        record.get("client"),
        record.get("endpoint"),
        record.get("requested_model"),
        route.get("kind"),
        record.get("model_answered"),
        record.get("level"),
        ";".join(f"{k}={v}" for k, v in sorted((entities or {}).items())),
        record.get("decision"),
        record.get("ended"),
        record.get("status"),
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        record.get("cost_usd"),
        latency.get("total"),
        latency.get("overhead"),
        latency.get("upstream_ttfb"),
        record.get("policy_version"),
    ]


def _cell(value: Any) -> Any:
    # Spreadsheets run cells that start with = + - @ as formulas; a subject is user input.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return "" if value is None else value
