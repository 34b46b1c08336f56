"""Signing in to the dashboard: OIDC authorization code flow with PKCE, or a personal token.

Either way the result is a `Principal` whose roles must grant `audit:read`; only then is a
session created. Failures say what went wrong in general terms, never what a token held.
"""

from __future__ import annotations

import base64
import hashlib
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from proxy.context import Principal
from proxy.dashboard.access import PendingLogin
from proxy.identity.oidc import InvalidCredential, OidcVerifier
from proxy.policy.model import DashboardSignIn, OidcIssuer, Policy

_DISCOVERY_SECONDS = 300.0


class SignInFailed(Exception):
    """Sign-in did not succeed; the message is safe to show to the person signing in."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    authorization: str
    token: str


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issuer_config(policy: Policy) -> tuple[DashboardSignIn, OidcIssuer] | None:
    """The dashboard's OIDC settings and the trusted issuer they name, if single sign-on is
    configured."""
    settings = policy.identity.dashboard
    if settings.oidc_issuer is None:
        return None
    issuer = next((i for i in policy.identity.oidc if i.issuer == settings.oidc_issuer), None)
    return None if issuer is None else (settings, issuer)


class OidcSignIn:
    """The client side of the authorization code flow, with the issuer's endpoints cached."""

    def __init__(self, http: aiohttp.ClientSession, verifier: OidcVerifier) -> None:
        self._http = http
        self._verifier = verifier
        self._discovered: dict[str, tuple[float, Endpoints]] = {}

    async def endpoints(self, settings: DashboardSignIn, issuer: OidcIssuer) -> Endpoints:
        if settings.authorization_endpoint and settings.token_endpoint:
            return Endpoints(settings.authorization_endpoint, settings.token_endpoint)
        cached = self._discovered.get(issuer.issuer)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                response.raise_for_status()
                document = await response.json(content_type=None)
            endpoints = Endpoints(
                settings.authorization_endpoint or str(document["authorization_endpoint"]),
                settings.token_endpoint or str(document["token_endpoint"]),
            )
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            raise SignInFailed("The identity provider cannot be reached right now.") from None
        self._discovered[issuer.issuer] = (time.monotonic() + _DISCOVERY_SECONDS, endpoints)
        return endpoints

    def authorization_url(
        self, endpoints: Endpoints, settings: DashboardSignIn, login: PendingLogin
    ) -> str:
        assert settings.client_id is not None  # checked by the policy model
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": settings.client_id,
                "redirect_uri": login.redirect_uri,
                "scope": " ".join(settings.scopes),
                "state": login.state,
                "nonce": login.nonce,
                "code_challenge": pkce_challenge(login.code_verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in endpoints.authorization else "?"
        return endpoints.authorization + separator + query

    async def redeem(
        self, code: str, login: PendingLogin, settings: DashboardSignIn, issuer: OidcIssuer
    ) -> Principal:
        """Exchange the code for tokens and turn the verified ID token into a principal."""
        assert settings.client_id is not None
        endpoints = await self.endpoints(settings, issuer)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": login.redirect_uri,
            "client_id": settings.client_id,
            "code_verifier": login.code_verifier,
        }
        if settings.client_secret is not None:
            form["client_secret"] = settings.client_secret.get_secret_value()
        try:
            async with self._http.post(
                endpoints.token, data=form, timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                body: Any = await response.json(content_type=None)
                if response.status != 200:
                    raise SignInFailed("The identity provider refused the sign-in.")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise SignInFailed("The identity provider cannot be reached right now.") from None
        id_token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(id_token, str):
            raise SignInFailed("The identity provider returned no ID token.")
        # The ID token is checked with the issuer's own settings, for this client's audience.
        as_client = issuer.model_copy(update={"audience": settings.client_id})
        try:
            principal = await self._verifier.authenticate(id_token, [as_client])
        except InvalidCredential as exc:
            raise SignInFailed(f"The ID token was rejected: {exc}") from None
        claims = jwt.decode(id_token, options={"verify_signature": False})  # verified above
        if claims.get("nonce") != login.nonce:
            raise SignInFailed("The ID token does not belong to this sign-in (nonce).")
        return principal


def safe_error_code(value: str) -> str:
    """An OAuth `error` value from the query string, reduced to what the spec allows."""
    cleaned = "".join(ch for ch in value[:64] if ch.isalnum() or ch == "_")
    return cleaned or "unknown_error"
