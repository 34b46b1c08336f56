"""The security dashboard over a real Sluice: access control, CSRF, headers, escaping, OIDC
sign-in against the fake issuer, the index following the audit segments."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
import yarl

from proxy.dashboard.index import AuditIndex
from proxy.testing import FakeOIDCIssuer
from tests.conftest import AuditLogWriter, Sluice

XSS_SUBJECT = '"><img src=x onerror="window.__xss=1">@corp.example'
XSS_PROMPT = "<script>window.__xss=1</script><svg onload=alert(1)> please summarise"
XSS_MODEL = "gpt-<b>4o</b>"


@pytest.fixture
def policy_dir(dashboard_policy_dir: Path) -> Path:
    return dashboard_policy_dir


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: the jar keeps cookies of an IP-address host (loopback).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def wait_indexed(sluice: Sluice, request_id: str, timeout: float = 10.0) -> None:
    """Until the dashboard's index has the request (it polls the segments every second)."""
    from proxy.dashboard.views import DASHBOARD

    service = sluice.app[DASHBOARD].index
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await service.query(
            lambda db: db.execute(
                "SELECT decision FROM events WHERE request_id = ?", (request_id,)
            ).fetchone()
        )
        if found is not None and found[0] is not None:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{request_id} was not indexed within {timeout}s")


