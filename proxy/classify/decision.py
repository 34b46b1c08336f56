"""Turns findings into a level and an action under the policy.

The request's level is the highest among its findings; the action comes from the policy's
`actions`, overridden per role (a caller with several roles gets the strictest override).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from proxy.classify.extract import Path
from proxy.classify.findings import Finding, Level
from proxy.classify.secrets import SECRET_ENTITIES
from proxy.policy.model import ACTION_ORDER, Action, Classification


@dataclass(frozen=True, slots=True)
class Classified:
    """The verdict on one request: level, action and what was found where (never the values)."""

    level: Level
    action: Action
    findings: tuple[tuple[Path, Finding], ...]

    @property
    def entity_counts(self) -> dict[str, int]:
        return dict(Counter(finding.entity for _, finding in self.findings))

    @property
    def entity_types(self) -> list[str]:
        return sorted(self.entity_counts)


def level_of(entity: str, policy: Classification) -> Level | None:
    """The entity's level; None for entity types the policy does not care about."""
    named = policy.levels.get(entity)
    if named is not None:
        return Level.named(named)
    for recognizer in policy.recognizers:
        if recognizer.entity == entity:
            return Level.named(recognizer.level)
    if entity in SECRET_ENTITIES:
        return Level.RESTRICTED
    return None


def decide(
    findings: list[tuple[Path, Finding]], roles: tuple[str, ...], policy: Classification
) -> Classified:
    # A request carries many findings of few types: look each type's level up once.
    levels: dict[str, Level | None] = {}
    kept: list[tuple[Path, Finding]] = []
    level = Level.PUBLIC
    min_score = policy.min_score
    for path, f in findings:
        if f.score < min_score:
            continue
        if f.entity in levels:
            found = levels[f.entity]
        else:
            found = levels[f.entity] = level_of(f.entity, policy)
        if found is not None:
            kept.append((path, f))
            if found > level:
                level = found
    action: Action = policy.actions.get(level.label, "block")
    overrides = [
        policy.role_actions[role][level.label]
        for role in roles
        if role in policy.role_actions and level.label in policy.role_actions[role]
    ]
    if overrides:
        action = max(overrides, key=ACTION_ORDER.index)
    return Classified(level, action, tuple(kept))
