"""The questions the dashboard pages ask the index, as functions of a read connection.

Events are listed newest first in audit order (the index's row id), so a page is a range
scan on one index and the next page starts below the last id shown (keyset pagination).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

PAGE_SIZE = 50
DECISIONS = ("allowed", "masked", "rerouted", "blocked", "denied", "failed")
LEVELS = ("public", "internal", "confidential", "restricted")
ROUTES = ("direct", "sensitive", "fallback")
RANGES = {"24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "all": None}
_WORD = re.compile(r"\w+", re.UNICODE)

EVENT_COLUMNS = (
    "id",
    "request_id",
    "ts",
    "subject",
    "team",
    "roles",
    "endpoint",
    "model",
    "route",
    "model_answered",
    "level",
    "decision",
    "ended",
    "status",
    "entities",
    "findings",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
    "content_mode",
    "req_segment",
    "req_offset",
    "resp_segment",
    "resp_offset",
)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The events page's filter, as the query string carries it."""

    since: float | None = None
    until: float | None = None
    user: str | None = None
    team: str | None = None
    role: str | None = None
    model: str | None = None
    route: str | None = None
    level: str | None = None
    decision: str | None = None
    entity: str | None = None
    status: int | None = None
    text: str | None = None
    before: int | None = None  # show events with a smaller id (the next page)

    def without_text(self) -> EventFilter:
        return replace(self, text=None)

    def query_items(self) -> list[tuple[str, str]]:
        """The filter as query parameters, paging left out."""
        items: list[tuple[str, str]] = []
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None or field.name == "before":
                continue
            if field.name in ("since", "until"):
                value = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(value))
            items.append((field.name, str(value)))
        return items


@dataclass(frozen=True, slots=True)
class EventPage:
    rows: list[dict[str, Any]]
    next_before: int | None


def _match_expression(text: str) -> str | None:
    """Words of the search as an FTS5 query: all of them, each as a quoted literal."""
    words = _WORD.findall(text)
    if not words:
        return None
    return " ".join('"' + word.replace('"', '""') + '"' for word in words[:16])


def _id_bounds(db: sqlite3.Connection, flt: EventFilter) -> tuple[int | None, int | None]:
    """Turn a time range into a range of ids, so every filter index can be range-scanned.

    Ids follow the audit order, which is arrival order within a few seconds; the bounds are
    widened by five minutes and the exact time test stays in the query.
    """
    low = high = None
    if flt.since is not None:
        row = db.execute(
            "SELECT min(id) FROM events WHERE ts BETWEEN ? AND ?", (flt.since, flt.since + 300)
        ).fetchone()
        if row[0] is None:
            row = db.execute(
                "SELECT id FROM events WHERE ts >= ? ORDER BY ts LIMIT 1", (flt.since,)
            ).fetchone()
        low = row[0] if row is not None and row[0] is not None else 1 << 62
    if flt.until is not None:
        row = db.execute(
            "SELECT max(id) FROM events WHERE ts BETWEEN ? AND ?", (flt.until - 300, flt.until)
        ).fetchone()
        if row[0] is None:
            row = db.execute(
                "SELECT id FROM events WHERE ts <= ? ORDER BY ts DESC LIMIT 1", (flt.until,)
            ).fetchone()
        high = row[0] if row is not None and row[0] is not None else -1
    return low, high


