"""Protocol-shaped error bodies: every refusal Sluice sends looks like the provider's own.

One table maps each kind of failure to its HTTP status and to OpenAI's and Anthropic's wire shapes.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web


class WireFamily(enum.Enum):
    """Which provider's error shape a client expects."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


@dataclass(frozen=True, slots=True)
class _Shape:
    status: int
    openai_type: str
    openai_code: str | None
    anthropic_type: str


class ErrorKind(enum.Enum):
    """The few kinds of failure Sluice reports; each carries its status and wire types."""

    INVALID_REQUEST = _Shape(400, "invalid_request_error", None, "invalid_request_error")
    AUTHENTICATION = _Shape(401, "invalid_request_error", "invalid_api_key", "authentication_error")
    PERMISSION = _Shape(403, "permission_error", "permission_denied", "permission_error")
    MODEL_NOT_FOUND = _Shape(404, "invalid_request_error", "model_not_found", "not_found_error")
    NOT_FOUND = _Shape(404, "invalid_request_error", "not_found", "not_found_error")
    METHOD_NOT_ALLOWED = _Shape(
        405, "invalid_request_error", "method_not_allowed", "invalid_request_error"
    )
    REQUEST_TOO_LARGE = _Shape(
        413, "invalid_request_error", "request_too_large", "request_too_large"
    )
    UNSUPPORTED_MEDIA_TYPE = _Shape(
        415, "invalid_request_error", "unsupported_media_type", "invalid_request_error"
    )
    RATE_LIMITED = _Shape(429, "requests", "rate_limit_exceeded", "rate_limit_error")
    INTERNAL = _Shape(500, "server_error", "internal_error", "api_error")
    UPSTREAM_UNREACHABLE = _Shape(502, "server_error", "upstream_unreachable", "api_error")
    UNAVAILABLE = _Shape(503, "server_error", "service_unavailable", "api_error")
    UPSTREAM_TIMEOUT = _Shape(504, "server_error", "upstream_timeout", "timeout_error")

    @property
    def status(self) -> int:
        return self.value.status


def error_body(
    family: WireFamily,
    kind: ErrorKind,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, object]:
    """The JSON error document a client of `family` expects for `kind`."""
    shape = kind.value
    if family is WireFamily.ANTHROPIC:
        return {"type": "error", "error": {"type": shape.anthropic_type, "message": message}}
    return {
        "error": {
            "message": message,
            "type": shape.openai_type,
            "param": param,
            "code": code or shape.openai_code,
        }
    }


def error_response(
    family: WireFamily,
    kind: ErrorKind,
    message: str,
    *,
    request_id: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A complete error response: provider-shaped body, status and `x-request-id`."""
    body = error_body(family, kind, message, param=param, code=code)
    response = web.Response(
        status=kind.status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )
    response.headers["x-request-id"] = request_id
    return response


def stream_error_event(family: WireFamily, kind: ErrorKind, message: str) -> bytes:
    """The SSE event that ends a stream which failed after its first byte was sent."""
    body = json.dumps(error_body(family, kind, message))
    if family is WireFamily.ANTHROPIC:
        return f"event: error\ndata: {body}\n\n".encode()
    return f"data: {body}\n\n".encode()


def family_for_path(path: str) -> WireFamily:
    """Anthropic's shape on Anthropic's paths, OpenAI's everywhere else."""
    return WireFamily.ANTHROPIC if path.startswith("/v1/messages") else WireFamily.OPENAI


_KIND_BY_STATUS = {
    400: ErrorKind.INVALID_REQUEST,
    401: ErrorKind.AUTHENTICATION,
    403: ErrorKind.PERMISSION,
    404: ErrorKind.NOT_FOUND,
    405: ErrorKind.METHOD_NOT_ALLOWED,
    413: ErrorKind.REQUEST_TOO_LARGE,
    415: ErrorKind.UNSUPPORTED_MEDIA_TYPE,
    429: ErrorKind.RATE_LIMITED,
    502: ErrorKind.UPSTREAM_UNREACHABLE,
    503: ErrorKind.UNAVAILABLE,
    504: ErrorKind.UPSTREAM_TIMEOUT,
}


def kind_for_status(status: int) -> ErrorKind:
    """The closest kind for an HTTP status someone else chose (a provider, aiohttp's router)."""
    kind = _KIND_BY_STATUS.get(status)
    if kind is not None:
        return kind
    return ErrorKind.INVALID_REQUEST if status < 500 else ErrorKind.INTERNAL
