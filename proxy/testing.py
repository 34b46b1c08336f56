"""Fake OpenAI, Anthropic and vLLM upstreams for Sluice's tests and benchmarks.

Each is a real aiohttp server on loopback speaking the provider's wire format as its SDK expects.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import enum
import hashlib
import hmac
import json
import re
import struct
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = [
    "Behaviour",
    "FakeAnthropic",
    "FakeOIDCIssuer",
    "FakeOpenAI",
    "FakeUpstream",
    "FakeVLLM",
    "ReceivedRequest",
    "hs256_token",
    "unsigned_token",
]

JSONObject = dict[str, Any]

_EMBEDDING_DIMS = 8


@dataclass
class Behaviour:
    """How a fake answers; tests mutate `fake.behaviour` between requests.

    Each request works on a copy taken when it arrives, so changing the behaviour never
    affects a request already in flight. `delay_s` holds back the response headers and
    `event_delay_s` spaces SSE events. `fail_status` answers every API request with that status
    and a provider-shaped error body, or `fail_body` verbatim. A stream can be aborted at the
    TCP level (`cut_after_events`), end cleanly with an in-stream error event
    (`stream_error_after_events`), or be written in `chunk_size`-byte slices; a stream with no
    more events than the limit completes normally.
    """

    reply_text: str = "Hello from the fake upstream."
    delay_s: float = 0.0
    event_delay_s: float = 0.0
    fail_status: int | None = None
    fail_body: bytes | None = None
    cut_after_events: int | None = None
    chunk_size: int | None = None
    prompt_tokens: int = 11
    completion_tokens: int = 7
    stream_error_after_events: int | None = None
    # Streamed text deltas of this many characters (None: one word each).
    delta_chars: int | None = None
    # Tool calls the reply makes, as (name, arguments): OpenAI answers with `tool_calls` (no
    # text) and finish_reason `tool_calls`; Anthropic with the text, then `tool_use` blocks.
    tool_calls: tuple[tuple[str, JSONObject], ...] = ()
    # The client's stop sequence the reply ended on: vLLM names it in the choice's
    # `stop_reason`, Anthropic in `stop_sequence` (stop_reason `stop_sequence`).
    stopped_by: str | None = None


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the fake saw it, recorded before any delay or failure is applied."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    raw_body: bytes = b""


@dataclass
class _Exchange:
    """Per-request state shared between the dispatcher and an endpoint."""

    behaviour: Behaviour
    body: Any
    # Set when the fake cuts the connection itself, so that is not counted as a disconnect.
    aborted: bool = False


_Endpoint = Callable[[web.Request, _Exchange], Awaitable[web.StreamResponse]]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(obj).encode(), status=status, content_type="application/json")


def _sse_data(obj: Any) -> bytes:
    return f"data: {_dumps(obj)}\n\n".encode()


def _sse_event(name: str, obj: Any) -> bytes:
    return f"event: {name}\ndata: {_dumps(obj)}\n\n".encode()


def _pieces(text: str, size: int | None = None) -> list[str]:
    """Split text into word pieces that keep their leading spaces, so they join back exactly;
    or, with `size`, into pieces of that many characters (to split words across events)."""
    if size:
        return [text[i : i + size] for i in range(0, len(text), size)]
    return re.findall(r" *[^ ]+| +\Z", text)


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _content_type_for(body: bytes) -> str:
    try:
        json.loads(body)
    except ValueError:
        return "text/html" if body.lstrip().startswith(b"<") else "text/plain"
    return "application/json"


def _embedding_keys(value: Any) -> list[str]:
    """One hashable key per embedding input: a string, a token array, or a list of either."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [_dumps(value)]
    if isinstance(value, list):
        return [v if isinstance(v, str) else _dumps(v) for v in value]
    return []


def _embedding_vector(key: str, dims: int) -> list[float]:
    # Multiples of 1/128 survive the float32 round trip exactly, so the float and base64
    # encodings of one input compare equal in tests.
    digest = b""
    seed = key.encode()
    while len(digest) < dims:
        seed = hashlib.sha256(seed).digest()
        digest += seed
    return [(byte - 128) / 128 for byte in digest[:dims]]


def _prom_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _ChunkedWriter:
    """Writes an SSE byte stream either event by event or in fixed-size slices."""

    def __init__(self, resp: web.StreamResponse, chunk_size: int | None) -> None:
        self._resp = resp
        self._chunk_size = chunk_size
        self._pending = bytearray()

    async def send(self, data: bytes) -> None:
        if self._chunk_size is None:
            await self._resp.write(data)
            return
        self._pending += data
        size = max(1, self._chunk_size)
        while len(self._pending) >= size:
            piece = bytes(self._pending[:size])
            del self._pending[:size]
            await self._resp.write(piece)
            # Yield so a reader on the same loop sees each slice separately rather than
            # having the kernel hand it the whole burst at once.
            await asyncio.sleep(0)

    async def flush(self) -> None:
        if self._pending:
            await self._resp.write(bytes(self._pending))
            self._pending.clear()


