"""What a detector reports: an entity type at a span of a text. Never logged with its text.

Levels order sensitivity: a request's level is the highest level among its findings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import cast

from proxy.policy.model import LevelName


class Level(enum.IntEnum):
    PUBLIC = 0
    INTERNAL = 1
    CONFIDENTIAL = 2
    RESTRICTED = 3

    @classmethod
    def named(cls, name: str) -> Level:
        return cls[name.upper()]

    @property
    def label(self) -> LevelName:
        return cast(LevelName, self.name.lower())


@dataclass(frozen=True, slots=True)
class Finding:
    """An entity found in one text: its type, where it is, how sure the detector is."""

    entity: str  # e.g. "EMAIL_ADDRESS", "AWS_ACCESS_KEY_ID", "PROJECT_CODENAME"
    start: int
    end: int
    score: float
    detector: str  # "secret", "presidio", "org"
