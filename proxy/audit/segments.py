"""Segment files on disk: their names, and reading a segment's first and last records cheaply.

Shared by the writer (recovery, retention) and by `verify`, `search` and `export`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import orjson

SEGMENT = re.compile(r"^audit-(\d{6,})\.jsonl$")
_BLOCK = 64 * 1024


def segment_name(number: int) -> str:
    return f"audit-{number:06d}.jsonl"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segment files in `directory`, oldest first, with their numbers."""
    found: list[tuple[int, Path]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            match = SEGMENT.match(entry.name)
            if match is not None:
                found.append((int(match.group(1)), Path(entry.path)))
    found.sort()
    return found


def first_record(path: Path) -> dict[str, Any] | None:
    """The first record of a segment, or None when it has no complete first line."""
    with path.open("rb") as file:
        line = file.readline()
    if not line.endswith(b"\n"):
        return None
    return parse_record(line)


def complete_size(fd: int, size: int) -> int:
    """The length of the file up to and including its last newline (0 when it has none)."""
    end = size
    while end > 0:
        start = max(0, end - _BLOCK)
        block = os.pread(fd, end - start, start)
        at = block.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def last_record(path: Path) -> dict[str, Any] | None:
    """The last complete record of a segment (a torn tail after it is ignored)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        end = complete_size(fd, size)
        if end == 0:
            return None
        start = complete_size(fd, end - 1)
        return parse_record(os.pread(fd, end - start, start))
    finally:
        os.close(fd)


def parse_record(line: bytes) -> dict[str, Any] | None:
    """One line of a segment as a record; None when it is not a JSON object (cut, edited).

    orjson first (several times faster: the dashboard parses every record); the standard
    library for what orjson refuses but the writer's fallback can produce (an escaped lone
    surrogate) or an editor could (NaN, integers past 64 bits)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(line)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None
