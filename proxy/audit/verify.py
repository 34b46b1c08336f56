"""Checks an audit directory: every record's hash, the chain from record to record and from
segment to segment, and that no segment is missing or cut short.

Each problem names the segment file, the line and the record's seq. Segments deleted by
retention are accepted only when a retention record in the chain names them and the hash the
chain continues from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.audit.chain import GENESIS, Chain, split_sealed
from proxy.audit.segments import list_segments, segment_name

ProgressCallback = Callable[[int, int], None]
_MAX_KEPT = 1000


@dataclass(frozen=True, slots=True)
class Problem:
    segment: str
    line: int | None
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = self.segment if self.line is None else f"{self.segment}:{self.line}"
        seq = "" if self.seq is None else f" seq={self.seq}"
        return f"{where}{seq}: {self.message}"


@dataclass(slots=True)
class Report:
    directory: Path
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    segments: int = 0
    records: int = 0
    bytes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, segment: str, line: int | None, seq: int | None, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < _MAX_KEPT:
            self.problems.append(Problem(segment, line, seq, message))


@dataclass(slots=True)
class _Chain:
    expected_seq: int | None = None
    prev: str | None = None
    start: tuple[str, int, str] | None = None  # (segment, seq, prev) of a chain not from genesis
    retired: dict[str, tuple[int, str]] = field(default_factory=dict)  # by retention records


def verify(
    directory: Path,
    key: bytes | None,
    *,
    progress: ProgressCallback | None = None,
    progress_every: int = 64 * 1024 * 1024,
) -> Report:
    started = time.perf_counter()
    report = Report(directory)
    chain = Chain(key)
    segments = list_segments(directory)
    if not segments:
        report.add(str(directory), None, None, "no audit segments here")
        return report
    total = sum(path.stat().st_size for _, path in segments)
    state = _Chain()
    next_progress = progress_every
    previous_number: int | None = None
    for number, path in segments:
        if previous_number is not None and number != previous_number + 1:
            for gone in range(previous_number + 1, number):
                report.add(segment_name(gone), None, None, "segment missing")
        previous_number = number
        report.segments += 1
        with path.open("rb") as file:
            line_number = 0
            for line in file:
                line_number += 1
                report.bytes += len(line)
                _check_line(report, state, chain, path.name, line_number, line)
                if progress is not None and report.bytes >= next_progress:
                    progress(report.bytes, total)
                    next_progress += progress_every
        if line_number == 0:
            report.add(path.name, None, None, "segment is empty (truncated)")
    if state.start is not None:
        _check_start(report, state, segments[0][0])
    if progress is not None:
        progress(report.bytes, total)
    report.seconds = time.perf_counter() - started
    return report


def _check_line(
    report: Report, state: _Chain, chain: Chain, segment: str, line_number: int, line: bytes
) -> None:
    if not line.endswith(b"\n"):
        report.add(segment, line_number, None, "segment ends in a partial record (truncated)")
        return
    sealed = split_sealed(line)
    if sealed is None:
        report.add(segment, line_number, None, "not a sealed audit record (edited or inserted)")
        return
    body, stated = sealed
    fields = _fields(body)
    if fields is None:
        report.add(segment, line_number, None, "not a readable audit record (edited or inserted)")
        return
    seq, prev, kind, record = fields
    report.records += 1
    if chain.digest(body) != stated:
        message = "record edited: its hash does not match its content"
        if record is not None and record.get("keyed") is True and not chain.keyed:
            message += " (this log is keyed: set SLUICE_AUDIT_HMAC_KEY)"
        report.add(segment, line_number, seq, message)
    if line_number == 1 and (
        kind != "segment_start" or record is None or record.get("segment") != segment
    ):
        report.add(
            segment,
            line_number,
            seq,
            "segment does not begin with its own segment_start record "
            "(records removed from its start, or the file renamed)",
        )
    elif line_number > 1 and kind == "segment_start":
        report.add(segment, line_number, seq, "segment_start inside a segment (inserted)")
    if state.expected_seq is None:
        report.first_seq = seq
        if not (seq == 1 and prev == GENESIS):
            state.start = (segment, seq, prev)
    elif seq != state.expected_seq:
        if seq > state.expected_seq:
            message = (
                f"seq jumps from {state.expected_seq - 1} to {seq}: "
                "records deleted or reordered before this one"
            )
        else:
            message = (
                f"seq {seq} where {state.expected_seq} was expected: "
                "record reordered, duplicated or inserted"
            )
        report.add(segment, line_number, seq, message)
    elif prev != state.prev:
        report.add(
            segment,
            line_number,
            seq,
            "chain broken: prev is not the hash of the record before (inserted, reordered "
            "or the record before was replaced)",
        )
    state.expected_seq = seq + 1
    state.prev = stated
    report.last_seq = seq
    report.last_hash = stated
    if kind == "retention" and record is not None:
        for gone in record.get("deleted") or []:
            if isinstance(gone, dict):
                state.retired[str(gone.get("segment"))] = (
                    int(gone.get("last_seq") or 0),
                    str(gone.get("last_hash")),
                )


_SEQ, _PREV = b'"seq":', b'"prev":"'
_BOOKKEEPING = (b'"kind":"segment_start"', b'"kind":"retention"')


def _fields(body: bytes) -> tuple[int, str, str, dict[str, Any] | None] | None:
    """(seq, prev, kind, the parsed record for bookkeeping kinds) of a canonical record.

    Request and response records are read by finding their top-level keys in the bytes: a
    string value cannot hold an unescaped quote, so `"seq":` can only be a key, and when it
    occurs exactly once it is the top-level one. Chain bookkeeping records (segment starts,
    retention) and anything less clear-cut are parsed whole."""
    try:
        if (
            body.count(_SEQ) == 1
            and body.count(_PREV) == 1
            and _BOOKKEEPING[0] not in body
            and _BOOKKEEPING[1] not in body
        ):
            at = body.index(_SEQ) + len(_SEQ)
            end = at
            while body[end : end + 1].isdigit():
                end += 1
            seq = int(body[at:end])
            at = body.index(_PREV) + len(_PREV)
            return seq, body[at : at + 64].decode("ascii"), "record", None
        record = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        return None
    return record["seq"], str(record.get("prev")), str(record.get("kind")), record


def _check_start(report: Report, state: _Chain, first_number: int) -> None:
    """A chain that does not start at seq 1 from the genesis hash must continue from the
    last record of a segment a retention record says it deleted."""
    assert state.start is not None
    segment, seq, prev = state.start
    before = segment_name(first_number - 1) if first_number > 1 else None
    retired = state.retired.get(before) if before is not None else None
    if retired is not None and retired == (seq - 1, prev):
        return
    missing = before or "the records before it"
    report.add(
        segment,
        1,
        seq,
        f"chain starts at seq {seq} without a retention record for {missing}: segment missing",
    )
