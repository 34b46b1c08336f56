"""Reads a policy directory into a checked `Policy`, or a list of problems with file:line:col.

Expands `${VAR}` and `${VAR:-default}`, merges the files' sections and computes the version.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from proxy.policy.model import (
    Classification,
    Identity,
    Limits,
    ModelConfig,
    OidcIssuer,
    OrgRecognizer,
    PersonalTokens,
    Policy,
    PoolSettings,
    Price,
    ProviderConfig,
    RateLimits,
    RequestLimits,
    RoleConfig,
    Timeouts,
    reference_problems,
)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_KNOWN_KEYS = frozenset(
    name
    for model in (
        Policy,
        ProviderConfig,
        ModelConfig,
        RequestLimits,
        Timeouts,
        PoolSettings,
        RoleConfig,
        Identity,
        OidcIssuer,
        PersonalTokens,
        Limits,
        RateLimits,
        Price,
        Classification,
        OrgRecognizer,
    )
    for name in model.model_fields
)

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the policy, and where."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyError(Exception):
    """The policy directory does not load; `problems` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} policy problem(s)")
        self.problems = problems


Location = tuple[str, int, int]  # file name, line, column (1-based)


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    policy: Policy
    version: str
    files: tuple[str, ...]
    # Where each key and list item of the merged document was written, by its path
    # (("roles", "contractor", "models", 0) -> ("roles.yaml", 12, 14)): for explanations.
    locations: Mapping[Path_, Location] = field(default_factory=dict)

    def where(self, *path: str | int) -> str | None:
        """`file:line` of the policy entry at `path`, or None when it is not written (a
        default)."""
        found = self.locations.get(path)
        return f"{found[0]}:{found[1]}" if found else None


def policy_files(directory: Path) -> list[Path]:
    """The policy files of a directory: top-level `*.yaml`/`*.yml`, not hidden, sorted."""
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )


def load_policy(directory: Path, environ: Mapping[str, str] | None = None) -> LoadedPolicy:
    """Load and check every policy file in `directory`; raise `PolicyError` on any problem."""
    env = os.environ if environ is None else environ
    files = policy_files(directory)
    if not files:
        raise PolicyError([Problem(str(directory), 0, 0, "no *.yaml policy files found")])
    reader = _Reader(env)
    for path in files:
        reader.read_file(path)
    if reader.problems:
        raise PolicyError(reader.problems)
    try:
        policy = Policy.model_validate(reader.merged)
    except ValidationError as exc:
        raise PolicyError(
            [reader.problem_at(_loc(e), _describe(e)) for e in exc.errors()]
        ) from None
    problems = [reader.problem_at(path, message) for path, message in reference_problems(policy)]
    if problems:
        raise PolicyError(problems)
    canonical = json.dumps(reader.merged, sort_keys=True, separators=(",", ":"), default=str)
    version = hashlib.sha256(canonical.encode()).hexdigest()
    return LoadedPolicy(policy, version, tuple(p.name for p in files), dict(reader.locations))


def _loc(error: Mapping[str, Any]) -> Path_:
    return tuple(error["loc"])


def _describe(error: Mapping[str, Any]) -> str:
    # Never echo error["input"]: it may be an API key expanded from the environment.
    where = ".".join(str(part) for part in error["loc"]) or "policy"
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        hint = difflib.get_close_matches(key, _KNOWN_KEYS, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"{where}: unknown key {key!r}{suggestion}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


class _Reader:
    """Builds the merged document while remembering where each value came from."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.merged: dict[str, Any] = {}
        self.locations: dict[Path_, Location] = {}
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    def problem_at(self, path: Path_, message: str) -> Problem:
        # The nearest recorded ancestor stands in for a value that is missing.
        for end in range(len(path), -1, -1):
            where = self.locations.get(path[:end])
            if where is not None:
                return Problem(where[0], where[1], where[2], message)
        return Problem("policy", 0, 0, message)

    def read_file(self, path: Path) -> None:
        name = path.name
        try:
            root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
            self.problems.append(Problem(name, line, column, f"YAML syntax: {exc.problem}"))
            return
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            self.problems.append(Problem(name, 0, 0, f"cannot read: {type(exc).__name__}"))
            return
        if root is None:
            return
        if not isinstance(root, yaml.MappingNode):
            self.problems.append(Problem(name, *_position(root), "a policy file must be a mapping"))
            return
        found: dict[Path_, tuple[str, int, int]] = {}
        rejected: list[Path_] = []
        for key_node, value_node in root.value:
            section = str(key_node.value)
            found[(section,)] = (name, *_position(key_node))
            value = self._build(value_node, (section,), name, found)
            rejected += self._merge_section(section, value, found)
        for where, location in found.items():
            if not any(where[: len(r)] == r for r in rejected):
                self.locations.setdefault(where, location)

    def _merge_section(
        self, section: str, value: Any, found: Mapping[Path_, tuple[str, int, int]]
    ) -> list[Path_]:
        """Merge one file's section into the document; return the paths it could not take."""
        if section not in self.merged:
            self.merged[section] = value
            return []
        existing = self.merged[section]
        if not (isinstance(existing, dict) and isinstance(value, dict)):
            self._twice((section,), found)
            return [(section,)]
        rejected: list[Path_] = []
        for key, item in value.items():
            if key in existing:
                self._twice((section, key), found)
                rejected.append((section, key))
            else:
                existing[key] = item
        return rejected

    def _twice(self, path: Path_, found: Mapping[Path_, tuple[str, int, int]]) -> None:
        name, line, column = found[path]
        first = self.locations.get(path, ("another file", 0, 0))
        dotted = ".".join(str(p) for p in path)
        self.problems.append(
            Problem(name, line, column, f"{dotted} is already defined in {first[0]}:{first[1]}")
        )

    def _build(
        self, node: yaml.Node, path: Path_, name: str, found: dict[Path_, tuple[str, int, int]]
    ) -> Any:
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in result:
                    self.problems.append(
                        Problem(name, *_position(key_node), f"duplicate key {key!r}")
                    )
                    continue
                found[(*path, key)] = (name, *_position(key_node))
                result[key] = self._build(value_node, (*path, key), name, found)
            return result
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item_node in enumerate(node.value):
                found[(*path, index)] = (name, *_position(item_node))
                items.append(self._build(item_node, (*path, index), name, found))
            return items
        value = self._constructor.construct_object(node, deep=True)
        if isinstance(value, str):
            return self._expand(value, node, name)
        return value

    def _expand(self, value: str, node: yaml.Node, name: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            variable, default = match.group(1), match.group(2)
            found = self.env.get(variable)
            if found is not None and (found != "" or default is None):
                return found
            if default is not None:
                return default
            self.problems.append(
                Problem(
                    name,
                    *_position(node),
                    f"environment variable {variable} is not set "
                    f"(write ${{{variable}:-default}} to make it optional)",
                )
            )
            return ""

        return _ENV_REF.sub(substitute, value)


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1