class FakeUpstream:
    """A loopback HTTP server standing in for an LLM provider; subclass per provider.

    `received` lists every API request, `disconnects` counts handlers cancelled because the
    client went away mid-response, and `disconnected` is set whenever that happens.
    """

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.received: list[ReceivedRequest] = []
        self.url = ""
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self._in_flight = 0
        self._runner: web.AppRunner | None = None
        self._closing = False

    @property
    def in_flight(self) -> int:
        """Requests currently being answered (including those still in their delay)."""
        return self._in_flight

    async def start(self, port: int = 0) -> None:
        """Listen on loopback at `port` (0: a free one)."""
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already running at {self.url}")
        app = web.Application()
        app.add_routes(self._routes())
        # Registered last so it only catches what no real endpoint matched.
        app.add_routes([self._route("*", "/{tail:.*}", self._unknown_route)])
        # A short shutdown timeout keeps close() quick when a test leaves a request hanging.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.25
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        host, port = runner.addresses[0][:2]
        self._runner = runner
        self._closing = False
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Handlers cancelled by the shutdown itself are not client disconnects.
        self._closing = True
        try:
            await runner.cleanup()
        finally:
            self._closing = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.received.clear()
        self.disconnects = 0
        self.disconnected.clear()

    # Provider hooks.

    def _routes(self) -> list[web.RouteDef]:
        return []

    def _error_payload(self, status: int, message: str | None = None) -> JSONObject:
        raise NotImplementedError

    def _stream_error_event(self) -> bytes:
        raise NotImplementedError

    def _missing_field_message(self, name: str) -> str:
        return f"Missing required parameter: '{name}'."

    def _finished(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Called once a request has been answered in full (vLLM counts these)."""

    # Shared machinery.

    def _route(self, method: str, path: str, endpoint: _Endpoint) -> web.RouteDef:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, endpoint)

        return web.route(method, path, handler)

    async def _serve(self, request: web.Request, endpoint: _Endpoint) -> web.StreamResponse:
        self._in_flight += 1
        exchange: _Exchange | None = None
        try:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            exchange = _Exchange(behaviour=copy.copy(self.behaviour), body=body)
            self.received.append(
                ReceivedRequest(
                    method=request.method,
                    path=request.path,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                    raw_body=raw,
                )
            )
            behaviour = exchange.behaviour
            if behaviour.delay_s > 0:
                await asyncio.sleep(behaviour.delay_s)
            if behaviour.fail_status is not None:
                return self._failure(behaviour.fail_status, behaviour.fail_body)
            return await endpoint(request, exchange)
        except asyncio.CancelledError:
            if exchange is None or not exchange.aborted:
                self._note_disconnect()
            raise
        finally:
            self._in_flight -= 1

    def _note_disconnect(self) -> None:
        if self._closing:
            return
        self.disconnects += 1
        self.disconnected.set()

    def _failure(self, status: int, body: bytes | None) -> web.Response:
        if body is not None:
            return web.Response(
                body=body, status=status, headers={"Content-Type": _content_type_for(body)}
            )
        return _json(self._error_payload(status), status)

    def _error(self, status: int, message: str | None = None) -> web.Response:
        return _json(self._error_payload(status, message), status)

    def _require(self, exchange: _Exchange, *names: str) -> web.Response | None:
        """A 400 in the provider's shape if the body is not an object holding `names`."""
        body = exchange.body
        if not isinstance(body, dict):
            return self._error(400, "We could not parse the JSON body of your request.")
        for name in names:
            if name not in body:
                return self._error(400, self._missing_field_message(name))
        return None

    async def _unknown_route(self, request: web.Request, exchange: _Exchange) -> web.Response:
        return self._error(404, f"Invalid URL ({request.method} {request.path})")

    async def _stream(
        self,
        request: web.Request,
        exchange: _Exchange,
        events: list[bytes],
        error_event: bytes,
        usage: tuple[int, int],
    ) -> web.StreamResponse:
        behaviour = exchange.behaviour
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        writer = _ChunkedWriter(resp, behaviour.chunk_size)
        completed = True
        try:
            await resp.prepare(request)
            for index, event in enumerate(events):
                if index and behaviour.event_delay_s > 0:
                    await asyncio.sleep(behaviour.event_delay_s)
                if behaviour.cut_after_events is not None and index >= behaviour.cut_after_events:
                    await writer.flush()
                    await self._abort(request, exchange)
                    return resp
                error_after = behaviour.stream_error_after_events
                if error_after is not None and index >= error_after:
                    await writer.send(error_event)
                    completed = False
                    break
                await writer.send(event)
            await writer.flush()
            await resp.write_eof()
        except ConnectionResetError:
            # The client vanished between our writes; aiohttp may not have cancelled us yet.
            self._note_disconnect()
            return resp
        if completed:
            self._finished(*usage)
        return resp

    async def _abort(self, request: web.Request, exchange: _Exchange) -> None:
        exchange.aborted = True
        transport = request.transport
        if transport is not None:
            transport.abort()
        # aiohttp cancels this handler as soon as it notices the dead connection; waiting for
        # that stops it from trying to finish the response on a closed socket.
        await asyncio.sleep(1)


def _openai_error(status: int) -> tuple[str, str | None, str]:
    """(type, code, message) as OpenAI reports the given status."""
    match status:
        case 400:
            return "invalid_request_error", None, "Invalid request."
        case 401:
            return "invalid_request_error", "invalid_api_key", "Incorrect API key provided."
        case 403:
            return "invalid_request_error", None, "You are not allowed to sample from this model"
        case 404:
            return (
                "invalid_request_error",
                "model_not_found",
                "The model does not exist or you do not have access to it.",
            )
        case 429:
            return "requests", "rate_limit_exceeded", "Rate limit reached for requests."
        case 503:
            return (
                "server_error",
                None,
                "The engine is currently overloaded, please try again later.",
            )
        case _ if status >= 500:
            return (
                "server_error",
                None,
                "The server had an error while processing your request. Sorry about that!",
            )
        case _:
            return "invalid_request_error", None, _phrase(status)


def _anthropic_error(status: int) -> tuple[str, str]:
    """(type, message) as Anthropic reports the given status."""
    match status:
        case 400:
            return "invalid_request_error", "Invalid request."
        case 401:
            return "authentication_error", "invalid x-api-key"
        case 402:
            return "billing_error", "Your credit balance is too low."
        case 403:
            return "permission_error", "Your API key does not have permission to use this."
        case 404:
            return "not_found_error", "Not found."
        case 413:
            return "request_too_large", "Request exceeds the maximum allowed number of bytes."
        case 429:
            return "rate_limit_error", "Number of requests has exceeded your rate limit."
        case 504:
            return "timeout_error", "Request timed out."
        case 529:
            return "overloaded_error", "Overloaded"
        case _ if status >= 500:
            return "api_error", "Internal server error"
        case _:
            return "invalid_request_error", _phrase(status)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class FakeOpenAI(FakeUpstream):
    """The OpenAI API: chat completions, completions, embeddings, responses and models."""

    def _routes(self) -> list[web.RouteDef]:
        return [
            self._route("POST", "/v1/chat/completions", self._chat),
            self._route("POST", "/v1/completions", self._completions),
            self._route("POST", "/v1/embeddings", self._embeddings),
            self._route("POST", "/v1/responses", self._responses),
            self._route("GET", "/v1/models", self._models),
        ]

    def _error_payload(self, status: int, message: str | None = None) -> JSONObject:
        kind, code, default = _openai_error(status)
        return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}

    def _stream_error_event(self) -> bytes:
        return _sse_data(
            {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )

    # Dialect hooks: vLLM's OpenAI-compatible server differs from OpenAI in these details.

    def _envelope_extras(self, stream: bool) -> JSONObject:
        return {"service_tier": "default", "system_fingerprint": "fp_fake"}

    def _message_extras(self) -> JSONObject:
        return {"refusal": None, "annotations": []}

    def _choice_extras(self) -> JSONObject:
        return {}

    def _stop_extras(self, stopped_by: str | None) -> JSONObject:
        return {}

    def _first_delta(self) -> JSONObject:
        return {"role": "assistant", "content": "", "refusal": None}

    def _final_delta(self) -> JSONObject:
        return {}

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> JSONObject:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _usage_null_in_chunks(self) -> bool:
        """OpenAI sends `"usage": null` on every chunk before the usage chunk; vLLM omits it."""
        return True

    def _model_cards(self) -> list[JSONObject]:
        return [
            {"id": model, "object": "model", "created": 1715367049, "owned_by": "system"}
            for model in ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")
        ]

    # Endpoints.

    @staticmethod
    def _include_usage(body: JSONObject) -> bool:
        options = body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))

    async def _chat(self, request: web.Request, exchange: _Exchange) -> web.StreamResponse:
        if (bad := self._require(exchange, "model", "messages")) is not None:
            return bad
        behaviour, body = exchange.behaviour, exchange.body
        prompt, completion = behaviour.prompt_tokens, behaviour.completion_tokens
        head: JSONObject = {
            "id": _new_id("chatcmpl-"),
            "object": "chat.completion.chunk" if body.get("stream") else "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
        }
        calls = [
            (_new_id("call_")[:29], name, _dumps(arguments))
            for name, arguments in behaviour.tool_calls
        ]
        finish_reason = "tool_calls" if calls else "stop"
        if not body.get("stream"):
            self._finished(prompt, completion)
            message = {
                "role": "assistant",
                "content": None if calls else behaviour.reply_text,
                **self._message_extras(),
            }
            if calls:
                message["tool_calls"] = [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                    for i, n, a in calls
                ]
            choice = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason,
                **self._choice_extras(),
                **self._stop_extras(behaviour.stopped_by),
            }
            return _json(
                {
                    **head,
                    "choices": [choice],
                    "usage": self._usage(prompt, completion),
                    **self._envelope_extras(stream=False),
                }
            )

        include_usage = self._include_usage(body)
        head.update(self._envelope_extras(stream=True))
        if include_usage and self._usage_null_in_chunks():
            head["usage"] = None

        def chunk(delta: JSONObject, finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if finish is not None:
                choice.update(self._choice_extras())
                choice.update(self._stop_extras(behaviour.stopped_by))
            return _sse_data({**head, "choices": [choice]})

        events = [chunk(self._first_delta())]
        if not calls:
            events += [
                chunk({"content": piece})
                for piece in _pieces(behaviour.reply_text, behaviour.delta_chars)
            ]
        for number, (call_id, name, arguments) in enumerate(calls):
            function = {"name": name, "arguments": ""}
            start = {"index": number, "id": call_id, "type": "function", "function": function}
            events.append(chunk({"tool_calls": [start]}))
            events += [
                chunk({"tool_calls": [{"index": number, "function": {"arguments": piece}}]})
                for piece in _pieces(arguments, behaviour.delta_chars or 8)
            ]
        events.append(chunk(self._final_delta(), finish_reason))
        if include_usage:
            events.append(
                _sse_data({**head, "choices": [], "usage": self._usage(prompt, completion)})
            )
        events.append(b"data: [DONE]\n\n")
        return await self._stream(
            request, exchange, events, self._stream_error_event(), (prompt, completion)
        )

    async def _completions(self, request: web.Request, exchange: _Exchange) -> web.StreamResponse:
        if (bad := self._require(exchange, "model", "prompt")) is not None:
            return bad
        behaviour, body = exchange.behaviour, exchange.body
        prompt, completion = behaviour.prompt_tokens, behaviour.completion_tokens
        head: JSONObject = {
            "id": _new_id("cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": body["model"],
        }

        def choice(text: str, finish: str | None) -> JSONObject:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

        if not body.get("stream"):
            self._finished(prompt, completion)
            return _json(
                {
                    **head,
                    "choices": [choice(behaviour.reply_text, "stop")],
                    "usage": self._usage(prompt, completion),
                }
            )
        include_usage = self._include_usage(body)
        if include_usage and self._usage_null_in_chunks():
            head["usage"] = None
        events = [
            _sse_data({**head, "choices": [choice(piece, None)]})
            for piece in _pieces(behaviour.reply_text, behaviour.delta_chars)
        ]
        events.append(_sse_data({**head, "choices": [choice("", "stop")]}))
        if include_usage:
            events.append(
                _sse_data({**head, "choices": [], "usage": self._usage(prompt, completion)})
            )
        events.append(b"data: [DONE]\n\n")
        return await self._stream(
            request, exchange, events, self._stream_error_event(), (prompt, completion)
        )

    async def _embeddings(self, request: web.Request, exchange: _Exchange) -> web.StreamResponse:
        if (bad := self._require(exchange, "model", "input")) is not None:
            return bad
        behaviour, body = exchange.behaviour, exchange.body
        keys = _embedding_keys(body["input"])
        if not keys:
            return self._error(400, "'$.input' is invalid.")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return self._error(400, f"Invalid encoding_format: {encoding!r}.")
        dims = body.get("dimensions")
        if not isinstance(dims, int) or dims <= 0:
            dims = _EMBEDDING_DIMS
        data = []
        for index, key in enumerate(keys):
            vector = _embedding_vector(key, dims)
            embedding: Any = vector
            if encoding == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        self._finished(behaviour.prompt_tokens, 0)
        return _json(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {
                    "prompt_tokens": behaviour.prompt_tokens,
                    "total_tokens": behaviour.prompt_tokens,
                },
            }
        )

    async def _responses(self, request: web.Request, exchange: _Exchange) -> web.StreamResponse:
        if (bad := self._require(exchange, "model")) is not None:
            return bad
        behaviour, body = exchange.behaviour, exchange.body
        prompt, completion = behaviour.prompt_tokens, behaviour.completion_tokens
        text = behaviour.reply_text
        created = int(time.time())
        response_id = _new_id("resp_")
        message_id = _new_id("msg_")

        def response(status: str, output: list[JSONObject], usage: JSONObject | None) -> JSONObject:
            return {
                "id": response_id,
                "object": "response",
                "created_at": created,
                "status": status,
                "background": False,
                "completed_at": int(time.time()) if status == "completed" else None,
                "error": None,
                "incomplete_details": None,
                "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"),
                "max_tool_calls": body.get("max_tool_calls"),
                "model": body["model"],
                "output": output,
                "parallel_tool_calls": body.get("parallel_tool_calls", True),
                "previous_response_id": body.get("previous_response_id"),
                "reasoning": {"effort": None, "summary": None},
                "service_tier": "default",
                "store": body.get("store", True),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": {"type": "text"}, "verbosity": "medium"},
                "tool_choice": body.get("tool_choice", "auto"),
                "tools": body.get("tools", []),
                "top_logprobs": 0,
                "top_p": body.get("top_p", 1.0),
                "truncation": "disabled",
                "usage": usage,
                "user": None,
                "metadata": body.get("metadata") or {},
            }

        def part(content: str) -> JSONObject:
            return {"type": "output_text", "annotations": [], "logprobs": [], "text": content}

        def message(status: str, content: list[JSONObject]) -> JSONObject:
            return {
                "id": message_id,
                "type": "message",
                "status": status,
                "content": content,
                "role": "assistant",
            }

        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }
        done_message = message("completed", [part(text)])
        if not body.get("stream"):
            self._finished(prompt, completion)
            return _json(response("completed", [done_message], usage))

        events: list[bytes] = []

        def emit(kind: str, **fields: Any) -> None:
            payload = {"type": kind, "sequence_number": len(events), **fields}
            events.append(_sse_event(kind, payload))

        where = {"item_id": message_id, "output_index": 0, "content_index": 0}
        emit("response.created", response=response("in_progress", [], None))
        emit("response.in_progress", response=response("in_progress", [], None))
        emit("response.output_item.added", output_index=0, item=message("in_progress", []))
        emit("response.content_part.added", **where, part=part(""))
        for piece in _pieces(text, behaviour.delta_chars):
            emit("response.output_text.delta", **where, delta=piece, logprobs=[])
        emit("response.output_text.done", **where, text=text, logprobs=[])
        emit("response.content_part.done", **where, part=part(text))
        emit("response.output_item.done", output_index=0, item=done_message)
        emit("response.completed", response=response("completed", [done_message], usage))

        # The Responses API reports in-stream failures with its own `error` event type.
        error_at = exchange.behaviour.stream_error_after_events or 0
        error_event = _sse_event(
            "error",
            {
                "type": "error",
                "code": "server_error",
                "message": "The server had an error while processing your request.",
                "param": None,
                "sequence_number": min(error_at, len(events)),
            },
        )
        return await self._stream(request, exchange, events, error_event, (prompt, completion))

    async def _models(self, request: web.Request, exchange: _Exchange) -> web.StreamResponse:
        return _json({"object": "list", "data": self._model_cards()})


