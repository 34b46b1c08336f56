"""`sluice policy diff`: what a policy change means, not which lines moved.

Each change names its area and subject and, where it makes sense, whether it tightens (less is
allowed, more is checked) or loosens the policy. Secrets (API keys) are never compared in text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, get_args

from proxy.classify.decision import level_of
from proxy.policy.loader import LoadedPolicy
from proxy.policy.model import (
    ACTION_ORDER,
    Action,
    Classification,
    LevelName,
    Limits,
    ModelEndpoint,
    RoleConfig,
)

LIMIT_NAMES = tuple(Limits.model_fields)
LEVELS: tuple[LevelName, ...] = ("public", "internal", "confidential", "restricted")


@dataclass(frozen=True, slots=True)
class Change:
    area: str  # roles, limits, classification, providers, models, identity, request_limits
    subject: str  # the role, level, entity, model... the change is about
    what: str  # a sentence
    direction: str  # tightening | loosening | neutral
    where: str | None = None  # file:line in the new policy (the old one when removed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "subject": self.subject,
            "change": self.what,
            "direction": self.direction,
            "where": self.where,
        }


def diff_policies(old: LoadedPolicy, new: LoadedPolicy) -> list[Change]:
    """Every semantic change from `old` to `new`, area by area."""
    return [
        *_roles(old, new),
        *_limits(old, new),
        *_classification(old, new),
        *_providers_and_models(old, new),
        *_identity(old, new),
        *_request_limits(old, new),
    ]


def _at(old: LoadedPolicy, new: LoadedPolicy, *path: str | int) -> str | None:
    return new.where(*path) or old.where(*path)


def _listing(items: Iterable[str]) -> str:
    return ", ".join(sorted(items))


def _granted(role: RoleConfig, models: Iterable[str]) -> set[str]:
    return {m for m in models if any(fnmatchcase(m, p) for p in role.models)}


def _roles(old: LoadedPolicy, new: LoadedPolicy) -> list[Change]:
    changes: list[Change] = []
    a, b = old.policy, new.policy
    for name in sorted(set(a.roles) | set(b.roles)):
        at = _at(old, new, "roles", name)
        before, after = a.roles.get(name), b.roles.get(name)
        if before is None:
            assert after is not None
            granted = _listing(_granted(after, b.models)) or "no model"
            changes.append(
                Change("roles", name, f"role added (models: {granted})", "loosening", at)
            )
            continue
        if after is None:
            changes.append(Change("roles", name, "role removed", "tightening", at))
            continue
        gained = _granted(after, b.models) - _granted(before, a.models)
        lost = _granted(before, a.models) - _granted(after, b.models)
        if gained:
            changes.append(
                Change("roles", name, f"gains models {_listing(gained)}", "loosening", at)
            )
        if lost:
            changes.append(
                Change("roles", name, f"loses models {_listing(lost)}", "tightening", at)
            )
        if not gained and not lost and set(before.models) != set(after.models):
            added, removed = (
                set(after.models) - set(before.models),
                set(before.models) - set(after.models),
            )
            text = f"model patterns +[{_listing(added)}] -[{_listing(removed)}]"
            text += " (no defined model changes)"
            changes.append(Change("roles", name, text, "neutral", at))
        more, fewer = (
            set(after.endpoints) - set(before.endpoints),
            set(before.endpoints) - set(after.endpoints),
        )
        if more:
            changes.append(
                Change("roles", name, f"gains endpoints {_listing(more)}", "loosening", at)
            )
        if fewer:
            changes.append(
                Change("roles", name, f"loses endpoints {_listing(fewer)}", "tightening", at)
            )
        changes += _tools(name, before.tools, after.tools, at)
        changes += _limit_changes("roles", name, before.limits, after.limits, at)
    return changes


def _tools(
    role: str, before: tuple[str, ...] | None, after: tuple[str, ...] | None, at: str | None
) -> list[Change]:
    if before == after:
        return []
    if before is None:
        assert after is not None
        return [
            Change(
                "roles", role, f"tools restricted to {_listing(after)} (was any)", "tightening", at
            )
        ]
    if after is None:
        return [Change("roles", role, "tools: any tool allowed (was a list)", "loosening", at)]
    changes = []
    if added := set(after) - set(before):
        changes.append(Change("roles", role, f"gains tools {_listing(added)}", "loosening", at))
    if removed := set(before) - set(after):
        changes.append(Change("roles", role, f"loses tools {_listing(removed)}", "tightening", at))
    return changes


def _limit_changes(
    area: str, subject: str, before: Limits | None, after: Limits | None, at: str | None
) -> list[Change]:
    """Limit by limit: a limit set where there was none, or lowered, tightens."""
    changes = []
    for limit in LIMIT_NAMES:
        old_value = getattr(before, limit) if before else None
        new_value = getattr(after, limit) if after else None
        if old_value == new_value:
            continue
        if old_value is None:
            direction, text = "tightening", f"{limit} set to {new_value:g} (was unlimited)"
        elif new_value is None:
            direction, text = "loosening", f"{limit} removed (was {old_value:g}; now unlimited)"
        else:
            direction = "tightening" if new_value < old_value else "loosening"
            text = f"{limit} {old_value:g} -> {new_value:g}"
        changes.append(Change(area, subject, text, direction, at))
    return changes


def _limits(old: LoadedPolicy, new: LoadedPolicy) -> list[Change]:
    a, b = old.policy.limits, new.policy.limits
    changes: list[Change] = []
    if a.on_redis_failure != b.on_redis_failure:
        direction = "loosening" if b.on_redis_failure == "local" else "tightening"
        text = f"on_redis_failure {a.on_redis_failure} -> {b.on_redis_failure}"
        changes.append(Change("limits", "redis", text, direction, _at(old, new, "limits")))
    for section in ("users", "models", "global_models"):
        before: Mapping[str, Limits] = getattr(a, section)
        after: Mapping[str, Limits] = getattr(b, section)
        for key in sorted(set(before) | set(after)):
            at = _at(old, new, "limits", section, key)
            changes += _limit_changes(f"limits.{section}", key, before.get(key), after.get(key), at)
    return changes


def _action_change(before: Action, after: Action) -> str:
    return "tightening" if ACTION_ORDER.index(after) > ACTION_ORDER.index(before) else "loosening"


def _effective_action(policy: Classification, role: str, level: LevelName) -> Action:
    override = policy.role_actions.get(role, {})
    return override.get(level, policy.actions.get(level, "block"))


def _classification(old: LoadedPolicy, new: LoadedPolicy) -> list[Change]:
    a, b = old.policy.classification, new.policy.classification
    changes: list[Change] = []

    def at(*path: str | int) -> str | None:
        return _at(old, new, "classification", *path)

    if a.enabled != b.enabled:
        direction = "tightening" if b.enabled else "loosening"
        state = "enabled" if b.enabled else "disabled"
        changes.append(
            Change("classification", "enabled", f"classification {state}", direction, at("enabled"))
        )
    for level in LEVELS:
        before, after = a.actions.get(level, "block"), b.actions.get(level, "block")
        if before != after:
            text = f"level {level}: {before} -> {after}"
            changes.append(
                Change(
                    "classification",
                    level,
                    text,
                    _action_change(before, after),
                    at("actions", level),
                )
            )
    roles = sorted(set(old.policy.roles) | set(new.policy.roles))
    for role in roles:
        if role not in a.role_actions and role not in b.role_actions:
            continue
        for level in LEVELS:
            before = _effective_action(a, role, level)
            after = _effective_action(b, role, level)
            overridden = level in a.role_actions.get(role, {}) or level in b.role_actions.get(
                role, {}
            )
            if before != after and overridden:
                text = f"level {level} for role {role}: {before} -> {after}"
                direction = _action_change(before, after)
                changes.append(
                    Change(
                        "classification",
                        f"{role}/{level}",
                        text,
                        direction,
                        at("role_actions", role),
                    )
                )
    entities = sorted(
        set(a.levels) | set(b.levels) | {r.entity for r in (*a.recognizers, *b.recognizers)}
    )
    for entity in entities:
        before_level, after_level = level_of(entity, a), level_of(entity, b)
        if before_level == after_level:
            continue
        only_recognized = entity not in a.levels and entity not in b.levels
        if only_recognized and (before_level is None or after_level is None):
            continue  # a recognizer added or removed: said below
        where = at("levels", entity) or _recognizer_at(new, entity) or _recognizer_at(old, entity)
        if before_level is None:
            assert after_level is not None
            text = f"{entity} now looked for, level {after_level.label}"
            changes.append(Change("classification", entity, text, "tightening", where))
        elif after_level is None:
            text = f"{entity} no longer looked for (was {before_level.label})"
            changes.append(Change("classification", entity, text, "loosening", where))
        else:
            direction = "tightening" if after_level > before_level else "loosening"
            text = f"{entity} level {before_level.label} -> {after_level.label}"
            changes.append(Change("classification", entity, text, direction, where))
    changes += _recognizers(old, new)
    if a.sensitive_route != b.sensitive_route:
        text = f"sensitive_route {a.sensitive_route} -> {b.sensitive_route}"
        changes.append(
            Change("classification", "sensitive_route", text, "neutral", at("sensitive_route"))
        )
    if a.non_text != b.non_text:
        direction = "tightening" if b.non_text == "block" else "loosening"
        changes.append(
            Change(
                "classification",
                "non_text",
                f"non_text {a.non_text} -> {b.non_text}",
                direction,
                at("non_text"),
            )
        )
    if a.min_score != b.min_score:
        direction = "tightening" if b.min_score < a.min_score else "loosening"
        text = f"min_score {a.min_score:g} -> {b.min_score:g} (lower finds more)"
        changes.append(Change("classification", "min_score", text, direction, at("min_score")))
    if a.timeout_seconds != b.timeout_seconds:
        text = f"timeout_seconds {a.timeout_seconds:g} -> {b.timeout_seconds:g}"
        changes.append(
            Change("classification", "timeout_seconds", text, "neutral", at("timeout_seconds"))
        )
    return changes


def _recognizer_at(loaded: LoadedPolicy, entity: str) -> str | None:
    for index, recognizer in enumerate(loaded.policy.classification.recognizers):
        if recognizer.entity == entity:
            return loaded.where("classification", "recognizers", index)
    return None


def _recognizers(old: LoadedPolicy, new: LoadedPolicy) -> list[Change]:
    """Recognizers by entity: added ones find more (tightening), removed ones less."""
    a = {r.entity: (i, r) for i, r in enumerate(old.policy.classification.recognizers)}
    b = {r.entity: (i, r) for i, r in enumerate(new.policy.classification.recognizers)}
    changes = []
    for entity in sorted(set(a) | set(b)):
        if entity not in a:
            where = new.where("classification", "recognizers", b[entity][0])
            changes.append(
                Change("classification", entity, f"recognizer {entity} added", "tightening", where)
            )
        elif entity not in b:
            where = old.where("classification", "recognizers", a[entity][0])
            changes.append(
                Change("classification", entity, f"recognizer {entity} removed", "loosening", where)
            )
        else:
            before, after = a[entity][1], b[entity][1]
            where = new.where("classification", "recognizers", b[entity][0])
            if set(after.terms) != set(before.terms):
                added, removed = (
                    set(after.terms) - set(before.terms),
                    set(before.terms) - set(after.terms),
                )
                direction = (
                    "tightening"
                    if added and not removed
                    else ("loosening" if removed and not added else "neutral")
                )
                text = f"recognizer {entity} terms: {len(added)} added, {len(removed)} removed"
                changes.append(Change("classification", entity, text, direction, where))
            if (before.pattern, before.context, before.case_sensitive) != (
                after.pattern,
                after.context,
                after.case_sensitive,
            ):
                changes.append(
                    Change(
                        "classification",
                        entity,
                        f"recognizer {entity} pattern or context changed",
                        "neutral",
                        where,
                    )
                )
    return changes


def _providers_and_models(old: LoadedPolicy, new: LoadedPolicy) -> list[Change]:
    a, b = old.policy, new.policy
    changes: list[Change] = []
    for name in sorted(set(a.providers) | set(b.providers)):
        at = _at(old, new, "providers", name)
        before, after = a.providers.get(name), b.providers.get(name)
        if before is None:
            assert after is not None
            changes.append(
                Change(
                    "providers",
                    name,
                    f"provider added ({after.kind}, {after.trust_level})",
                    "neutral",
                    at,
                )
            )
        elif after is None:
            changes.append(Change("providers", name, "provider removed", "neutral", at))
        else:
            if before.trust_level != after.trust_level:
                # Internal providers may receive sensitive data.
                direction = "loosening" if after.trust_level == "internal" else "tightening"
                text = f"trust {before.trust_level} -> {after.trust_level}"
                changes.append(Change("providers", name, text, direction, at))
            if before.urls != after.urls or before.kind != after.kind:
                changes.append(Change("providers", name, "kind or address changed", "neutral", at))
            if before.api_key != after.api_key:
                changes.append(
                    Change("providers", name, "API key changed (value not shown)", "neutral", at)
                )
            if before.timeouts != after.timeouts:
                changes.append(Change("providers", name, "timeouts changed", "neutral", at))
    for name in sorted(set(a.models) | set(b.models)):
        at = _at(old, new, "models", name)
        m_before, m_after = a.models.get(name), b.models.get(name)
        if m_before is None:
            assert m_after is not None
            changes.append(
                Change("models", name, f"model added (provider {m_after.provider})", "neutral", at)
            )
        elif m_after is None:
            changes.append(Change("models", name, "model removed", "neutral", at))
        else:
            if m_before.provider != m_after.provider:
                text = f"provider {m_before.provider} -> {m_after.provider}"
                changes.append(Change("models", name, text, "neutral", at))
            if m_before.upstream_model != m_after.upstream_model:
                text = f"upstream_model {m_before.upstream_model} -> {m_after.upstream_model}"
                changes.append(Change("models", name, text, "neutral", at))
            if m_before.price != m_after.price:
                changes.append(Change("models", name, "price changed", "neutral", at))
            if m_before.fallbacks != m_after.fallbacks:
                text = (
                    f"fallbacks {', '.join(m_before.fallbacks) or 'none'} -> "
                    f"{', '.join(m_after.fallbacks) or 'none'}"
                )
                changes.append(Change("models", name, text, "neutral", at))
            changes.extend(_model_endpoints(name, m_before.endpoints, m_after.endpoints, at))
    return changes


def _model_endpoints(
    name: str,
    before: tuple[ModelEndpoint, ...] | None,
    after: tuple[ModelEndpoint, ...] | None,
    at: str | None,
) -> list[Change]:
    """The APIs a model answers (left out: all of them)."""
    every = set(get_args(ModelEndpoint))
    served_before = every if before is None else set(before)
    served_after = every if after is None else set(after)
    changes: list[Change] = []
    if more := served_after - served_before:
        changes.append(Change("models", name, f"serves {_listing(more)} too", "loosening", at))
    if fewer := served_before - served_after:
        changes.append(
            Change("models", name, f"no longer serves {_listing(fewer)}", "tightening", at)
        )
    return changes


def _identity(old: LoadedPolicy, new: LoadedPolicy) -> list[Change]:
    a, b = old.policy.identity, new.policy.identity
    changes: list[Change] = []
    at = _at(old, new, "identity")
    if a.personal_tokens.enabled != b.personal_tokens.enabled:
        direction = "loosening" if b.personal_tokens.enabled else "tightening"
        state = "enabled" if b.personal_tokens.enabled else "disabled"
        changes.append(
            Change("identity", "personal_tokens", f"personal tokens {state}", direction, at)
        )
    issuers_a = {i.issuer: i for i in a.oidc}
    issuers_b = {i.issuer: i for i in b.oidc}
    for issuer in sorted(set(issuers_a) | set(issuers_b)):
        if issuer not in issuers_a:
            changes.append(Change("identity", issuer, "OIDC issuer trusted", "loosening", at))
        elif issuer not in issuers_b:
            changes.append(
                Change("identity", issuer, "OIDC issuer no longer trusted", "tightening", at)
            )
        elif issuers_a[issuer] != issuers_b[issuer]:
            before_map, after_map = issuers_a[issuer].role_map, issuers_b[issuer].role_map
            if before_map != after_map:
                keys = sorted(
                    k
                    for k in set(before_map) | set(after_map)
                    if before_map.get(k) != after_map.get(k)
                )
                text = f"role_map changed for {', '.join(keys)}"
                changes.append(Change("identity", issuer, text, "neutral", at))
            else:
                changes.append(Change("identity", issuer, "issuer settings changed", "neutral", at))
    return changes


def _request_limits(old: LoadedPolicy, new: LoadedPolicy) -> list[Change]:
    a, b = old.policy.request_limits, new.policy.request_limits
    changes = []
    for name in ("max_body_bytes", "max_messages"):
        before, after = getattr(a, name), getattr(b, name)
        if before != after:
            direction = "tightening" if after < before else "loosening"
            at = _at(old, new, "request_limits", name)
            changes.append(
                Change("request_limits", name, f"{name} {before} -> {after}", direction, at)
            )
    return changes


def render(changes: list[Change], old: LoadedPolicy, new: LoadedPolicy) -> str:
    header = f"policy {old.version[:12]} -> {new.version[:12]}"
    if not changes:
        return header + ": no semantic change"
    marks = {"tightening": "tightens", "loosening": "loosens", "neutral": "changes"}
    lines = [header]
    for change in changes:
        at = f"  ({change.where})" if change.where else ""
        lines.append(
            f"  {marks[change.direction]:<8} {change.area} {change.subject}: {change.what}{at}"
        )
    counts = {d: sum(c.direction == d for c in changes) for d in marks}
    lines.append(
        f"{len(changes)} change(s): {counts['tightening']} tightening, "
        f"{counts['loosening']} loosening, {counts['neutral']} neutral"
    )
    return "\n".join(lines)
