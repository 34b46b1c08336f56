"""Dashboard index benchmark: 1 million synthetic audit requests, then every page's queries.

    .venv/bin/python benchmarks/dashboard.py [--records 1000000] [--runs 40] [--keep DIR]

Fills a fresh index (request and response record per synthetic request, spread over the
last 30 days, content in `redacted` mode) through the same ingest code the tailer uses, then
times each query a page makes and prints p50/p95 per query (wall and CPU time); the target is
p95 < 300 ms. Writes its section of docs/benchmarks.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import overhead  # the sibling benchmark: doc writing

from proxy.dashboard.index import AuditIndex
from proxy.dashboard.queries import (
    EventFilter,
    choices,
    event_by_request_id,
    events_page,
    iter_events,
    overview,
)

USERS = [f"user{n:04d}@corp.example" for n in range(2000)]
TEAMS = [f"team-{n:02d}" for n in range(40)]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-6", "claude-haiku-4-5", "llama-3.3-70b"]
ROLES = ["employee", "contractor", "service"]
ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "PERSON", "API_KEY", "PROJECT_CODE"]
WORDS = [
    "quarterly",
    "report",
    "summary",
    "customer",
    "invoice",
    "deploy",
    "kubernetes",
    "cluster",
    "migrate",
    "database",
    "review",
    "contract",
    "draft",
    "email",
    "meeting",
    "notes",
    "budget",
    "forecast",
    "roadmap",
    "incident",
    "postmortem",
]
DECISIONS = ["allowed"] * 80 + ["masked"] * 8 + ["rerouted"] * 5 + ["blocked"] * 4
DECISIONS += ["denied"] * 2 + ["failed"]
LEVELS = ["public"] * 70 + ["internal"] * 18 + ["confidential"] * 8 + ["restricted"] * 4


def synthetic_records(
    count: int, now: float, seed: int = 7
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    rng = random.Random(seed)
    start = now - 30 * 86400
    step = 30 * 86400 / count
    for n in range(count):
        ts = start + n * step + rng.random() * step
        user = rng.randrange(len(USERS))
        subject, team = USERS[user], TEAMS[user % len(TEAMS)]
        roles = [ROLES[0] if user % 10 else ROLES[1 + user % 2]]
        model = rng.choice(MODELS)
        decision = rng.choice(DECISIONS)
        level = rng.choice(LEVELS)
        entities: dict[str, int] = {}
        if level != "public":
            for kind in rng.sample(ENTITIES, rng.randint(1, 2)):
                entities[kind] = rng.randint(1, 3)
        findings = [
            {"type": kind, "start": i * 10, "end": i * 10 + 8, "where": "messages[0]"}
            for kind, times in entities.items()
            for i in range(times)
        ]
        request_id = f"req_{n:012x}"
        text = " ".join(rng.choices(WORDS, k=12)) + f" ticket{n % 5000}"
        prompt_tokens, completion_tokens = rng.randint(20, 2000), rng.randint(10, 800)
        yield (
            "audit-000000.jsonl",
            n * 2,
            {
                "v": 1,
                "kind": "request",
                "ts": ts,
                "request_id": request_id,
                "principal": {"subject": subject, "roles": roles, "auth_method": "oidc"},
                "endpoint": "openai.chat",
                "requested_model": model,
                "content_mode": "redacted",
                "content": {"messages": [{"role": "user", "text": text}]},
            },
        )
        yield (
            "audit-000000.jsonl",
            n * 2 + 1,
            {
                "v": 1,
                "kind": "response",
                "ts": ts + 1.5,
                "request_id": request_id,
                "status": 200 if decision not in ("blocked", "denied", "failed") else 403,
                "decision": decision,
                "ended": "completed",
                "subject": subject,
                "roles": roles,
                "team": team,
                "endpoint": "openai.chat",
                "requested_model": model,
                "route": {"kind": "sensitive" if decision == "rerouted" else "direct"},
                "model_answered": model,
                "level": level,
                "entities": entities,
                "findings": findings,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
                "cost_usd": (prompt_tokens * 2.5 + completion_tokens * 10) / 1e6,
                "latency_ms": {"total": rng.uniform(200, 3000)},
                "content": {"response": "ok " + rng.choice(WORDS)},
            },
        )


def fill(index: AuditIndex, count: int, now: float) -> float:
    started = time.perf_counter()
    batch: list[tuple[str, int, dict[str, Any]]] = []
    for item in synthetic_records(count, now):
        batch.append(item)
        if len(batch) >= 50_000:
            index.ingest(batch)
            batch.clear()
    index.ingest(batch)
    return time.perf_counter() - started


def timed(run: Callable[[], object], runs: int) -> tuple[float, float, float]:
    """p50 and p95 of wall time, p95 of CPU time, in ms (the machine is shared: CPU time
    is what the query costs, wall time what a page waits)."""
    walls, cpus = [], []
    for _ in range(runs):
        started, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    walls.sort()
    cpus.sort()
    p95 = max(0, int(len(walls) * 0.95 + 0.5) - 1)
    return statistics.median(walls), walls[p95], cpus[p95]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the index in this directory")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()
    directory = args.keep or Path(tempfile.mkdtemp(prefix="sluice-dashboard-bench-"))
    now = time.time()
    index = AuditIndex(directory / "index.sqlite3", directory / "audit")
    existing = (directory / "index.sqlite3").exists()
    index.open()
    fill_file = directory / "fill.json"
    if existing and index.reader().execute("SELECT count(*) FROM events").fetchone()[0]:
        print(f"reusing the index in {directory}")
        now = index.reader().execute("SELECT max(ts) FROM events").fetchone()[0]
    else:
        cpu = time.process_time()
        seconds = fill(index, args.records, now)
        fill_file.write_text(json.dumps({"wall_s": seconds, "cpu_s": time.process_time() - cpu}))
    filled = json.loads(fill_file.read_text()) if fill_file.exists() else None
    if filled:
        print(
            f"indexed {2 * args.records:,} records in {filled['wall_s']:.0f} s wall,"
            f" {filled['cpu_s']:.0f} s CPU"
        )
    db = index.reader()
    total = db.execute("SELECT count(*) FROM events").fetchone()[0]
    size_mb = sum(f.stat().st_size for f in directory.glob("index.sqlite3*")) / 1e6
    middle = db.execute("SELECT request_id FROM events WHERE id = ?", (total // 2,)).fetchone()[0]
    last_week = now - 7 * 86400
    pages: dict[str, Callable[[], object]] = {
        "overview, last 24 h": lambda: overview(db, "24h", now),
        "overview, last 7 days": lambda: overview(db, "7d", now),
        "overview, last 30 days": lambda: overview(db, "30d", now),
        "overview, all": lambda: overview(db, "all", now),
        "events: filter choices": lambda: choices(db),
        "events, no filter": lambda: events_page(db, EventFilter()),
        "events, page 100": lambda: events_page(db, EventFilter(before=total - 100 * 50)),
        "events, one user": lambda: events_page(db, EventFilter(user=USERS[17])),
        "events, rare role": lambda: events_page(db, EventFilter(role="service")),
        "events, decision blocked": lambda: events_page(db, EventFilter(decision="blocked")),
        "events, level + model": lambda: events_page(
            db, EventFilter(level="restricted", model="gpt-4o")
        ),
        "events, entity type": lambda: events_page(db, EventFilter(entity="CREDIT_CARD")),
        "events, status 403, last 7 days": lambda: events_page(
            db, EventFilter(status=403, since=last_week)
        ),
        "events, one day 3 weeks ago": lambda: events_page(
            db, EventFilter(since=now - 21 * 86400, until=now - 20 * 86400)
        ),
        "events, user + entity + 30 days": lambda: events_page(
            db, EventFilter(user=USERS[17], entity="PERSON", since=now - 30 * 86400)
        ),
        "events, text (rare word)": lambda: events_page(db, EventFilter(text="ticket4242")),
        "events, text (common word)": lambda: events_page(db, EventFilter(text="invoice")),
        "events, text + decision": lambda: events_page(
            db, EventFilter(text="invoice budget", decision="blocked")
        ),
        "event detail (index row)": lambda: event_by_request_id(db, middle),
    }
    machine = (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"Linux {platform.release()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; load average {os.getloadavg()[0]:.2f} at the start"
    )
    print(f"{total:,} events, index {size_mb:,.0f} MB; {machine}")
    print(f"{'query':34} {'p50 ms':>8} {'p95 ms':>8} {'p95 CPU':>8}")
    results = []
    for name, run in pages.items():
        p50, p95, cpu95 = timed(run, args.runs)
        results.append((name, p50, p95, cpu95))
        print(f"{name:34} {p50:8.1f} {p95:8.1f} {cpu95:8.1f}")
    started = time.perf_counter()
    exported = sum(1 for _ in iter_events(db, EventFilter(), 100_000))
    export_rate = exported / (time.perf_counter() - started)
    print(f"csv export rows: {export_rate:,.0f}/s")
    worst = max(r[2] for r in results)
    print(f"worst p95: {worst:.1f} ms (target < 300 ms)")
    index.close()
    if args.keep is None:
        shutil.rmtree(directory)
    if not args.no_write:
        overhead.write_section(
            section(results, total, size_mb, filled, export_rate, machine, args),
            markers=("<!-- dashboard:start -->", "<!-- dashboard:end -->"),
        )


def section(
    results: list[tuple[str, float, float, float]],
    total: int,
    size_mb: float,
    filled: dict[str, float] | None,
    export_rate: float,
    machine: str,
    args: argparse.Namespace,
) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    worst = max(r[2] for r in results)
    rows = "\n".join(
        f"| {name} | {p50:.1f} | {p95:.1f} | {cpu95:.1f} | {'PASS' if p95 < 300 else 'FAIL'} |"
        for name, p50, p95, cpu95 in results
    )
    fill_line = (
        f"Filling it took {filled['wall_s']:.0f} s wall, {filled['cpu_s']:.0f} s CPU "
        f"({2 * total / filled['cpu_s']:,.0f} records per CPU second), through the same "
        "ingest code that tails the segments."
        if filled
        else ""
    )
    return f"""<!-- dashboard:start -->