class FakeAnthropic(FakeUpstream):
    """The Anthropic Messages API (`POST /v1/messages`), streaming and not."""

    def _routes(self) -> list[web.RouteDef]:
        return [self._route("POST", "/v1/messages", self._messages)]

    def _error_payload(self, status: int, message: str | None = None) -> JSONObject:
        kind, default = _anthropic_error(status)
        return {
            "type": "error",
            "error": {"type": kind, "message": message or default},
            "request_id": _new_id("req_"),
        }

    def _stream_error_event(self) -> bytes:
        return _sse_event(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )

    def _missing_field_message(self, name: str) -> str:
        return f"{name}: Field required"

    async def _unknown_route(self, request: web.Request, exchange: _Exchange) -> web.Response:
        return self._error(404, "Not Found")

    async def _messages(self, request: web.Request, exchange: _Exchange) -> web.StreamResponse:
        if (bad := self._require(exchange, "model", "messages")) is not None:
            return bad
        behaviour, body = exchange.behaviour, exchange.body
        prompt, completion = behaviour.prompt_tokens, behaviour.completion_tokens

        def message(content: list[JSONObject], stop: str | None, output: int) -> JSONObject:
            return {
                "id": _new_id("msg_"),
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": prompt,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": output,
                    "service_tier": "standard",
                },
            }

        calls = [
            (_new_id("toolu_")[:30], name, arguments) for name, arguments in behaviour.tool_calls
        ]
        stop_reason = "tool_use" if calls else "end_turn"
        if behaviour.stopped_by is not None:
            stop_reason = "stop_sequence"
        if not body.get("stream"):
            self._finished(prompt, completion)
            blocks: list[JSONObject] = [{"type": "text", "text": behaviour.reply_text}]
            blocks += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in calls]
            answer = message(blocks, stop_reason, completion)
            answer["stop_sequence"] = behaviour.stopped_by
            return _json(answer)

        def event(name: str, **fields: Any) -> bytes:
            return _sse_event(name, {"type": name, **fields})

        events = [
            event("message_start", message=message([], None, 1)),
            event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
            event("ping"),
        ]
        events += [
            event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
            for piece in _pieces(behaviour.reply_text, behaviour.delta_chars)
        ]
        events.append(event("content_block_stop", index=0))
        for number, (call_id, name, arguments) in enumerate(calls, start=1):
            block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
            events.append(event("content_block_start", index=number, content_block=block))
            events += [
                event(
                    "content_block_delta",
                    index=number,
                    delta={"type": "input_json_delta", "partial_json": piece},
                )
                for piece in _pieces(_dumps(arguments), behaviour.delta_chars or 8)
            ]
            events.append(event("content_block_stop", index=number))
        events += [
            event(
                "message_delta",
                delta={"stop_reason": stop_reason, "stop_sequence": behaviour.stopped_by},
                usage={"output_tokens": completion},
            ),
            event("message_stop"),
        ]
        return await self._stream(
            request, exchange, events, self._stream_error_event(), (prompt, completion)
        )


