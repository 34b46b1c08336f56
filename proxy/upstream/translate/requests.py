"""What request translation shares: the refusal it raises, the result it returns, and the
checks both directions make.

Every field is either mapped, dropped because it cannot change what the model answers (listed
in `Translated.dropped` and the `x-sluice-translation-dropped` header), or refused with
`Untranslatable` naming it. Unknown fields are refused: a field this code has never heard of
may matter, and silently losing it would answer a different question than the one asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class Untranslatable(Exception):
    """A request feature the other wire format cannot express: a 400 naming `param`."""

    def __init__(self, param: str, why: str) -> None:
        super().__init__(f"`{param}` {why}")
        self.param = param
        self.detail = f"`{param}` {why}"


@dataclass(frozen=True, slots=True)
class Translated:
    """A translated request body and the client fields dropped as harmless."""

    body: dict[str, Any]
    dropped: tuple[str, ...] = ()


def check_keys(fields: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys outside `allowed`. A null is no value: SDKs echo unset fields as nulls
    (an Anthropic SDK block's `model_dump()` carries `caller: None`, `citations: None`)."""
    known = set(allowed)
    for key, value in fields.items():
        if key not in known and value is not None:
            raise Untranslatable(f"{where}{key}", "is not supported")


def need_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Untranslatable(where, "must be an object")
    return value


def need_string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise Untranslatable(where, "must be a string")
    return value


def refuse_prefill(messages: list[Any]) -> None:
    """A final assistant message is a prefix Anthropic's model continues, but a finished turn
    to an OpenAI chat model, which starts a new one: the same request would ask two things."""
    if messages and messages[-1].get("role") == "assistant":
        raise Untranslatable(
            f"messages[{len(messages) - 1}].role",
            "is `assistant` on the last message (a prefill), which is not supported",
        )
