"""Filter `route`: picks the provider that serves the requested model. Always last before egress.

Unknown models get 404 `model_not_found`. A provider that does not speak the request's wire format
is called through a translation (Anthropic Messages <-> OpenAI chat) when one exists, and a
request feature the translation cannot carry gets a 400 naming it; with no translation, a 400
names the endpoint to use. `fallback_routes` lists where the handler may turn when the chosen
provider fails before answering.
"""

from __future__ import annotations

from proxy.context import Deny, RequestContext, Route, WireFormat, model_not_found
from proxy.errors import ErrorKind
from proxy.filters.authz import granted_roles, may_use_model
from proxy.policy.model import ModelConfig, ProviderConfig
from proxy.upstream.registry import upstream_class
from proxy.upstream.translate import Untranslatable, translate_request, upstream_wire_for


class ModelRoute:
    """Decides on the policy's `models` and `providers` sections and the requested model."""

    name = "route"

    async def on_request(self, ctx: RequestContext) -> Deny | None:
        policy = ctx.policy.policy
        target, kind = ctx.requested_model, "direct"
        if ctx.classification is not None and ctx.classification.action == "reroute":
            # Sensitive data goes to the self-hosted model, never to a cloud provider.
            target, kind = policy.classification.sensitive_route or "", "sensitive"
        model = policy.models.get(target)
        if model is None:
            if kind == "sensitive":
                return _no_internal_route(ctx, "no sensitive route is configured")
            return model_not_found(ctx.requested_model)
        provider = policy.providers[model.provider]
        if kind == "sensitive" and provider.trust_level != "internal":
            return _no_internal_route(ctx, "the sensitive route is not an internal provider")
        served = model_serves(model, provider)
        wire = upstream_wire_for(ctx.wire, served)
        if wire is None:
            if kind == "sensitive":
                return _no_internal_route(ctx, f"no internal model serves {ctx.wire.path}")
            paths = ", ".join(sorted(w.path for w in served))
            return Deny(
                ErrorKind.INVALID_REQUEST,
                f"The model `{ctx.requested_model}` is not served on {ctx.wire.path}; use {paths}.",
                param="model",
            )
        route = Route(
            model=target,
            provider=model.provider,
            upstream_model=model.upstream_model or target,
            kind=kind,
            upstream_wire=wire,
        )
        if route.translates(ctx.wire):
            deny = _check_translation(ctx, route)
            if deny is not None:
                return deny
        ctx.route = route
        ctx.answer_headers["x-sluice-route"] = kind
        return None


def model_serves(model: ModelConfig, provider: ProviderConfig) -> frozenset[WireFormat]:
    """The wire formats `model` is called in: its provider's, narrowed by the model's own
    `endpoints` when the policy names them."""
    served = upstream_class(provider).serves
    if model.endpoints is None:
        return served
    return frozenset(w for w in served if w.endpoint in model.endpoints)


def _check_translation(ctx: RequestContext, route: Route) -> Deny | None:
    """Refuse here, before egress, what the provider's wire format cannot carry. The body is
    translated again for sending: cheap (strings are shared, not copied), and it keeps the
    context free of a second copy of the request."""
    assert route.upstream_wire is not None
    try:
        translated = translate_request(
            ctx.wire, route.upstream_wire, ctx.body, route.upstream_model
        )
    except Untranslatable as exc:
        target = route.upstream_wire.path
        if route.kind == "sensitive":
            assert ctx.classification is not None
            message = (
                "This request contains data that must stay on the company's own models "
                f"({', '.join(ctx.classification.entity_types)}), which are reached through a "
                f"translation to {target}: {exc.detail}, so it cannot be carried. It was not sent."
            )
        else:
            message = (
                f"The model `{ctx.requested_model}` is served through a translation to {target}: "
                f"{exc.detail}, so it cannot be carried. Remove it or use another model."
            )
        return Deny(
            ErrorKind.INVALID_REQUEST, message, param=exc.param, code="untranslatable_feature"
        )
    ctx.answer_headers["x-sluice-translated"] = f"{ctx.wire.value}->{route.upstream_wire.value}"
    if translated.dropped:
        ctx.answer_headers["x-sluice-translation-dropped"] = ",".join(translated.dropped)
    return None


def _no_internal_route(ctx: RequestContext, why: str) -> Deny:
    """Sensitive data with nowhere internal to go is refused, never sent to a cloud provider."""
    assert ctx.classification is not None
    return Deny(
        ErrorKind.INVALID_REQUEST,
        "This request contains data that must stay on the company's own models "
        f"({', '.join(ctx.classification.entity_types)}), and {why}; it was not sent.",
        code="sensitive_data_no_internal_route",
    )


def fallback_routes(ctx: RequestContext) -> list[Route]:
    """The route model's `fallbacks`, in policy order, that this request may take.

    Sensitive traffic keeps to internal providers (the admin chose where it may go, as for
    `sensitive_route`); other traffic only to models the caller's roles grant. A model whose
    provider cannot carry the request (no translation, or a feature the translation refuses) is
    skipped.
    """
    assert ctx.route is not None, "fallbacks follow the route the filter chose"
    policy = ctx.policy.policy
    sensitive = ctx.route.kind == "sensitive"
    principal = ctx.principal
    roles = granted_roles(principal, policy) if principal is not None else []
    routes: list[Route] = []
    for name in policy.models[ctx.route.model].fallbacks:
        model = policy.models[name]
        provider = policy.providers[model.provider]
        if sensitive and provider.trust_level != "internal":
            continue
        if not sensitive and (principal is None or not may_use_model(name, principal, roles)):
            continue
        wire = upstream_wire_for(ctx.wire, model_serves(model, provider))
        if wire is None:
            continue
        route = Route(
            model=name,
            provider=model.provider,
            upstream_model=model.upstream_model or name,
            kind="fallback",
            upstream_wire=wire,
        )
        if route.translates(ctx.wire) and not _translatable(ctx, route):
            continue
        routes.append(route)
    return routes


def _translatable(ctx: RequestContext, route: Route) -> bool:
    assert route.upstream_wire is not None
    try:
        translate_request(ctx.wire, route.upstream_wire, ctx.body, route.upstream_model)
    except Untranslatable:
        return False
    return True
