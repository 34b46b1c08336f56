"""Who may see the dashboard, and the sessions of those signed in.

A session lives in this process's memory only; its id travels in an HttpOnly, SameSite=Strict
cookie. Permissions are computed from the session's roles against the live policy on every
request, so a policy change takes effect without signing out. Every state-changing request
carries the session's CSRF token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from proxy.context import Principal
from proxy.policy.model import Permission, Policy

SESSION_COOKIE = "sluice_dashboard"
READ: Permission = "audit:read"
READ_CONTENT: Permission = "audit:read_content"
_SESSION_LIMIT = 10_000
_PENDING_LIMIT = 1_000
_PENDING_SECONDS = 600.0


def permissions(principal: Principal, policy: Policy) -> frozenset[Permission]:
    """The union of what the principal's roles grant; unknown roles grant nothing."""
    granted: set[Permission] = set()
    for name in principal.roles:
        role = policy.roles.get(name)
        if role is not None:
            granted.update(role.permissions)
    return frozenset(granted)


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    principal: Principal
    csrf: str
    expires_at: float

    def csrf_matches(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """An authorization request sent to the issuer, waiting for the browser to come back."""

    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str
    expires_at: float


@dataclass
class Sessions:
    """Signed-in sessions and OIDC logins in progress, in memory, bounded in number."""

    sessions: dict[str, Session] = field(default_factory=dict)
    pending: dict[str, PendingLogin] = field(default_factory=dict)
    # Keys the login form's CSRF token to the browser's pre-session cookie.
    form_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def create(self, principal: Principal, lifetime_s: float) -> Session:
        self._drop_expired()
        if len(self.sessions) >= _SESSION_LIMIT:
            self.sessions.pop(next(iter(self.sessions)))
        session = Session(
            id=secrets.token_urlsafe(32),
            principal=principal,
            csrf=secrets.token_urlsafe(32),
            expires_at=time.time() + lifetime_s,
        )
        self.sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self.sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= time.time():
            del self.sessions[session_id]
            return None
        return session

    def end(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)

    def start_login(self, redirect_uri: str) -> PendingLogin:
        now = time.time()
        for key in [k for k, p in self.pending.items() if p.expires_at <= now]:
            del self.pending[key]
        if len(self.pending) >= _PENDING_LIMIT:
            self.pending.pop(next(iter(self.pending)))
        login = PendingLogin(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(64),
            redirect_uri=redirect_uri,
            expires_at=now + _PENDING_SECONDS,
        )
        self.pending[login.state] = login
        return login

    def finish_login(self, state: str) -> PendingLogin | None:
        """The login `state` belongs to, once: a replayed callback finds nothing."""
        login = self.pending.pop(state, None)
        if login is None or login.expires_at <= time.time():
            return None
        return login

    def form_token(self, browser_id: str) -> str:
        """The CSRF token of the sign-in form for the browser holding `browser_id`."""
        return hmac.new(self.form_key, browser_id.encode(), "sha256").hexdigest()

    def form_token_matches(self, browser_id: str | None, token: str | None) -> bool:
        if not browser_id or not token:
            return False
        return hmac.compare_digest(self.form_token(browser_id).encode(), token.encode())

    def _drop_expired(self) -> None:
        now = time.time()
        for key in [k for k, s in self.sessions.items() if s.expires_at <= now]:
            del self.sessions[key]
