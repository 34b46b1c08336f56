"""Filter `authn`: establishes who is calling, from `Authorization: Bearer` or `x-api-key`.

Accepts OIDC access tokens from the issuers the policy trusts and Sluice personal tokens.
Anything else is 401; an identity provider or token store that cannot answer is 503. Query
strings are never read, and the credential itself never appears in a log line or an error.
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.context import Deny, Principal, RequestContext
from proxy.errors import ErrorKind
from proxy.identity.jwks import IdentityProviderUnavailable
from proxy.identity.oidc import InvalidCredential, OidcVerifier
from proxy.identity.tokens import TOKEN_PREFIX, PersonalTokenVerifier, TokenStoreUnavailable

MAX_CREDENTIAL_BYTES = 16 * 1024
_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def unauthenticated(message: str) -> Deny:
    return Deny(ErrorKind.AUTHENTICATION, message, headers=_CHALLENGE)


def credential_from(headers: Mapping[str, str]) -> str | None:
    """The bearer credential of a request, from either header clients use."""
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


class Authenticate:
    """Decides on the request's credential and the policy's `identity` section."""

    name = "authn"

    def __init__(self, oidc: OidcVerifier, tokens: PersonalTokenVerifier) -> None:
        self._oidc = oidc
        self._tokens = tokens

    async def on_request(self, ctx: RequestContext) -> Deny | None:
        credential = credential_from(ctx.headers)
        if credential is None:
            return unauthenticated(
                "No credential. Send your Sluice token or company SSO access token as "
                "'Authorization: Bearer <token>' or 'x-api-key: <token>'."
            )
        if len(credential) > MAX_CREDENTIAL_BYTES:
            return unauthenticated("The credential is too large to be a valid token.")
        identity = ctx.policy.policy.identity
        try:
            principal = await self._principal(credential, ctx)
        except InvalidCredential as exc:
            return unauthenticated(str(exc))
        except IdentityProviderUnavailable:
            return Deny(
                ErrorKind.UNAVAILABLE,
                "The identity provider cannot be reached to check your token; try again shortly.",
            )
        except TokenStoreUnavailable:
            return Deny(
                ErrorKind.UNAVAILABLE,
                "The token store cannot be reached to check your token; try again shortly.",
            )
        if principal is None:
            if credential.startswith(TOKEN_PREFIX) and identity.personal_tokens.enabled:
                return unauthenticated("The token is unknown, expired or revoked.")
            return unauthenticated("The credential is not a token this gateway accepts.")
        ctx.principal = principal
        return None

    async def _principal(self, credential: str, ctx: RequestContext) -> Principal | None:
        identity = ctx.policy.policy.identity
        if credential.startswith(TOKEN_PREFIX):
            if not identity.personal_tokens.enabled:
                return None
            return await self._tokens.authenticate(credential)
        if credential.count(".") == 2 and identity.oidc:
            return await self._oidc.authenticate(credential, identity.oidc)
        return None