async def sign_in_with_token(
    browser: aiohttp.ClientSession, sluice: Sluice, token: str
) -> aiohttp.ClientResponse:
    login = await browser.get(sluice.url + "/dashboard/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', await login.text())
    assert csrf is not None
    return await browser.post(
        sluice.url + "/dashboard/login/token",
        data={"csrf": csrf.group(1), "token": token},
        allow_redirects=False,
    )


async def session_csrf(browser: aiohttp.ClientSession, sluice: Sluice) -> str:
    page = await browser.get(sluice.url + "/dashboard/")
    match = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert match is not None
    return match.group(1)


async def test_pages_without_a_session_are_401_with_the_sign_in_page(
    sluice: Sluice, browser: aiohttp.ClientSession, audit_log: AuditLogWriter
) -> None:
    request_id = audit_log.exchange(text="secret quarterly numbers")
    await wait_indexed(sluice, request_id)
    for path in ("/", "/events", "/events.csv", f"/events/{request_id}"):
        response = await browser.get(sluice.url + "/dashboard" + path)
        body = await response.text()
        assert response.status == 401, path
        assert "Sign in" in body
        assert request_id not in body and "quarterly" not in body
    # A forged cookie is no session either.
    response = await browser.get(
        sluice.url + "/dashboard/", headers={"Cookie": "sluice_dashboard=forged"}
    )
    assert response.status == 401


async def test_a_role_without_audit_read_gets_403(
    sluice: Sluice, browser: aiohttp.ClientSession
) -> None:
    token = await sluice.issue_token("employee")
    response = await sign_in_with_token(browser, sluice, token)
    assert response.status == 403
    assert "audit:read" in await response.text()
    assert "sluice_dashboard" not in browser.cookie_jar.filter_cookies(
        yarl.URL(sluice.url + "/dashboard/")
    )
    assert (await browser.get(sluice.url + "/dashboard/")).status == 401


async def test_a_session_loses_access_when_the_policy_takes_the_permission_away(
    sluice: Sluice, browser: aiohttp.ClientSession
) -> None:
    token = await sluice.issue_token("security_viewer")
    assert (await sign_in_with_token(browser, sluice, token)).status == 303
    assert (await browser.get(sluice.url + "/dashboard/")).status == 200
    roles_file = sluice.policy_dir / "roles.yaml"
    roles = yaml.safe_load(roles_file.read_text())
    roles["roles"]["security_viewer"]["permissions"] = []
    roles_file.write_text(yaml.safe_dump(roles))
    sluice.store.reload()
    response = await browser.get(sluice.url + "/dashboard/events")
    assert response.status == 403


async def test_token_sign_in_sets_a_strict_http_only_session_cookie(
    sluice: Sluice, browser: aiohttp.ClientSession
) -> None:
    token = await sluice.issue_token("security")
    response = await sign_in_with_token(browser, sluice, token)
    assert response.status == 303
    assert response.headers["Location"] == "/dashboard/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("sluice_dashboard=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # this policy turns it off for plain-HTTP loopback
    assert token not in cookie
    # With the default (secure_cookie: true) every dashboard cookie is Secure.
    identity_file = sluice.policy_dir / "identity.yaml"
    identity = yaml.safe_load(identity_file.read_text())
    identity["identity"]["dashboard"]["secure_cookie"] = True
    identity_file.write_text(yaml.safe_dump(identity))
    sluice.store.reload()
    login = await browser.get(sluice.url + "/dashboard/login")
    assert "Secure" in login.headers["Set-Cookie"]


async def test_token_sign_in_refuses_a_form_without_its_csrf_token(
    sluice: Sluice, browser: aiohttp.ClientSession
) -> None:
    token = await sluice.issue_token("security")
    await browser.get(sluice.url + "/dashboard/login")
    response = await browser.post(
        sluice.url + "/dashboard/login/token", data={"token": token}, allow_redirects=False
    )
    assert response.status == 403
    response = await browser.post(
        sluice.url + "/dashboard/login/token",
        data={"token": token, "csrf": "0" * 64},
        allow_redirects=False,
    )
    assert response.status == 403
    assert (await browser.get(sluice.url + "/dashboard/")).status == 401


async def test_bad_tokens_are_refused_without_echoing_them(
    sluice: Sluice, browser: aiohttp.ClientSession
) -> None:
    response = await sign_in_with_token(browser, sluice, "slc_" + "x" * 40)
    assert response.status == 401
    assert "slc_" + "x" * 40 not in await response.text()


async def test_sign_out_needs_the_session_csrf_token(
    sluice: Sluice, browser: aiohttp.ClientSession
) -> None:
    token = await sluice.issue_token("security")
    await sign_in_with_token(browser, sluice, token)
    refused = await browser.post(sluice.url + "/dashboard/logout", allow_redirects=False)
    assert refused.status == 403
    assert (await browser.get(sluice.url + "/dashboard/")).status == 200
    csrf = await session_csrf(browser, sluice)
    done = await browser.post(
        sluice.url + "/dashboard/logout", data={"csrf": csrf}, allow_redirects=False
    )
    assert done.status == 303
    assert (await browser.get(sluice.url + "/dashboard/")).status == 401


async def test_every_dashboard_response_carries_a_strict_csp(
    sluice: Sluice, browser: aiohttp.ClientSession
) -> None:
    token = await sluice.issue_token("security")
    await sign_in_with_token(browser, sluice, token)
    for path in ("/", "/events", "/login", "/events/nope", "/static/dashboard.css"):
        response = await browser.get(sluice.url + "/dashboard" + path)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    page = await (await browser.get(sluice.url + "/dashboard/")).text()
    assert "<script" not in page and " style=" not in page
    # The gateway's own endpoints are left alone.
    assert "Content-Security-Policy" not in (await browser.get(sluice.url + "/health")).headers


async def test_audit_values_are_escaped_everywhere(
    sluice: Sluice, browser: aiohttp.ClientSession, audit_log: AuditLogWriter
) -> None:
    request_id = audit_log.exchange(
        subject=XSS_SUBJECT,
        text=XSS_PROMPT,
        answer="<iframe src=javascript:alert(1)>",
        model=XSS_MODEL,
        team="<u>team</u>",
        decision="blocked",
        level="restricted",
        entities={"<b>EMAIL</b>": 1},
    )
    await wait_indexed(sluice, request_id)
    await sign_in_with_token(browser, sluice, await sluice.issue_token("security"))
    pages = [
        "/dashboard/?range=24h",
        "/dashboard/events",
        f"/dashboard/events/{request_id}",
        "/dashboard/events?text=summarise",
    ]
    for path in pages:
        response = await browser.get(sluice.url + path)
        assert response.status == 200, path
        html = await response.text()
        for raw in ("<img src=x", "<script>window", "<svg onload", "<iframe", "<b>", "<u>"):
            assert raw not in html, (path, raw)
    detail = await (await browser.get(sluice.url + f"/dashboard/events/{request_id}")).text()
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in detail
    assert "onerror=&#34;window.__xss=1&#34;" in detail


async def test_pages_show_what_the_audit_recorded(
    sluice: Sluice, browser: aiohttp.ClientSession, audit_log: AuditLogWriter
) -> None:
    now = time.time()
    ids = [
        audit_log.exchange(
            subject="bob@corp.example",
            decision="blocked",
            level="restricted",
            entities={"CREDIT_CARD": 2},
            status=403,
            ts=now - 60,
            text="card 4111 1111 1111 1111 for the invoice",
        ),
        audit_log.exchange(
            subject="carol@corp.example",
            team="finance",
            model="claude-sonnet-4-6",
            decision="masked",
            level="confidential",
            entities={"EMAIL_ADDRESS": 1},
            ts=now - 30,
            text="mail jane at the usual address",
        ),
        audit_log.exchange(
            subject="dave@corp.example", roles=("contractor",), ts=now - 10, text="hello there"
        ),
    ]
    await wait_indexed(sluice, ids[-1])
    await sign_in_with_token(browser, sluice, await sluice.issue_token("security"))

    overview = await (await browser.get(sluice.url + "/dashboard/?range=24h")).text()
    assert "bob@corp.example" in overview and "CREDIT_CARD" in overview
    assert "claude-sonnet-4-6" in overview and "finance" in overview
    assert "Intact" in overview and "<svg" in overview

    async def listed(query: str) -> set[str]:
        page = await (await browser.get(sluice.url + "/dashboard/events?" + query)).text()
        return {i for i in ids if i in page}

    assert await listed("") == set(ids)
    assert await listed("decision=blocked") == {ids[0]}
    assert await listed("user=carol%40corp.example") == {ids[1]}
    assert await listed("role=contractor") == {ids[2]}
    assert await listed("entity=EMAIL_ADDRESS") == {ids[1]}
    assert await listed("level=restricted&status=403") == {ids[0]}
    assert await listed("model=claude-sonnet-4-6&team=finance") == {ids[1]}
    assert await listed("text=invoice") == {ids[0]}
    assert await listed("route=direct&decision=allowed") == {ids[2]}
    since = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now + 3600))
    assert await listed(f"since={since}") == set()

    detail = await (await browser.get(sluice.url + f"/dashboard/events/{ids[0]}")).text()
    assert "card 4111 1111 1111 1111 for the invoice" in detail
    assert "classify" in detail and "3.1" in detail  # the trail with its timings
    assert "messages[0].content" in detail  # findings as positions

    export = await browser.get(sluice.url + "/dashboard/events.csv?decision=blocked")
    assert export.status == 200
    assert export.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(await export.text())))
    assert [r["request_id"] for r in rows] == [ids[0]]
    assert rows[0]["subject"] == "bob@corp.example" and rows[0]["status"] == "403"


