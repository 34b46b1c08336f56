"""The dashboard in a real browser: Debian's chromium driven by Playwright (no downloaded
browser). Sign in with OIDC (the fake issuer) and with a personal token, filter, open an
event, export CSV; XSS payloads in the audit must not run; a viewer without
audit:read_content sees no prompt text. `SLUICE_UPDATE_SCREENSHOTS=1` refreshes the overview's
screenshot in docs/."""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from proxy.testing import FakeOIDCIssuer
from tests.conftest import REPO, AuditLogWriter, Sluice
from tests.test_dashboard import wait_indexed

CHROMIUM = "/usr/bin/chromium"
XSS_SUBJECT = '"><img src=x onerror="window.__xss=1">@corp.example'
XSS_PROMPT = (
    '<script>window.__xss=1</script><img src=x onerror="document.body.appendChild('
    "Object.assign(document.createElement('div'),{id:'pwned'}))\"> summarise the contract"
)

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason="Debian's chromium is not installed (the README test command installs it)",
)


@pytest.fixture
def policy_dir(dashboard_policy_dir: Path) -> Path:
    return dashboard_policy_dir


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # --no-sandbox: test machines run as root, where chromium's sandbox cannot start.
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


def fill_log(log: AuditLogWriter) -> list[str]:
    """A week of varied traffic, plus one request whose values are XSS payloads."""
    rng = random.Random(9)
    now = time.time()
    people = [
        ("alice@corp.example", "engineering"),
        ("bob@corp.example", "finance"),
        ("carol@corp.example", "legal"),
        ("dave@corp.example", "engineering"),
        ("erin@corp.example", "sales"),
    ]
    kinds = [
        ("allowed", "public", {}, 200, "direct"),
        ("allowed", "internal", {"PERSON": 1}, 200, "direct"),
        ("masked", "confidential", {"EMAIL_ADDRESS": 1}, 200, "direct"),
        ("rerouted", "confidential", {"PHONE_NUMBER": 1}, 200, "sensitive"),
        ("blocked", "restricted", {"CREDIT_CARD": 1}, 400, "direct"),
        ("denied", None, {}, 403, "direct"),
    ]
    weights = [60, 15, 10, 7, 5, 3]
    ids = []
    for n in range(420):
        subject, team = rng.choice(people)
        decision, level, entities, status, route = rng.choices(kinds, weights)[0]
        ids.append(
            log.exchange(
                subject=subject,
                team=team,
                model=rng.choice(["gpt-4o", "claude-sonnet-4-6", "llama-3.3-70b"]),
                decision=decision,
                level=level,
                entities=entities,
                status=status,
                route=route,
                text=f"request {n} about the quarterly numbers",
                ts=now - 7 * 86400 + n * (7 * 86400 / 420) + rng.random() * 600,
            )
        )
    ids.append(
        log.exchange(
            subject=XSS_SUBJECT,
            team="<b>red-team</b>",
            text=XSS_PROMPT,
            answer="<iframe src=javascript:window.__xss=1></iframe>",
            decision="blocked",
            level="restricted",
            entities={"CREDIT_CARD": 1},
            status=400,
            ts=now - 5,
        )
    )
    return ids


async def assert_nothing_ran(page: Page) -> None:
    assert await page.evaluate("() => window.__xss === undefined")
    assert await page.locator("#pwned").count() == 0
    assert await page.locator("iframe, img[src='x']").count() == 0


