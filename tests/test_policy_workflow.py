"""The admin's policy workflow: `sluice policy test|explain|diff|replay` on the default policies.

Commands run as a user runs them (a `sluice` process) where that matters; the rest call the same
functions in-process with the session's classification worker, so spaCy loads once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.classify.pool import ClassifierPool
from proxy.cli import main
from proxy.context import Principal
from proxy.filters.classify import detector_config
from proxy.policy.diff import diff_policies
from proxy.policy.evaluate import WIRES, Judge, Request, request_body
from proxy.policy.explain import explain
from proxy.policy.loader import load_policy
from proxy.policy.replay import read_audit, render, replay
from proxy.policy.testcases import CaseError, load_cases, run_case
from tests.conftest import REPO

EMAIL_PROMPT = "Draft a reply to jane.roe@example.com about the invoice."


@pytest.fixture
async def pool(classifier_pool: ClassifierPool) -> ClassifierPool:
    """The session's worker, its detectors loaded (the first load outlasts the policy's
    classification time limit), as `sluice policy ...` warms its own."""
    classification = load_policy(REPO / "policies").policy.classification
    await classifier_pool.warm_up(detector_config(classification))
    return classifier_pool


def _sluice(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


def _copy_policies(target: Path) -> Path:
    target.mkdir(parents=True)
    for source in (REPO / "policies").glob("*.yaml"):
        shutil.copy(source, target / source.name)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new))


# --- sluice policy test ---------------------------------------------------------------------


def test_default_policy_cases_pass() -> None:
    result = _sluice("policy", "test", str(REPO / "policies"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout
    assert "FAIL" not in result.stdout
    # Every role the default policy defines has a case.
    cases = load_cases(REPO / "policies" / "tests")
    covered = {role for case in cases for role in case.request.principal.roles}
    assert set(load_policy(REPO / "policies").policy.roles) <= covered
    decisions = {case.case.expect.decision for case in cases}
    assert {"allowed", "rerouted", "blocked", "denied"} <= decisions


def test_failing_case_shows_expected_and_actual(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "wrong.yaml").write_text(
        yaml.safe_dump(
            {
                "cases": [
                    {
                        "name": "contractor may use gpt-4o (wrong on purpose)",
                        "request": {
                            "principal": {"roles": ["contractor"]},
                            "model": "gpt-4o",
                            "prompt": "Hello",
                        },
                        "expect": {"decision": "allowed", "status": 200},
                    },
                    {
                        "name": "employee may use gpt-4o",
                        "request": {
                            "principal": {"roles": ["employee"]},
                            "model": "gpt-4o",
                            "prompt": "Hello",
                        },
                        "expect": {"decision": "allowed", "route": "direct"},
                    },
                ]
            }
        )
    )
    result = _sluice("policy", "test", str(REPO / "policies"), "--cases", str(cases))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  contractor may use gpt-4o (wrong on purpose)" in result.stdout
    assert "decision: expected allowed, got denied" in result.stdout
    assert "status: expected 200, got 404" in result.stdout
    assert "PASS  employee may use gpt-4o" in result.stdout
    assert "1 passed, 1 failed" in result.stdout


def test_case_file_problems_name_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "cases:\n  - name: x\n    request: {principal: {roles: [employee]}, model: gpt-4o}\n"
        "    expect: {decison: allowed}\n"
    )
    with pytest.raises(CaseError) as raised:
        load_cases(tmp_path)
    assert any("bad.yaml: cases.0.expect.decison" in p for p in raised.value.problems)


async def test_mask_action_case(tmp_path: Path, pool: ClassifierPool) -> None:
    """The default policy masks nothing; a policy that does is tested the same way."""
    policies = _copy_policies(tmp_path / "policies")
    _edit(
        policies / "classification.yaml",
        "  # role_actions:",
        "  role_actions: {service: {confidential: mask}}\n  # role_actions:",
    )
    (policies / "tests").mkdir()
    (policies / "tests" / "prompt.txt").write_text("Contact jane.roe@example.com for access.")
    (policies / "tests" / "mask.yaml").write_text(
        yaml.safe_dump(
            {
                "cases": [
                    {
                        "name": "service embeddings are masked",
                        "request": {
                            "principal": {"roles": ["service"]},
                            "endpoint": "embeddings",
                            "model": "text-embedding-3-small",
                            "prompt_file": "prompt.txt",
                        },
                        "expect": {
                            "decision": "masked",
                            "allowed": True,
                            "route": "direct",
                            "action": "mask",
                            "masked": ["EMAIL_ADDRESS"],
                        },
                    }
                ]
            }
        )
    )
    judge = Judge(load_policy(policies), pool)
    [case] = load_cases(policies / "tests")
    result = await run_case(judge, case)
    assert result.passed, result.mismatches


# --- sluice policy explain ------------------------------------------------------------------


def test_explain_json_from_stdin() -> None:
    result = _sluice(
        "policy",
        "explain",
        "--policies",
        str(REPO / "policies"),
        "--subject",
        "alice@corp.example",
        "--role",
        "employee",
        "--model",
        "gpt-4o",
        "--json",
        "-",
        stdin=EMAIL_PROMPT,
    )
    assert result.returncode == 0, result.stderr
    explanation = json.loads(result.stdout)
    steps = {step["filter"]: step for step in explanation["steps"]}
    assert [s["filter"] for s in explanation["steps"]] == [
        "authn",
        "body_limits",
        "authz",
        "ratelimit",
        "classify",
        "route",
    ]
    authz = [m["what"].strip() + " @ " + str(m["at"]) for m in steps["authz"]["matched"]]
    assert "grants gpt-4o by pattern 'gpt-*' @ roles.yaml:5" in authz
    classify = steps["classify"]["matched"]
    assert any(
        m["what"].startswith("EMAIL_ADDRESS x1: confidential")
        and (m["at"] or "").startswith("classification.yaml:")
        for m in classify
    )
    assert any("level confidential -> reroute" in m["what"] for m in classify)
    assert explanation["outcome"]["decision"] == "rerouted"
    assert explanation["outcome"]["route_model"] == "llama-3.3-70b"
    # Positions only: the address itself is never printed.
    assert "jane.roe" not in result.stdout


async def test_explain_denial_marks_later_filters_not_reached(
    pool: ClassifierPool,
) -> None:
    judge = Judge(load_policy(REPO / "policies"), pool)
    wire = WIRES["chat"]
    principal = Principal("bob@vendor.example", ("contractor",), "token")
    request = Request(principal, wire, request_body(wire, "gpt-4o", prompt="Hello"))
    explanation = await explain(judge, request, "policies")
    verdicts = {s["filter"]: s["verdict"] for s in explanation["steps"]}
    assert verdicts == {
        "authn": "pass",
        "body_limits": "pass",
        "authz": "deny",
        "ratelimit": "not reached",
        "classify": "not reached",
        "route": "not reached",
    }
    authz = next(s for s in explanation["steps"] if s["filter"] == "authz")
    assert {"what": "  no model pattern matches gpt-4o", "at": "roles.yaml:15"} in authz["matched"]
    assert explanation["outcome"]["status"] == 404


# --- sluice policy diff ---------------------------------------------------------------------


def test_diff_tightening(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = _copy_policies(tmp_path / "new")
    _edit(new / "roles.yaml", 'models: ["llama-*"]', "models: []")
    _edit(new / "roles.yaml", "requests_per_minute: 20,", "requests_per_minute: 5,")
    _edit(new / "classification.yaml", "    confidential: reroute", "    confidential: block")
    _edit(new / "classification.yaml", "    LOCATION: internal", "    LOCATION: confidential")
    assert main(["policy", "diff", str(REPO / "policies"), str(new), "--json"]) == 0
    changes = json.loads(capsys.readouterr().out)
    summary = {(c["area"], c["subject"], c["change"], c["direction"]) for c in changes}
    assert summary == {
        ("roles", "contractor", "loses models llama-3.3-70b", "tightening"),
        ("roles", "contractor", "requests_per_minute 20 -> 5", "tightening"),
        ("classification", "confidential", "level confidential: reroute -> block", "tightening"),
        ("classification", "LOCATION", "LOCATION level internal -> confidential", "tightening"),
    }
    where = {c["change"]: c["where"] for c in changes}
    assert where["level confidential: reroute -> block"] == "classification.yaml:8"
    # Loosening nothing: the CI gate passes.
    assert main(["policy", "diff", str(REPO / "policies"), str(new), "--fail-on-loosening"]) == 0


def test_diff_loosening(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = _copy_policies(tmp_path / "new")
    _edit(new / "roles.yaml", 'models: ["llama-*"]', 'models: ["llama-*", "gpt-4o*"]')
    _edit(
        new / "roles.yaml",
        "endpoints: [chat, messages, models]",
        "endpoints: [chat, messages, embeddings, models]",
    )
    _edit(new / "roles.yaml", "      concurrent: 8\n", "")
    _edit(new / "classification.yaml", "    restricted: block ", "    restricted: reroute ")
    _edit(
        new / "classification.yaml",
        """    - entity: PROJECT_CODENAME
      level: confidential
      terms: ["Project Bluebird", "Nightjar"]