class FakeVLLM(FakeOpenAI):
    """vLLM's OpenAI-compatible server (`vllm serve`), with its /health and /metrics probes.

    Probe requests are not recorded in `received` and ignore `delay_s`; `/health` answers 503
    while `behaviour.fail_status` is set, unless `health_status` says otherwise. `/metrics`
    reports the requests really in flight: up to `max_num_seqs` as running, the rest (plus
    `extra_waiting`) as waiting. `stop()` kills the server as a crash would (connections in
    flight are cut, new ones refused) and `restart()` brings it back on the same port.
    """

    def __init__(
        self,
        served_model: str = "meta-llama/Llama-3.3-70B-Instruct",
        max_model_len: int = 131072,
        max_num_seqs: int = 256,
    ) -> None:
        super().__init__()
        self.served_model = served_model
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.port = 0
        self.health_status: int | None = None  # overrides what /health answers
        self.extra_waiting = 0
        self.kv_cache_usage = 0.0
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        self._request_success_total = 0

    def reset(self) -> None:
        super().reset()
        self.health_status = None
        self.extra_waiting = 0
        self.kv_cache_usage = 0.0
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        self._request_success_total = 0

    async def start(self, port: int = 0) -> None:
        await super().start(port or self.port)
        self.port = int(self.url.rsplit(":", 1)[1])

    async def stop(self) -> None:
        """Die: refuse new connections and cut the ones in flight, without a graceful wait."""
        runner = self._runner
        if runner is None:
            return
        server = runner.server
        if server is not None:
            for handler in list(server.connections):
                if handler.transport is not None:
                    handler.transport.abort()
        await self.close()

    async def restart(self) -> None:
        """Come back on the same port, as a restarted `vllm serve` would."""
        await self.start(self.port)

    @property
    def running(self) -> bool:
        return self._runner is not None

    def _routes(self) -> list[web.RouteDef]:
        return [
            *super()._routes(),
            web.get("/health", self._health),
            web.get("/metrics", self._metrics),
        ]

    def _error_payload(self, status: int, message: str | None = None) -> JSONObject:
        # vLLM names the error type after the HTTP status and puts the status in `code`.
        phrase = _phrase(status).replace(" ", "").replace("-", "")
        kind = phrase if phrase.endswith("Error") else phrase + "Error"
        return {
            "error": {
                "message": message or _phrase(status),
                "type": kind,
                "param": None,
                "code": status,
            }
        }

    def _stream_error_event(self) -> bytes:
        return _sse_data(
            {
                "error": {
                    "message": "Internal server error",
                    "type": "InternalServerError",
                    "param": None,
                    "code": 500,
                }
            }
        )

    async def _unknown_route(self, request: web.Request, exchange: _Exchange) -> web.Response:
        return _json({"detail": "Not Found"}, 404)

    def _envelope_extras(self, stream: bool) -> JSONObject:
        if stream:
            return {}
        return {
            "service_tier": None,
            "system_fingerprint": None,
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }

    def _message_extras(self) -> JSONObject:
        return {
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [],
            "reasoning_content": None,
        }

    def _choice_extras(self) -> JSONObject:
        return {"stop_reason": None}

    def _stop_extras(self, stopped_by: str | None) -> JSONObject:
        return {"stop_reason": stopped_by}

    def _first_delta(self) -> JSONObject:
        return {"role": "assistant", "content": ""}

    def _final_delta(self) -> JSONObject:
        return {"content": ""}

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> JSONObject:
        return {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
        }

    def _usage_null_in_chunks(self) -> bool:
        return False

    def _model_cards(self) -> list[JSONObject]:
        created = int(time.time())
        return [
            {
                "id": self.served_model,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": self.served_model,
                "parent": None,
                "max_model_len": self.max_model_len,
                "permission": [
                    {
                        "id": _new_id("modelperm-"),
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
        ]

    def _finished(self, prompt_tokens: int, completion_tokens: int) -> None:
        self._prompt_tokens_total += prompt_tokens
        self._generation_tokens_total += completion_tokens
        self._request_success_total += 1

    async def _health(self, request: web.Request) -> web.Response:
        if self.health_status is not None:
            return web.Response(status=self.health_status)
        return web.Response(status=200 if self.behaviour.fail_status is None else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        labels = f'model_name="{_prom_label(self.served_model)}",engine="0"'
        lines: list[str] = []

        def metric(name: str, kind: str, doc: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {doc}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{{{labels}{extra}}} {float(value)}" for extra, value in samples)

        metric(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            [("", min(self.in_flight, self.max_num_seqs))],
        )
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            [("", self.extra_waiting + max(0, self.in_flight - self.max_num_seqs))],
        )
        metric(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            [("", self.kv_cache_usage)],
        )
        metric(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            [("", self._prompt_tokens_total)],
        )
        metric(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            [("", self._generation_tokens_total)],
        )
        metric(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            [
                (',finished_reason="stop"', self._request_success_total),
                (',finished_reason="length"', 0),
                (',finished_reason="abort"', 0),
            ],
        )
        return web.Response(
            text="\n".join(lines) + "\n",
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


# --- A fake OpenID Connect identity provider -------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt_segment(obj: Any) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def unsigned_token(claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
    """An `alg: none` JWT: the claims, no signature at all (the classic forgery)."""
    header = {"alg": "none", **(headers or {})}
    return f"{_jwt_segment(header)}.{_jwt_segment(dict(claims))}."


def hs256_token(
    claims: Mapping[str, Any], secret: bytes, headers: Mapping[str, Any] | None = None
) -> str:
    """An HS256 JWT with `secret` as the HMAC key, built by hand.

    pyjwt refuses PEM text as an HMAC secret; this does not, so a test can forge the "sign
    with the issuer's public key as an HMAC secret" token that algorithm confusion relies on.
    """
    header = {"alg": "HS256", "typ": "JWT", **(headers or {})}
    signing_input = f"{_jwt_segment(header)}.{_jwt_segment(dict(claims))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


KeyKind = Literal["rsa", "ec"]


_AUTHORIZE_PATH = "/protocol/openid-connect/auth"
_TOKEN_PATH = "/protocol/openid-connect/token"


@dataclass(frozen=True)
class _AuthorizationCode:
    """What the fake issuer remembers about a code until it is redeemed (once)."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    subject: str
    groups: tuple[str, ...]
    claims: JSONObject
    expires_at: float


class _Kid(enum.Enum):
    """`mint(kid=...)` default: the `kid` of the key that signs."""

    OF_SIGNING_KEY = "of-signing-key"


@dataclass(frozen=True)
class _SigningKey:
    kind: KeyKind
    kid: str
    private: RSAPrivateKey | EllipticCurvePrivateKey
    alg: str

    def public_jwk(self) -> JSONObject:
        public = self.private.public_key()
        jwk: JSONObject
        if isinstance(public, RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _new_key(kind: KeyKind) -> _SigningKey:
    kid = f"{kind}-{uuid.uuid4().hex[:12]}"
    if kind == "rsa":
        return _SigningKey(kind, kid, rsa.generate_private_key(65537, 2048), "RS256")
    return _SigningKey(kind, kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


class FakeOIDCIssuer:
    """A loopback OpenID Connect issuer: discovery document, JWKS, and a token minter.

    `url` is the issuer identifier (`iss`). It publishes one RSA 2048 and one EC P-256 key;
    `rotate()` replaces the RSA key. While `down` is true the discovery and JWKS endpoints
    answer 503. `jwks_requests` and `discovery_requests` count fetches, including refused ones.

    It also signs people in (authorization code flow with PKCE, S256 only): the authorization
    endpoint approves `login_subject` with `login_groups` (and `login_claims`) at once and
    redirects back with a code, or with `error=access_denied` while `refuse_logins` is true;
    the token endpoint checks client, redirect URI and `code_verifier`, and answers with an
    ID token (audience: the client id, with the nonce) and an access token (`audience`).
    `token_requests` counts calls to the token endpoint.
    """

    DEFAULT_SUBJECT = "alice@corp.example"
    DEFAULT_GROUPS: tuple[str, ...] = ("engineering",)

    def __init__(self, *, audience: str = "sluice", realm: str = "test") -> None:
        self.audience = audience
        self.url = ""
        self.down = False
        self.jwks_requests = 0
        self.discovery_requests = 0
        self._path = f"/realms/{realm}"
        self._runner: web.AppRunner | None = None
        self._keys: dict[str, _SigningKey] = {}  # every key ever made, by kid
        self._current: dict[str, _SigningKey] = {}  # the published ones, by kind
        self.login_subject = self.DEFAULT_SUBJECT
        self.login_groups: tuple[str, ...] = self.DEFAULT_GROUPS
        self.login_claims: JSONObject = {}
        self.refuse_logins = False
        self.token_requests = 0
        self._codes: dict[str, _AuthorizationCode] = {}

    # Lifecycle.

    async def start(self, port: int = 0) -> None:
        """Listen on loopback at `port` (0: a free one)."""
        if self._runner is not None:
            raise RuntimeError(f"FakeOIDCIssuer is already running at {self.url}")
        if not self._current:
            # Key generation takes tens of milliseconds: off the event loop.
            rsa_key, ec_key = await asyncio.gather(
                asyncio.to_thread(_new_key, "rsa"), asyncio.to_thread(_new_key, "ec")
            )
            for key in (rsa_key, ec_key):
                self._publish(key)
        app = web.Application()
        app.add_routes(
            [
                web.get(self._path + "/.well-known/openid-configuration", self._discovery),
                web.get(self._path + "/jwks", self._jwks),
                web.get(self._path + _AUTHORIZE_PATH, self._authorize),
                web.post(self._path + _TOKEN_PATH, self._token),
            ]
        )
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        host, port = runner.addresses[0][:2]
        self._runner = runner
        self.url = f"http://{host}:{port}{self._path}"

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Keys.

    def _publish(self, key: _SigningKey) -> None:
        self._keys[key.kid] = key
        self._current[key.kind] = key

    @property
    def rsa_kid(self) -> str:
        """The `kid` of the RSA key published now (the one `mint` signs with by default)."""
        return self._current["rsa"].kid

    @property
    def ec_kid(self) -> str:
        return self._current["ec"].kid

    @property
    def published_kids(self) -> list[str]:
        return [key.kid for key in self._current.values()]

    def rotate(self) -> str:
        """Replace the RSA key: publish a new one, withdraw the old. Returns the new `kid`."""
        key = _new_key("rsa")
        self._publish(key)
        return key.kid

    def public_pem(self, key: str = "rsa") -> bytes:
        """The PEM (SubjectPublicKeyInfo) of a key: "rsa", "ec" or a `kid`."""
        return self._key(key).public_pem()

    def jwks(self) -> JSONObject:
        """The JWKS document as the endpoint serves it."""
        return {"keys": [key.public_jwk() for key in self._current.values()]}

    def _key(self, key: str) -> _SigningKey:
        if key in ("rsa", "ec"):
            return self._current[key]
        try:
            return self._keys[key]
        except KeyError:
            raise ValueError(f"no key {key!r}; use 'rsa', 'ec' or a kid") from None

    # Tokens.

    def claims(self, lifetime_s: float = 300.0) -> JSONObject:
        """The claims `mint` uses unless told otherwise."""
        now = int(time.time())
        return {
            "iss": self.url,
            "aud": self.audience,
            "sub": self.DEFAULT_SUBJECT,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime_s),
            "jti": uuid.uuid4().hex,
            "groups": list(self.DEFAULT_GROUPS),
        }

    def mint(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        key: str = "rsa",
        kid: str | _Kid | None = _Kid.OF_SIGNING_KEY,
        alg: str | None = None,
        headers: Mapping[str, Any] | None = None,
        omit: Sequence[str] = (),
        lifetime_s: float = 300.0,
    ) -> str:
        """A signed JWT: default claims updated with `claims`, minus the names in `omit`.

        `key` is "rsa" (the current RSA key), "ec" or any `kid` this issuer ever made, withdrawn
        ones included. `kid` overrides the header's `kid` (None leaves it out); `alg` the
        algorithm (default RS256 or ES256 by key); `headers` adds header fields.
        """
        signing = self._key(key)
        payload = {**self.claims(lifetime_s), **(claims or {})}
        for name in omit:
            payload.pop(name, None)
        header: JSONObject = dict(headers or {})
        if kid is _Kid.OF_SIGNING_KEY:
            header["kid"] = signing.kid
        elif kid is not None:
            header["kid"] = kid
        return jwt.encode(payload, signing.private, algorithm=alg or signing.alg, headers=header)

    # Endpoints.

    def _unavailable(self) -> web.Response:
        return _json({"error": "temporarily_unavailable"}, status=503)

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_requests += 1
        if self.down:
            return self._unavailable()
        return _json(
            {
                "issuer": self.url,
                "jwks_uri": self.url + "/jwks",
                "authorization_endpoint": self.url + _AUTHORIZE_PATH,
                "token_endpoint": self.url + _TOKEN_PATH,
                "code_challenge_methods_supported": ["S256"],
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        if self.down:
            return self._unavailable()
        return _json(self.jwks())

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        """Approves `login_subject` without a login page and redirects back with a code."""
        query = request.query
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri.startswith(("http://", "https://")) or not query.get("client_id"):
            return _json({"error": "invalid_request"}, status=400)
        back: dict[str, str] = {"state": query.get("state", "")}
        if query.get("response_type") != "code":
            back["error"] = "unsupported_response_type"
        elif query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            back["error"] = "invalid_request"
        elif "openid" not in query.get("scope", "").split():
            back["error"] = "invalid_scope"
        elif self.refuse_logins:
            back["error"] = "access_denied"
        else:
            code = uuid.uuid4().hex
            self._codes[code] = _AuthorizationCode(
                client_id=query["client_id"],
                redirect_uri=redirect_uri,
                code_challenge=query["code_challenge"],
                nonce=query.get("nonce"),
                subject=self.login_subject,
                groups=tuple(self.login_groups),
                claims=dict(self.login_claims),
                expires_at=time.time() + 60,
            )
            back["code"] = code
        separator = "&" if "?" in redirect_uri else "?"
        raise web.HTTPFound(redirect_uri + separator + urllib.parse.urlencode(back))

    async def _token(self, request: web.Request) -> web.Response:
        """Redeems a code once, after checking client, redirect URI and the PKCE verifier."""
        self.token_requests += 1
        form = await request.post()
        code = self._codes.pop(str(form.get("code", "")), None)
        if form.get("grant_type") != "authorization_code":
            return _json({"error": "unsupported_grant_type"}, status=400)
        verifier = str(form.get("code_verifier", ""))
        challenge = _b64url(hashlib.sha256(verifier.encode()).digest())
        if (
            code is None
            or code.expires_at < time.time()
            or form.get("client_id") != code.client_id
            or form.get("redirect_uri") != code.redirect_uri
            or not hmac.compare_digest(challenge, code.code_challenge)
        ):
            return _json({"error": "invalid_grant"}, status=400)
        person: JSONObject = {"sub": code.subject, "groups": list(code.groups), **code.claims}
        id_claims: JSONObject = {**person, "aud": code.client_id, "azp": code.client_id}
        if code.nonce is not None:
            id_claims["nonce"] = code.nonce
        return _json(
            {
                "token_type": "Bearer",
                "expires_in": 300,
                "access_token": self.mint(person),
                "id_token": self.mint(id_claims),
            }
        )
