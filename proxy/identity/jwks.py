"""Signing keys of trusted OIDC issuers, fetched from their JWKS and cached.

Keys are fetched once, refetched when a token names an unknown `kid` (key rotation) but at most
once per interval, so a flood of made-up `kid`s cannot hammer the identity provider. Known keys
keep working while the identity provider is down.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
import structlog
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from proxy.policy.model import OidcIssuer

log = structlog.get_logger("sluice.identity")

# Refresh known keys in the background once they are this old, so keys the identity provider
# withdrew stop being trusted even if no token ever names an unknown `kid`.
_MAX_KEY_AGE_S = 3600.0
_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5.0)


class IdentityProviderUnavailable(Exception):
    """No signing key is known for an issuer and its JWKS cannot be fetched."""


class KeySet:
    """The signing keys of one issuer."""

    def __init__(self, session: aiohttp.ClientSession, config: OidcIssuer) -> None:
        self._session = session
        self._issuer = config.issuer
        self._jwks_url = config.jwks_url
        self._refresh_s = config.jwks_refresh_seconds
        self._keys: dict[str | None, PyJWK] = {}
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0

    async def key(self, kid: str | None) -> PyJWK | None:
        """The key for `kid`, fetching the JWKS if allowed; None if the issuer has no such key."""
        found = self._keys.get(kid)
        now = time.monotonic()
        if found is not None:
            if (
                now - self._fetched_at > _MAX_KEY_AGE_S
                and now - self._attempted_at > self._refresh_s
            ):
                self._start_refresh()
            return found
        if self._inflight is not None and not self._inflight.done():
            # Wait for the fetch already under way; shielded so a cancelled caller cannot
            # cancel it for everybody else.
            await asyncio.shield(self._inflight)
            found = self._keys.get(kid)
        elif now - self._attempted_at >= self._refresh_s:
            await asyncio.shield(self._start_refresh())
            found = self._keys.get(kid)
        if found is None and not self._keys:
            raise IdentityProviderUnavailable(self._issuer)
        return found

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._inflight is None or self._inflight.done():
            self._attempted_at = time.monotonic()
            self._inflight = asyncio.ensure_future(self._refresh())
        return self._inflight

    async def _refresh(self) -> None:
        self.fetches += 1
        try:
            jwks_url = self._jwks_url or await self._discover()
            document = await self._get_json(jwks_url)
            keys = _parse_keys(document)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            log.warning(
                "jwks_fetch_failed",
                issuer=self._issuer,
                error_type=type(exc).__name__,
                keys_kept=len(self._keys),
            )
            return
        self._keys = keys
        self._fetched_at = time.monotonic()
        log.info("jwks_fetched", issuer=self._issuer, keys=len(keys))

    async def _discover(self) -> str:
        document = await self._get_json(
            self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        )
        if document.get("issuer") != self._issuer:
            raise ValueError("discovery document names another issuer")
        jwks_uri = document["jwks_uri"]
        if not isinstance(jwks_uri, str):
            raise ValueError("jwks_uri is not a string")
        return jwks_uri

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with self._session.get(url, timeout=_FETCH_TIMEOUT) as response:
            response.raise_for_status()
            document = await response.json(content_type=None)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        return document


def _parse_keys(document: dict[str, Any]) -> dict[str | None, PyJWK]:
    keys: dict[str | None, PyJWK] = {}
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("JWKS has no keys array")
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            continue  # symmetric keys are never trusted for verification
        try:
            key = PyJWK(entry)
        except PyJWKError:
            continue
        keys[entry.get("kid")] = key
    if len(keys) == 1:
        # A token without `kid` may use the issuer's only key.
        keys.setdefault(None, next(iter(keys.values())))
    return keys


class KeySets:
    """One `KeySet` per issuer and JWKS location, kept across policy reloads."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._sets: dict[tuple[str, str | None, float], KeySet] = {}

    def for_issuer(self, config: OidcIssuer) -> KeySet:
        key = (config.issuer, config.jwks_url, config.jwks_refresh_seconds)
        found = self._sets.get(key)
        if found is None:
            found = self._sets[key] = KeySet(self._session, config)
        return found
