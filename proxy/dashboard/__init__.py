"""The security dashboard, served by Sluice under `/dashboard`: who did what, what Sluice
decided, and each request's whole audit record, for holders of `audit:read`.

`setup_dashboard(app, store, settings)` mounts it; everything it needs starts and stops with
the app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jinja2
from aiohttp import web

from proxy.dashboard.access import Sessions
from proxy.dashboard.index import AuditIndex
from proxy.dashboard.service import IndexService
from proxy.dashboard.signin import OidcSignIn
from proxy.dashboard.views import DASHBOARD, Dashboard, add_routes, security_headers
from proxy.identity.jwks import KeySets
from proxy.identity.oidc import OidcVerifier
from proxy.identity.tokens import PersonalTokenVerifier, open_token_store
from proxy.policy.model import Policy
from proxy.policy.store import PolicyStore
from proxy.settings import Settings

__all__ = ["audit_dir", "index_path", "setup_dashboard"]


def audit_dir(policy: Policy, settings: Settings) -> Path:
    """The audit log's directory: the policy's `audit.dir` when it has one, else
    `<data dir>/audit`."""
    return settings.audit_dir(policy.audit.dir)


def index_path(settings: Settings) -> Path:
    return settings.data_dir / "dashboard" / "index.sqlite3"


def setup_dashboard(
    app: web.Application,
    store: PolicyStore,
    settings: Settings,
    *,
    poll_interval: float = 1.0,
    directory: Path | None = None,
    always: bool = False,
) -> None:
    """Serve the dashboard from `app` when the policy enables it (the default), or `always`
    (`sluice dashboard serve`, a process that is nothing else). `directory` overrides the
    policy's audit directory."""
    if not always and not store.current.policy.identity.dashboard.enabled:
        return

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        http = aiohttp.ClientSession()
        tokens = open_token_store(settings.redis_url, settings.data_dir)
        index = IndexService(
            AuditIndex(
                index_path(settings), directory or audit_dir(store.current.policy, settings)
            ),
            poll_interval,
        )
        await index.start()
        app[DASHBOARD] = Dashboard(
            store=store,
            index=index,
            sessions=Sessions(),
            oidc=OidcSignIn(http, OidcVerifier(KeySets(http))),
            tokens=PersonalTokenVerifier(tokens),
            templates=jinja2.Environment(
                loader=jinja2.PackageLoader("proxy.dashboard", "templates"),
                autoescape=True,  # every audit value is text, never markup
                undefined=jinja2.StrictUndefined,
            ),
        )
        try:
            yield
        finally:
            await index.close()
            await tokens.close()
            await http.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(security_headers)
    add_routes(app)
