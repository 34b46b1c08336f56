"""The dashboard's pages and sign-in endpoints.

Every page checks the session and the viewer's permissions first: no session is 401 (with
the sign-in page), a session whose roles lack `audit:read` is 403. Every value from the
audit log reaches the page through autoescaping templates; content only with
`audit:read_content`.
"""

from __future__ import annotations

import calendar
import csv
import functools
import io
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jinja2
import structlog
from aiohttp import web

from proxy.context import Principal
from proxy.dashboard import queries
from proxy.dashboard.access import (
    READ,
    READ_CONTENT,
    SESSION_COOKIE,
    Session,
    Sessions,
    permissions,
)
from proxy.dashboard.charts import stacked_bars
from proxy.dashboard.segments import read_record
from proxy.dashboard.service import IndexService
from proxy.dashboard.signin import OidcSignIn, SignInFailed, issuer_config, safe_error_code
from proxy.identity.tokens import PersonalTokenVerifier, TokenStoreUnavailable
from proxy.policy.model import Permission
from proxy.policy.store import PolicyStore

log = structlog.get_logger("sluice.dashboard")

PREFIX = "/dashboard"
STATIC = Path(__file__).parent / "static"
BROWSER_COOKIE = "sluice_dashboard_browser"  # keys the sign-in form's CSRF token
STATE_COOKIE = "sluice_dashboard_login"  # binds an OIDC callback to the browser that started it
CSV_LIMIT = 100_000
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The event columns a spreadsheet wants: the index's bookkeeping (row id, segment offsets) left
# out, and the time first.
CSV_COLUMNS = (
    "time",
    "request_id",
    *queries.EVENT_COLUMNS[
        queries.EVENT_COLUMNS.index("subject") : queries.EVENT_COLUMNS.index("content_mode") + 1
    ],
)


@dataclass(frozen=True, slots=True)
class Dashboard:
    """What the pages need, created at startup and hung off the application."""

    store: PolicyStore
    index: IndexService
    sessions: Sessions
    oidc: OidcSignIn
    tokens: PersonalTokenVerifier
    templates: jinja2.Environment


DASHBOARD = web.AppKey("dashboard", Dashboard)


@dataclass(frozen=True, slots=True)
class Viewer:
    session: Session
    permissions: frozenset[Permission]

    @property
    def reads_content(self) -> bool:
        return READ_CONTENT in self.permissions


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


