"""Checks an audit directory: every record's hash, the chain from record to record and from
segment to segment, and that no segment is missing or cut short.

Each problem names the segment file, the line and the record's seq. Segments deleted by
retention are accepted only when a retention record in the chain names them and the hash the
chain continues from.

The chain alone cannot show that records were cut off its end (the last segment deleted, or
its last lines): anchors can. An anchor is a (seq, hash) pair kept outside the log, such as the
`audit_head` events the gateway logs, or an earlier run's "last seq, hash"; each must still be
in the log with that hash, unless retention deleted it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
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
    anchors_checked: int = 0  # found in the log with their hash
    anchors_retired: int = 0  # older than the first record retention kept

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
    anchors: Mapping[int, str] = field(default_factory=dict)  # seq -> hash, from outside
    anchored: set[int] = field(default_factory=set)  # anchors seen in the log


def verify(
    directory: Path,
    key: bytes | None,
    *,
    progress: ProgressCallback | None = None,
    progress_every: int = 64 * 1024 * 1024,
    anchors: Mapping[int, str] | None = None,
) -> Report:
    """Checks `directory`; `anchors` (seq -> hash) are records known from outside the log."""
    started = time.perf_counter()
    report = Report(directory)
    chain = Chain(key)
    segments = list_segments(directory)
    if not segments:
        report.add(str(directory), None, None, "no audit segments here")
        return report
    total = sum(path.stat().st_size for _, path in segments)
    state = _Chain(anchors=anchors or {})
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
    start_ok = state.start is None or _check_start(report, state, segments[0][0])
    _check_anchors(report, state, segments[-1][1].name, start_ok)
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
    if seq in state.anchors:
        state.anchored.add(seq)
        if state.anchors[seq] == stated:
            report.anchors_checked += 1
        else:
            report.add(
                segment,
                line_number,
                seq,
                f"record differs from its anchor (anchored hash {state.anchors[seq][:16]}…): "
                "edited and re-chained, or the log replaced",
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


def _check_anchors(report: Report, state: _Chain, last_segment: str, start_ok: bool) -> None:
    """Every anchor not met in the log: cut off its end, missing from its middle, or deleted
    by retention (accepted only when the chain's start checked out)."""
    first, last = report.first_seq, report.last_seq
    for seq in sorted(set(state.anchors) - state.anchored):
        if first is not None and seq < first and start_ok:
            report.anchors_retired += 1
        elif last is None or seq > last:
            report.add(
                last_segment,
                None,
                seq,
                f"the log ends at seq {last}, before anchored seq {seq}: records cut off its "
                "end, or its last segments deleted",
            )
        else:
            report.add(str(report.directory), None, seq, f"anchored seq {seq} is not in the log")


def _check_start(report: Report, state: _Chain, first_number: int) -> bool:
    """A chain that does not start at seq 1 from the genesis hash must continue from the
    last record of a segment a retention record says it deleted. Whether it does."""
    assert state.start is not None
    segment, seq, prev = state.start
    before = segment_name(first_number - 1) if first_number > 1 else None
    retired = state.retired.get(before) if before is not None else None
    if retired is not None and retired == (seq - 1, prev):
        return True
    missing = before or "the records before it"
    report.add(
        segment,
        1,
        seq,
        f"chain starts at seq {seq} without a retention record for {missing}: segment missing",
    )
    return False


_HEX = frozenset("0123456789abcdef")


def parse_anchor(text: str) -> tuple[int, str]:
    """`SEQ:HASH`, as `verify` prints the last record and the gateway logs `audit_head`."""
    seq, _, digest = text.strip().partition(":")
    digest = digest.strip().lower()
    if not seq.strip().isdigit() or len(digest) != 64 or not set(digest) <= _HEX:
        raise ValueError(f"not an anchor (SEQ:HASH, a 64-hex hash): {text.strip()[:80]!r}")
    return int(seq), digest


def read_anchors(lines: list[str]) -> dict[int, str]:
    """Anchors from `SEQ:HASH` lines, or JSON log lines with `seq` and `hash` (the gateway's
    `audit_head` events as a log store exports them); other JSON lines are skipped."""
    anchors: dict[int, str] = {}
    for line in lines:
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                raise ValueError(f"not a JSON line: {line.strip()[:80]!r}") from None
            seq, digest = event.get("seq"), event.get("hash")
            if not isinstance(seq, int) or not isinstance(digest, str):
                continue
            line = f"{seq}:{digest}"
        seq_number, digest = parse_anchor(line)
        if anchors.get(seq_number, digest) != digest:
            raise ValueError(f"two different hashes anchored for seq {seq_number}")
        anchors[seq_number] = digest
    return anchors
