"""The dashboard's index: an embedded SQLite file over the audit segments, kept up to date by
tailing them, rebuilt from them when it is missing, corrupt or no longer matches them.

One row per request (its request and response records merged), side tables for roles and
entity types, a contentless full-text index over recorded text, and hourly roll-ups for the
overview. The audit files stay the source of truth: the index keeps where each record is,
and the detail page reads the record itself from its segment.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from proxy.audit.segments import parse_record
from proxy.dashboard.chain import ChainChecker, ChainState
from proxy.dashboard.segments import Line, Position, list_segments, read_lines

SCHEMA_VERSION = "3"
BATCH_RECORDS = 20_000  # records per transaction while catching up
CONTENT_MODES_SEARCHED = ("full", "redacted")  # modes whose text is in the full-text index

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL,
    subject TEXT, team TEXT, roles TEXT, endpoint TEXT, model TEXT, route TEXT,
    model_answered TEXT, level TEXT, decision TEXT, ended TEXT, status INTEGER,
    entities TEXT, findings INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, latency_ms REAL,
    content_mode TEXT,
    req_segment TEXT, req_offset INTEGER, resp_segment TEXT, resp_offset INTEGER
);
CREATE INDEX events_ts ON events(ts);
CREATE INDEX events_subject ON events(subject);
CREATE INDEX events_team ON events(team);
CREATE INDEX events_model ON events(model);
CREATE INDEX events_route ON events(route);
CREATE INDEX events_level ON events(level);
CREATE INDEX events_decision ON events(decision);
CREATE INDEX events_status ON events(status);
CREATE TABLE event_roles (role TEXT NOT NULL, event INTEGER NOT NULL,
    PRIMARY KEY (role, event)) WITHOUT ROWID;
CREATE TABLE event_entities (type TEXT NOT NULL, event INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (type, event)) WITHOUT ROWID;
CREATE TABLE agg_traffic (hour INTEGER NOT NULL, decision TEXT NOT NULL, level TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (hour, decision, level)) WITHOUT ROWID;
CREATE TABLE agg_usage (day INTEGER NOT NULL, model TEXT NOT NULL, team TEXT NOT NULL,
    n INTEGER NOT NULL, cost REAL NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, PRIMARY KEY (day, model, team)) WITHOUT ROWID;
CREATE TABLE agg_people (day INTEGER NOT NULL, subject TEXT NOT NULL,
    blocks INTEGER NOT NULL, findings INTEGER NOT NULL,
    PRIMARY KEY (day, subject)) WITHOUT ROWID;
CREATE INDEX agg_people_by_subject ON agg_people(subject, day, blocks, findings);
CREATE TABLE agg_teams (day INTEGER NOT NULL, team TEXT NOT NULL,
    blocks INTEGER NOT NULL, findings INTEGER NOT NULL,
    PRIMARY KEY (day, team)) WITHOUT ROWID;
CREATE TABLE agg_entities (hour INTEGER NOT NULL, type TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (hour, type)) WITHOUT ROWID;
CREATE VIRTUAL TABLE content USING fts5(text, content='', tokenize='unicode61 remove_diacritics 2');
"""

_UPSERT_REQUEST = """
INSERT INTO events (request_id, ts, subject, roles, endpoint, model, content_mode,
                    req_segment, req_offset)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (request_id) DO UPDATE SET
    ts = excluded.ts, req_segment = excluded.req_segment, req_offset = excluded.req_offset,
    content_mode = excluded.content_mode, subject = coalesce(events.subject, excluded.subject),
    roles = coalesce(events.roles, excluded.roles)
"""

_UPSERT_RESPONSE = """
INSERT INTO events (request_id, ts, subject, team, roles, endpoint, model, route,
                    model_answered, level, decision, ended, status, entities, findings,
                    prompt_tokens, completion_tokens, cost_usd, latency_ms, content_mode,
                    resp_segment, resp_offset)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (request_id) DO UPDATE SET
    subject = excluded.subject, team = excluded.team, roles = excluded.roles,
    endpoint = excluded.endpoint, model = excluded.model, route = excluded.route,
    model_answered = excluded.model_answered, level = excluded.level,
    decision = excluded.decision, ended = excluded.ended, status = excluded.status,
    entities = excluded.entities, findings = excluded.findings,
    prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens,
    cost_usd = excluded.cost_usd, latency_ms = excluded.latency_ms,
    content_mode = coalesce(events.content_mode, excluded.content_mode),
    resp_segment = excluded.resp_segment, resp_offset = excluded.resp_offset
"""