def _where(db: sqlite3.Connection, flt: EventFilter) -> tuple[str, str, list[Any], str]:
    """FROM clause, WHERE clause, parameters and the id column to order by."""
    conditions: list[str] = []
    params: list[Any] = []
    source, order = "events e", "e.id"
    match = _match_expression(flt.text) if flt.text else None
    if match is not None:
        # Driven by the full-text index, newest first; rowid / 2 is the event id.
        source = "content c JOIN events e ON e.id = c.rowid / 2"
        order = "c.rowid"
        conditions.append("content MATCH ?")
        params.append(match)
    elif flt.user is not None:
        pass  # one person's events: their index is the narrowest place to start
    elif flt.role is not None:
        source = "event_roles r JOIN events e ON e.id = r.event"
        order = "r.event"
        conditions.append("r.role = ?")
        params.append(flt.role)
    elif flt.entity is not None:
        source = "event_entities x JOIN events e ON e.id = x.event"
        order = "x.event"
        conditions.append("x.type = ?")
        params.append(flt.entity)
    if flt.role is not None and order != "r.event":
        conditions.append("EXISTS (SELECT 1 FROM event_roles WHERE role = ? AND event = e.id)")
        params.append(flt.role)
    if flt.entity is not None and order != "x.event":
        conditions.append("EXISTS (SELECT 1 FROM event_entities WHERE type = ? AND event = e.id)")
        params.append(flt.entity)
    for column, value in (
        ("subject", flt.user),
        ("team", flt.team),
        ("model", flt.model),
        ("route", flt.route),
        ("level", flt.level),
        ("decision", flt.decision),
        ("status", flt.status),
    ):
        if value is not None:
            conditions.append(f"e.{column} = ?")
            params.append(value)
    low, high = _id_bounds(db, flt)
    scale = "2 * " if order == "c.rowid" else ""
    if low is not None:
        conditions.append(f"{order} >= {scale}?")
        params.append(low)
    if high is not None:
        conditions.append(f"{order} < {scale}(? + 1)")
        params.append(high)
    if flt.before is not None:
        conditions.append(f"{order} < {scale}?")
        params.append(flt.before)
    if flt.since is not None:
        conditions.append("e.ts >= ?")
        params.append(flt.since)
    if flt.until is not None:
        conditions.append("e.ts <= ?")
        params.append(flt.until)
    where = " AND ".join(conditions) or "1"
    return source, where, params, order


def events_page(db: sqlite3.Connection, flt: EventFilter, size: int = PAGE_SIZE) -> EventPage:
    source, where, params, order = _where(db, flt)
    columns = ", ".join(f"e.{c}" for c in EVENT_COLUMNS)
    rows = db.execute(
        f"SELECT DISTINCT {columns} FROM {source} WHERE {where} ORDER BY {order} DESC LIMIT ?",
        (*params, size + 1),
    ).fetchall()
    events = [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in rows[:size]]
    next_before = events[-1]["id"] if len(rows) > size else None
    return EventPage(events, next_before)


def iter_events(db: sqlite3.Connection, flt: EventFilter, limit: int) -> Iterator[dict[str, Any]]:
    """Every event the filter matches (up to `limit`), newest first, for the CSV export."""
    source, where, params, order = _where(db, flt)
    columns = ", ".join(f"e.{c}" for c in EVENT_COLUMNS)
    cursor = db.execute(
        f"SELECT DISTINCT {columns} FROM {source} WHERE {where} ORDER BY {order} DESC LIMIT ?",
        (*params, limit),
    )
    for row in cursor:
        yield dict(zip(EVENT_COLUMNS, row, strict=True))


