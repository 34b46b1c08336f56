"""`sluice policy explain`: how the policy decides one request, filter by filter.

Each step says its verdict and what in the policy it went by, with file:line where the policy
writes it ("default" where it does not). Findings are shown as types and positions, never text.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from proxy.classify.decision import level_of
from proxy.classify.secrets import SECRET_ENTITIES
from proxy.context import RequestContext, TrailEntry
from proxy.policy.evaluate import Judge, Request
from proxy.policy.loader import LoadedPolicy
from proxy.policy.outcome import outcome_of
from proxy.ratelimit.plan import caller
from proxy.wire import ITEMS_FIELD

Match = dict[str, str | None]  # {"what": ..., "at": "file:line" or None}


def _match(what: str, at: str | None) -> Match:
    return {"what": what, "at": at}


async def explain(judge: Judge, request: Request, source: str) -> dict[str, Any]:
    """The decision trail of `request` under the judge's policy, as a JSON-able document."""
    pipeline = judge.pipeline()
    ctx, deny = await judge.run(request, pipeline)
    loaded = judge.loaded
    trail = {entry.filter: entry for entry in ctx.trail}
    names = ["authn", *(["read"] if "read" in trail else []), *(f.name for f in pipeline.filters)]
    steps = []
    for name in names:
        entry = trail.get(name)
        steps.append(
            {
                "filter": name,
                "verdict": entry.verdict if entry else "not reached",
                "reason": entry.reason if entry else None,
                "ms": round(entry.ms, 3) if entry else None,
                "matched": _matched(name, ctx, loaded, entry) if entry else [],
            }
        )
    principal = request.principal
    return {
        "policy": {"source": source, "version": loaded.version, "files": list(loaded.files)},
        "request": {
            "subject": principal.subject,
            "roles": list(principal.roles),
            "auth_method": principal.auth_method,
            "endpoint": request.wire.endpoint,
            "model": str(request.body.get("model")),
        },
        "steps": steps,
        "outcome": outcome_of(ctx, deny).as_dict(),
    }


def _matched(
    name: str, ctx: RequestContext, loaded: LoadedPolicy, entry: TrailEntry
) -> list[Match]:
    if name == "authn":
        assert ctx.principal is not None
        who = ctx.principal
        return [_match(f"{who.subject}, roles {', '.join(who.roles)} ({who.auth_method})", None)]
    if name == "body_limits":
        field = ITEMS_FIELD[ctx.wire]
        items = ctx.body.get(field)
        count = len(items) if isinstance(items, list) else 1
        limit = loaded.policy.request_limits.max_messages
        at = loaded.where("request_limits", "max_messages")
        return [_match(f"{count} item(s) in '{field}', at most {limit}", at or "default")]
    if name == "authz":
        return _authz(ctx, loaded)
    if name == "ratelimit":
        return _ratelimit(ctx, loaded)
    if name == "classify":
        return _classify(ctx, loaded)
    if name == "route":
        return _route(ctx, loaded)
    return []


def _authz(ctx: RequestContext, loaded: LoadedPolicy) -> list[Match]:
    assert ctx.principal is not None
    policy, principal = loaded.policy, ctx.principal
    endpoint, model = ctx.wire.endpoint, ctx.requested_model
    found: list[Match] = []
    for name in principal.roles:
        role = policy.roles.get(name)
        if role is None:
            found.append(_match(f"role {name}: not defined in the policy", None))
            continue
        found.append(_match(f"role {name}", loaded.where("roles", name)))
        at = loaded.where("roles", name, "endpoints")
        grants = "grants" if endpoint in role.endpoints else "does not grant"
        found.append(_match(f"  {grants} endpoint {endpoint}", at or "default: all endpoints"))
        index = next((i for i, p in enumerate(role.models) if fnmatchcase(model, p)), None)
        if index is None:
            found.append(
                _match(f"  no model pattern matches {model}", loaded.where("roles", name, "models"))
            )
        else:
            pattern = role.models[index]
            where = loaded.where("roles", name, "models", index)
            found.append(_match(f"  grants {model} by pattern {pattern!r}", where))
        if role.tools is not None:
            found.append(
                _match(
                    f"  tools limited to {', '.join(role.tools)}",
                    loaded.where("roles", name, "tools"),
                )
            )
    if principal.models is not None:
        found.append(_match(f"the token itself is limited to {', '.join(principal.models)}", None))
    return found


