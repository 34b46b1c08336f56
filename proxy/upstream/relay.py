"""Relays the provider's answer to the client: whole JSON bodies, or SSE event by event.

Records usage and timings on the context, and ends a stream that fails midway with a
well-formed error event in the client's wire format. When the route translates, answers,
streams and errors are rewritten into the client's wire format before anything else reads them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from proxy.classify.output import StreamText
from proxy.classify.pool import ClassifierUnavailable
from proxy.classify.restore import StreamRestorer, restore_body
from proxy.context import RequestContext, WireFormat
from proxy.errors import ErrorKind, WireFamily, error_body, kind_for_status, stream_error_event
from proxy.upstream.base import Upstream, UpstreamError
from proxy.upstream.sse import SSEEvent, SSEParser, json_object
from proxy.upstream.translate import (
    stream_translator,
    translate_answer,
    translate_error,
)
from proxy.upstream.translate.answers import BadAnswer
from proxy.wire import client_wants_usage

log = structlog.get_logger("sluice.upstream")

# Response headers worth passing on: SDK retry logic reads retry-after.
_PASSED_HEADERS = ("retry-after",)
_UPSTREAM_ID_HEADERS = ("x-request-id", "request-id")

# Usage field names per wire format: (prompt tokens, completion tokens).
_USAGE_FIELDS = {
    WireFormat.OPENAI_CHAT: ("prompt_tokens", "completion_tokens"),
    WireFormat.OPENAI_EMBEDDINGS: ("prompt_tokens", "completion_tokens"),
    WireFormat.OPENAI_RESPONSES: ("input_tokens", "output_tokens"),
    WireFormat.ANTHROPIC_MESSAGES: ("input_tokens", "output_tokens"),
}


_DECODER = json.JSONDecoder()


class ClientGone(Exception):
    """The client closed its connection while the answer was being written."""


async def relay(
    request: web.Request,
    ctx: RequestContext,
    upstream: Upstream,
    payload: bytes,
    trace_headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Send `payload` to `upstream` and answer the client with what comes back.
    `trace_headers` (`traceparent`) go to the provider as they are."""
    sent = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + upstream.config.timeouts.total
    assert ctx.route is not None, "the route filter runs before egress"
    response = await upstream.send(
        ctx.route.wire_for(ctx.wire), payload, ctx.headers, trace_headers
    )
    try:
        ctx.upstream_ttfb_ms = (time.perf_counter() - sent) * 1000
        streaming = ctx.stream and response.status < 400 and _is_event_stream(response)
        if streaming:
            return await _relay_stream(request, ctx, upstream, response, sent, deadline)
        return await _relay_whole(ctx, upstream, response, deadline)
    finally:
        # Closing a response that was not read to the end drops its connection, which is how
        # the provider learns that the client went away.
        response.close()
        ctx.upstream_ms = (time.perf_counter() - sent) * 1000


def _is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return response.content_type == "text/event-stream"


def _answer_headers(ctx: RequestContext, response: aiohttp.ClientResponse) -> dict[str, str]:
    headers = {"x-request-id": ctx.request_id, **ctx.answer_headers}
    for name in _PASSED_HEADERS:
        value = response.headers.get(name)
        if value is not None:
            headers[name] = value
    for name in _UPSTREAM_ID_HEADERS:
        value = response.headers.get(name)
        if value is not None:
            headers["x-sluice-upstream-request-id"] = value
            break
    return headers


async def _relay_whole(
    ctx: RequestContext, upstream: Upstream, response: aiohttp.ClientResponse, deadline: float
) -> web.Response:
    try:
        async with asyncio.timeout_at(deadline):
            data = await response.read()
    except TimeoutError:
        raise UpstreamError(
            ErrorKind.UPSTREAM_TIMEOUT,
            f"Provider {upstream.name!r} did not finish within "
            f"{upstream.config.timeouts.total:g} s.",
        ) from None
    except aiohttp.ClientError:
        upstream.answer_broke(response)
        raise UpstreamError(
            ErrorKind.UPSTREAM_UNREACHABLE,
            f"The connection to provider {upstream.name!r} broke before the answer was complete.",
        ) from None
    headers = _answer_headers(ctx, response)
    status = response.status
    translating = _translates(ctx)
    if translating and status < 400:
        data = _translate_whole(ctx, upstream, data)
    if status < 400:
        usage = _tail_usage(data)
        if usage is not None:
            _record_usage(ctx, usage)
        if ctx.masker is not None:
            data = restore_body(data, ctx.masker)
        if ctx.output_scanner is not None:
            try:
                data = await ctx.output_scanner.scan_body(ctx, data)
            except ClassifierUnavailable:
                log.error("output_scan_failed", request_id=ctx.request_id)
                if ctx.output_scanner.masks:  # the answer may not go out unmasked: fail closed
                    raise UpstreamError(
                        ErrorKind.UNAVAILABLE,
                        "The answer could not be checked for sensitive data; it was withheld.",
                        fall_back=False,
                    ) from None
        ctx.answer_body = data  # the audit record reads its text after the answer is sent
        content_type = "application/json" if translating else response.headers.get("Content-Type")
        headers["Content-Type"] = content_type or "application/json"
        return web.Response(status=status, body=data, headers=headers)
    headers["Content-Type"] = "application/json"
    return web.Response(
        status=status, body=_upstream_error(ctx, upstream, status, data), headers=headers
    )


