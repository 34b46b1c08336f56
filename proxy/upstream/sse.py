"""Incremental Server-Sent Events parser: bytes in at any split, whole events out.

Events keep their raw bytes so the relay can forward them exactly as the provider sent them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One event: its raw bytes (terminator included), `event:` name and joined `data:`."""

    raw: bytes
    event: str | None
    data: bytes


def json_object(data: bytes) -> dict[str, Any] | None:
    """An event's `data` (or any JSON text) as an object; None when it is not one."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_event(raw: bytes) -> SSEEvent:
    name: str | None = None
    data: list[bytes] = []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = (line[7:] if line[6:7] == b" " else line[6:]).decode("utf-8", "replace")
    return SSEEvent(raw, name, b"\n".join(data))


class SSEParser:
    """Feed it chunks as they arrive; it returns the events completed so far."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated."""
        return self._buffer

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = _event_end(buffer, start)
            if end < 0:
                break
            block = buffer[start:end]
            if block.strip():
                events.append(parse_event(block))
            start = end
        self._buffer = buffer[start:]
        return events


def _event_end(buffer: bytes, start: int) -> int:
    """Index just past the blank line that ends the event starting at `start`, or -1."""
    lf = buffer.find(b"\n\n", start)
    crlf = buffer.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 4
    return lf + 2 if lf >= 0 else -1