async def test_oidc_sign_in_filter_detail_export(
    sluice: Sluice,
    browser: Browser,
    oidc_issuer: FakeOIDCIssuer,
    audit_log: AuditLogWriter,
    tmp_path: Path,
) -> None:
    ids = fill_log(audit_log)
    xss_id = ids[-1]
    await wait_indexed(sluice, xss_id)
    oidc_issuer.login_subject = "security.lead@corp.example"
    oidc_issuer.login_groups = ("security",)
    context = await browser.new_context(
        accept_downloads=True, viewport={"width": 1400, "height": 1000}
    )
    page = await context.new_page()
    violations: list[str] = []
    page.on(
        "console", lambda m: violations.append(m.text) if "Content Security" in m.text else None
    )

    response = await page.goto(sluice.url + "/dashboard/")
    assert response is not None and response.status == 401
    await page.click("#sso")  # to the issuer, back to the callback, on to the overview
    await page.wait_for_url(sluice.url + "/dashboard/")
    assert await page.locator("h1").inner_text() == "Overview"
    assert "security.lead@corp.example" in await page.locator("header").inner_text()
    assert await page.locator("svg.decisions rect").count() > 0
    assert "Intact" in await page.locator("#chain").inner_text()
    await assert_nothing_ran(page)
    # docs/dashboard-overview.png is refreshed on request only, so a test run leaves no change.
    shot = (
        REPO / "docs" / "dashboard-overview.png"
        if os.environ.get("SLUICE_UPDATE_SCREENSHOTS") == "1"
        else tmp_path / "dashboard-overview.png"
    )
    await page.screenshot(path=str(shot), full_page=True)

    # Filter: blocked requests of one user.
    await page.click("text=Events")
    await page.fill("#f-user", "bob@corp.example")
    await page.select_option("#f-decision", "blocked")
    await page.click("#apply")
    await page.wait_for_url("**/dashboard/events?*decision=blocked*")
    rows = page.locator("#events tbody tr")
    assert await rows.count() > 0
    for text in await rows.all_inner_texts():
        assert "bob@corp.example" in text and "blocked" in text

    # Export exactly what the filter shows.
    async with page.expect_download() as download_info:
        await page.click("#export")
    download = await download_info.value
    target = tmp_path / "events.csv"
    await download.save_as(target)
    exported = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(exported) == await rows.count()
    assert {r["subject"] for r in exported} == {"bob@corp.example"}
    assert {r["decision"] for r in exported} == {"blocked"}

    # Open one event: the trail, the findings, the recorded text (this role may read it).
    await rows.first.locator("a").click()
    await page.wait_for_url("**/dashboard/events/req_*")
    assert await page.locator("#trail tbody tr").count() == 2
    assert "CREDIT_CARD" in await page.locator("#findings").inner_text()
    assert "about the quarterly numbers" in await page.locator("#content").inner_text()

    # The payloads are shown as text on every page, and nothing of them runs.
    await page.goto(sluice.url + f"/dashboard/events/{xss_id}")
    assert "<script>window.__xss=1</script>" in await page.locator("#content").inner_text()
    await assert_nothing_ran(page)
    await page.goto(sluice.url + "/dashboard/events?decision=blocked")
    assert XSS_SUBJECT in await page.locator("#events").inner_text()
    await assert_nothing_ran(page)
    await page.goto(sluice.url + "/dashboard/?range=24h")
    await assert_nothing_ran(page)
    assert violations == []  # nothing on our pages even tried to break the CSP

    await page.click("#sign-out")
    await page.wait_for_url("**/dashboard/login")
    response = await page.goto(sluice.url + "/dashboard/")
    assert response is not None and response.status == 401
    await context.close()


async def test_token_sign_in_as_a_viewer_without_read_content(
    sluice: Sluice, browser: Browser, audit_log: AuditLogWriter
) -> None:
    secret = "the acquisition of initech closes on friday"
    request_id = audit_log.exchange(text=secret, answer="noted: initech")
    await wait_indexed(sluice, request_id)
    token = await sluice.issue_token("security_viewer", subject="auditor@corp.example")
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(sluice.url + "/dashboard/login")
    await page.fill("#token", token)
    await page.click("#token-form button")
    await page.wait_for_url(sluice.url + "/dashboard/")
    assert "auditor@corp.example" in await page.locator("header").inner_text()
    await page.goto(sluice.url + "/dashboard/events")
    assert await page.locator("#f-text").count() == 0  # no text search without the permission
    await page.click(f"a[href='/dashboard/events/{request_id}']")
    await page.wait_for_url(f"**/dashboard/events/{request_id}")
    assert await page.locator("#content-hidden").is_visible()
    html = await page.content()
    assert "initech" not in html
    await context.close()


async def test_a_token_without_audit_read_is_refused(sluice: Sluice, browser: Browser) -> None:
    token = await sluice.issue_token("employee")
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(sluice.url + "/dashboard/login")
    await page.fill("#token", token)
    async with page.expect_navigation() as navigation:
        await page.click("#token-form button")
    response = await navigation.value
    assert response is not None and response.status == 403
    assert "audit:read" in await page.locator("#message").inner_text()
    await context.close()