def _upstream_error(ctx: RequestContext, upstream: Upstream, status: int, data: bytes) -> bytes:
    """The provider's error body when it is well-formed; otherwise one of our own, same status."""
    family = ctx.wire.family
    log.warning("upstream_error", request_id=ctx.request_id, provider=upstream.name, status=status)
    if status in (401, 403):
        # The provider rejected the gateway's own key. Its message can quote part of that key,
        # and the caller can do nothing about it: say what happened without the details.
        message = f"Provider {upstream.name!r} rejected the gateway's credentials."
        return json.dumps(error_body(family, kind_for_status(status), message)).encode()
    if _translates(ctx):
        return json.dumps(translate_error(ctx.wire, status, data)).encode()
    if _is_provider_error(family, data):
        return data
    message = f"Provider {upstream.name!r} answered with HTTP {status}."
    return json.dumps(error_body(family, kind_for_status(status), message)).encode()


def _translate_whole(ctx: RequestContext, upstream: Upstream, data: bytes) -> bytes:
    """A successful answer in the provider's wire format, rewritten in the client's."""
    assert ctx.route is not None and ctx.route.upstream_wire is not None
    try:
        answer = json.loads(data)
        if not isinstance(answer, dict):
            raise BadAnswer("the answer is not a JSON object")
        translated = translate_answer(ctx.wire, ctx.route.upstream_wire, answer, ctx.body)
    except (ValueError, BadAnswer):
        raise UpstreamError(
            ErrorKind.UPSTREAM_UNREACHABLE,
            f"Provider {upstream.name!r} gave an answer that could not be translated to "
            f"{ctx.wire.path}.",
        ) from None
    return json.dumps(translated, ensure_ascii=False, separators=(",", ":")).encode()


def _is_provider_error(family: WireFamily, data: bytes) -> bool:
    try:
        body = json.loads(data)
    except ValueError:
        return False
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return False
    return family is WireFamily.OPENAI or body.get("type") == "error"