## Security dashboard: page queries over 1 million requests

What: the SQL each dashboard page runs (`proxy/dashboard/queries.py`), against an index of
{total:,} synthetic requests (a request and a response record each: 2,000 users in 40 teams,
5 models, decisions and levels in realistic proportions, entity findings on a third, redacted
prompt text for full-text search) spread over 30 days. Index file {size_mb:,.0f} MB.
{fill_line}

How: each query runs {args.runs} times back to back on one read connection (as the page's
reader thread does); p50/p95 of wall time, and p95 of the process's CPU time (the machine is
shared, so CPU time is what the query costs and wall time what a page waited). The CSV export
streams {export_rate:,.0f} rows/s (it is a download, not a page). Not included: rendering
the HTML (Jinja2, a few ms) and, for the detail page, reading the two records from their
segment (a seek and a line each).

Machine: {machine}. Run {when}, commit {commit}.

Command: `python benchmarks/dashboard.py` (`--keep DIR` keeps the index and reuses it)

| page query | p50 ms | p95 ms | p95 CPU ms | p95 < 300 ms |
|---|---:|---:|---:|---|
{rows}

Worst p95: {worst:.1f} ms.

Why SQLite and not DuckDB: the pages are point lookups and short range scans (50 newest
events matching a filter, one event by id) plus small roll-up sums, which a B-tree index
answers in well under a millisecond; DuckDB's columnar scans shine on ad-hoc aggregates over
all rows but answer "the next 50 rows below id N with this user" slower, and it would be a
new native dependency. SQLite is in the standard library, its WAL mode lets the page threads
read while the tailer writes, FTS5 gives the text search, and the index is one file that can be
thrown away and rebuilt from the segments. The overview's aggregates come from hourly and
daily roll-ups maintained at ingest, so no page scans the million rows.
<!-- dashboard:end -->"""


if __name__ == "__main__":
    main()
