"""Filter `authz`: decides whether the caller's roles allow this endpoint, model and tools.

Deny by default: no known role is 403, an endpoint no role grants is 403, a model no role grants
is the same 404 an unknown model gets (so callers cannot learn which models exist), and a tool
name no role grants is 403.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any

from proxy.context import Deny, Principal, RequestContext, model_not_found
from proxy.errors import ErrorKind
from proxy.policy.model import Policy, RoleConfig


def granted_roles(principal: Principal, policy: Policy) -> list[RoleConfig]:
    return [policy.roles[name] for name in principal.roles if name in policy.roles]


def may_use_model(model: str, principal: Principal, roles: Sequence[RoleConfig]) -> bool:
    """A model is usable if a role grants it and the token's own list (if any) does too."""
    if not any(_matches(model, role.models) for role in roles):
        return False
    return principal.models is None or _matches(model, principal.models)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def declared_tools(body: dict[str, Any]) -> list[str]:
    """Names of the tools and functions a request offers the model, in any wire format."""
    names: list[str] = []
    for tool in body.get("tools") or ():
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else tool.get("name")
        names.append(name if isinstance(name, str) else tool.get("type", "?"))
    for function in body.get("functions") or ():
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


class Authorize:
    """Decides on the principal's roles and the policy's `roles` section."""

    name = "authz"

    async def on_request(self, ctx: RequestContext) -> Deny | None:
        principal = ctx.principal
        if principal is None:  # authn runs first; without it nothing is allowed
            return Deny(ErrorKind.PERMISSION, "The request was not authenticated.")
        roles = granted_roles(principal, ctx.policy.policy)
        if not roles:
            return Deny(ErrorKind.PERMISSION, "Your identity has no role on this gateway.")
        endpoint = ctx.wire.endpoint
        if not any(endpoint in role.endpoints for role in roles):
            return Deny(ErrorKind.PERMISSION, f"Your role may not use {ctx.wire.path}.")
        if not may_use_model(ctx.requested_model, principal, roles):
            return model_not_found(ctx.requested_model)
        for tool in declared_tools(ctx.body):
            if not any(role.tools is None or _matches(tool, role.tools) for role in roles):
                return Deny(
                    ErrorKind.PERMISSION,
                    f"Your role may not offer the tool `{tool}`.",
                    param="tools",
                )
        return None