def _tail_usage(data: bytes) -> dict[str, Any] | None:
    """The top-level `usage` object of a JSON answer, found without parsing the whole body.

    Providers put `usage` last, and embeddings answers can be megabytes of floats.
    """
    at = data.rfind(b'"usage"')
    if at < 0:
        return None
    colon = data.find(b":", at + 7)
    try:
        text = data[colon + 1 :].decode()
        value, _ = _DECODER.raw_decode(text.lstrip())
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _record_usage(ctx: RequestContext, usage: dict[str, Any]) -> None:
    prompt_field, completion_field = _USAGE_FIELDS[ctx.wire]
    prompt, completion = usage.get(prompt_field), usage.get(completion_field)
    ctx.usage.record(
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


async def _relay_stream(
    request: web.Request,
    ctx: RequestContext,
    upstream: Upstream,
    response: aiohttp.ClientResponse,
    sent: float,
    deadline: float,
) -> web.StreamResponse:
    answer = web.StreamResponse(status=response.status, headers=_answer_headers(ctx, response))
    translator = None
    if _translates(ctx):
        translator = stream_translator(ctx.wire, ctx.body)
        answer.headers["Content-Type"] = "text/event-stream; charset=utf-8"
    else:
        answer.headers["Content-Type"] = response.headers.get("Content-Type", "text/event-stream")
    answer.headers["Cache-Control"] = "no-cache"
    await answer.prepare(request)
    watcher = StreamWatcher(ctx)
    parser = SSEParser()
    restorer = StreamRestorer(ctx.wire, ctx.masker) if ctx.masker is not None else None
    collected = StreamText(ctx.wire) if ctx.output_scanner is not None else None
    failure: tuple[ErrorKind, str] | None = None
    first = True
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk in response.content.iter_any():
                if first:
                    ctx.upstream_ttfb_ms = (time.perf_counter() - sent) * 1000
                    first = False
                events = parser.feed(chunk)
                if translator is not None:
                    events = translator.feed(events)
                await _pass_on(answer, events, restorer, watcher, ctx.answer_events, collected)
            if translator is not None:
                events = translator.end()
                await _pass_on(answer, events, restorer, watcher, ctx.answer_events, collected)
        if not watcher.finished:
            upstream.answer_broke(response)
            failure = (
                ErrorKind.UPSTREAM_UNREACHABLE,
                f"Provider {upstream.name!r} ended the stream before it was complete.",
            )
    except ClientGone:
        ctx.status = 499
        return answer
    except TimeoutError:
        failure = (
            ErrorKind.UPSTREAM_TIMEOUT,
            f"Provider {upstream.name!r} did not finish within "
            f"{upstream.config.timeouts.total:g} s.",
        )
    except aiohttp.ClientError:
        upstream.answer_broke(response)
        failure = (
            ErrorKind.UPSTREAM_UNREACHABLE,
            f"The connection to provider {upstream.name!r} broke during the stream.",
        )
    if failure is not None:
        log.warning(
            "upstream_stream_failed",
            request_id=ctx.request_id,
            provider=upstream.name,
            error=failure[0].name,
        )
        ctx.status = failure[0].status
        try:
            await _write(answer, _failure_event(ctx.wire, *failure, watcher.events))
        except ClientGone:
            return answer
    else:
        ctx.status = response.status
    try:
        await answer.write_eof()
    except ConnectionError:
        ctx.status = 499
    if collected is not None and ctx.output_scanner is not None and failure is None:
        try:  # after the client has the whole answer: recorded for the audit, not masked
            await ctx.output_scanner.scan_text(ctx, collected.text)
        except ClassifierUnavailable:
            log.error("output_scan_failed", request_id=ctx.request_id)
    return answer


async def _pass_on(
    answer: web.StreamResponse,
    events: list[SSEEvent],
    restorer: StreamRestorer | None,
    watcher: StreamWatcher,
    keep: list[SSEEvent] | None = None,
    collected: StreamText | None = None,
) -> None:
    """Restore placeholders in the client-format `events`, let the watcher read them (usage,
    the end) and write what it passes on. `keep` collects the events for the audit record,
    which reads their text after the stream has gone out; `collected` gathers the answer's
    text for the output scan."""
    if restorer is not None:
        events = restorer.events(events)
    if collected is not None:
        collected.feed(events)
    out = watcher.relay(events)
    if keep is not None:
        keep.extend(events)
    if out:
        await _write(answer, out)


def _translates(ctx: RequestContext) -> bool:
    return ctx.route is not None and ctx.route.translates(ctx.wire)


def _failure_event(wire: WireFormat, kind: ErrorKind, message: str, sequence: int) -> bytes:
    """The event that ends a broken stream, in the form the client's API uses for errors."""
    if wire is WireFormat.OPENAI_RESPONSES:
        # The Responses API has its own error event, numbered like every other event.
        body = {
            "type": "error",
            "code": kind.value.openai_code,
            "message": message,
            "param": None,
            "sequence_number": sequence,
        }
        return f"event: error\ndata: {json.dumps(body)}\n\n".encode()
    return stream_error_event(wire.family, kind, message)


async def _write(answer: web.StreamResponse, data: bytes) -> None:
    try:
        await answer.write(data)
    except ConnectionError as exc:
        raise ClientGone from exc


class StreamWatcher:
    """Reads usage and the end of the stream from the events going by.

    For OpenAI chat streams it also hides the usage chunk the gateway asked for on the
    client's behalf, so the client sees exactly the stream it asked for.
    """

    __slots__ = ("_ctx", "_hide_usage", "events", "finished")

    def __init__(self, ctx: RequestContext) -> None:
        self._ctx = ctx
        self._hide_usage = ctx.wire is WireFormat.OPENAI_CHAT and not client_wants_usage(ctx)
        self.finished = False
        self.events = 0

    def relay(self, events: list[SSEEvent]) -> bytes:
        """The bytes to pass on for `events`."""
        out = bytearray()
        wire = self._ctx.wire
        self.events += len(events)
        for event in events:
            if wire is WireFormat.OPENAI_CHAT:
                raw = self._chat_event(event)
            elif wire is WireFormat.ANTHROPIC_MESSAGES:
                raw = self._anthropic_event(event)
            else:
                raw = self._responses_event(event)
            if raw:
                out += raw
        return bytes(out)

    def _chat_event(self, event: SSEEvent) -> bytes:
        data = event.data
        if data == b"[DONE]":
            self.finished = True
            return event.raw
        if b'"usage"' not in data or b'"usage":null' in data or b'"usage": null' in data:
            if data.startswith(b'{"error"'):
                self.finished = True
            if self._hide_usage:
                return event.raw.replace(b',"usage":null', b"").replace(b', "usage": null', b"")
            return event.raw
        chunk = json_object(data)
        if chunk is None:
            return event.raw
        if isinstance(chunk.get("usage"), dict):
            _record_usage(self._ctx, chunk["usage"])
            if self._hide_usage and not chunk.get("choices"):
                return b""
        if "error" in chunk:
            self.finished = True
        return event.raw

    def _anthropic_event(self, event: SSEEvent) -> bytes:
        name = event.event
        if name in ("message_stop", "error"):
            self.finished = True
        elif name == "message_start":
            body = json_object(event.data)
            message = body.get("message") if body else None
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                _record_usage(self._ctx, message["usage"])
        elif name == "message_delta":
            body = json_object(event.data)
            if body and isinstance(body.get("usage"), dict):
                _record_usage(self._ctx, body["usage"])
        return event.raw

    def _responses_event(self, event: SSEEvent) -> bytes:
        name = event.event
        if name in ("response.completed", "response.failed", "response.incomplete"):
            self.finished = True
            body = json_object(event.data)
            answer = body.get("response") if body else None
            if isinstance(answer, dict) and isinstance(answer.get("usage"), dict):
                _record_usage(self._ctx, answer["usage"])
        elif name == "error":
            self.finished = True
        return event.raw
