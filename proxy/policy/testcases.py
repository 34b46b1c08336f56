"""`sluice policy test`: test cases for a policy, in YAML beside it (`policies/tests/*.yaml`).

Each case is a request (who, which endpoint and model, what text) and the outcome the policy
must give it; cases run offline through the serving pipeline (see `evaluate.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from proxy.context import Principal
from proxy.policy.evaluate import WIRES, Judge, Request, request_body
from proxy.policy.outcome import Outcome, outcome_of

Decision = Literal["allowed", "masked", "rerouted", "blocked", "denied", "failed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CasePrincipal(_Strict):
    subject: str = "test@corp.example"
    roles: tuple[str, ...]
    auth_method: Literal["oidc", "token"] = "token"
    models: tuple[str, ...] | None = None  # a personal token's own narrower model globs


class CaseRequest(_Strict):
    principal: CasePrincipal
    endpoint: Literal["chat", "messages", "embeddings", "responses"] = "chat"
    model: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    prompt_file: str | None = None  # relative to the case file
    body: dict[str, Any] = {}  # more fields of the request body (tools, stream, ...)
    repeat: int = Field(default=1, ge=1, le=10_000)  # to reach a rate limit: the last counts

    @model_validator(mode="after")
    def _one_text(self) -> CaseRequest:
        given = [n for n in ("messages", "prompt", "prompt_file") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of messages, prompt, prompt_file (got {given})")
        return self


class Expect(_Strict):
    """Only what is given is checked."""

    allowed: bool | None = None  # forwarded at all (as it is, masked or rerouted)
    decision: Decision | None = None
    status: int | None = None
    code: str | None = None
    denied_by: str | None = None
    route: Literal["direct", "sensitive", "fallback"] | None = None
    route_model: str | None = None
    level: Literal["public", "internal", "confidential", "restricted"] | None = None
    action: Literal["allow", "mask", "reroute", "block"] | None = None
    entities: tuple[str, ...] | None = None  # the entity types found, exactly
    masked: tuple[str, ...] | None = None  # the entity types masked, exactly


class Case(_Strict):
    name: str
    description: str | None = None
    request: CaseRequest
    expect: Expect


class CaseFile(_Strict):
    cases: list[Case]


@dataclass(frozen=True, slots=True)
class LoadedCase:
    file: Path
    case: Case
    request: Request
    repeat: int


@dataclass(frozen=True, slots=True)
class Result:
    case: LoadedCase
    outcome: Outcome
    mismatches: tuple[tuple[str, object, object], ...]  # (field, expected, actual)

    @property
    def passed(self) -> bool:
        return not self.mismatches


class CaseError(Exception):
    """Case files that do not load; each problem names the file and the case."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the test cases")
        self.problems = problems


def case_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.glob("*.y*ml") if p.is_file() and p.suffix in (".yaml", ".yml")
    )


def load_cases(directory: Path) -> list[LoadedCase]:
    """Every case in `directory`'s YAML files; raise `CaseError` listing every problem."""
    problems: list[str] = []
    loaded: list[LoadedCase] = []
    files = case_files(directory) if directory.is_dir() else []
    if not files:
        raise CaseError([f"{directory}: no *.yaml test case files"])
    for path in files:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
            parsed = CaseFile.model_validate(document)
        except yaml.YAMLError as exc:
            problems.append(f"{path}: YAML syntax: {exc}")
            continue
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"])
                message = str(error["msg"]).removeprefix("Value error, ")
                problems.append(f"{path}: {where}: {message}")
            continue
        for index, case in enumerate(parsed.cases):
            try:
                loaded.append(_loaded(path, case))
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{path}: cases.{index} ({case.name}): {exc}")
    if problems:
        raise CaseError(problems)
    return loaded


def _loaded(path: Path, case: Case) -> LoadedCase:
    spec = case.request
    prompt = spec.prompt
    if spec.prompt_file is not None:
        prompt = (path.parent / spec.prompt_file).read_text(encoding="utf-8")
    wire = WIRES[spec.endpoint]
    body = request_body(wire, spec.model, messages=spec.messages, prompt=prompt, extra=spec.body)
    who = spec.principal
    principal = Principal(who.subject, who.roles, who.auth_method, models=who.models)
    return LoadedCase(path, case, Request(principal, wire, body), spec.repeat)


def compare(expect: Expect, outcome: Outcome) -> tuple[tuple[str, object, object], ...]:
    actual: dict[str, object] = {
        "allowed": outcome.allowed,
        "decision": outcome.decision,
        "status": outcome.status,
        "code": outcome.code,
        "denied_by": outcome.denied_by,
        "route": outcome.route_kind,
        "route_model": outcome.route_model,
        "level": outcome.level,
        "action": outcome.action,
        "entities": sorted(outcome.entities),
        "masked": sorted(outcome.masked),
    }
    mismatches: list[tuple[str, object, object]] = []
    for name, expected in expect.model_dump(exclude_none=True).items():
        if isinstance(expected, tuple | list):
            expected = sorted(expected)
        if expected != actual[name]:
            mismatches.append((name, expected, actual[name]))
    return tuple(mismatches)


async def run_case(judge: Judge, case: LoadedCase) -> Result:
    """The case on a pipeline of its own: rate-limit counts start from zero."""
    pipeline = judge.pipeline()
    for attempt in range(case.repeat):
        ctx, deny = await judge.run(case.request, pipeline, request_id=f"case-{attempt}")
    outcome = outcome_of(ctx, deny)
    return Result(case, outcome, compare(case.case.expect, outcome))


def render(results: list[Result], version: str) -> str:
    lines: list[str] = []
    current: Path | None = None
    for result in results:
        if result.case.file != current:
            current = result.case.file
            lines.append(str(current))
        mark = "PASS" if result.passed else "FAIL"
        lines.append(f"  {mark}  {result.case.case.name}")
        for name, expected, actual in result.mismatches:
            lines.append(f"        {name}: expected {_show(expected)}, got {_show(actual)}")
        if result.mismatches:
            lines.append(f"        outcome: {_summary(result.outcome)}")
    failed = sum(not r.passed for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed (policy version {version[:12]})")
    return "\n".join(lines)


def _show(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "none" if value is None else str(value)


def _summary(outcome: Outcome) -> str:
    parts = [outcome.decision, str(outcome.status)]
    if outcome.code:
        parts.append(outcome.code)
    if outcome.denied_by:
        parts.append(f"by {outcome.denied_by}")
    if outcome.route_kind:
        parts.append(f"route {outcome.route_kind} -> {outcome.route_model}")
    if outcome.level:
        parts.append(f"level {outcome.level}, action {outcome.action}")
    if outcome.entities:
        parts.append("entities " + ",".join(sorted(outcome.entities)))
    return "; ".join(parts)
