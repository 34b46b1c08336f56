"""`sluice dashboard serve`: the dashboard as a process of its own, next to a gateway whose
policy turns its own dashboard off, both real processes on one data directory."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import openai

from proxy.testing import FakeOpenAI
from tests.conftest import (
    REPO,
    UPSTREAM_OPENAI_KEY,
    enable_dashboard,
    stop_process,
    wait_until_ready,
)
from tests.test_serve_cli import _free_port


def _issue(policy_dir: Path, data_dir: Path, subject: str, role: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "token", "issue", "--sub", subject, "--role", role]
        + ["--ttl", "1h", "--policies", str(policy_dir), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


async def test_dashboard_process_shows_what_the_gateway_recorded(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    for source in (REPO / "policies").glob("*.yaml"):
        shutil.copy(source, policy_dir / source.name)
    enable_dashboard(policy_dir, None, enabled=False)  # the gateway leaves it to the other
    data_dir = tmp_path / "var"
    env = {
        **os.environ,
        "OPENAI_BASE_URL": fake_openai.url + "/v1",
        "OPENAI_API_KEY": UPSTREAM_OPENAI_KEY,
    }
    common = ["--policies", str(policy_dir), "--data-dir", str(data_dir)]
    gateway_port, dashboard_port = _free_port(), _free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--port", str(gateway_port), *common],
        env=env,
    )
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "proxy", "dashboard", "serve", "--port", str(dashboard_port)]
        + common,
        env=env,
    )
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    try:
        await wait_until_ready(gateway, gateway_url)
        await wait_until_ready(dashboard, dashboard_url)
        employee = _issue(policy_dir, data_dir, "ann@corp.example", "employee")
        security = _issue(policy_dir, data_dir, "sec@corp.example", "security")

        async with openai.AsyncOpenAI(
            base_url=gateway_url + "/v1", api_key=employee, max_retries=0
        ) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Hello"}]
            )
        request_id = raw.headers["x-request-id"]

        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            async with browser.get(gateway_url + "/dashboard/login") as page:
                assert page.status == 404  # not served by the gateway
            async with browser.get(dashboard_url + "/v1/models") as page:
                assert page.status == 404  # and no model endpoints here
            async with browser.get(dashboard_url + "/dashboard/login") as page:
                csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())
            assert csrf is not None
            async with browser.post(
                dashboard_url + "/dashboard/login/token",
                data={"csrf": csrf.group(1), "token": security},
                allow_redirects=False,
            ) as signed_in:
                assert signed_in.status == 303
            async with asyncio.timeout(20):  # the index polls the segments every second
                while True:
                    async with browser.get(
                        f"{dashboard_url}/dashboard/events/{request_id}"
                    ) as page:
                        text = await page.text()
                        if page.status == 200:
                            break
                    await asyncio.sleep(0.2)
            assert "ann@corp.example" in text and "gpt-4o" in text
    finally:
        stop_process(gateway)
        stop_process(dashboard)
