"""Admin endpoints: which policy is live (`GET /admin/policy`) and reload it now
(`POST /admin/reload`). Only for callers holding the `admin` role, authenticated like any call.

Answers never carry policy values (keys, addresses), only versions, file names and problems
with file:line:col.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from proxy.context import Deny, RequestContext, WireFormat
from proxy.errors import ErrorKind, WireFamily, error_body
from proxy.handler import GATEWAY, deny_response, new_context
from proxy.policy.loader import PolicyError, load_policy
from proxy.policy.store import PolicyStore

log = structlog.get_logger("sluice.admin")

ADMIN_ROLE = "admin"


async def _admit(request: web.Request) -> tuple[RequestContext, web.Response | None]:
    """Authenticate the caller and check the admin role; the refusal when not admitted."""
    gateway = request.app[GATEWAY]
    ctx = new_context(request, gateway, WireFormat.MODELS)
    deny = await gateway.identify.run(ctx)
    if deny is None:
        assert ctx.principal is not None
        # The role must be held and still be defined: removing it from policy revokes access.
        if ADMIN_ROLE not in ctx.principal.roles or ADMIN_ROLE not in ctx.policy.policy.roles:
            deny = Deny(ErrorKind.PERMISSION, "Only the admin role may use the admin endpoints.")
    if deny is not None:
        return ctx, deny_response(ctx, deny, WireFamily.OPENAI)
    return ctx, None


def _describe(store: PolicyStore) -> dict[str, Any]:
    snapshot = store.current
    return {
        "policy_version": snapshot.version,
        "policy_dir": str(store.directory),
        "policy_files": list(snapshot.files),
        "loaded_at": snapshot.loaded_at,
        "last_reload_error": store.last_error,
        "last_reload_error_at": store.last_error_at,
    }


def _status(request: web.Request) -> dict[str, Any]:
    gateway = request.app[GATEWAY]
    shadow = gateway.shadow
    return {**_describe(gateway.store), "shadow": _describe(shadow.store) if shadow else None}


async def policy_status(request: web.Request) -> web.Response:
    """`GET /admin/policy`: the live policy (and the shadow policy, if one is loaded)."""
    _, refusal = await _admit(request)
    if refusal is not None:
        return refusal
    return web.json_response(_status(request))


def _problems(store: PolicyStore) -> list[str]:
    """The problems of a reload that just failed, one per entry."""
    try:
        load_policy(store.directory)
    except PolicyError as exc:
        return [str(p) for p in exc.problems]
    return [store.last_error or "the policy did not load"]  # fixed between the two reads


async def reload_policy(request: web.Request) -> web.Response:
    """`POST /admin/reload`: reload now. 200 with the version in force, or 422 with the
    problems; a policy that does not load never replaces the last good one."""
    ctx, refusal = await _admit(request)
    if refusal is not None:
        return refusal
    gateway = request.app[GATEWAY]
    stores = [("", gateway.store)]
    if gateway.shadow is not None:
        stores.append(("shadow: ", gateway.shadow.store))
    previous = gateway.store.current.version
    problems: list[str] = []
    for prefix, store in stores:
        if not store.reload():
            problems += [prefix + problem for problem in _problems(store)]
    assert ctx.principal is not None
    log.info(
        "admin_reload",
        request_id=ctx.request_id,
        subject=ctx.principal.subject,
        ok=not problems,
        policy_version=gateway.store.current.version,
    )
    if problems:
        body = error_body(
            WireFamily.OPENAI,
            ErrorKind.INVALID_REQUEST,
            "The policy does not load; the last good policy stays in force "
            f"(version {gateway.store.current.version[:12]}).",
            code="policy_invalid",
        )
        return web.json_response({**body, "problems": problems, **_status(request)}, status=422)
    changed = gateway.store.current.version != previous
    return web.json_response(
        {"status": "reloaded" if changed else "unchanged", "previous_version": previous}
        | _status(request)
    )