def event_by_request_id(db: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    columns = ", ".join(EVENT_COLUMNS)
    row = db.execute(f"SELECT {columns} FROM events WHERE request_id = ?", (request_id,)).fetchone()
    return None if row is None else dict(zip(EVENT_COLUMNS, row, strict=True))


@dataclass(frozen=True, slots=True)
class Overview:
    since: float | None
    bucket_hours: int  # the width of one bar of the charts
    buckets: list[int]  # bucket numbers (hour // bucket_hours), oldest first
    by_decision: dict[str, dict[int, int]]  # decision -> bucket -> requests
    by_level: dict[str, dict[int, int]]
    totals: dict[str, int]  # per decision
    top_users_blocks: list[tuple[str, int]]
    top_teams_blocks: list[tuple[str, int]]
    top_users_findings: list[tuple[str, int]]
    top_teams_findings: list[tuple[str, int]]
    entities: list[tuple[str, int]]
    usage: list[tuple[str, str, int, float, int, int]]  # model, team, n, cost, in, out


def _series(
    db: sqlite3.Connection, column: str, width: int, first_hour: int, empty: str
) -> dict[str, dict[int, int]]:
    series: dict[str, dict[int, int]] = {}
    for bucket, name, n in db.execute(
        f"SELECT hour / ? AS bucket, {column}, sum(n) FROM agg_traffic WHERE hour >= ?"
        f" GROUP BY bucket, {column}",
        (width, first_hour),
    ):
        series.setdefault(name or empty, {})[bucket] = n
    return series


def overview(db: sqlite3.Connection, range_name: str, now: float | None = None) -> Overview:
    now = time.time() if now is None else now
    span = RANGES.get(range_name, RANGES["7d"])
    since = None if span is None else now - span
    if since is None:
        row = db.execute("SELECT min(hour) FROM agg_traffic").fetchone()
        first_hour = int(now // 3600) if row[0] is None else int(row[0])
    else:
        first_hour = int(since // 3600)
    last_hour = int(now // 3600)
    width = 1 if last_hour - first_hour <= 48 else 6 if last_hour - first_hour <= 24 * 8 else 24
    by_decision = _series(db, "decision", width, first_hour, "in flight")
    by_level = _series(db, "level", width, first_hour, "none")
    totals = {name: sum(values.values()) for name, values in by_decision.items()}
    buckets = list(range(first_hour // width, last_hour // width + 1))
    first_day = -(1 << 30) if since is None else int(since // 86400)

    # One pass per table, both measures at once; the per-subject index avoids a sort.
    users = db.execute(
        "SELECT subject, sum(blocks), sum(findings) FROM agg_people"
        " INDEXED BY agg_people_by_subject WHERE day >= ? GROUP BY subject",
        (first_day,),
    ).fetchall()
    teams = db.execute(
        "SELECT team, sum(blocks), sum(findings) FROM agg_teams WHERE day >= ? GROUP BY team",
        (first_day,),
    ).fetchall()

    entities = [
        (kind, int(n))
        for kind, n in db.execute(
            "SELECT type, sum(n) AS total FROM agg_entities WHERE hour >= ?"
            " GROUP BY type ORDER BY total DESC, type",
            (first_hour,),
        )
    ]
    usage = [
        (model or "(none)", team or "(none)", int(n), float(cost), int(tin), int(tout))
        for model, team, n, cost, tin, tout in db.execute(
            "SELECT model, team, sum(n), sum(cost), sum(prompt_tokens), sum(completion_tokens)"
            " FROM agg_usage WHERE day >= ? GROUP BY model, team"
            " ORDER BY sum(cost) DESC, sum(n) DESC LIMIT 50",
            (first_day,),
        )
    ]
    return Overview(
        since=since,
        bucket_hours=width,
        buckets=buckets,
        by_decision=by_decision,
        by_level=by_level,
        totals=totals,
        top_users_blocks=_top(users, 1),
        top_teams_blocks=_top(teams, 1),
        top_users_findings=_top(users, 2),
        top_teams_findings=_top(teams, 2),
        entities=entities,
        usage=usage,
    )


def _top(rows: list[tuple[str, int, int]], measure: int, count: int = 10) -> list[tuple[str, int]]:
    values = [(str(row[0]), int(row[measure])) for row in rows]
    ranked = sorted((v for v in values if v[1] > 0), key=lambda v: (-v[1], v[0]))
    return ranked[:count]


def choices(db: sqlite3.Connection) -> dict[str, list[str]]:
    """Values seen for the events page's drop-downs (from the small roll-up tables)."""
    return {
        "model": [
            r[0] for r in db.execute("SELECT DISTINCT model FROM agg_usage WHERE model != ''")
        ],
        "team": [r[0] for r in db.execute("SELECT DISTINCT team FROM agg_usage WHERE team != ''")],
        "entity": [r[0] for r in db.execute("SELECT DISTINCT type FROM agg_entities ORDER BY 1")],
    }


def entities_of(row: dict[str, Any]) -> dict[str, int]:
    if not row.get("entities"):
        return {}
    value = json.loads(row["entities"])
    return value if isinstance(value, dict) else {}
