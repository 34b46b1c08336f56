"""Reads request bodies in each wire format and writes the body sent upstream.

Checks only what the gateway itself relies on; the provider validates the rest and says so.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.context import Deny, RequestContext, WireFormat
from proxy.errors import ErrorKind
from proxy.upstream.translate import translate_request

# Which top-level field holds the conversation (or inputs) of each wire format.
ITEMS_FIELD = {
    WireFormat.OPENAI_CHAT: "messages",
    WireFormat.ANTHROPIC_MESSAGES: "messages",
    WireFormat.OPENAI_EMBEDDINGS: "input",
    WireFormat.OPENAI_RESPONSES: "input",
}


def _invalid(message: str, param: str | None = None) -> Deny:
    return Deny(ErrorKind.INVALID_REQUEST, message, param=param)


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; providers would reject what we forward.
    raise ValueError(name)


def parse_body(wire: WireFormat, raw: bytes) -> dict[str, Any] | Deny:
    """The JSON object of a request, or a 400 naming the first field that is wrong."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _invalid(
            "We could not parse the JSON body of your request. "
            "Send a JSON object with Content-Type: application/json."
        )
    if not isinstance(body, dict):
        return _invalid("The request body must be a JSON object.")
    model = body.get("model")
    if model is None or model == "":
        return _invalid("You must provide a model parameter.", "model")
    if not isinstance(model, str):
        return _invalid("'model' must be a string.", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        return _invalid("'stream' must be a boolean.", "stream")
    if stream and wire is WireFormat.OPENAI_EMBEDDINGS:
        return _invalid("Embeddings cannot be streamed.", "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        return _invalid("'stream_options' must be an object.", "stream_options")
    return _check_items(wire, body) or body


def _check_items(wire: WireFormat, body: dict[str, Any]) -> Deny | None:
    field = ITEMS_FIELD[wire]
    items = body.get(field)
    if wire in (WireFormat.OPENAI_CHAT, WireFormat.ANTHROPIC_MESSAGES):
        if items is None:
            return _invalid(f"Missing required parameter: '{field}'.", field)
        if not isinstance(items, list):
            return _invalid(f"'{field}' must be an array of message objects.", field)
        for index, message in enumerate(items):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                return _invalid(
                    f"'{field}[{index}]' must be an object with a string 'role'.",
                    f"{field}[{index}]",
                )
        if wire is WireFormat.ANTHROPIC_MESSAGES:
            max_tokens = body.get("max_tokens")
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
                return _invalid("'max_tokens' is required and must be an integer.", "max_tokens")
        return None
    if wire is WireFormat.OPENAI_EMBEDDINGS and items is None:
        return _invalid("Missing required parameter: 'input'.", "input")
    if items is not None and not isinstance(items, str | list):
        return _invalid("'input' must be a string or an array.", "input")
    return None


def client_wants_usage(ctx: RequestContext) -> bool:
    """Whether an OpenAI chat client asked for the final usage chunk of a stream."""
    options = ctx.body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def upstream_payload(ctx: RequestContext) -> bytes:
    """The body sent upstream: the client's, with the upstream model name and usage request;
    or, when the route translates, the client's request rewritten in the provider's format.

    Always serialised from the parsed body, never the client's bytes: JSON with a key given
    twice parses differently in different parsers, and the provider must see exactly the
    request the filters judged.
    """
    assert ctx.route is not None, "the route filter runs before egress"
    if ctx.route.translates(ctx.wire):
        assert ctx.route.upstream_wire is not None
        # The route filter already refused what cannot be translated.
        translated = translate_request(
            ctx.wire, ctx.route.upstream_wire, ctx.body, ctx.route.upstream_model
        )
        return json.dumps(translated.body, ensure_ascii=False, separators=(",", ":")).encode()
    body = ctx.body
    if ctx.route.upstream_model != ctx.requested_model:
        body = {**body, "model": ctx.route.upstream_model}
    if ctx.stream and ctx.wire is WireFormat.OPENAI_CHAT and not client_wants_usage(ctx):
        # Usage is needed for every request; the extra chunk is removed from the client's stream.
        options = ctx.body.get("stream_options") or {}
        body = {**body, "stream_options": {**options, "include_usage": True}}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
