"""`sluice dashboard serve`: the security dashboard as a process of its own.

`sluice serve` mounts the dashboard under `/dashboard` by default, and then indexes every
audit record on the gateway's own cores. A busy gateway can leave that to this process instead
(its policy sets `identity.dashboard.enabled: false`): it reads the same policy directory (roles
with `audit:read`, sign-in settings), follows the audit directory the gateway writes, and
serves the same pages, on a port that need not be reachable by employees' tools at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web

from proxy.dashboard import setup_dashboard
from proxy.handler import health, request_ids
from proxy.policy.store import PolicyStore
from proxy.settings import Settings

log = structlog.get_logger("sluice.dashboard")


def build_dashboard_app(
    store: PolicyStore,
    settings: Settings,
    *,
    audit_dir: Path | None = None,
    watch_interval: float = 1.0,
    poll_interval: float = 1.0,
) -> web.Application:
    """The dashboard, `/health` and `/ready`, nothing else: no model endpoints, no admin endpoints.
    `audit_dir` overrides the policy's audit directory (a copy shipped to another host)."""
    app = web.Application(middlewares=[request_ids])

    async def watching(app: web.Application) -> AsyncIterator[None]:
        # Roles and sign-in settings follow policy edits here as they do in the gateway.
        watcher = asyncio.create_task(store.watch(watch_interval)) if watch_interval > 0 else None
        log.info("dashboard_started", policy_version=store.current.version)
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()

    async def ready(request: web.Request) -> web.Response:
        """Readiness: listening only once the index has opened; which policy is live."""
        return web.json_response({"status": "ready", "policy_version": store.current.version})

    app.cleanup_ctx.append(watching)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    setup_dashboard(
        app, store, settings, poll_interval=poll_interval, directory=audit_dir, always=True
    )
    return app