async def test_a_viewer_without_read_content_never_sees_recorded_text(
    sluice: Sluice, browser: aiohttp.ClientSession, audit_log: AuditLogWriter
) -> None:
    request_id = audit_log.exchange(
        text="the merger with initech closes friday", answer="noted, the merger"
    )
    await wait_indexed(sluice, request_id)
    await sign_in_with_token(browser, sluice, await sluice.issue_token("security_viewer"))
    detail = await browser.get(sluice.url + f"/dashboard/events/{request_id}")
    html = await detail.text()
    assert detail.status == 200
    assert "initech" not in html and "noted, the merger" not in html
    assert "audit:read_content" in html
    # Text search would be an oracle on the content: it is left out, not run.
    search = await (await browser.get(sluice.url + "/dashboard/events?text=nonexistentword")).text()
    assert request_id in search and "left out" in search
    export = await (await browser.get(sluice.url + "/dashboard/events.csv")).text()
    assert "initech" not in export


async def test_hash_mode_shows_hashes_and_none_mode_nothing(
    sluice: Sluice, browser: aiohttp.ClientSession, audit_log: AuditLogWriter
) -> None:
    hashed = audit_log.exchange(mode="hash", text="hashed prompt text")
    nothing = audit_log.exchange(mode="none", text="unrecorded prompt text")
    await wait_indexed(sluice, nothing)
    await sign_in_with_token(browser, sluice, await sluice.issue_token("security"))
    page = await (await browser.get(sluice.url + f"/dashboard/events/{hashed}")).text()
    assert "hashed prompt text" not in page and "SHA-256" in page
    page = await (await browser.get(sluice.url + f"/dashboard/events/{nothing}")).text()
    assert "recorded no text" in page
    search = await (await browser.get(sluice.url + "/dashboard/events?text=hashed")).text()
    assert hashed not in search


