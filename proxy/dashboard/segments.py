"""Reads the audit log's JSONL segments: which exist, what is new since a position, one record.

The dashboard reads the files itself (they are the source of truth) and never writes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.audit import segments as audit_segments
from proxy.audit.segments import SEGMENT, parse_record

_READ_BYTES = 8 * 1024 * 1024  # per read; a tail that far behind catches up over several polls


@dataclass(frozen=True, slots=True)
class Position:
    """Where the next unread byte is: a segment's file name and an offset in it."""

    segment: str
    offset: int


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line of a segment, where it starts and where the next one starts."""

    segment: str
    offset: int
    end: int
    text: bytes


def list_segments(directory: Path) -> list[str]:
    """Segment file names in sequence order (the 6-digit number, not the mtime)."""
    try:
        return [path.name for _number, path in audit_segments.list_segments(directory)]
    except FileNotFoundError:
        return []


def read_lines(directory: Path, start: Position | None) -> Iterator[Line | Position]:
    """Complete lines after `start`, segment by segment.

    A line without its newline at the end of the newest segment is still being written: it is
    left for the next call. The same at the end of an older segment means the segment was cut
    short; that tail is handed over as a line of its own (it will not parse) so the reader
    moves on. After each segment a `Position` says where reading stopped.
    """
    segments = list_segments(directory)
    for index, name in enumerate(segments):
        if start is not None and _seq(name) < _seq(start.segment):
            continue
        offset = start.offset if start is not None and name == start.segment else 0
        newest = index == len(segments) - 1
        try:
            with (directory / name).open("rb") as file:
                file.seek(offset)
                pending = b""
                while data := file.read(_READ_BYTES):
                    *complete, pending = (pending + data).split(b"\n")
                    for text in complete:
                        end = offset + len(text) + 1
                        yield Line(name, offset, end, text)
                        offset = end
                if pending and not newest:
                    end = offset + len(pending)
                    yield Line(name, offset, end, pending)
                    offset = end
        except FileNotFoundError:
            continue  # removed by retention meanwhile
        yield Position(name, offset)


def read_record(directory: Path, segment: str, offset: int) -> dict[str, Any] | None:
    """The record at `offset` of `segment`, or None when it is gone or does not parse."""
    if not SEGMENT.match(segment):
        return None
    try:
        with (directory / segment).open("rb") as file:
            file.seek(offset)
            return parse_record(file.readline())
    except OSError:
        return None


def _seq(name: str) -> int:
    match = SEGMENT.match(name)
    return int(match.group(1)) if match else -1
