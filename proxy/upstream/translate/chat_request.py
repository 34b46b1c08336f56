"""Request translation: an Anthropic Messages body as the OpenAI chat request that asks the
same thing (see `requests.py` for what is mapped, dropped or refused, and why)."""

from __future__ import annotations

import json
from typing import Any

from proxy.upstream.translate.requests import (
    Translated,
    Untranslatable,
    check_keys,
    need_object,
    need_string,
    refuse_prefill,
)

# Dropped because they tune the provider's caching, capacity or placement, or ask for
# reasoning the other model does not expose; none changes the content of the request.
_ANTHROPIC_HARMLESS = (
    "cache_control",
    "service_tier",
    "inference_geo",
    "speed",
    "thinking",
    # Claude Code asks the API to clear old tool results; without it the model reads the whole
    # history, which is more context, not less, so the request is still answered faithfully.
    "context_management",
)
_ANTHROPIC_MAPPED = (
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
    "output_config",
)


def chat_request_from_messages(body: dict[str, Any], upstream_model: str) -> Translated:
    """An OpenAI chat request asking what the Anthropic Messages request `body` asks."""
    check_keys(body, (*_ANTHROPIC_MAPPED, *_ANTHROPIC_HARMLESS), "")
    dropped = [k for k in _ANTHROPIC_HARMLESS if body.get(k) is not None]
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None and system != "" and system != []:
        messages.append({"role": "system", "content": _system_text(system)})
    for index, message in enumerate(body["messages"]):
        messages += _chat_messages(need_object(message, f"messages[{index}]"), f"messages[{index}]")
    refuse_prefill(body["messages"])
    out: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages,
        "max_tokens": body["max_tokens"],
    }
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    stops = body.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise Untranslatable("stop_sequences", "must be an array of strings")
        out["stop"] = stops
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None:
        metadata = need_object(metadata, "metadata")
        check_keys(metadata, ("user_id",), "metadata.")
        if metadata.get("user_id") is not None:
            out["user"] = need_string(metadata["user_id"], "metadata.user_id")
    if body.get("tools"):
        out["tools"] = [_chat_tool(t, f"tools[{i}]") for i, t in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        out.update(_chat_tool_choice(need_object(body["tool_choice"], "tool_choice")))
    output_config = body.get("output_config")
    if output_config is not None:
        output_config = need_object(output_config, "output_config")
        check_keys(output_config, ("format", "effort"), "output_config.")
        if output_config.get("effort") is not None:
            dropped.append("output_config.effort")
        if output_config.get("format") is not None:
            out["response_format"] = _chat_response_format(output_config["format"])
    return Translated(out, tuple(dropped))


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise Untranslatable("system", "must be a string or an array of text blocks")
    texts = []
    for index, block in enumerate(system):
        block = need_object(block, f"system[{index}]")
        if block.get("type") != "text":
            raise Untranslatable(f"system[{index}].type", "must be `text`")
        check_keys(block, ("type", "text", "cache_control", "citations"), f"system[{index}].")
        texts.append(need_string(block.get("text"), f"system[{index}].text"))
    return "\n\n".join(texts)


def _chat_messages(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages: a user turn's tool results become `tool`
    messages ahead of the rest of the turn, as OpenAI wants them right after the calls."""
    check_keys(message, ("role", "content"), where + ".")
    role = message["role"]
    content = message.get("content")
    if role not in ("user", "assistant"):
        raise Untranslatable(f"{where}.role", "must be `user` or `assistant`")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content", "must be a string or an array of blocks")
    if role == "assistant":
        return [_chat_assistant(content, where)]
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        block = need_object(block, at)
        kind = block.get("type")
        if kind == "tool_result":
            tool_messages.append(_chat_tool_result(block, at))
        elif kind == "text":
            parts.append(_chat_text_part(block, at))
        elif kind == "image":
            parts.append(_chat_image_part(block, at))
        else:
            raise Untranslatable(f"{at}.type", f"`{kind}` blocks are not supported")
    out = tool_messages
    if parts:
        if all(p["type"] == "text" for p in parts) and len(parts) == 1:
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _chat_text_part(block: dict[str, Any], at: str) -> dict[str, Any]:
    # Cache breakpoints are a hint to Anthropic's cache; citations in a past turn annotate text
    # that is kept. Neither changes the text.
    check_keys(block, ("type", "text", "cache_control", "citations"), at + ".")
    return {"type": "text", "text": need_string(block.get("text"), at + ".text")}


def _chat_image_part(block: dict[str, Any], at: str) -> dict[str, Any]:
    check_keys(block, ("type", "source", "cache_control"), at + ".")
    source = need_object(block.get("source"), at + ".source")
    kind = source.get("type")
    if kind == "base64":
        check_keys(source, ("type", "media_type", "data"), at + ".source.")
        media = need_string(source.get("media_type"), at + ".source.media_type")
        data = need_string(source.get("data"), at + ".source.data")
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        check_keys(source, ("type", "url"), at + ".source.")
        url = need_string(source.get("url"), at + ".source.url")
    else:
        raise Untranslatable(f"{at}.source.type", f"`{kind}` image sources are not supported")
    return {"type": "image_url", "image_url": {"url": url}}


def _chat_tool_result(block: dict[str, Any], at: str) -> dict[str, Any]:
    check_keys(block, ("type", "tool_use_id", "content", "is_error", "cache_control"), at + ".")
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            part = need_object(part, f"{at}.content[{index}]")
            if part.get("type") != "text":
                raise Untranslatable(
                    f"{at}.content[{index}].type", "tool results can only carry text here"
                )
            texts.append(_chat_text_part(part, f"{at}.content[{index}]")["text"])
        content = "\n\n".join(texts)
    text = need_string(content, at + ".content")
    if block.get("is_error"):
        # OpenAI has no error flag on tool results; the model reads it in the text instead.
        text = "Error: " + text
    return {
        "role": "tool",
        "tool_call_id": need_string(block.get("tool_use_id"), at + ".tool_use_id"),
        "content": text,
    }


def _chat_assistant(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        block = need_object(block, at)
        kind = block.get("type")
        if kind == "text":
            texts.append(_chat_text_part(block, at)["text"])
        elif kind == "tool_use":
            check_keys(block, ("type", "id", "name", "input", "cache_control"), at + ".")
            calls.append(
                {
                    "id": need_string(block.get("id"), at + ".id"),
                    "type": "function",
                    "function": {
                        "name": need_string(block.get("name"), at + ".name"),
                        "arguments": json.dumps(
                            need_object(block.get("input", {}), at + ".input"), ensure_ascii=False
                        ),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            # Reasoning of an earlier turn: the other model cannot read it, and Anthropic
            # itself leaves earlier turns' thinking out of the context.
            continue
        else:
            raise Untranslatable(f"{at}.type", f"`{kind}` blocks are not supported")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _chat_tool(tool: Any, where: str) -> dict[str, Any]:
    tool = need_object(tool, where)
    if tool.get("type") not in (None, "custom"):
        raise Untranslatable(f"{where}.type", f"server tool `{tool.get('type')}` is not supported")
    check_keys(
        tool,
        # `eager_input_streaming` only changes how finely arguments are streamed.
        (
            "type",
            "name",
            "description",
            "input_schema",
            "cache_control",
            "strict",
            "eager_input_streaming",
        ),
        where + ".",
    )
    function: dict[str, Any] = {
        "name": need_string(tool.get("name"), where + ".name"),
        "parameters": need_object(tool.get("input_schema"), where + ".input_schema"),
    }
    if tool.get("description") is not None:
        function["description"] = need_string(tool["description"], where + ".description")
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    check_keys(choice, ("type", "name", "disable_parallel_tool_use"), "tool_choice.")
    kind = choice.get("type")
    out: dict[str, Any] = {}
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = need_string(choice.get("name"), "tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise Untranslatable("tool_choice.type", f"`{kind}` is not supported")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


def _chat_response_format(spec: Any) -> dict[str, Any]:
    spec = need_object(spec, "output_config.format")
    if spec.get("type") != "json_schema":
        raise Untranslatable("output_config.format.type", "must be `json_schema`")
    check_keys(spec, ("type", "schema"), "output_config.format.")
    schema = need_object(spec.get("schema"), "output_config.format.schema")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