Page = Callable[[web.Request, Dashboard, Viewer], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX, _to_overview)
    app.router.add_get(PREFIX + "/", _page(_overview))
    app.router.add_get(PREFIX + "/events", _page(_events))
    app.router.add_get(PREFIX + "/events.csv", _page(_events_csv))
    app.router.add_get(PREFIX + "/events/{request_id}", _page(_event))
    app.router.add_get(PREFIX + "/login", _login_page)
    app.router.add_post(PREFIX + "/login/token", _token_sign_in)
    app.router.add_get(PREFIX + "/login/oidc", _oidc_start)
    app.router.add_get(PREFIX + "/auth/callback", _oidc_callback)
    app.router.add_post(PREFIX + "/logout", _page(_sign_out))
    app.router.add_static(PREFIX + "/static", STATIC, append_version=True)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Strict headers on everything under /dashboard: no script but ours, no framing, no
    caching of audit data, no referrer carrying a code or a filter."""
    if request.path != PREFIX and not request.path.startswith(PREFIX + "/"):
        return
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if not request.path.startswith(PREFIX + "/static/"):
        response.headers["Cache-Control"] = "no-store"


# --- Rendering -----------------------------------------------------------------------------


def _render(
    dashboard: Dashboard,
    name: str,
    status: int = 200,
    viewer: Viewer | None = None,
    **context: Any,
) -> web.Response:
    template = dashboard.templates.get_template(name)
    html = template.render(
        viewer=viewer,
        csrf=viewer.session.csrf if viewer else "",
        when=_when,
        static=lambda path: f"{PREFIX}/static/{path}",
        **context,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _redirect(location: str, status: int) -> web.Response:
    # A plain response: the app's middleware turns raised HTTP errors into API error bodies.
    return web.Response(status=status, headers={"Location": location})


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def _set_cookie(
    response: web.StreamResponse,
    dashboard: Dashboard,
    name: str,
    value: str,
    *,
    max_age: int | None = None,
    samesite: str = "Strict",
    path: str = PREFIX,
) -> None:
    secure = dashboard.store.current.policy.identity.dashboard.secure_cookie
    response.set_cookie(
        name, value, max_age=max_age, path=path, httponly=True, secure=secure, samesite=samesite
    )


# --- Access --------------------------------------------------------------------------------


def _page(handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def guarded(request: web.Request) -> web.StreamResponse:
        dashboard = request.app[DASHBOARD]
        try:
            viewer = _viewer(request, dashboard)
            if request.method == "POST":
                form = await request.post()
                token = form.get("csrf")
                if not viewer.session.csrf_matches(token if isinstance(token, str) else None):
                    return _render(
                        dashboard,
                        "message.html",
                        403,
                        viewer,
                        title="Refused",
                        message="The form was not sent from this dashboard (CSRF check).",
                    )
            return await handler(request, dashboard, viewer)
        except _Refused as refused:
            return refused.response

    return guarded


def _viewer(request: web.Request, dashboard: Dashboard) -> Viewer:
    session = dashboard.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise _Refused(_login_response(request, dashboard, 401, None))
    granted = permissions(session.principal, dashboard.store.current.policy)
    viewer = Viewer(session, granted)
    if READ not in granted:
        raise _Refused(_forbidden(dashboard, viewer))
    return viewer


def _forbidden(dashboard: Dashboard, viewer: Viewer | None) -> web.Response:
    return _render(
        dashboard,
        "message.html",
        403,
        viewer,
        title="Not allowed",
        message="Your roles do not grant audit:read, which the security dashboard requires.",
    )


async def _to_overview(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(PREFIX + "/")


# --- Sign-in -------------------------------------------------------------------------------


def _login_response(
    request: web.Request, dashboard: Dashboard, status: int, error: str | None
) -> web.Response:
    browser = request.cookies.get(BROWSER_COOKIE) or secrets.token_urlsafe(32)
    policy = dashboard.store.current.policy
    response = _render(
        dashboard,
        "login.html",
        status,
        oidc=issuer_config(policy) is not None,
        tokens=policy.identity.dashboard.personal_tokens
        and policy.identity.personal_tokens.enabled,
        form_csrf=dashboard.sessions.form_token(browser),
        error=error,
    )
    _set_cookie(response, dashboard, BROWSER_COOKIE, browser)
    return response


async def _login_page(request: web.Request) -> web.StreamResponse:
    return _login_response(request, request.app[DASHBOARD], 200, None)


def _signed_in(dashboard: Dashboard, response: web.Response, session: Session) -> web.Response:
    lifetime = dashboard.store.current.policy.identity.dashboard.session_minutes * 60
    _set_cookie(response, dashboard, SESSION_COOKIE, session.id, max_age=lifetime)
    return response


def _start_session(dashboard: Dashboard, principal: Principal) -> Session | None:
    policy = dashboard.store.current.policy
    if READ not in permissions(principal, policy):
        log.info("dashboard_sign_in_refused", subject_roles=len(principal.roles))
        return None
    lifetime = policy.identity.dashboard.session_minutes * 60
    session = dashboard.sessions.create(principal, lifetime)
    log.info("dashboard_sign_in", auth_method=principal.auth_method)
    return session


async def _token_sign_in(request: web.Request) -> web.StreamResponse:
    dashboard = request.app[DASHBOARD]
    policy = dashboard.store.current.policy
    form = await request.post()
    csrf, token = form.get("csrf"), form.get("token")
    if not dashboard.sessions.form_token_matches(
        request.cookies.get(BROWSER_COOKIE), csrf if isinstance(csrf, str) else None
    ):
        return _login_response(request, dashboard, 403, "The form expired; please try again.")
    if not (policy.identity.dashboard.personal_tokens and policy.identity.personal_tokens.enabled):
        return _login_response(request, dashboard, 403, "Token sign-in is turned off.")
    if not isinstance(token, str) or not token.strip():
        return _login_response(request, dashboard, 401, "Paste a Sluice personal token.")
    try:
        principal = await dashboard.tokens.authenticate(token.strip())
    except TokenStoreUnavailable:
        return _login_response(request, dashboard, 503, "The token store cannot be reached.")
    if principal is None:
        return _login_response(request, dashboard, 401, "That token is unknown or expired.")
    session = _start_session(dashboard, principal)
    if session is None:
        return _forbidden(dashboard, None)
    return _signed_in(dashboard, _redirect(PREFIX + "/", 303), session)


async def _oidc_start(request: web.Request) -> web.StreamResponse:
    dashboard = request.app[DASHBOARD]
    configured = issuer_config(dashboard.store.current.policy)
    if configured is None:
        return _login_response(request, dashboard, 404, "Single sign-on is not configured.")
    settings, issuer = configured
    redirect_uri = settings.redirect_url or (
        f"{request.scheme}://{request.host}{PREFIX}/auth/callback"
    )
    try:
        endpoints = await dashboard.oidc.endpoints(settings, issuer)
    except SignInFailed as exc:
        return _login_response(request, dashboard, 502, str(exc))
    login = dashboard.sessions.start_login(redirect_uri)
    response = _redirect(dashboard.oidc.authorization_url(endpoints, settings, login), 302)
    # Lax: the browser must send it on the top-level redirect back from the issuer.
    _set_cookie(
        response,
        dashboard,
        STATE_COOKIE,
        login.state,
        max_age=600,
        samesite="Lax",
        path=PREFIX + "/auth/",
    )
    return response


async def _oidc_callback(request: web.Request) -> web.StreamResponse:
    dashboard = request.app[DASHBOARD]
    configured = issuer_config(dashboard.store.current.policy)
    if configured is None:
        return _login_response(request, dashboard, 404, "Single sign-on is not configured.")
    settings, issuer = configured
    query = request.query
    state = query.get("state", "")
    if "error" in query:
        code = safe_error_code(query["error"])
        return _login_response(request, dashboard, 401, f"The identity provider said: {code}.")
    cookie = request.cookies.get(STATE_COOKIE, "")
    login = None
    if state and secrets.compare_digest(cookie.encode(), state.encode()):
        login = dashboard.sessions.finish_login(state)
    if login is None or not query.get("code"):
        return _login_response(
            request, dashboard, 400, "This sign-in was not started here or has expired."
        )
    try:
        principal = await dashboard.oidc.redeem(query["code"], login, settings, issuer)
    except SignInFailed as exc:
        return _login_response(request, dashboard, 401, str(exc))
    session = _start_session(dashboard, principal)
    if session is None:
        return _forbidden(dashboard, None)
    # A page of our own (not a redirect) moves on to the dashboard, so the next request is
    # same-site and carries the SameSite=Strict session cookie.
    response = _render(dashboard, "signed_in.html")
    response.del_cookie(STATE_COOKIE, path=PREFIX + "/auth/")
    return _signed_in(dashboard, response, session)


async def _sign_out(request: web.Request, dashboard: Dashboard, viewer: Viewer) -> web.Response:
    dashboard.sessions.end(viewer.session.id)
    response = _redirect(PREFIX + "/login", 303)
    response.del_cookie(SESSION_COOKIE, path=PREFIX)
    return response


# --- Pages ---------------------------------------------------------------------------------


async def _overview(request: web.Request, dashboard: Dashboard, viewer: Viewer) -> web.Response:
    range_name = request.query.get("range", "7d")
    if range_name not in queries.RANGES:
        range_name = "7d"
    data = await dashboard.index.query(lambda db: queries.overview(db, range_name))
    chain = await dashboard.index.query(lambda db: dashboard.index.index.chain())
    return _render(
        dashboard,
        "overview.html",
        viewer=viewer,
        range_name=range_name,
        ranges=list(queries.RANGES),
        data=data,
        decisions_chart=stacked_bars(
            data.by_decision, queries.DECISIONS, data.buckets, data.bucket_hours
        ),
        levels_chart=stacked_bars(
            data.by_level, (*queries.LEVELS, "none"), data.buckets, data.bucket_hours
        ),
        chain=chain,
    )


def _parse_filter(request: web.Request, viewer: Viewer) -> tuple[queries.EventFilter, list[str]]:
    query = request.query
    problems: list[str] = []

    def text(name: str) -> str | None:
        value = query.get(name, "").strip()
        return value[:200] or None

    def moment(name: str) -> float | None:
        value = text(name)
        if value is None:
            return None
        for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
            try:
                return float(calendar.timegm(time.strptime(value, fmt)))
            except ValueError:
                continue
        problems.append(f"{name}: not a time (use YYYY-MM-DDTHH:MM, UTC)")
        return None

    def number(name: str) -> int | None:
        value = text(name)
        if value is None:
            return None
        if value.isdigit() and len(value) < 12:
            return int(value)
        problems.append(f"{name}: not a number")
        return None

    search = text("text")
    if search is not None and not viewer.reads_content:
        problems.append("text search needs audit:read_content; it was left out")
        search = None
    flt = queries.EventFilter(
        since=moment("since"),
        until=moment("until"),
        user=text("user"),
        team=text("team"),
        role=text("role"),
        model=text("model"),
        route=text("route"),
        level=text("level"),
        decision=text("decision"),
        entity=text("entity"),
        status=number("status"),
        text=search,
        before=number("before"),
    )
    return flt, problems


async def _events(request: web.Request, dashboard: Dashboard, viewer: Viewer) -> web.Response:
    flt, problems = _parse_filter(request, viewer)
    page = await dashboard.index.query(lambda db: queries.events_page(db, flt))
    options = await dashboard.index.query(queries.choices)
    filter_items = flt.query_items()
    next_items = (
        filter_items + [("before", str(page.next_before))] if page.next_before is not None else None
    )
    return _render(
        dashboard,
        "events.html",
        viewer=viewer,
        flt=flt,
        problems=problems,
        page=page,
        filter_items=filter_items,
        next_items=next_items,
        roles=sorted(dashboard.store.current.policy.roles),
        options={k: sorted(v) for k, v in options.items()},
        decisions=queries.DECISIONS,
        levels=queries.LEVELS,
        routes=queries.ROUTES,
        entities_of=queries.entities_of,
    )


def _csv_cell(value: Any) -> Any:
    # A cell starting like a formula runs as one in spreadsheets: quote it.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv_row(row: dict[str, Any]) -> list[Any]:
    values = {**row, "time": _when(row["ts"])}
    return [_csv_cell(values.get(column)) for column in CSV_COLUMNS]


async def _events_csv(
    request: web.Request, dashboard: Dashboard, viewer: Viewer
) -> web.StreamResponse:
    flt, _problems = _parse_filter(request, viewer)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="sluice-events.csv"',
        }
    )
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    sent, cursor = 0, flt
    while sent < CSV_LIMIT:
        page = await dashboard.index.query(
            functools.partial(queries.events_page, flt=cursor, size=min(5000, CSV_LIMIT - sent))
        )
        writer.writerows(_csv_row(row) for row in page.rows)
        await response.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
        sent += len(page.rows)
        if page.next_before is None or not page.rows:
            break
        cursor = replace(flt, before=page.next_before)
    if sent == 0:
        await response.write(buffer.getvalue().encode())
    log.info("dashboard_csv_export", rows=sent)
    await response.write_eof()
    return response


def _hide_content(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None or record.get("content") is None:
        return record
    return {**record, "content": "(hidden: needs audit:read_content)"}


async def _event(request: web.Request, dashboard: Dashboard, viewer: Viewer) -> web.Response:
    request_id = request.match_info["request_id"]
    row = await dashboard.index.query(lambda db: queries.event_by_request_id(db, request_id))
    if row is None:
        return _render(
            dashboard,
            "message.html",
            404,
            viewer,
            title="No such event",
            message="No request with that id is in the index.",
        )
    directory = dashboard.index.index.audit_dir

    def load() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        request_record = response_record = None
        if row["req_segment"] is not None:
            request_record = read_record(directory, row["req_segment"], row["req_offset"])
        if row["resp_segment"] is not None:
            response_record = read_record(directory, row["resp_segment"], row["resp_offset"])
        # Only the record the index points at, and only if it is this request's.
        if request_record is not None and request_record.get("request_id") != request_id:
            request_record = None
        if response_record is not None and response_record.get("request_id") != request_id:
            response_record = None
        return request_record, response_record

    request_record, response_record = await dashboard.index.query(lambda db: load())
    shown_request, shown_response = request_record, response_record
    if not viewer.reads_content:
        shown_request, shown_response = (
            _hide_content(request_record),
            _hide_content(response_record),
        )
    trail = response_record.get("trail") if response_record else None
    findings = response_record.get("findings") if response_record else None
    latency = response_record.get("latency_ms") if response_record else None
    return _render(
        dashboard,
        "event.html",
        viewer=viewer,
        row=row,
        entities=queries.entities_of(row),
        trail=trail if isinstance(trail, list) else [],
        findings=findings if isinstance(findings, list) else [],
        latency=latency if isinstance(latency, dict) else {},
        messages=_messages(request_record) if viewer.reads_content else [],
        answer=_answer(response_record) if viewer.reads_content else None,
        hashes=_hashes(request_record) if viewer.reads_content else [],
        request_json=_pretty(shown_request),
        response_json=_pretty(shown_response),
        missing=(row["req_segment"] is not None and request_record is None)
        or (row["resp_segment"] is not None and response_record is None),
    )


def _pretty(record: dict[str, Any] | None) -> str | None:
    return None if record is None else json.dumps(record, indent=2, sort_keys=True)


def _messages(record: dict[str, Any] | None) -> list[dict[str, str]]:
    if record is None or record.get("content_mode") not in ("full", "redacted"):
        return []
    content = record.get("content")
    if not isinstance(content, dict) or not isinstance(content.get("messages"), list):
        return []
    return [
        {"role": str(m.get("role", "")), "text": m["text"]}
        for m in content["messages"]
        if isinstance(m, dict) and isinstance(m.get("text"), str)
    ]


def _hashes(record: dict[str, Any] | None) -> list[dict[str, str]]:
    if record is None or record.get("content_mode") != "hash":
        return []
    content = record.get("content")
    items = content if isinstance(content, list) else []
    if isinstance(content, dict) and isinstance(content.get("messages"), list):
        items = content["messages"]
    return [
        {"role": str(m.get("role", "")), "sha256": str(m.get("sha256", ""))}
        for m in items
        if isinstance(m, dict)
    ]


def _answer(record: dict[str, Any] | None) -> str | None:
    content = record.get("content") if record else None
    if isinstance(content, dict) and isinstance(content.get("response"), str):
        return str(content["response"])
    return None