async def test_oidc_sign_in_with_pkce(
    sluice: Sluice, browser: aiohttp.ClientSession, oidc_issuer: FakeOIDCIssuer
) -> None:
    oidc_issuer.login_subject = "sec@corp.example"
    oidc_issuer.login_groups = ("security",)
    start = await browser.get(sluice.url + "/dashboard/login/oidc", allow_redirects=False)
    assert start.status == 302
    location = start.headers["Location"]
    assert location.startswith(oidc_issuer.url + "/protocol/openid-connect/auth?")
    assert "code_challenge_method=S256" in location and "nonce=" in location
    back = await browser.get(location, allow_redirects=False)
    callback = back.headers["Location"]
    assert callback.startswith(sluice.url + "/dashboard/auth/callback?")
    assert "code=" in callback
    done = await browser.get(callback, allow_redirects=False)
    assert done.status == 200
    assert any(c.startswith("sluice_dashboard=") for c in done.headers.getall("Set-Cookie"))
    overview = await browser.get(sluice.url + "/dashboard/")
    assert overview.status == 200
    assert "sec@corp.example" in await overview.text()
    # The code is single-use: replaying the callback signs nobody in.
    replay = await browser.get(callback, allow_redirects=False)
    assert replay.status == 400


async def test_oidc_sign_in_refuses_a_callback_this_browser_did_not_start(
    sluice: Sluice, browser: aiohttp.ClientSession, oidc_issuer: FakeOIDCIssuer
) -> None:
    oidc_issuer.login_groups = ("security",)
    start = await browser.get(sluice.url + "/dashboard/login/oidc", allow_redirects=False)
    back = await browser.get(start.headers["Location"], allow_redirects=False)
    async with aiohttp.ClientSession() as other:  # another browser, without the state cookie
        stolen = await other.get(back.headers["Location"], allow_redirects=False)
        assert stolen.status == 400
        assert (await other.get(sluice.url + "/dashboard/")).status == 401


async def test_oidc_sign_in_of_a_person_without_audit_read_is_403(
    sluice: Sluice, browser: aiohttp.ClientSession, oidc_issuer: FakeOIDCIssuer
) -> None:
    oidc_issuer.login_groups = ("engineering",)
    response = await browser.get(sluice.url + "/dashboard/login/oidc")
    assert response.status == 403
    assert (await browser.get(sluice.url + "/dashboard/")).status == 401


async def test_oidc_refusal_by_the_issuer_is_a_401_sign_in_page(
    sluice: Sluice, browser: aiohttp.ClientSession, oidc_issuer: FakeOIDCIssuer
) -> None:
    oidc_issuer.refuse_logins = True
    response = await browser.get(sluice.url + "/dashboard/login/oidc")
    assert response.status == 401
    assert "access_denied" in await response.text()


async def test_fake_issuer_token_endpoint_checks_the_pkce_verifier(
    oidc_issuer: FakeOIDCIssuer,
) -> None:
    from proxy.dashboard.signin import pkce_challenge

    async with aiohttp.ClientSession() as http:
        authorize = await http.get(
            oidc_issuer.url + "/protocol/openid-connect/auth",
            params={
                "response_type": "code",
                "client_id": "c",
                "redirect_uri": "http://127.0.0.1:9/cb",
                "scope": "openid",
                "state": "s",
                "code_challenge": pkce_challenge("right-verifier"),
                "code_challenge_method": "S256",
            },
            allow_redirects=False,
        )
        code = re.search(r"code=([0-9a-f]+)", authorize.headers["Location"])
        assert code is not None
        form = {
            "grant_type": "authorization_code",
            "code": code.group(1),
            "client_id": "c",
            "redirect_uri": "http://127.0.0.1:9/cb",
            "code_verifier": "wrong-verifier",
        }
        wrong = await http.post(oidc_issuer.url + "/protocol/openid-connect/token", data=form)
        assert wrong.status == 400
        assert (await wrong.json())["error"] == "invalid_grant"