""",
        "",
    )
    old = load_policy(REPO / "policies")
    changes = diff_policies(old, load_policy(new))
    summary = {(c.area, c.subject, c.what, c.direction) for c in changes}
    assert summary == {
        ("roles", "contractor", "gains models gpt-4o, gpt-4o-mini", "loosening"),
        ("roles", "contractor", "gains endpoints embeddings", "loosening"),
        ("roles", "employee", "concurrent removed (was 8; now unlimited)", "loosening"),
        ("classification", "restricted", "level restricted: block -> reroute", "loosening"),
        ("classification", "PROJECT_CODENAME", "recognizer PROJECT_CODENAME removed", "loosening"),
    }
    assert main(["policy", "diff", str(REPO / "policies"), str(new), "--fail-on-loosening"]) == 1
    text = capsys.readouterr().out
    assert "loosens  roles contractor: gains models gpt-4o, gpt-4o-mini  (roles.yaml:13)" in text
    assert "5 change(s): 0 tightening, 5 loosening, 0 neutral" in text


def test_diff_of_identical_policies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "diff", str(REPO / "policies"), str(REPO / "policies")]) == 0
    assert "no semantic change" in capsys.readouterr().out


# --- sluice policy replay -------------------------------------------------------------------

# A FIXTURE written by hand to the shared audit record schema (BRIEF: "Shared audit record
# schema"), standing in for the audit log until the audit writer lands. Hash chaining is not
# computed: replay does not verify the chain.


def _request_record(
    request_id: str, roles: list[str], model: str, text: str, mode: str
) -> dict[str, Any]:
    content: object
    if mode in ("full", "redacted"):
        content = {"messages": [{"role": "user", "text": text}]}
    elif mode == "hash":
        content = [{"role": "user", "sha256": hashlib.sha256(text.encode()).hexdigest()}]
    else:
        content = None
    return {
        "v": 1,
        "kind": "request",
        "ts": 1763900000.0,
        "request_id": request_id,
        "principal": {
            "subject": f"{roles[0]}@corp.example",
            "roles": roles,
            "auth_method": "token",
            "issuer": None,
            "token_id": "tok_fixture",
        },
        "client": "127.0.0.1",
        "endpoint": "openai.chat",
        "requested_model": model,
        "stream": False,
        "policy_version": "0" * 64,
        "content_mode": mode,
        "content": content,
    }


def _response_record(
    request_id: str,
    decision: str,
    entities: dict[str, int],
    route_kind: str | None = "direct",
    trail: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "response",
        "ts": 1763900001.0,
        "request_id": request_id,
        "status": 200 if decision in ("allowed", "masked", "rerouted") else 429,
        "decision": decision,
        "ended": "completed" if decision != "denied" else "denied",
        "route": {"kind": route_kind, "model": "llama-3.3-70b", "provider": "onprem"}
        if route_kind
        else None,
        "level": "confidential" if entities else "public",
        "entities": entities,
        "trail": trail or [],
        "policy_version": "0" * 64,
        "shadow": None,
    }


def _write_audit_fixture(directory: Path) -> None:
    records = [
        {"v": 1, "kind": "segment_start", "request_id": None},
        # Contractors' confidential data, every content mode: rerouted at the time.
        _request_record("req_c_full", ["contractor"], "llama-3.3-70b", EMAIL_PROMPT, "full"),
        _response_record("req_c_full", "rerouted", {"EMAIL_ADDRESS": 1}, "sensitive"),
        _request_record("req_c_hash", ["contractor"], "llama-3.3-70b", EMAIL_PROMPT, "hash"),
        _response_record("req_c_hash", "rerouted", {"EMAIL_ADDRESS": 1}, "sensitive"),
        _request_record("req_c_none", ["contractor"], "llama-3.3-70b", EMAIL_PROMPT, "none"),
        _response_record("req_c_none", "rerouted", {"EMAIL_ADDRESS": 1}, "sensitive"),
        # An employee's: unaffected by a contractor rule.
        _request_record("req_e_full", ["employee"], "gpt-4o", EMAIL_PROMPT, "full"),
        _response_record("req_e_full", "rerouted", {"EMAIL_ADDRESS": 1}, "sensitive"),
        # Nothing sensitive: unchanged.
        _request_record("req_c_plain", ["contractor"], "llama-3.3-70b", "Write a haiku.", "full"),
        _response_record("req_c_plain", "allowed", {}),
        # Refused by a rate limit then: not replayable.
        _request_record("req_c_429", ["contractor"], "llama-3.3-70b", "Hello", "full"),
        _response_record(
            "req_c_429",
            "denied",
            {},
            None,
            [{"filter": "ratelimit", "verdict": "deny", "reason": "Rate limit", "ms": 0.1}],
        ),
    ]
    lines = [json.dumps(r) for r in records]
    (directory / "audit-000001.jsonl").write_text("\n".join(lines[:6]) + "\n")
    # A second segment, ending in a torn line (a crash mid-write).
    (directory / "audit-000002.jsonl").write_text("\n".join(lines[6:]) + '\n{"v": 1, "ki')


async def test_replay_groups_changed_decisions(tmp_path: Path, pool: ClassifierPool) -> None:
    audit = tmp_path / "audit"
    audit.mkdir()
    _write_audit_fixture(audit)
    new = _copy_policies(tmp_path / "new")
    _edit(
        new / "classification.yaml",
        "  # role_actions:",
        "  role_actions: {contractor: {confidential: block}}\n  # role_actions:",
    )
    report = await replay(Judge(load_policy(new), pool), read_audit(audit))
    assert report.read == 6
    assert report.replayed == 5
    assert report.unchanged == 2
    [group] = report.ordered()
    assert (group.before, group.after, group.count) == ("rerouted", "blocked", 3)
    assert dict(group.roles) == {"contractor": 3}
    assert dict(group.entities) == {"EMAIL_ADDRESS": 3}
    assert sorted(group.examples) == ["req_c_full", "req_c_hash", "req_c_none"]
    assert report.skipped == {"refused by a rate limit at the time (depends on traffic timing)": 1}
    assert report.unreadable_lines == 1
    text = render(report)
    assert "3 rerouted -> blocked (roles: contractor; entities: EMAIL_ADDRESS;" in text
    assert "hash (1 request(s)): detectors could not re-run" in text
    assert "none (1 request(s)): detectors could not re-run" in text
    assert "jane.roe" not in text


async def test_replay_under_the_same_policy_changes_nothing(
    tmp_path: Path, pool: ClassifierPool
) -> None:
    audit = tmp_path / "audit"
    audit.mkdir()
    _write_audit_fixture(audit)
    report = await replay(Judge(load_policy(REPO / "policies"), pool), read_audit(audit))
    assert report.changed == 0
    assert report.unchanged == 5


def test_replay_command_json(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    audit.mkdir()
    _write_audit_fixture(audit)
    new = _copy_policies(tmp_path / "new")
    _edit(new / "roles.yaml", 'models: ["llama-*"]', "models: []")
    result = _sluice("policy", "replay", "--audit", str(audit), "--policy", str(new), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["policy_version"] == load_policy(new).version
    assert report["audit_files"] == ["audit-000001.jsonl", "audit-000002.jsonl"]
    assert [(c["from"], c["to"], c["count"]) for c in report["changes"]] == [
        ("rerouted", "denied", 3),
        ("allowed", "denied", 1),
    ]
    assert report["content_modes"] == {"full": 3, "hash": 1, "none": 1}
    assert any(line.startswith("hash (1 request(s))") for line in report["not_rerun"])


def test_replay_of_a_missing_audit_dir_says_so(tmp_path: Path) -> None:
    result = _sluice(
        "policy", "replay", "--audit", str(tmp_path / "nope"), "--policy", str(REPO / "policies")
    )
    assert result.returncode == 1
    assert "is not a directory" in result.stderr


def test_diff_reports_what_models_serve_and_fall_back_to(tmp_path: Path) -> None:
    new = _copy_policies(tmp_path / "new")
    _edit(new / "models.yaml", "endpoints: [chat, responses]", "endpoints: [chat, embeddings]")
    _edit(
        new / "models.yaml",
        "  llama-3.3-70b:\n    provider: onprem\n",
        "  llama-3.3-70b:\n    provider: onprem\n    fallbacks: [gpt-4o]\n",
    )
    changes = diff_policies(load_policy(REPO / "policies"), load_policy(new))
    summary = {(c.area, c.subject, c.what, c.direction) for c in changes}
    assert summary == {
        ("models", "llama-3.3-70b", "serves embeddings too", "loosening"),
        ("models", "llama-3.3-70b", "no longer serves responses", "tightening"),
        ("models", "llama-3.3-70b", "fallbacks none -> gpt-4o", "neutral"),
    }
