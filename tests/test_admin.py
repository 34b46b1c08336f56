"""Admin endpoints: `GET /admin/policy` and `POST /admin/reload`, for the admin role only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from proxy.classify.pool import ClassifierPool
from proxy.settings import Settings
from tests.conftest import Sluice, running_sluice


@pytest.fixture
async def gateway(
    policy_dir: Path, settings: Settings, classifier_pool: ClassifierPool
) -> AsyncIterator[Sluice]:
    """Sluice without the file watcher: only the admin endpoint reloads here."""
    async with running_sluice(policy_dir, settings, classifier_pool, watch_interval=0) as it:
        yield it


@pytest.fixture
async def admin_headers(gateway: Sluice) -> dict[str, str]:
    return {"Authorization": f"Bearer {await gateway.issue_token('admin', 'ops@corp.example')}"}


async def test_policy_status(gateway: Sluice, admin_headers: dict[str, str]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.url + "/admin/policy", headers=admin_headers) as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert body["policy_version"] == gateway.store.current.version
    assert body["policy_dir"] == str(gateway.policy_dir)
    assert "roles.yaml" in body["policy_files"]
    assert body["loaded_at"] == gateway.store.current.loaded_at
    assert body["last_reload_error"] is None
    assert body["shadow"] is None


async def test_without_credentials_401(gateway: Sluice) -> None:
    async with aiohttp.ClientSession() as session:
        for method, path in (("GET", "/admin/policy"), ("POST", "/admin/reload")):
            async with session.request(method, gateway.url + path) as response:
                assert response.status == 401
                body = await response.json()
                assert body["error"]["code"] == "invalid_api_key"
                assert response.headers["x-request-id"].startswith("req_")


async def test_without_admin_role_403(gateway: Sluice) -> None:
    token = await gateway.issue_token("employee")
    headers = {"Authorization": f"Bearer {token}"}
    version = gateway.store.current.version
    async with aiohttp.ClientSession() as session:
        for method, path in (("GET", "/admin/policy"), ("POST", "/admin/reload")):
            async with session.request(method, gateway.url + path, headers=headers) as response:
                assert response.status == 403
                body = await response.json()
                assert body["error"]["type"] == "permission_error"
                assert "admin role" in body["error"]["message"]
    assert gateway.store.current.version == version


async def test_reload_keeps_last_good_policy_and_then_applies_a_fix(
    gateway: Sluice, admin_headers: dict[str, str]
) -> None:
    roles = gateway.policy_dir / "roles.yaml"
    good = roles.read_text()
    before = gateway.store.current.version
    roles.write_text(good.replace("requests_per_minute: 20,", "requests_per_minut: 20,"))
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + "/admin/reload", headers=admin_headers) as response:
            assert response.status == 422
            body = await response.json()
        assert body["error"]["code"] == "policy_invalid"
        assert body["error"]["type"] == "invalid_request_error"
        assert any(
            p.startswith("roles.yaml:") and "requests_per_minut" in p for p in body["problems"]
        )
        assert body["policy_version"] == before
        assert gateway.store.current.version == before
        async with session.get(gateway.url + "/admin/policy", headers=admin_headers) as response:
            status = await response.json()
        assert "requests_per_minut" in status["last_reload_error"]

        roles.write_text(good.replace("requests_per_minute: 20,", "requests_per_minute: 30,"))
        async with session.post(gateway.url + "/admin/reload", headers=admin_headers) as response:
            assert response.status == 200
            body = await response.json()
        assert body["status"] == "reloaded"
        assert body["previous_version"] == before
        assert body["policy_version"] == gateway.store.current.version != before
        assert body["last_reload_error"] is None
        async with session.post(gateway.url + "/admin/reload", headers=admin_headers) as response:
            assert (await response.json())["status"] == "unchanged"


async def test_admin_role_removed_from_policy_revokes_access(
    gateway: Sluice, admin_headers: dict[str, str]
) -> None:
    roles = gateway.policy_dir / "roles.yaml"
    text = roles.read_text()
    start = text.index("  admin:\n")
    end = text.index("\n\n", start)
    roles.write_text(text[:start] + text[end + 1 :])
    assert gateway.store.reload()
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.url + "/admin/policy", headers=admin_headers) as response,
    ):
        assert response.status == 403
