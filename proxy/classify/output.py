"""Scans the model's answers: the findings in them go on the context for the audit (entity
types and counts, never values), and with `output.action: mask` a whole answer reaches the
client with typed placeholders instead of the values.

Streamed answers are collected as they pass (nothing is held back) and scanned once they end,
so the stream is never slowed; their findings are recorded, not masked.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from proxy.classify.decision import level_of
from proxy.classify.extract import Path, extract_texts, rewrite_texts
from proxy.classify.findings import Finding
from proxy.classify.masking import Masker
from proxy.context import RequestContext, WireFormat

if TYPE_CHECKING:
    from proxy.policy.model import Classification
    from proxy.upstream.sse import SSEEvent

Detect = Callable[[list[str]], Awaitable[list[tuple[Finding, ...]]]]


class OutputScanner:
    """The answer side of the `classify` filter, for one request under its pinned policy."""

    def __init__(self, detect: Detect, policy: Classification) -> None:
        self._detect = detect
        self._policy = policy

    @property
    def masks(self) -> bool:
        return self._policy.output.action == "mask"

    def _kept(self, found: Iterable[Finding]) -> list[Finding]:
        policy = self._policy
        return [
            f
            for f in found
            if f.score >= policy.min_score and level_of(f.entity, policy) is not None
        ]

    async def scan_body(self, ctx: RequestContext, data: bytes) -> bytes:
        """Records what a whole JSON answer contains; returns it, masked if policy says so.
        Raises `ClassifierUnavailable` when the answer could not be checked."""
        if ctx.wire is WireFormat.OPENAI_EMBEDDINGS:
            return data  # vectors, no text
        try:
            body = json.loads(data)
        except ValueError:
            return data
        extracted = extract_texts(body)
        per_slot = await self._detect([slot.text for slot in extracted.slots])
        kept: dict[Path, list[Finding]] = {}
        for slot, found in zip(extracted.slots, per_slot, strict=True):
            findings = self._kept(found)
            if findings:
                kept[slot.path] = findings
        ctx.output_findings = dict(Counter(f.entity for fs in kept.values() for f in fs))
        if not kept or not self.masks:
            return data
        masker = Masker()
        masked = rewrite_texts(
            body, extracted.slots, lambda slot: masker.mask(slot.text, kept.get(slot.path, []))
        )
        return json.dumps(masked, ensure_ascii=False).encode()

    async def scan_text(self, ctx: RequestContext, text: str) -> None:
        """Records what a streamed answer, collected by `StreamText`, contains."""
        found = (await self._detect([text]))[0] if text else ()
        ctx.output_findings = dict(Counter(f.entity for f in self._kept(found)))


class StreamText:
    """Collects the text of a streamed answer from its events (content, tool call arguments),
    in every wire format, without changing them."""

    def __init__(self, wire: WireFormat) -> None:
        self._wire = wire
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, events: Iterable[SSEEvent]) -> None:
        for event in events:
            if not event.data or event.data == b"[DONE]":
                continue
            try:
                body = json.loads(event.data)
            except ValueError:
                continue
            if isinstance(body, dict):
                self._parts += self._texts(body)

    def _texts(self, body: dict[str, Any]) -> list[str]:
        if self._wire is WireFormat.OPENAI_CHAT:
            parts = []
            for choice in body.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if not isinstance(delta, dict):
                    continue
                parts.append(delta.get("content"))
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict):
                        parts.append(function.get("arguments"))
            return [p for p in parts if isinstance(p, str)]
        if self._wire is WireFormat.ANTHROPIC_MESSAGES:
            delta = body.get("delta")
            if body.get("type") != "content_block_delta" or not isinstance(delta, dict):
                return []
            parts = [delta.get("text"), delta.get("partial_json"), delta.get("thinking")]
            return [p for p in parts if isinstance(p, str)]
        if self._wire is WireFormat.OPENAI_RESPONSES:
            kind = body.get("type")
            delta = body.get("delta")
            if isinstance(kind, str) and kind.endswith(".delta") and isinstance(delta, str):
                return [delta]
        return []
