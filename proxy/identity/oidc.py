"""Verifies OIDC access tokens (JWTs) from the issuers the policy trusts, and maps their claims
to Sluice roles.

Verified tokens are remembered until they expire, so a client resending its token skips the
signature check. Rejections say what was wrong with the token, never what it contained.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from proxy.context import Principal
from proxy.identity.jwks import KeySets
from proxy.policy.model import OidcIssuer

_CACHE_LIMIT = 10_000

_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class InvalidCredential(Exception):
    """The credential was rejected; the message is safe to show (it quotes nothing of it)."""


@dataclass(frozen=True, slots=True)
class _Verified:
    config: OidcIssuer
    principal: Principal
    valid_until: float


class OidcVerifier:
    """Turns a JWT into a `Principal`, or raises `InvalidCredential`."""

    def __init__(self, keysets: KeySets) -> None:
        self._keysets = keysets
        self._verified: dict[str, _Verified] = {}

    async def authenticate(self, token: str, issuers: Sequence[OidcIssuer]) -> Principal:
        hit = self._verified.get(token)
        if hit is not None:
            # Only while the issuer's settings are the ones the token was checked against.
            if hit.valid_until > time.time() and any(c is hit.config for c in issuers):
                return hit.principal
            del self._verified[token]
        config, claims = await self._verify(token, issuers)
        principal = _principal(config, claims)
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = _Verified(config, principal, float(claims["exp"]))
        return principal

    async def _verify(
        self, token: str, issuers: Sequence[OidcIssuer]
    ) -> tuple[OidcIssuer, dict[str, Any]]:
        try:
            # Header and claims in one parse: PyJWT's base64 check costs ~40 us a pass.
            parts = jwt.decode_complete(token, options={"verify_signature": False})
            header, unverified = parts["header"], parts["payload"]
        except jwt.InvalidTokenError:
            raise InvalidCredential("The token is not a well-formed JWT.") from None
        issuer = unverified.get("iss")
        config = next((c for c in issuers if c.issuer == issuer), None)
        if config is None:
            raise InvalidCredential("The token's issuer is not trusted by this gateway.")
        algorithm = header.get("alg")
        if algorithm not in config.algorithms:
            raise InvalidCredential("The token's signing algorithm is not accepted.")
        kid = header.get("kid")
        key = await self._keysets.for_issuer(config).key(kid if isinstance(kid, str) else None)
        if key is None:
            raise InvalidCredential("The token is signed with a key the issuer does not publish.")
        if _KEY_TYPES.get(algorithm[:2]) != key.key_type:
            raise InvalidCredential("The token's signing algorithm does not match its key.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidCredential("The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise InvalidCredential("The token is not valid yet.") from None
        except jwt.InvalidAudienceError:
            raise InvalidCredential("The token is not meant for this gateway (audience).") from None
        except jwt.InvalidIssuerError:
            raise InvalidCredential("The token's issuer is not trusted by this gateway.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidCredential(f"The token lacks the required {exc.claim!r} claim.") from None
        except jwt.InvalidTokenError:
            raise InvalidCredential("The token's signature is invalid.") from None
        return config, claims


def _principal(config: OidcIssuer, claims: dict[str, Any]) -> Principal:
    subject = claims.get(config.subject_claim)
    if not isinstance(subject, str) or not subject:
        raise InvalidCredential(f"The token has no {config.subject_claim!r} claim to name you by.")
    roles = list(config.default_roles)
    for value in _claim_values(claims, config.roles_claim):
        role = config.role_map.get(value)
        if role is not None and role not in roles:
            roles.append(role)
    return Principal(subject, tuple(roles), "oidc", issuer=config.issuer)


def _claim_values(claims: dict[str, Any], path: str) -> list[str]:
    """The string values at a dotted claim path (`realm_access.roles`), a list or a single one."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return []
        value = value.get(part)
    if isinstance(value, str):
        return value.split() if " " in value else [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []
