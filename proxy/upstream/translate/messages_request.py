"""Request translation: an OpenAI chat body as the Anthropic Messages request that asks the
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

# Anthropic requires max_tokens; an OpenAI client may leave it out. 4096 is what Anthropic's
# own SDK examples and most OpenAI-compatible clients assume as a sensible answer length.
DEFAULT_MAX_TOKENS = 4096

_DATA_URL_PREFIX = "data:"

# Dropped because they are bookkeeping or caching hints for OpenAI's side, or a best-effort
# determinism hint (`seed`) that no provider guarantees.
_OPENAI_HARMLESS = (
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "seed",
)
_OPENAI_MAPPED = (
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "response_format",
)
# Accepted only at a value that asks for nothing: the default OpenAI itself would use.
_OPENAI_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "logit_bias": (None, {}),
    "modalities": (None, ["text"]),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
    "functions": (None,),
    "function_call": (None,),
}


def messages_request_from_chat(body: dict[str, Any], upstream_model: str) -> Translated:
    """An Anthropic Messages request asking what the OpenAI chat request `body` asks."""
    check_keys(body, (*_OPENAI_MAPPED, *_OPENAI_HARMLESS, *_OPENAI_NEUTRAL), "")
    for name, neutral in _OPENAI_NEUTRAL.items():
        if name in body and body[name] not in neutral:
            raise Untranslatable(name, "is not supported at this value")
    dropped = [k for k in _OPENAI_HARMLESS if body.get(k) is not None]
    system, messages = _anthropic_messages(body["messages"])
    refuse_prefill(body["messages"])
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    out: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        "messages": messages,
    }
    if system:
        out["system"] = system
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [need_string(s, f"stop[{i}]") for i, s in enumerate(stop)]
    elif stop is not None and stop != []:
        raise Untranslatable("stop", "must be a string or an array of strings")
    if body.get("stream"):
        out["stream"] = True
    options = body.get("stream_options")
    if isinstance(options, dict):
        # include_usage is honoured by the gateway itself; obfuscation padding is cosmetic.
        check_keys(options, ("include_usage", "include_obfuscation"), "stream_options.")
    user = body.get("safety_identifier") or body.get("user")
    if user is not None:
        out["metadata"] = {"user_id": need_string(user, "user")}
    if body.get("tools"):
        out["tools"] = [_anthropic_tool(t, f"tools[{i}]") for i, t in enumerate(body["tools"])]
    choice = _anthropic_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    response_format = body.get("response_format")
    if response_format is not None:
        output_format = _anthropic_output_format(need_object(response_format, "response_format"))
        if output_format is not None:
            out["output_config"] = {"format": output_format}
    return Translated(out, tuple(dropped))


def _anthropic_messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages). Consecutive tool results and user turns become one user
    message with the results first, as Anthropic requires after a tool call."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        message = need_object(message, where)
        role = message["role"]
        if role in ("system", "developer"):
            if out:
                raise Untranslatable(
                    f"{where}.role", "system messages are only supported before the conversation"
                )
            check_keys(message, ("role", "content"), where + ".")
            system += [
                {"type": "text", "text": t} for t in _texts(message.get("content"), where) if t
            ]
            continue
        if role == "user":
            check_keys(message, ("role", "content"), where + ".")
            _append(out, "user", _anthropic_user_content(message.get("content"), where))
        elif role == "tool":
            check_keys(message, ("role", "content", "tool_call_id"), where + ".")
            result = {
                "type": "tool_result",
                "tool_use_id": need_string(message.get("tool_call_id"), where + ".tool_call_id"),
                "content": "".join(_texts(message.get("content"), where)),
            }
            _append(out, "user", [result])
        elif role == "assistant":
            check_keys(message, ("role", "content", "tool_calls", "refusal"), where + ".")
            if message.get("refusal") is not None:
                raise Untranslatable(f"{where}.refusal", "is not supported")
            _append(out, "assistant", _anthropic_assistant_content(message, where))
        else:
            raise Untranslatable(f"{where}.role", f"`{role}` is not supported")
    return system, out


def _append(out: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if out and out[-1]["role"] == role:
        out[-1]["content"] += blocks
    else:
        out.append({"role": role, "content": blocks})


def _texts(content: Any, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content", "must be a string or an array of parts")
    texts = []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        part = need_object(part, at)
        if part.get("type") != "text":
            raise Untranslatable(f"{at}.type", "only text parts are supported in this message")
        check_keys(part, ("type", "text"), at + ".")
        texts.append(need_string(part.get("text"), at + ".text"))
    return texts


def _anthropic_user_content(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content", "must be a string or an array of parts")
    blocks = []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        part = need_object(part, at)
        kind = part.get("type")
        if kind == "text":
            check_keys(part, ("type", "text"), at + ".")
            blocks.append({"type": "text", "text": need_string(part.get("text"), at + ".text")})
        elif kind == "image_url":
            check_keys(part, ("type", "image_url"), at + ".")
            blocks.append(
                _anthropic_image(need_object(part.get("image_url"), at + ".image_url"), at)
            )
        else:
            raise Untranslatable(f"{at}.type", f"`{kind}` parts are not supported")
    return blocks


def _anthropic_image(image: dict[str, Any], at: str) -> dict[str, Any]:
    # `detail` picks OpenAI's image resolution; Anthropic sizes images itself.
    check_keys(image, ("url", "detail"), at + ".image_url.")
    url = need_string(image.get("url"), at + ".image_url.url")
    if url.startswith(_DATA_URL_PREFIX):
        header, sep, data = url[len(_DATA_URL_PREFIX) :].partition(",")
        media, _, encoding = header.partition(";")
        if not sep or encoding != "base64":
            raise Untranslatable(at + ".image_url.url", "data URLs must be base64-encoded")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _anthropic_assistant_content(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": t} for t in _texts(message.get("content"), where) if t
    ]
    for index, call in enumerate(message.get("tool_calls") or ()):
        at = f"{where}.tool_calls[{index}]"
        call = need_object(call, at)
        check_keys(call, ("id", "type", "function"), at + ".")
        function = need_object(call.get("function"), at + ".function")
        check_keys(function, ("name", "arguments"), at + ".function.")
        try:
            arguments = json.loads(
                need_string(function.get("arguments"), at + ".function.arguments")
            )
        except ValueError:
            raise Untranslatable(at + ".function.arguments", "must be a JSON object") from None
        blocks.append(
            {
                "type": "tool_use",
                "id": need_string(call.get("id"), at + ".id"),
                "name": need_string(function.get("name"), at + ".function.name"),
                "input": need_object(arguments, at + ".function.arguments"),
            }
        )
    return blocks


def _anthropic_tool(tool: Any, where: str) -> dict[str, Any]:
    tool = need_object(tool, where)
    check_keys(tool, ("type", "function"), where + ".")
    if tool.get("type") != "function":
        raise Untranslatable(f"{where}.type", "only `function` tools are supported")
    function = need_object(tool.get("function"), where + ".function")
    check_keys(function, ("name", "description", "parameters", "strict"), where + ".function.")
    parameters = function.get("parameters")
    out: dict[str, Any] = {
        "name": need_string(function.get("name"), where + ".function.name"),
        "input_schema": (
            {"type": "object", "properties": {}}
            if parameters is None
            else need_object(parameters, where + ".function.parameters")
        ),
    }
    if function.get("description") is not None:
        out["description"] = need_string(function["description"], where + ".function.description")
    if function.get("strict") is not None:
        out["strict"] = function["strict"]
    return out


def _anthropic_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        check_keys(choice, ("type", "function"), "tool_choice.")
        function = need_object(choice.get("function"), "tool_choice.function")
        check_keys(function, ("name",), "tool_choice.function.")
        out = {
            "type": "tool",
            "name": need_string(function.get("name"), "tool_choice.function.name"),
        }
    else:
        raise Untranslatable("tool_choice", "is not supported at this value")
    if parallel is False:
        if out is None:
            out = {"type": "auto"}
        if out["type"] == "none":
            return out
        out["disable_parallel_tool_use"] = True
    return out


def _anthropic_output_format(spec: dict[str, Any]) -> dict[str, Any] | None:
    kind = spec.get("type")
    if kind == "text":
        return None
    if kind != "json_schema":
        raise Untranslatable("response_format.type", f"`{kind}` is not supported")
    check_keys(spec, ("type", "json_schema"), "response_format.")
    schema = need_object(spec.get("json_schema"), "response_format.json_schema")
    check_keys(schema, ("name", "description", "schema", "strict"), "response_format.json_schema.")
    return {
        "type": "json_schema",
        "schema": need_object(schema.get("schema"), "response_format.json_schema.schema"),
    }
