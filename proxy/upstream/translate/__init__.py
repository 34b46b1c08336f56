"""Format translation between the Anthropic Messages and OpenAI Chat Completions APIs.

Lets a provider serve a client that speaks the other wire format: the request is rewritten
before egress and the answer (JSON, SSE stream or error) rewritten back. Anything that cannot
be carried across is refused with `Untranslatable`, never dropped, unless it is listed in
`requests.py` as harmless to drop.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from proxy.context import WireFormat
from proxy.upstream.translate.answers import (
    anthropic_error_from_openai,
    chat_from_message,
    message_from_chat,
    openai_error_from_anthropic,
)
from proxy.upstream.translate.chat_request import chat_request_from_messages
from proxy.upstream.translate.messages_request import messages_request_from_chat
from proxy.upstream.translate.requests import Translated, Untranslatable
from proxy.upstream.translate.streams import (
    ChatToMessagesStream,
    MessagesToChatStream,
    StreamTranslator,
)

__all__ = [
    "StreamTranslator",
    "Translated",
    "Untranslatable",
    "stream_translator",
    "translate_answer",
    "translate_error",
    "translate_request",
    "upstream_wire_for",
]

# (client's wire format, provider's wire format) pairs a translation exists for.
_PAIRS = frozenset(
    {
        (WireFormat.ANTHROPIC_MESSAGES, WireFormat.OPENAI_CHAT),
        (WireFormat.OPENAI_CHAT, WireFormat.ANTHROPIC_MESSAGES),
    }
)


def upstream_wire_for(client: WireFormat, served: Set[WireFormat]) -> WireFormat | None:
    """The wire format to call a provider serving `served` in: the client's own when the
    provider speaks it, else one a translation exists for, else None."""
    if client in served:
        return client
    for source, target in _PAIRS:
        if source is client and target in served:
            return target
    return None


def translate_request(
    client: WireFormat, upstream: WireFormat, body: dict[str, Any], upstream_model: str
) -> Translated:
    """The request body in the provider's wire format; raises `Untranslatable`."""
    if (client, upstream) == (WireFormat.ANTHROPIC_MESSAGES, WireFormat.OPENAI_CHAT):
        return chat_request_from_messages(body, upstream_model)
    if (client, upstream) == (WireFormat.OPENAI_CHAT, WireFormat.ANTHROPIC_MESSAGES):
        return messages_request_from_chat(body, upstream_model)
    raise ValueError(f"no translation from {client.value} to {upstream.value}")


def translate_answer(
    client: WireFormat, upstream: WireFormat, answer: dict[str, Any], request: dict[str, Any]
) -> dict[str, Any]:
    """A successful JSON answer in the client's wire format. `request` is the client's body."""
    if client is WireFormat.ANTHROPIC_MESSAGES:
        return message_from_chat(answer, request)
    return chat_from_message(answer)


def translate_error(client: WireFormat, status: int, data: bytes) -> dict[str, Any]:
    """The provider's error body (any shape, even not JSON) in the client's error shape."""
    if client is WireFormat.ANTHROPIC_MESSAGES:
        return anthropic_error_from_openai(status, data)
    return openai_error_from_anthropic(status, data)


def stream_translator(client: WireFormat, request: dict[str, Any]) -> StreamTranslator:
    """A fresh translator for one answer stream, fed the provider's events."""
    if client is WireFormat.ANTHROPIC_MESSAGES:
        return ChatToMessagesStream(request)
    return MessagesToChatStream()