async def test_the_index_follows_new_segments_and_checks_the_chain(
    sluice: Sluice, browser: aiohttp.ClientSession, audit_log: AuditLogWriter
) -> None:
    first = audit_log.exchange()
    await wait_indexed(sluice, first)
    audit_log.rotate()
    second = audit_log.exchange(subject="erin@corp.example")
    await wait_indexed(sluice, second)
    await sign_in_with_token(browser, sluice, await sluice.issue_token("security"))
    page = await (await browser.get(sluice.url + "/dashboard/")).text()
    assert "Intact" in page
    # A record edited in place breaks the chain; the overview says where.
    segment = audit_log.path
    segment.write_text(segment.read_text().replace("erin@corp", "eve@corp", 1))
    # The edit changes no length, so the index does not notice by itself: rebuild it as
    # `sluice dashboard reindex` does (the server's own index keeps its own view).
    index = AuditIndex(sluice.settings.data_dir / "check.sqlite3", audit_log.directory)
    index.rebuild()
    index.catch_up()
    chain = index.chain()
    index.close()
    assert not chain.ok
    assert chain.problem is not None and "audit-000001.jsonl" in chain.problem
    assert "does not match its hash" in chain.problem


def test_a_corrupt_or_missing_index_is_rebuilt_from_the_segments(tmp_path: Path) -> None:
    log = AuditLogWriter(tmp_path / "audit")
    ids = [log.exchange() for _ in range(3)]
    path = tmp_path / "index" / "index.sqlite3"
    index = AuditIndex(path, log.directory)
    index.open()
    assert index.catch_up() == 6
    index.close()
    path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    index = AuditIndex(path, log.directory)
    index.open()
    assert index.catch_up() == 6
    found = index.reader().execute("SELECT request_id FROM events ORDER BY id").fetchall()
    assert [r[0] for r in found] == ids
    index.close()


def test_a_line_still_being_written_waits_for_its_end(tmp_path: Path) -> None:
    log = AuditLogWriter(tmp_path / "audit")
    log.exchange()
    with log.path.open("a") as file:
        file.write('{"v":1,"seq":2,"kind":"req')
    index = AuditIndex(tmp_path / "index.sqlite3", log.directory)
    index.open()
    assert index.catch_up() == 2
    assert index.catch_up() == 0
    assert index.chain().ok
    index.close()


def test_reindex_command_rebuilds_from_the_audit_directory(tmp_path: Path) -> None:
    from proxy.cli import main

    log = AuditLogWriter(tmp_path / "var" / "audit")
    for _ in range(5):
        log.exchange()
    assert (
        main(
            [
                "dashboard",
                "reindex",
                "--data-dir",
                str(tmp_path / "var"),
                "--audit-dir",
                str(log.directory),
            ]
        )
        == 0
    )
    index = AuditIndex(tmp_path / "var" / "dashboard" / "index.sqlite3", log.directory)
    index.open()
    assert index.reader().execute("SELECT count(*) FROM events").fetchone()[0] == 5
    index.close()


def test_grafana_dashboard_queries_sluice_metrics_through_a_chosen_data_source() -> None:
    import json

    from tests.conftest import REPO

    dashboard = json.loads((REPO / "deploy" / "grafana" / "sluice.json").read_text())
    assert dashboard["uid"] == "sluice-gateway"
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert expressions and all("sluice_" in expr for expr in expressions)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
    used = {m for expr in expressions for m in re.findall(r"sluice_[a-z_]+", expr)}
    assert {"sluice_requests_total", "sluice_ratelimit_redis_up"} <= used


def test_segments_removed_by_retention_make_the_index_forget_them(tmp_path: Path) -> None:
    from proxy.dashboard.index import IndexCorrupt

    log = AuditLogWriter(tmp_path / "audit")
    old = log.exchange(text="old words")
    log.rotate()
    kept = log.exchange(text="kept words")
    index = AuditIndex(tmp_path / "index.sqlite3", log.directory)
    index.open()
    index.catch_up()
    (log.directory / "audit-000000.jsonl").unlink()
    with pytest.raises(IndexCorrupt):
        index.catch_up()
    index.rebuild()
    index.catch_up()
    db = index.reader()
    assert [r[0] for r in db.execute("SELECT request_id FROM events")] == [kept]
    assert db.execute("SELECT count(*) FROM content WHERE content MATCH 'old'").fetchone()[0] == 0
    assert old != kept and index.chain().ok  # the first record kept anchors the chain
    index.close()
