"""Filter `body_limits`: refuses requests carrying more messages or inputs than policy allows.

The byte size is bounded earlier, while the body is read (413); this bounds its structure (400).
"""

from __future__ import annotations

from proxy.context import Deny, RequestContext
from proxy.errors import ErrorKind
from proxy.wire import ITEMS_FIELD


class BodyLimits:
    """Decides on `request_limits.max_messages` and the request's messages or inputs."""

    name = "body_limits"

    async def on_request(self, ctx: RequestContext) -> Deny | None:
        field = ITEMS_FIELD[ctx.wire]
        items = ctx.body.get(field)
        limit = ctx.policy.policy.request_limits.max_messages
        if isinstance(items, list) and len(items) > limit:
            return Deny(
                ErrorKind.INVALID_REQUEST,
                f"'{field}' has {len(items)} items; this gateway accepts at most {limit}.",
                param=field,
            )
        return None
