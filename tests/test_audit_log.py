"""The audit writer on its own, on real files: group commit, rotation, retention recorded in the
chain, HMAC keys, recovery from a torn tail, the canonical form, the search and export commands;
and the request record's message texts against the classifier's walk.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.audit.chain import Chain
from proxy.audit.record import _message_of, _messages
from proxy.audit.search import read_records
from proxy.audit.sink import AuditCorrupt, AuditSink, SegmentLimits, SegmentWriter
from proxy.audit.verify import verify
from proxy.classify.extract import extract_texts
from proxy.cli import main
from proxy.policy.model import Audit


def _record(n: int, **fields: Any) -> dict[str, Any]:
    return {"kind": "response", "ts": time.time(), "request_id": f"req_{n}", **fields}


def _writer(directory: Path, key: bytes | None = None, **limits: Any) -> SegmentWriter:
    settings: dict[str, Any] = {
        "max_bytes": 1 << 20,
        "max_seconds": 3600.0,
        "retention_days": None,
        "fsync": True,
    }
    settings.update(limits)
    writer = SegmentWriter(directory, Chain(key), SegmentLimits(**settings))
    writer.open()
    return writer


async def test_concurrent_records_share_fsyncs_and_stay_in_order(tmp_path: Path) -> None:
    sink = await AuditSink.open(tmp_path / "audit", Chain(None), Audit())
    try:
        await asyncio.gather(*(sink.append([_record(n)]) for n in range(200)))
    finally:
        await sink.close()
    assert sink.records == 200
    assert sink.batches < 200  # group commit: many records per write + fsync
    records = list(read_records(tmp_path / "audit"))
    assert [r["request_id"] for r in records[1:]] == [f"req_{n}" for n in range(200)]
    assert verify(tmp_path / "audit", None).ok


def test_segments_rotate_by_size_and_time_and_chain_across(tmp_path: Path) -> None:
    writer = _writer(tmp_path, max_bytes=4096)
    for n in range(40):
        writer.write([_record(n, padding="x" * 300)])
    writer.limits = SegmentLimits(1 << 20, 0.05, None, True)
    time.sleep(0.06)
    writer.write([_record(99)])
    writer.close()
    segments = sorted(tmp_path.glob("audit-*.jsonl"))
    assert len(segments) > 3
    starts = [json.loads(p.read_bytes().splitlines()[0]) for p in segments]
    assert all(s["kind"] == "segment_start" for s in starts)
    assert [s["previous_segment"] for s in starts[1:]] == [p.name for p in segments[:-1]]
    assert verify(tmp_path, None).ok


def test_retention_deletes_old_segments_and_records_it(tmp_path: Path) -> None:
    writer = _writer(tmp_path, max_seconds=0.05)
    for n in range(3):
        writer.write([_record(n)])
        time.sleep(0.06)
    assert len(list(tmp_path.glob("audit-*.jsonl"))) == 3
    # Segments whose last record is older than a tenth of a second go at the next rotation.
    writer.limits = SegmentLimits(1 << 20, 0.05, 0.1 / 86400, True)
    time.sleep(0.12)
    writer.write([_record(3)])
    writer.close()
    left = sorted(p.name for p in tmp_path.glob("audit-*.jsonl"))
    assert left == ["audit-000004.jsonl"]
    retention = next(r for r in read_records(tmp_path) if r["kind"] == "retention")
    assert [d["segment"] for d in retention["deleted"]] == [
        f"audit-00000{n}.jsonl" for n in range(1, 4)
    ]
    report = verify(tmp_path, None)
    assert report.ok, [str(p) for p in report.problems]


def test_a_segment_removed_outside_retention_is_still_reported(tmp_path: Path) -> None:
    writer = _writer(tmp_path, max_seconds=0.05)
    for n in range(3):
        writer.write([_record(n)])
        time.sleep(0.06)
    writer.limits = SegmentLimits(1 << 20, 0.05, 0.1 / 86400, True)
    time.sleep(0.12)
    writer.write([_record(3)])  # retention: segments 1-3 go, 4 holds the record of it
    time.sleep(0.06)
    writer.limits = SegmentLimits(1 << 20, 0.05, None, True)
    writer.write([_record(4)])  # segment 5
    writer.close()
    assert verify(tmp_path, None).ok
    (tmp_path / "audit-000004.jsonl").unlink()
    report = verify(tmp_path, None)
    assert not report.ok
    assert any(p.segment == "audit-000005.jsonl" and p.line == 1 for p in report.problems)


def test_keyed_chain_needs_the_key(tmp_path: Path) -> None:
    writer = _writer(tmp_path, key=b"k" * 32)
    writer.write([_record(1), _record(2)])
    writer.close()
    assert verify(tmp_path, b"k" * 32).ok
    unkeyed = verify(tmp_path, None)
    assert not unkeyed.ok
    assert "this log is keyed" in unkeyed.problems[0].message
    # Re-sealing an edited record with plain SHA-256 does not fool a keyed verify.
    path = next(tmp_path.glob("audit-*.jsonl"))
    lines = path.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[1])
    del record["hash"]
    record["request_id"] = "req_other"
    lines[1], _ = Chain(None).seal(record)
    path.write_bytes(b"".join(lines))
    report = verify(tmp_path, b"k" * 32)
    first = report.problems[0]
    assert (first.line, first.seq) == (2, 2) and "edited" in first.message


def test_records_are_hashed_as_sorted_compact_utf8_json(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.write(
        [
            _record(1, text="café ☕ \u2028", nested={"b": 1, "a": [1.5, None]}),
            # orjson refuses a lone surrogate (JSON input can carry one as an escape) and
            # integers beyond 64 bits: such a record is json's ASCII form instead.
            _record(2, text="lone \ud800 surrogate", big=2**70),
        ]
    )
    writer.close()
    assert verify(tmp_path, None).ok
    lines = next(tmp_path.glob("audit-*.jsonl")).read_bytes().splitlines()
    assert "café ☕".encode() in lines[1]  # UTF-8 as is, not \u escapes
    first = json.loads(lines[1])
    stated = first.pop("hash")
    assert hashlib.sha256(orjson.dumps(first, option=orjson.OPT_SORT_KEYS)).hexdigest() == stated
    second = json.loads(lines[2])
    assert second["text"] == "lone \ud800 surrogate"
    stated = second.pop("hash")
    ascii_form = json.dumps(second, sort_keys=True, separators=(",", ":")).encode()
    assert hashlib.sha256(ascii_form).hexdigest() == stated
    # An edit to a non-ASCII text is still an edit.
    path = next(tmp_path.glob("audit-*.jsonl"))
    path.write_bytes(path.read_bytes().replace("café".encode(), b"cafe"))
    report = verify(tmp_path, None)
    assert [(p.line, p.seq) for p in report.problems] == [(2, 2)]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        {
            "model": "m",
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"id": "x", "arguments": "{}"}],
                },
                {"role": 7, "content": "odd role"},
                "a bare string",
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
                {"type": "input_audio", "content": "not text"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "description": "d"}}],
            "metadata": {"k": "v", "role": "not content"},
            "stop": ["\n", "END"],
        },
        {"model": "m", "input": "just text", "instructions": "sys", "prompt": ["p1", "p2"]},
        {
            "model": "m",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "t"}]}],
        },
        {"type": "image", "messages": [{"role": "user", "content": "skipped whole"}]},
    ],
)
def test_request_record_messages_are_the_classifiers_texts(body: dict[str, Any]) -> None:
    # The request record walks the body once without paths; it must find exactly the texts
    # the classifier's walk finds (every text the upstream sees), grouped by message.
    grouped: dict[tuple[str | int, ...], tuple[str, list[str]]] = {}
    for slot in extract_texts(body).slots:
        key, role = _message_of(body, slot.path)
        grouped.setdefault(key, (role, []))[1].append(slot.text)
    assert _messages(body) == [(role, "\n".join(texts)) for role, texts in grouped.values()]


def test_a_torn_tail_is_cut_on_restart_and_said_in_the_chain(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.write([_record(1)])
    writer.close()
    segment = next(tmp_path.glob("audit-*.jsonl"))
    with segment.open("ab") as file:
        file.write(b'{"kind":"response","seq":3')  # a crash mid-write
    writer = _writer(tmp_path)
    writer.write([_record(2)])
    writer.close()
    report = verify(tmp_path, None)
    assert report.ok, [str(p) for p in report.problems]
    start = json.loads(sorted(tmp_path.glob("audit-*.jsonl"))[-1].read_bytes().splitlines()[0])
    assert start["repaired"]["segment"] == segment.name and start["repaired"]["dropped_bytes"] > 0


def test_verify_reports_progress(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.write([_record(n, padding="x" * 1000) for n in range(200)])
    writer.close()
    seen: list[tuple[int, int]] = []
    report = verify(
        tmp_path,
        None,
        progress=lambda done, total: seen.append((done, total)),
        progress_every=50_000,
    )
    assert report.ok and len(seen) > 3
    assert seen[-1][0] == seen[-1][1] == report.bytes


def _log_for_search(directory: Path) -> None:
    writer = _writer(directory)
    now = time.time()
    writer.write(
        [
            _record(
                1,
                ts=now - 7200,
                subject="alice",
                roles=["employee"],
                decision="allowed",
                level="public",
                requested_model="gpt-4o",
                status=200,
            ),
            _record(
                2,
                ts=now - 60,
                subject="bob",
                roles=["contractor"],
                decision="blocked",
                level="restricted",
                requested_model="gpt-4o",
                status=400,
            ),
            _record(
                3,
                ts=now - 30,
                subject="=cmd()",
                roles=["employee"],
                decision="rerouted",
                level="confidential",
                requested_model="gpt-4o",
                status=200,
                route={"kind": "sensitive", "model": "llama-3.3-70b"},
            ),
        ]
    )
    writer.close()


def test_search_filters_and_prints_jsonl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _log_for_search(tmp_path)
    cases = {
        ("--user", "bob"): ["req_2"],
        ("--role", "employee"): ["req_1", "req_3"],
        ("--model", "llama-3.3-70b"): ["req_3"],
        ("--level", "restricted"): ["req_2"],
        ("--decision", "rerouted"): ["req_3"],
        ("--since", "1h"): ["req_2", "req_3"],
        ("--until", "1h"): ["req_1"],
    }
    for filters, expected in cases.items():
        assert main(["audit", "search", "--dir", str(tmp_path), *filters]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [json.loads(line)["request_id"] for line in lines] == expected, filters


def test_export_csv_for_a_siem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log_for_search(tmp_path)
    out = tmp_path / "export.csv"
    assert (
        main(["audit", "export", "--dir", str(tmp_path), "--format", "csv", "--output", str(out)])
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["request_id"] for r in rows] == ["req_1", "req_2", "req_3"]
    assert rows[2]["subject"] == "'=cmd()"  # never a spreadsheet formula
    assert rows[2]["route_kind"] == "sensitive"
    capsys.readouterr()
    assert main(["audit", "export", "--dir", str(tmp_path), "--kind", "any"]) == 0
    kinds = [json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()]
    assert kinds == ["response"] * 3  # segment_start records are chain bookkeeping


def test_an_unreadable_last_record_stops_startup(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.write([_record(1)])
    writer.close()
    segment = next(tmp_path.glob("audit-*.jsonl"))
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:-1]) + b"garbage\n")
    with pytest.raises(AuditCorrupt):
        _writer(tmp_path)
    assert segment.exists()


def test_anchors_must_still_be_in_the_log_with_their_hash(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.write([_record(n) for n in range(5)])
    writer.close()
    head = verify(tmp_path, None)
    assert head.ok and head.last_seq is not None and head.last_hash is not None
    anchors = {head.last_seq: head.last_hash}
    assert verify(tmp_path, None, anchors=anchors).anchors_checked == 1

    wrong = verify(tmp_path, None, anchors={2: "0" * 64})
    assert not wrong.ok and wrong.problems[0].seq == 2
    assert "differs from its anchor" in wrong.problems[0].message

    segment = next(tmp_path.glob("audit-*.jsonl"))
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:-1]))
    assert verify(tmp_path, None).ok  # the chain alone cannot tell
    cut = verify(tmp_path, None, anchors=anchors)
    assert not cut.ok
    assert "records cut off its end" in cut.problems[0].message


def test_anchors_that_retention_deleted_are_accepted(tmp_path: Path) -> None:
    writer = _writer(tmp_path, max_seconds=0.05)
    writer.write([_record(0)])
    old = verify(tmp_path, None)
    assert old.last_seq is not None and old.last_hash is not None
    time.sleep(0.06)
    writer.limits = SegmentLimits(1 << 20, 0.05, 0.05 / 86400, True)
    time.sleep(0.06)
    writer.write([_record(1)])
    writer.close()
    report = verify(tmp_path, None, anchors={old.last_seq: old.last_hash})
    assert report.ok, [str(p) for p in report.problems]
    assert report.anchors_retired == 1


def test_anchors_are_read_from_log_lines_or_seq_hash_pairs() -> None:
    from proxy.audit.verify import read_anchors

    digest = "ab" * 32
    lines = [
        json.dumps(
            {"event": "audit_head", "segment": "audit-000001.jsonl", "seq": 7, "hash": digest}
        ),
        '{"event": "request", "status": 200}',
        f"9:{digest.upper()}",
        "",
    ]
    assert read_anchors(lines) == {7: digest, 9: digest}
    with pytest.raises(ValueError, match="not an anchor"):
        read_anchors(["7:abc"])
    with pytest.raises(ValueError, match="two different hashes"):
        read_anchors([f"7:{digest}", f"7:{'cd' * 32}"])
