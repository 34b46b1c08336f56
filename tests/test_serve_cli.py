"""`sluice serve` as operators run it: a real process; SIGHUP reloads; broken edits survive."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from proxy.testing import FakeOpenAI
from tests.conftest import REPO, UPSTREAM_OPENAI_KEY, stop_process, wait_until_ready


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Served:
    def __init__(
        self, process: subprocess.Popen[bytes], url: str, policy_dir: Path, data_dir: Path
    ) -> None:
        self.process = process
        self.url = url
        self.policy_dir = policy_dir
        self.data_dir = data_dir

    def issue_token(self) -> str:
        """A personal token, issued the way an admin does it: `sluice token issue`."""
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "token", "issue", "--sub", "ops@corp.example"]
            + ["--role", "employee", "--ttl", "1h", "--policies", str(self.policy_dir)]
            + ["--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        token = result.stdout.strip()
        assert token.startswith("slc_")
        assert token not in result.stderr
        return token

    async def ready(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/ready") as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body


@pytest.fixture
async def served(tmp_path: Path, fake_openai: FakeOpenAI) -> AsyncIterator[Served]:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    for source in (REPO / "policies").glob("*.yaml"):
        shutil.copy(source, policy_dir / source.name)
    env = {
        **os.environ,
        "OPENAI_BASE_URL": fake_openai.url + "/v1",
        "OPENAI_API_KEY": UPSTREAM_OPENAI_KEY,
    }
    port = _free_port()
    command = [sys.executable, "-m", "proxy", "serve", "--port", str(port)]
    data_dir = tmp_path / "var"
    command += ["--policies", str(policy_dir), "--reload-interval", "0"]
    command += ["--data-dir", str(data_dir)]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    served = Served(process, f"http://127.0.0.1:{port}", policy_dir, data_dir)
    try:
        await wait_until_ready(process, served.url)
        yield served
    finally:
        stop_process(process)
        assert process.stderr is not None
        process.stderr.close()


async def _until_ready(served: Served, key: str, predicate: Any) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            body = await served.ready()
            if predicate(body[key]):
                return body
            await asyncio.sleep(0.05)


async def test_broken_edit_keeps_last_good_policy_and_ready_says_so(served: Served) -> None:
    first = await served.ready()
    assert first["last_reload_error"] is None
    token = served.issue_token()
    client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=token, max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]

    providers = served.policy_dir / "providers.yaml"
    good_text = providers.read_text()
    providers.write_text(
        good_text.replace("    kind: openai\n", "    kind: openai\n    bogus: 1\n")
    )
    served.process.send_signal(signal.SIGHUP)
    broken = await _until_ready(served, "last_reload_error", lambda e: e is not None)
    assert broken["policy_version"] == first["policy_version"]
    assert "providers.yaml:6:5: providers.openai.bogus" in broken["last_reload_error"]
    answer = await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert answer.choices[0].message.content

    models = served.policy_dir / "models.yaml"
    providers.write_text(good_text)
    models.write_text(
        models.read_text().replace("  gpt-4.1:", "  gpt-5: {provider: openai}\n  gpt-4.1:")
    )
    served.process.send_signal(signal.SIGHUP)
    fixed = await _until_ready(served, "policy_version", lambda v: v != first["policy_version"])
    assert fixed["last_reload_error"] is None
    answer = await client.chat.completions.create(model="gpt-5", messages=messages)
    assert answer.choices[0].message.content
    await client.close()

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=10) == 0
    assert served.process.stderr is not None
    logs = served.process.stderr.read().decode()
    assert "policy_reload_failed" in logs
    assert "policy_reloaded" in logs
    assert UPSTREAM_OPENAI_KEY not in logs
    assert token not in logs


def test_serve_refuses_to_start_on_a_broken_policy(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text("providers: {}\nmodels:\n  m: {provider: nowhere}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--port",
            str(_free_port()),
            "--policies",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "gateway.yaml:3:7:" in result.stderr
    assert "not starting" in result.stderr


async def test_the_audit_heads_it_logs_catch_records_cut_off_the_end(served: Served) -> None:
    """The chain cannot show its own end was cut off; the `audit_head` lines the gateway logs,
    kept elsewhere (here: a file of its log), can."""
    token = served.issue_token()
    client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=token, max_retries=0)
    for _ in range(3):
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    await client.close()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=10) == 0
    assert served.process.stderr is not None
    log_file = served.data_dir / "gateway.log"
    log_file.write_bytes(served.process.stderr.read())
    heads = [line for line in log_file.read_text().splitlines() if '"audit_head"' in line]
    assert len(heads) >= 2  # the first batch's, and the last one's at shutdown
    audit_dir = served.data_dir / "audit"

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", "audit", "verify", str(audit_dir), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )

    intact = verify("--anchors", str(log_file))
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert f"{len(heads)} of {len(heads)} anchor(s) found" in intact.stderr

    segment = sorted(audit_dir.glob("audit-*.jsonl"))[-1]
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:-2]))  # the last two records, whole lines
    assert verify().returncode == 0  # what the chain alone cannot see
    cut = verify("--anchors", str(log_file))
    assert cut.returncode == 1
    assert "records cut off its end" in cut.stdout