def _ratelimit(ctx: RequestContext, loaded: LoadedPolicy) -> list[Match]:
    assert ctx.principal is not None
    policy = loaded.policy
    found = [_match("counted offline, in memory, from zero (not the live counts)", None)]
    effective = caller(ctx).limits.model_dump(exclude_none=True)
    for limit, value in effective.items():
        sources = [
            loaded.where("roles", role, "limits", limit)
            for role in ctx.principal.roles
            if role in policy.roles and getattr(policy.roles[role].limits, limit) == value
        ]
        user_at = loaded.where("limits", "users", ctx.principal.subject, limit)
        at = user_at or next((s for s in sources if s), None)
        found.append(_match(f"{limit} {_number(value)}", at))
    model = ctx.requested_model
    for section in ("models", "global_models"):
        limits = getattr(policy.limits, section).get(model)
        if limits is not None:
            for limit, value in limits.model_dump(exclude_none=True).items():
                at = loaded.where("limits", section, model, limit)
                scope = "per caller" if section == "models" else "over all callers"
                found.append(_match(f"{model}: {limit} {_number(value)} {scope}", at))
    if not effective and len(found) == 1:
        found.append(_match("no limit applies", None))
    return found


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _classify(ctx: RequestContext, loaded: LoadedPolicy) -> list[Match]:
    policy = loaded.policy.classification
    if not policy.enabled:
        return [_match("classification is disabled", loaded.where("classification", "enabled"))]
    verdict = ctx.classification
    if verdict is None:
        return []
    found: list[Match] = []
    for entity, count in sorted(verdict.entity_counts.items()):
        entity_level = level_of(entity, policy)
        label = entity_level.label if entity_level else "?"
        found.append(_match(f"{entity} x{count}: {label}", _entity_source(entity, loaded)))
    for path, finding in sorted(verdict.findings, key=lambda f: (str(f[0]), f[1].start)):
        where = ".".join(str(p) for p in path)
        found.append(
            _match(
                f"  {finding.entity} at {where}[{finding.start}:{finding.end}] "
                f"({finding.detector}, score {finding.score:.2f})",
                None,
            )
        )
    if not verdict.findings:
        found.append(_match("nothing sensitive found: level public", None))
    level = verdict.level.label
    assert ctx.principal is not None
    override = [role for role in ctx.principal.roles if level in policy.role_actions.get(role, {})]
    if override:
        for role in override:
            action = policy.role_actions[role][level]
            at = loaded.where("classification", "role_actions", role, level)
            found.append(_match(f"level {level} -> {action} for role {role}", at))
    else:
        at = loaded.where("classification", "actions", level)
        found.append(_match(f"level {level} -> {verdict.action}", at or "default"))
    return found


def _entity_source(entity: str, loaded: LoadedPolicy) -> str | None:
    policy = loaded.policy.classification
    if entity in policy.levels:
        return loaded.where("classification", "levels", entity)
    for index, recognizer in enumerate(policy.recognizers):
        if recognizer.entity == entity:
            return loaded.where("classification", "recognizers", index)
    if entity in SECRET_ENTITIES:
        return "built-in secret rule (restricted)"
    return None


def _route(ctx: RequestContext, loaded: LoadedPolicy) -> list[Match]:
    policy = loaded.policy
    found: list[Match] = []
    route = ctx.route
    sensitive = ctx.classification is not None and ctx.classification.action == "reroute"
    if sensitive:
        target = policy.classification.sensitive_route
        at = loaded.where("classification", "sensitive_route")
        found.append(_match(f"action reroute: sensitive route {target}", at))
    target = route.model if route else ctx.requested_model
    if target in policy.models:
        found.append(_match(f"model {target}", loaded.where("models", target)))
        provider = policy.models[target].provider
        trust = policy.providers[provider].trust_level
        found.append(_match(f"provider {provider} ({trust})", loaded.where("providers", provider)))
    elif not sensitive:
        found.append(_match(f"model {target}: not defined in the policy", None))
    return found


def render(explanation: dict[str, Any]) -> str:
    """The explanation for a terminal: one block per filter, locations in a right column."""
    policy, request = explanation["policy"], explanation["request"]
    lines = [
        f"policy   {policy['source']} (version {policy['version'][:12]})",
        f"request  {request['subject']} [{', '.join(request['roles'])}] "
        f"({request['auth_method']}) {request['endpoint']} {request['model']}",
        "",
    ]
    for step in explanation["steps"]:
        reason = f"  {step['reason']}" if step["reason"] else ""
        lines.append(f"{step['filter']:<12} {step['verdict']:<11}{reason}".rstrip())
        for match in step["matched"]:
            at = match["at"] or ""
            lines.append(f"    {match['what']:<58} {at}".rstrip())
    outcome = explanation["outcome"]
    summary = f"{outcome['decision']} ({outcome['status']}"
    summary += f", {outcome['code']})" if outcome["code"] else ")"
    if outcome["route"]:
        summary += f" -> {outcome['route_model']} on {outcome['provider']} ({outcome['route']})"
    if outcome["level"]:
        summary += f"; level {outcome['level']}, action {outcome['action']}"
    lines += ["", f"outcome  {summary}"]
    return "\n".join(lines)
