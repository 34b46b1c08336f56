"""`sluice policy test|explain|diff|replay`: the admin's workflow for changing a policy.

Argument parsing and printing only; the work is in testcases.py, explain.py, diff.py and
replay.py. Exit codes as for every `sluice` command: 0 fine, 1 a finding or a problem, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from proxy.policy.loader import LoadedPolicy, PolicyError, load_policy


def add_workflow_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    test = commands.add_parser("test", help="run the policy's test cases offline")
    test.add_argument("directory", nargs="?", type=Path, default=Path("policies"))
    test.add_argument(
        "--cases", type=Path, help="directory of case files (default: DIRECTORY/tests)"
    )

    explain = commands.add_parser("explain", help="show how the policy decides one request")
    explain.add_argument("--policies", type=Path, default=Path("policies"))
    explain.add_argument("--subject", default="explain@corp.example")
    explain.add_argument("--role", action="append", required=True, help="a role (repeatable)")
    explain.add_argument("--model", required=True)
    explain.add_argument(
        "--endpoint", default="chat", choices=["chat", "messages", "embeddings", "responses"]
    )
    explain.add_argument("--auth-method", default="token", choices=["token", "oidc"])
    explain.add_argument(
        "prompt_file", nargs="?", help="the prompt: a file, or - for stdin (default: empty)"
    )
    explain.add_argument("--json", action="store_true")

    diff = commands.add_parser("diff", help="what changes between two policy directories")
    diff.add_argument("old", type=Path)
    diff.add_argument("new", type=Path)
    diff.add_argument("--json", action="store_true")
    diff.add_argument(
        "--fail-on-loosening", action="store_true", help="exit 1 if any change loosens the policy"
    )

    replay = commands.add_parser(
        "replay", help="re-judge the requests of an audit log under another policy"
    )
    replay.add_argument("--audit", type=Path, required=True, help="the audit log directory")
    replay.add_argument("--policy", type=Path, required=True, help="the policy to judge with")
    replay.add_argument("--json", action="store_true")
    replay.add_argument("--examples", type=int, default=3, help="request ids shown per group")


def run_workflow_command(args: argparse.Namespace) -> int:
    command: str = args.policy_command
    if command == "test":
        return asyncio.run(_test(args.directory, args.cases))
    if command == "explain":
        prompt = _read_prompt(args.prompt_file)
        return 1 if prompt is None else asyncio.run(_explain(args, prompt))
    if command == "diff":
        return _diff(args.old, args.new, args.json, args.fail_on_loosening)
    return asyncio.run(_replay(args))


def _load(directory: Path) -> LoadedPolicy | None:
    try:
        return load_policy(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"sluice: the policy in {directory} does not load", file=sys.stderr)
        return None


async def _test(directory: Path, cases_dir: Path | None) -> int:
    from proxy.policy.evaluate import Judge, open_pool
    from proxy.policy.testcases import CaseError, load_cases, render, run_case

    loaded = _load(directory)
    if loaded is None:
        return 1
    try:
        cases = load_cases(cases_dir or directory / "tests")
    except CaseError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    pool = await open_pool(loaded)
    try:
        judge = Judge(loaded, pool)
        results = [await run_case(judge, case) for case in cases]
    finally:
        await pool.close()
    print(render(results, loaded.version))
    return 0 if all(r.passed for r in results) else 1


def _read_prompt(source: str | None) -> str | None:
    if source == "-":
        return sys.stdin.read()
    if not source:
        return ""
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"sluice: cannot read {source}: {exc}", file=sys.stderr)
        return None


async def _explain(args: argparse.Namespace, prompt: str) -> int:
    from proxy.context import Principal
    from proxy.policy.evaluate import WIRES, Judge, Request, open_pool, request_body
    from proxy.policy.explain import explain, render

    loaded = _load(args.policies)
    if loaded is None:
        return 1
    wire = WIRES[args.endpoint]
    principal = Principal(args.subject, tuple(dict.fromkeys(args.role)), args.auth_method)
    request = Request(principal, wire, request_body(wire, args.model, prompt=prompt))
    pool = await open_pool(loaded)
    try:
        explanation = await explain(Judge(loaded, pool), request, str(args.policies))
    finally:
        await pool.close()
    if args.json:
        print(json.dumps(explanation, indent=2))
    else:
        print(render(explanation))
    return 0


def _diff(old_dir: Path, new_dir: Path, as_json: bool, fail_on_loosening: bool) -> int:
    from proxy.policy.diff import diff_policies, render

    old, new = _load(old_dir), _load(new_dir)
    if old is None or new is None:
        return 1
    changes = diff_policies(old, new)
    if as_json:
        print(json.dumps([c.as_dict() for c in changes], indent=2))
    else:
        print(render(changes, old, new))
    if fail_on_loosening and any(c.direction == "loosening" for c in changes):
        return 1
    return 0


async def _replay(args: argparse.Namespace) -> int:
    from proxy.policy.evaluate import Judge, open_pool
    from proxy.policy.replay import AuditError, read_audit, render, replay

    loaded = _load(args.policy)
    if loaded is None:
        return 1
    try:
        log = read_audit(args.audit)
    except AuditError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 1
    pool = await open_pool(loaded)
    try:
        report = await replay(Judge(loaded, pool), log, examples=args.examples)
    finally:
        await pool.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(render(report))
    return 0