# The row an upsert just wrote. Not `RETURNING`: with it each upsert cost about 20 µs more
# (SQLite 3.40), three times the upsert itself, where this indexed lookup costs about 1 µs.
_EVENT = "SELECT id, ts, content_mode FROM events WHERE request_id = ?"


class IndexCorrupt(Exception):
    """The index file cannot be used; it is rebuilt from the audit segments."""


class _Rollups:
    """Roll-up increments of one transaction, written at its end in a few statements.

    Traffic and entity types per hour (the charts); usage and people per day (tables over
    thousands of users and model/team pairs stay small enough to sum in milliseconds).
    """

    def __init__(self) -> None:
        self.traffic: Counter[tuple[int, str, str]] = Counter()
        self.usage: dict[tuple[int, str, str], list[float]] = {}
        self.entities: Counter[tuple[int, str]] = Counter()
        self.people: dict[tuple[int, str], list[int]] = {}
        self.teams: dict[tuple[int, str], list[int]] = {}

    def add(self, ts: float, row: dict[str, Any], entities: dict[str, int]) -> None:
        hour, day = int(ts // 3600), int(ts // 86400)
        self.traffic[(hour, row["decision"] or "", row["level"] or "")] += 1
        blocked = row["decision"] == "blocked"
        if blocked or row["findings"]:
            for table, name in ((self.people, row["subject"]), (self.teams, row["team"])):
                if name:
                    counts = table.setdefault((day, name), [0, 0])
                    counts[0] += blocked
                    counts[1] += row["findings"]
        usage = self.usage.setdefault((day, row["model"] or "", row["team"] or ""), [0, 0, 0, 0])
        usage[0] += 1
        usage[1] += row["cost_usd"] or 0.0
        usage[2] += row["prompt_tokens"] or 0
        usage[3] += row["completion_tokens"] or 0
        for kind, count in entities.items():
            self.entities[(hour, kind)] += count

    def write(self, db: sqlite3.Connection) -> None:
        db.executemany(
            "INSERT INTO agg_traffic VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO UPDATE SET n = n + excluded.n",
            [(*key, n) for key, n in self.traffic.items()],
        )
        db.executemany(
            "INSERT INTO agg_usage VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
            " n = n + excluded.n, cost = cost + excluded.cost,"
            " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
            " completion_tokens = completion_tokens + excluded.completion_tokens",
            [(*key, *values) for key, values in self.usage.items()],
        )
        db.executemany(
            "INSERT INTO agg_entities VALUES (?, ?, ?)"
            " ON CONFLICT DO UPDATE SET n = n + excluded.n",
            [(*key, n) for key, n in self.entities.items()],
        )
        for table, counts in (("agg_people", self.people), ("agg_teams", self.teams)):
            db.executemany(
                f"INSERT INTO {table} VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " blocks = blocks + excluded.blocks, findings = findings + excluded.findings",
                [(*key, *values) for key, values in counts.items()],
            )


class AuditIndex:
    """The index file and its connections: one writer, one reader per reading thread.

    Every method blocks on disk; the dashboard calls them from threads of its own, never on
    the event loop.
    """

    def __init__(self, path: Path, audit_dir: Path) -> None:
        self.path = path
        self.audit_dir = audit_dir
        self._writer: sqlite3.Connection | None = None
        self._readers = threading.local()
        self._generation = 0  # bumped by a rebuild, so readers reopen the new file
        self._opened: list[sqlite3.Connection] = []  # every reader, to close at the end
        self._lock = threading.Lock()

    # Opening and rebuilding.

    def open(self) -> None:
        """Open the index, or build a new one when it is missing, corrupt or stale."""
        try:
            self._writer = self._connect_existing()
        except (sqlite3.DatabaseError, IndexCorrupt):
            self.rebuild()

    def rebuild(self) -> None:
        """Throw the index away and start again from the first segment."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for suffix in ("", "-wal", "-shm"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o600)  # the full-text index holds words of recorded content
        db = self._connect()
        with db:
            db.executescript(_SCHEMA)
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        self._writer = db
        self._generation += 1

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # A lost tail after a power cut is re-read from the segments, so no fsync per commit.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-65536")
        return db

    def _connect_existing(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise IndexCorrupt("missing")
        db = self._connect()
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                raise IndexCorrupt("another schema")
            position = _position(db)
            if position is not None:
                segment = self.audit_dir / position.segment
                # A segment shorter than what was read means the log was replaced.
                if segment.exists() and segment.stat().st_size < position.offset:
                    raise IndexCorrupt("stale")
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        with self._lock:
            for reader in self._opened:
                reader.close()
            self._opened.clear()
        self._generation += 1

    # Reading (any thread).

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (WAL: reads never wait for the writer)."""
        db: sqlite3.Connection | None = getattr(self._readers, "db", None)
        if db is None or self._readers.generation != self._generation:
            if db is not None:
                with self._lock:
                    if db in self._opened:
                        self._opened.remove(db)
                db.close()
            db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=10.0, check_same_thread=False
            )
            db.execute("PRAGMA cache_size=-65536")
            db.execute("PRAGMA mmap_size=268435456")
            with self._lock:
                self._opened.append(db)
            self._readers.db = db
            self._readers.generation = self._generation
        return db

    def chain(self) -> ChainState:
        row = self.reader().execute("SELECT value FROM meta WHERE key = 'chain'").fetchone()
        return ChainState() if row is None else ChainState.from_json(row[0])

    # Writing (the writer thread only).

    @property
    def writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise IndexCorrupt("the index is not open")
        return self._writer

    def catch_up(self, limit: int = BATCH_RECORDS) -> int:
        """Index up to `limit` records the segments hold beyond the last position read.
        Returns how many were read: `limit` means there may be more."""
        db = self.writer
        start = _position(db)
        first = db.execute("SELECT value FROM meta WHERE key = 'first_segment'").fetchone()
        segments = list_segments(self.audit_dir)
        if first is not None and first[0] not in segments:
            # Retention removed segments the index holds rows (and indexed words) of: the
            # index must forget them too, so it starts again from what is left.
            raise IndexCorrupt("segments were removed")
        row = db.execute("SELECT value FROM meta WHERE key = 'chain'").fetchone()
        checker = ChainChecker(ChainState() if row is None else ChainState.from_json(row[0]))
        position, count, now = start, 0, time.time()
        records: list[tuple[str, int, dict[str, Any]]] = []
        for item in read_lines(self.audit_dir, start):
            if isinstance(item, Position):
                position = item
                continue
            if count >= limit:
                break
            count += 1
            position = Position(item.segment, item.end)
            record = _parse(item, checker)
            if record is not None:
                checker.check(record, _where(item), now, item.text + b"\n")
                records.append((item.segment, item.offset, record))
        if position == start:
            return 0
        with db:
            self._ingest(db, records)
            if first is None and records:
                db.execute("INSERT INTO meta VALUES ('first_segment', ?)", (records[0][0],))
            if position is not None:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('position', ?)",
                    (json.dumps([position.segment, position.offset]),),
                )
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('chain', ?)", (checker.state.to_json(),)
            )
        return count

    def ingest(self, records: Iterable[tuple[str, int, dict[str, Any]]]) -> None:
        """Index records given directly (segment, offset, record), in one transaction."""
        db = self.writer
        with db:
            self._ingest(db, records)

    def _ingest(
        self, db: sqlite3.Connection, records: Iterable[tuple[str, int, dict[str, Any]]]
    ) -> None:
        rollups = _Rollups()
        for segment, offset, record in records:
            kind = record.get("kind")
            request_id = record.get("request_id")
            if not isinstance(request_id, str) or not request_id:
                continue
            if kind == "request":
                self._add_request(db, segment, offset, request_id, record)
            elif kind == "response":
                self._add_response(db, segment, offset, request_id, record, rollups)
        rollups.write(db)

    def _add_request(
        self, db: sqlite3.Connection, segment: str, offset: int, request_id: str, r: dict[str, Any]
    ) -> None:
        principal = _dict(r.get("principal"))
        roles = _str_list(principal.get("roles"))
        mode = _str(r.get("content_mode"))
        db.execute(
            _UPSERT_REQUEST,
            (
                request_id,
                _float(r.get("ts")) or 0.0,
                _str(principal.get("subject")),
                ",".join(roles) or None,
                _str(r.get("endpoint")),
                _str(r.get("requested_model")),
                mode,
                segment,
                offset,
            ),
        )
        (event, _ts, _mode) = db.execute(_EVENT, (request_id,)).fetchone()
        db.executemany(
            "INSERT OR IGNORE INTO event_roles VALUES (?, ?)", [(role, event) for role in roles]
        )
        if mode in CONTENT_MODES_SEARCHED:
            text = _request_text(r.get("content"))
            if text:
                db.execute("INSERT INTO content (rowid, text) VALUES (?, ?)", (event * 2, text))

    def _add_response(
        self,
        db: sqlite3.Connection,
        segment: str,
        offset: int,
        request_id: str,
        r: dict[str, Any],
        rollups: _Rollups,
    ) -> None:
        roles = _str_list(r.get("roles"))
        route = _dict(r.get("route"))
        usage = _dict(r.get("usage"))
        latency = _dict(r.get("latency_ms"))
        entities = {
            k: v
            for k, v in _dict(r.get("entities")).items()
            if isinstance(v, int) and not isinstance(v, bool) and v > 0
        }
        findings = r.get("findings")
        finding_count = len(findings) if isinstance(findings, list) else sum(entities.values())
        row: dict[str, Any] = {
            "subject": _str(r.get("subject")),
            "team": _str(r.get("team")),
            "roles": ",".join(roles) or None,
            "endpoint": _str(r.get("endpoint")),
            "model": _str(r.get("requested_model")),
            "route": _str(route.get("kind")),
            "model_answered": _str(r.get("model_answered")),
            "level": _str(r.get("level")),
            "decision": _str(r.get("decision")),
            "ended": _str(r.get("ended")),
            "status": _int(r.get("status")),
            "entities": json.dumps(entities, sort_keys=True) if entities else None,
            "findings": finding_count,
            "prompt_tokens": _int(usage.get("prompt_tokens")),
            "completion_tokens": _int(usage.get("completion_tokens")),
            "cost_usd": _float(r.get("cost_usd")),
            "latency_ms": _float(latency.get("total")),
        }
        content = r.get("content")
        mode = _str(r.get("content_mode"))
        db.execute(
            _UPSERT_RESPONSE,
            (request_id, _float(r.get("ts")) or 0.0, *row.values(), mode, segment, offset),
        )
        event, ts, stored_mode = db.execute(_EVENT, (request_id,)).fetchone()
        db.executemany(
            "INSERT OR IGNORE INTO event_roles VALUES (?, ?)", [(role, event) for role in roles]
        )
        db.executemany(
            "INSERT OR REPLACE INTO event_entities VALUES (?, ?, ?)",
            [(kind, event, n) for kind, n in entities.items()],
        )
        answer = content.get("response") if isinstance(content, dict) else None
        if isinstance(answer, str) and answer and stored_mode in CONTENT_MODES_SEARCHED:
            db.execute("INSERT INTO content (rowid, text) VALUES (?, ?)", (event * 2 + 1, answer))
        rollups.add(ts, row, entities)


def _position(db: sqlite3.Connection) -> Position | None:
    row = db.execute("SELECT value FROM meta WHERE key = 'position'").fetchone()
    if row is None:
        return None
    segment, offset = json.loads(row[0])
    return Position(str(segment), int(offset))


def _where(line: Line) -> str:
    return f"{line.segment} byte {line.offset}"


def _parse(line: Line, checker: ChainChecker) -> dict[str, Any] | None:
    record = parse_record(line.text)
    if record is None:
        checker.broken(_where(line), "a line that is not a JSON record (cut short or edited)")
    return record


def _request_text(content: object) -> str:
    if not isinstance(content, dict) or not isinstance(content.get("messages"), list):
        return ""
    texts = [
        m["text"]
        for m in content["messages"]
        if isinstance(m, dict) and isinstance(m.get("text"), str)
    ]
    return "\n".join(texts)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _str_list(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and v]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
