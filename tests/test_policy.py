"""Policy files: checking with file:line:col, env expansion, hot reload that keeps the last good."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from proxy.policy.loader import PolicyError, Problem, load_policy
from proxy.testing import FakeOpenAI
from tests.conftest import REPO, Sluice

GOOD = """\
providers:
  openai:
    kind: openai
    base_url: "${BASE:-http://127.0.0.1:9/v1}"
    api_key: "${KEY:-}"
models:
  gpt-4o: {provider: openai}
"""


def _write(directory: Path, text: str, name: str = "gateway.yaml") -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def _check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "policy", "check", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_default_policies_check_clean() -> None:
    result = _check(REPO / "policies")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok:")


def test_check_reports_typo_with_line_and_suggestion(tmp_path: Path) -> None:
    _write(tmp_path, GOOD.replace("    api_key:", "    api_kye:"))
    result = _check(tmp_path)
    assert result.returncode == 1
    assert "gateway.yaml:5:5: providers.openai.api_kye: unknown key 'api_kye'" in result.stdout
    assert "did you mean 'api_key'" in result.stdout


def test_check_reports_dangling_provider(tmp_path: Path) -> None:
    _write(tmp_path, GOOD.replace("gpt-4o: {provider: openai}", "gpt-4o: {provider: opneai}"))
    result = _check(tmp_path)
    assert result.returncode == 1
    assert "gateway.yaml:7:12:" in result.stdout
    assert "names provider 'opneai', which is not defined" in result.stdout


def test_check_reports_yaml_syntax_error(tmp_path: Path) -> None:
    _write(tmp_path, GOOD + "  broken: [1, 2\n")
    result = _check(tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("gateway.yaml:9:")
    assert "YAML syntax" in result.stdout


def test_check_reports_bad_values(tmp_path: Path) -> None:
    _write(tmp_path, GOOD.replace("kind: openai", "kind: openia"))
    problems = _problems(tmp_path)
    assert any(p.line == 3 and "providers.openai.kind" in p.message for p in problems)


def _problems(directory: Path) -> list[Problem]:
    with pytest.raises(PolicyError) as caught:
        load_policy(directory, environ={})
    return list(caught.value.problems)


def test_unset_variable_without_default_is_a_problem(tmp_path: Path) -> None:
    _write(tmp_path, GOOD.replace("${KEY:-}", "${SLUICE_TEST_UNSET_KEY}"))
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path, environ={})
    [problem] = caught.value.problems
    assert "SLUICE_TEST_UNSET_KEY is not set" in problem.message
    assert (problem.line, problem.column) == (5, 14)


def test_environment_expansion_and_version(tmp_path: Path) -> None:
    _write(tmp_path, GOOD)
    first = load_policy(tmp_path, environ={"BASE": "http://upstream.internal/v1", "KEY": "k1"})
    provider = first.policy.providers["openai"]
    assert provider.base_url == "http://upstream.internal/v1"
    assert provider.api_key is not None and provider.api_key.get_secret_value() == "k1"
    same = load_policy(tmp_path, environ={"BASE": "http://upstream.internal/v1", "KEY": "k1"})
    other = load_policy(tmp_path, environ={"BASE": "http://upstream.internal/v1", "KEY": "k2"})
    assert first.version == same.version != other.version
    defaulted = load_policy(tmp_path, environ={})
    assert defaulted.policy.providers["openai"].api_key is None


def test_sections_merge_across_files_and_duplicates_are_reported(tmp_path: Path) -> None:
    _write(tmp_path, GOOD)
    _write(tmp_path, "models:\n  gpt-4o-mini: {provider: openai}\n", "more.yaml")
    assert set(load_policy(tmp_path, environ={}).policy.models) == {"gpt-4o", "gpt-4o-mini"}
    _write(tmp_path, "models:\n  gpt-4o: {provider: openai}\n", "more.yaml")
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path, environ={})
    [problem] = caught.value.problems
    assert problem.file == "more.yaml" and problem.line == 2
    assert "already defined in gateway.yaml:7" in problem.message


def test_problems_never_echo_secret_values(tmp_path: Path) -> None:
    _write(tmp_path, GOOD.replace('"${KEY:-}"', "{nested: x}"))
    secret_env = {"BASE": "not-a-url-sk-secret-value"}
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path, environ=secret_env)
    text = "\n".join(str(p) for p in caught.value.problems)
    assert "base_url" in text
    assert "sk-secret-value" not in text


async def test_hot_reload_on_file_change(sluice: Sluice, openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await openai_client.chat.completions.create(model="gpt-5", messages=[])
    models = sluice.policy_dir / "models.yaml"
    models.write_text(
        models.read_text().replace("  gpt-4.1:", "  gpt-5: {provider: openai}\n  gpt-4.1:")
    )
    await _until(lambda: "gpt-5" in sluice.store.current.policy.models)
    answer = await openai_client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content


async def test_broken_reload_keeps_last_good_policy(
    sluice: Sluice, openai_client: openai.AsyncOpenAI
) -> None:
    version = sluice.store.current.version
    providers = sluice.policy_dir / "providers.yaml"
    providers.write_text(providers.read_text().replace("kind: openai", "kind: [broken"))
    await _until(lambda: sluice.store.last_error is not None)
    assert sluice.store.current.version == version
    answer = await openai_client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "still works"}]
    )
    assert answer.choices[0].message.content


async def test_request_keeps_the_snapshot_it_started_with(
    sluice: Sluice, openai_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.behaviour.delay_s = 0.5
    slow = asyncio.create_task(
        openai_client.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "slow"}]
        )
    )
    await _until(lambda: len(fake_openai.received) == 1)
    models = sluice.policy_dir / "models.yaml"
    lines = models.read_text().splitlines(keepends=True)
    models.write_text("".join(line for line in lines if not line.startswith("  gpt-4.1:")))
    assert sluice.store.reload()
    assert "gpt-4.1" not in sluice.store.current.policy.models
    answer = await slow
    assert answer.choices[0].message.content == fake_openai.behaviour.reply_text
    with pytest.raises(openai.NotFoundError):
        await openai_client.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "after"}]
        )


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
