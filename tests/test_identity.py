"""Who may call, and what they may use: OIDC access tokens from the trusted issuer and personal
tokens, against the forgeries a gateway meets; then each role's models, endpoints and tools.

Every Sluice here trusts a fake identity provider on loopback (`oidc_issuer`); clients are the
official SDKs, raw HTTP only for requests an SDK cannot make (no credential, `x-api-key`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import yaml

from proxy.identity.tokens import LocalTokenStore, new_token, token_hash
from proxy.testing import (
    FakeAnthropic,
    FakeOIDCIssuer,
    FakeOpenAI,
    hs256_token,
    unsigned_token,
)
from tests.conftest import UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY, Sluice

CHALLENGE = 'Bearer error="invalid_token"'
MESSAGES: Any = [{"role": "user", "content": "hi"}]
ANTHROPIC_VERSION = "2023-06-01"
LEEWAY_S = 60  # OidcIssuer.leeway_seconds default
REFRESH_S = 1.0  # jwks_refresh_seconds in oidc_policy_dir


@pytest.fixture
def policy_dir(oidc_policy_dir: Path) -> Path:
    """Every Sluice in this module trusts `oidc_issuer`."""
    return oidc_policy_dir


# --- Clients and assertions -------------------------------------------------------------------


def openai_for(sluice: Sluice, credential: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sluice.url + "/v1", api_key=credential, max_retries=0)


def anthropic_for(sluice: Sluice, credential: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=sluice.url, api_key=credential, max_retries=0)


async def chat(sluice: Sluice, credential: str, model: str = "gpt-4o", **options: Any) -> str:
    async with openai_for(sluice, credential) as client:
        answer = await client.chat.completions.create(model=model, messages=MESSAGES, **options)
    content: str | None = answer.choices[0].message.content
    assert content
    return content


async def chat_error(
    sluice: Sluice, credential: str, model: str = "gpt-4o", **options: Any
) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await chat(sluice, credential, model, **options)
    return caught.value


async def message(
    sluice: Sluice, credential: str, model: str = "claude-sonnet-4-6", **options: Any
) -> str:
    async with anthropic_for(sluice, credential) as client:
        answer = await client.messages.create(
            model=model, max_tokens=32, messages=MESSAGES, **options
        )
    block = answer.content[0]
    assert block.type == "text"
    text: str = block.text
    assert text
    return text


async def message_error(
    sluice: Sluice, credential: str, model: str = "claude-sonnet-4-6", **options: Any
) -> anthropic.APIStatusError:
    with pytest.raises(anthropic.APIStatusError) as caught:
        await message(sluice, credential, model, **options)
    return caught.value


async def model_ids(sluice: Sluice, credential: str) -> list[str]:
    async with openai_for(sluice, credential) as client:
        return [model.id async for model in client.models.list()]


def openai_error(body: Any, status: int, kind: str, code: str, param: str | None = None) -> str:
    """Checks OpenAI's error shape exactly; returns the message."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert (error["type"], error["code"], error["param"]) == (kind, code, param), error
    assert isinstance(error["message"], str) and error["message"]
    return error["message"]


def anthropic_error(body: Any, kind: str) -> str:
    """Checks Anthropic's error shape exactly; returns the message."""
    assert isinstance(body, dict) and set(body) == {"type", "error"}, body
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    message: str = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


def assert_openai_401(exc: openai.APIStatusError) -> str:
    assert isinstance(exc, openai.AuthenticationError), exc
    assert exc.status_code == 401
    assert exc.response.headers.get("WWW-Authenticate") == CHALLENGE
    return openai_error(exc.response.json(), 401, "invalid_request_error", "invalid_api_key")


def assert_anthropic_401(exc: anthropic.APIStatusError) -> str:
    assert isinstance(exc, anthropic.AuthenticationError), exc
    assert exc.status_code == 401
    assert exc.response.headers.get("WWW-Authenticate") == CHALLENGE
    assert exc.body == exc.response.json()
    return anthropic_error(exc.response.json(), "authentication_error")


def assert_openai_403(exc: openai.APIStatusError, param: str | None = None) -> str:
    assert isinstance(exc, openai.PermissionDeniedError), exc
    assert "WWW-Authenticate" not in exc.response.headers
    return openai_error(exc.response.json(), 403, "permission_error", "permission_denied", param)


def assert_openai_model_not_found(exc: openai.APIStatusError) -> str:
    assert isinstance(exc, openai.NotFoundError), exc
    return openai_error(
        exc.response.json(), 404, "invalid_request_error", "model_not_found", "model"
    )


def assert_openai_503(exc: openai.APIStatusError) -> str:
    assert exc.status_code == 503, exc
    assert "WWW-Authenticate" not in exc.response.headers
    return openai_error(exc.response.json(), 503, "server_error", "service_unavailable")


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def revoke(sluice: Sluice, token: str) -> str:
    """Revoke a personal token in the gateway's store, as `sluice token revoke` does; its id."""
    store = LocalTokenStore(sluice.settings.data_dir / "tokens.sqlite3")
    record = await store.find(token_hash(token))
    assert record is not None
    assert await store.revoke(record.id) is not None
    return record.id


# --- Accepted credentials ---------------------------------------------------------------------


async def test_rsa_token_is_accepted_and_never_forwarded(
    sluice: Sluice, oidc_issuer: FakeOIDCIssuer, fake_openai: FakeOpenAI
) -> None:
    token = oidc_issuer.mint()
    assert await chat(sluice, token) == fake_openai.behaviour.reply_text
    upstream = fake_openai.received[-1]
    assert upstream.headers["authorization"] == f"Bearer {UPSTREAM_OPENAI_KEY}"
    assert all(token not in value for value in upstream.headers.values())


async def test_ec_token_is_accepted_on_messages(
    sluice: Sluice, oidc_issuer: FakeOIDCIssuer, fake_anthropic: FakeAnthropic
) -> None:
    token = oidc_issuer.mint(key="ec")
    assert await message(sluice, token) == fake_anthropic.behaviour.reply_text
    upstream = fake_anthropic.received[-1]
    assert upstream.headers["x-api-key"] == UPSTREAM_ANTHROPIC_KEY
    assert all(token not in value for value in upstream.headers.values())


async def test_token_in_x_api_key_is_accepted(
    sluice: Sluice, oidc_issuer: FakeOIDCIssuer, employee_token: str
) -> None:
    # The anthropic SDK sends its key as `Authorization: Bearer`; older clients and curl
    # users send `x-api-key`, which no SDK here produces.
    body = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": MESSAGES}
    async with aiohttp.ClientSession() as session:
        for credential in (oidc_issuer.mint(), oidc_issuer.mint(key="ec"), employee_token):
            headers = {"x-api-key": credential, "anthropic-version": ANTHROPIC_VERSION}
            async with session.post(sluice.url + "/v1/messages", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["type"] == "message"
        # The scheme is case-insensitive (RFC 9110).
        headers = {"Authorization": f"bearer {oidc_issuer.mint()}"}
        chat_body = {"model": "gpt-4o", "messages": MESSAGES}
        async with session.post(
            sluice.url + "/v1/chat/completions", json=chat_body, headers=headers
        ) as r:
            assert r.status == 200, await r.text()


async def test_clock_skew_within_leeway_is_tolerated(
    sluice: Sluice, oidc_issuer: FakeOIDCIssuer
) -> None:
    now = int(time.time())
    assert await chat(sluice, oidc_issuer.mint({"exp": now - LEEWAY_S // 2}))
    assert await chat(sluice, oidc_issuer.mint({"nbf": now + LEEWAY_S // 2}))


async def test_groups_map_to_roles(sluice: Sluice, oidc_issuer: FakeOIDCIssuer) -> None:
    contractor = oidc_issuer.mint({"groups": ["contractors"]})
    assert await model_ids(sluice, contractor) == ["llama-3.3-70b"]
    assert await chat(sluice, contractor, "llama-3.3-70b")
    assert_openai_model_not_found(await chat_error(sluice, contractor, "gpt-4o"))
    both = oidc_issuer.mint({"groups": ["contractors", "engineering"]})
    assert await chat(sluice, both, "gpt-4o")


@pytest.mark.parametrize(
    "claims",
    [{"groups": ["marketing"]}, {"groups": []}, {"groups": "marketing"}, None],
    ids=["unmapped-group", "no-groups", "unmapped-string", "no-groups-claim"],
)
async def test_valid_token_without_a_role_is_403(
    sluice: Sluice,
    oidc_issuer: FakeOIDCIssuer,
    fake_openai: FakeOpenAI,
    claims: dict[str, Any] | None,
) -> None:
    token = oidc_issuer.mint(claims) if claims else oidc_issuer.mint(omit=("groups",))
    assert "no role" in assert_openai_403(await chat_error(sluice, token))
    exc = await message_error(sluice, token)
    assert isinstance(exc, anthropic.PermissionDeniedError)
    anthropic_error(exc.response.json(), "permission_error")
    with pytest.raises(openai.PermissionDeniedError):
        await model_ids(sluice, token)
    assert fake_openai.received == []


# --- Refused credentials ----------------------------------------------------------------------


@dataclass
class Forge:
    """What an attack needs to build its credential."""

    issuer: FakeOIDCIssuer
    sluice: Sluice
    stack: AsyncExitStack

    async def untrusted_issuer(self) -> FakeOIDCIssuer:
        """A second, real identity provider that the policy does not trust."""
        return await self.stack.enter_async_context(FakeOIDCIssuer())


@pytest.fixture
async def forge(oidc_issuer: FakeOIDCIssuer, sluice: Sluice) -> AsyncIterator[Forge]:
    async with AsyncExitStack() as stack:
        yield Forge(oidc_issuer, sluice, stack)


async def _alg_none(f: Forge) -> str:
    return unsigned_token(f.issuer.claims(), {"typ": "JWT", "kid": f.issuer.rsa_kid})


async def _hs256_signed_with_rsa_public_key(f: Forge) -> str:
    return hs256_token(f.issuer.claims(), f.issuer.public_pem("rsa"), {"kid": f.issuer.rsa_kid})


async def _expired(f: Forge) -> str:
    return f.issuer.mint(lifetime_s=-(2 * LEEWAY_S))


async def _not_yet_valid(f: Forge) -> str:
    return f.issuer.mint({"nbf": int(time.time()) + 5 * LEEWAY_S})


async def _untrusted_issuer(f: Forge) -> str:
    return (await f.untrusted_issuer()).mint()


async def _trusted_iss_and_kid_signed_by_another_key(f: Forge) -> str:
    other = await f.untrusted_issuer()
    return other.mint({"iss": f.issuer.url}, kid=f.issuer.rsa_kid)


async def _wrong_audience(f: Forge) -> str:
    return f.issuer.mint({"aud": "some-other-service"})


async def _unknown_kid(f: Forge) -> str:
    return f.issuer.mint(kid="kid-nobody-published")


async def _es256_naming_the_rsa_kid(f: Forge) -> str:
    return f.issuer.mint(key="ec", kid=f.issuer.rsa_kid)


async def _tampered_payload(f: Forge) -> str:
    header, payload, signature = f.issuer.mint().split(".")
    claims = json.loads(b64url_decode(payload))
    claims["sub"] = "mallory@corp.example"
    forged = b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    assert forged != payload
    return f"{header}.{forged}.{signature}"


async def _missing_exp(f: Forge) -> str:
    return f.issuer.mint(omit=("exp",))


async def _missing_sub(f: Forge) -> str:
    return f.issuer.mint(omit=("sub",))


async def _garbage(f: Forge) -> str:
    return "garbage-credential-" + secrets.token_hex(16)


async def _garbage_with_jwt_shape(f: Forge) -> str:
    return "eyJnYXJiYWdl." + secrets.token_urlsafe(24) + "." + secrets.token_urlsafe(24)


async def _unknown_personal_token(f: Forge) -> str:
    return new_token()


async def _revoked_personal_token(f: Forge) -> str:
    token = await f.sluice.issue_token()
    await revoke(f.sluice, token)
    return token


async def _expired_personal_token(f: Forge) -> str:
    return await f.sluice.issue_token(ttl_seconds=-1)


async def _oversized_bearer(f: Forge) -> str:
    return "A" * (20 * 1024)


async def _oversized_valid_jwt(f: Forge) -> str:
    return f.issuer.mint({"padding": "x" * (20 * 1024)})


ATTACKS: dict[str, Callable[[Forge], Awaitable[str]]] = {
    "alg-none": _alg_none,
    "hs256-signed-with-rsa-public-key": _hs256_signed_with_rsa_public_key,
    "expired": _expired,
    "nbf-in-future": _not_yet_valid,
    "untrusted-issuer": _untrusted_issuer,
    "trusted-iss-and-kid-signed-by-another-key": _trusted_iss_and_kid_signed_by_another_key,
    "wrong-audience": _wrong_audience,
    "unknown-kid": _unknown_kid,
    "es256-naming-the-rsa-kid": _es256_naming_the_rsa_kid,
    "tampered-payload": _tampered_payload,
    "missing-exp": _missing_exp,
    "missing-sub": _missing_sub,
    "garbage": _garbage,
    "garbage-with-jwt-shape": _garbage_with_jwt_shape,
    "unknown-personal-token": _unknown_personal_token,
    "revoked-personal-token": _revoked_personal_token,
    "expired-personal-token": _expired_personal_token,
    "oversized-bearer": _oversized_bearer,
    "oversized-valid-jwt": _oversized_valid_jwt,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_forged_or_invalid_credential_is_401(
    attack: str,
    forge: Forge,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    credential = await ATTACKS[attack](forge)
    refused = await chat_error(forge.sluice, credential)
    assert_openai_401(refused)
    assert credential not in refused.response.text
    refused_messages = await message_error(forge.sluice, credential)
    assert_anthropic_401(refused_messages)
    assert credential not in refused_messages.response.text
    with pytest.raises(openai.AuthenticationError):
        await model_ids(forge.sluice, credential)
    assert fake_openai.received == [] and fake_anthropic.received == []


async def test_no_credential_is_401(sluice: Sluice, fake_openai: FakeOpenAI) -> None:
    # No SDK sends a request without a key: the openai SDK refuses an empty one.
    chat_body = {"model": "gpt-4o", "messages": MESSAGES}
    message_body = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": MESSAGES}
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer   "}):
            async with session.post(
                sluice.url + "/v1/chat/completions", json=chat_body, headers=headers
            ) as r:
                assert r.status == 401
                assert r.headers.get("WWW-Authenticate") == CHALLENGE
                openai_error(await r.json(), 401, "invalid_request_error", "invalid_api_key")
        async with session.post(
            sluice.url + "/v1/messages",
            json=message_body,
            headers={"anthropic-version": ANTHROPIC_VERSION},
        ) as r:
            assert r.status == 401
            assert r.headers.get("WWW-Authenticate") == CHALLENGE
            anthropic_error(await r.json(), "authentication_error")
        async with session.get(sluice.url + "/v1/models") as r:
            assert r.status == 401
            assert r.headers.get("WWW-Authenticate") == CHALLENGE
            openai_error(await r.json(), 401, "invalid_request_error", "invalid_api_key")
    assert fake_openai.received == []


async def test_credential_in_query_string_or_other_scheme_is_401(
    sluice: Sluice, oidc_issuer: FakeOIDCIssuer, employee_token: str
) -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES}
    async with aiohttp.ClientSession() as session:
        for credential in (oidc_issuer.mint(), employee_token):
            for name in ("api_key", "access_token", "key", "token"):
                async with session.post(
                    sluice.url + "/v1/chat/completions", params={name: credential}, json=body
                ) as r:
                    assert r.status == 401, name
                    assert r.headers.get("WWW-Authenticate") == CHALLENGE
                    text = await r.text()
                    assert credential not in text
                    openai_error(json.loads(text), 401, "invalid_request_error", "invalid_api_key")
            basic = base64.b64encode(f"user:{credential}".encode()).decode()
            async with session.post(
                sluice.url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Basic {basic}"},
            ) as r:
                assert r.status == 401
    # The same credentials are good in the header: only where they were sent was wrong.
    assert await chat(sluice, oidc_issuer.mint())
    assert await chat(sluice, employee_token)


async def test_revocation_takes_effect_within_a_second(sluice: Sluice) -> None:
    token = await sluice.issue_token()
    assert await chat(sluice, token)
    await revoke(sluice, token)
    revoked_at = time.monotonic()
    async with openai_for(sluice, token) as client:
        while True:
            try:
                await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            except openai.AuthenticationError as exc:
                assert_openai_401(exc)
                break
            assert time.monotonic() - revoked_at < 1.2, "still accepted after revocation"
            await asyncio.sleep(0.05)


# --- Authorization ----------------------------------------------------------------------------


def _without(text: str, model: str) -> str:
    return text.replace(model, "<model>")


async def test_model_not_granted_looks_exactly_like_a_model_that_does_not_exist(
    sluice: Sluice, employee_token: str, fake_openai: FakeOpenAI, fake_vllm: Any
) -> None:
    contractor = await sluice.issue_token("contractor", "carol@vendor.example")
    denied = await chat_error(sluice, contractor, "gpt-4o")
    assert_openai_model_not_found(denied)
    # Unknown to the policy, asked by someone whose role pattern would allow it (route's 404)
    # and by someone whose role would not (authz's 404).
    for credential, model in ((employee_token, "gpt-nonexistent"), (contractor, "gpt-5-nope")):
        unknown = await chat_error(sluice, credential, model)
        assert_openai_model_not_found(unknown)
        assert _without(denied.response.text, "gpt-4o") == _without(unknown.response.text, model)
        assert denied.response.headers["content-type"] == unknown.response.headers["content-type"]
    denied_messages = await message_error(sluice, contractor, "claude-sonnet-4-6")
    unknown_messages = await message_error(sluice, employee_token, "claude-nonexistent")
    for exc in (denied_messages, unknown_messages):
        assert isinstance(exc, anthropic.NotFoundError)
        anthropic_error(exc.response.json(), "not_found_error")
    assert _without(denied_messages.response.text, "claude-sonnet-4-6") == _without(
        unknown_messages.response.text, "claude-nonexistent"
    )
    assert fake_openai.received == []


async def test_contractor_may_not_use_embeddings(sluice: Sluice, fake_openai: FakeOpenAI) -> None:
    contractor = await sluice.issue_token("contractor", "carol@vendor.example")
    async with openai_for(sluice, contractor) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert "/v1/embeddings" in assert_openai_403(caught.value)
    assert fake_openai.received == []


async def test_model_list_shows_only_what_the_role_grants(
    sluice: Sluice, employee_token: str
) -> None:
    contractor = await sluice.issue_token("contractor", "carol@vendor.example")
    listed = await model_ids(sluice, contractor)
    assert listed and all(name.startswith("llama-") for name in listed)
    assert listed == ["llama-3.3-70b"]
    async with anthropic_for(sluice, contractor) as client:
        assert [m.id async for m in client.models.list()] == ["llama-3.3-70b"]
    assert "gpt-4o" in await model_ids(sluice, employee_token)


async def test_bad_token_listing_models_with_the_anthropic_sdk_gets_anthropic_shape(
    sluice: Sluice,
) -> None:
    # `GET /v1/models` answers in Anthropic's format when the request carries
    # `anthropic-version`; its refusals should be Anthropic-shaped too.
    async with anthropic_for(sluice, "garbage-credential") as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client.models.list()
    assert caught.value.response.headers.get("WWW-Authenticate") == CHALLENGE
    anthropic_error(caught.value.response.json(), "authentication_error")


async def test_role_tool_allowlist(sluice: Sluice, fake_openai: FakeOpenAI) -> None:
    roles_file = sluice.policy_dir / "roles.yaml"
    roles = yaml.safe_load(roles_file.read_text())
    roles["roles"]["weather_bot"] = {"models": ["gpt-*", "claude-*"], "tools": ["get_weather"]}
    roles_file.write_text(yaml.safe_dump(roles))
    assert sluice.store.reload() and "weather_bot" in sluice.store.current.policy.roles
    token = await sluice.issue_token("weather_bot", "bot@corp.example")

    def tool(name: str) -> Any:
        return {
            "type": "function",
            "function": {"name": name, "parameters": {"type": "object", "properties": {}}},
        }

    assert await chat(sluice, token, tools=[tool("get_weather")])
    for tools in ([tool("delete_database")], [tool("get_weather"), tool("delete_database")]):
        refused = await chat_error(sluice, token, tools=tools)
        assert "delete_database" in assert_openai_403(refused, param="tools")
    # The legacy `functions` field is the same thing under another name.
    legacy = await chat_error(
        sluice,
        token,
        functions=[{"name": "delete_database", "parameters": {"type": "object"}}],
    )
    assert_openai_403(legacy, param="tools")
    schema: Any = {"type": "object", "properties": {}}
    assert await message(sluice, token, tools=[{"name": "get_weather", "input_schema": schema}])
    refused_messages = await message_error(
        sluice, token, tools=[{"name": "delete_database", "input_schema": schema}]
    )
    assert isinstance(refused_messages, anthropic.PermissionDeniedError)
    anthropic_error(refused_messages.response.json(), "permission_error")
    assert len(fake_openai.received) == 1


async def test_personal_token_narrowed_to_some_models(sluice: Sluice) -> None:
    token = await sluice.issue_token("employee", models=("gpt-4o-mini",))
    assert await chat(sluice, token, "gpt-4o-mini")
    assert_openai_model_not_found(await chat_error(sluice, token, "gpt-4o"))
    assert await model_ids(sluice, token) == ["gpt-4o-mini"]


# --- The identity provider's keys: rotation, floods, outages ----------------------------------


async def test_key_rotation_without_restart(sluice: Sluice, oidc_issuer: FakeOIDCIssuer) -> None:
    old_kid = oidc_issuer.rsa_kid
    assert await chat(sluice, oidc_issuer.mint())
    assert oidc_issuer.jwks_requests == 1
    new_kid = oidc_issuer.rotate()
    assert new_kid != old_kid and old_kid not in oidc_issuer.published_kids
    # Refetches on an unknown kid are allowed once per jwks_refresh_seconds.
    await asyncio.sleep(REFRESH_S + 0.1)
    token = oidc_issuer.mint()
    assert json.loads(b64url_decode(token.split(".")[0]))["kid"] == new_kid
    assert await chat(sluice, token)
    assert oidc_issuer.jwks_requests == 2
    # A new token signed with the withdrawn key is no longer trusted.
    assert_openai_401(await chat_error(sluice, oidc_issuer.mint(key=old_kid)))


async def _flood_unknown_kids(
    sluice: Sluice, issuer: FakeOIDCIssuer, *, concurrent: bool, count: int = 50
) -> None:
    """`count` tokens, each naming a different made-up kid; every one must be a 401."""
    tokens = [issuer.mint(kid="kid-" + secrets.token_hex(8)) for _ in range(count)]
    async with openai_for(sluice, "unused") as client:

        async def attempt(token: str) -> None:
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.with_options(api_key=token).chat.completions.create(
                    model="gpt-4o", messages=MESSAGES
                )
            assert_openai_401(caught.value)

        if concurrent:
            await asyncio.gather(*(attempt(token) for token in tokens))
        else:
            for token in tokens:
                await attempt(token)


async def test_unknown_kid_flood_cannot_hammer_the_identity_provider(
    sluice: Sluice, oidc_issuer: FakeOIDCIssuer
) -> None:
    # Cold, all at once: they share the first fetch.
    await _flood_unknown_kids(sluice, oidc_issuer, concurrent=True)
    assert 1 <= oidc_issuer.jwks_requests <= 2
    # Warm, past the refresh interval so one refetch is allowed, one after another.
    assert await chat(sluice, oidc_issuer.mint())
    await asyncio.sleep(REFRESH_S + 0.1)
    before = oidc_issuer.jwks_requests
    started = time.monotonic()
    await _flood_unknown_kids(sluice, oidc_issuer, concurrent=False)
    assert time.monotonic() - started < 2 * REFRESH_S, "too slow to be a flood"
    assert 1 <= oidc_issuer.jwks_requests - before <= 2
    # Real users are not locked out by it.
    assert await chat(sluice, oidc_issuer.mint())
    assert await message(sluice, oidc_issuer.mint(key="ec"))


async def test_identity_provider_down_with_keys_cached(
    sluice: Sluice, oidc_issuer: FakeOIDCIssuer
) -> None:
    assert await chat(sluice, oidc_issuer.mint())
    oidc_issuer.down = True
    # Fresh tokens (not just the cached one) signed with known keys keep working.
    assert await chat(sluice, oidc_issuer.mint())
    assert await message(sluice, oidc_issuer.mint(key="ec"))


async def test_identity_provider_down_with_no_keys_is_503_not_401(
    sluice: Sluice, oidc_issuer: FakeOIDCIssuer, fake_openai: FakeOpenAI
) -> None:
    oidc_issuer.down = True
    token = oidc_issuer.mint()
    assert_openai_503(await chat_error(sluice, token))
    refused = await message_error(sluice, token)
    assert refused.status_code == 503
    anthropic_error(refused.response.json(), "api_error")
    assert oidc_issuer.discovery_requests + oidc_issuer.jwks_requests >= 1
    assert fake_openai.received == []
    # Once it is back, the next permitted refetch lets the token in.
    oidc_issuer.down = False
    deadline = time.monotonic() + REFRESH_S + 2.0
    while True:
        try:
            assert await chat(sluice, token)
            break
        except openai.APIStatusError as exc:
            assert_openai_503(exc)
            assert time.monotonic() < deadline, (
                "still refused after the identity provider recovered"
            )
            await asyncio.sleep(0.1)


# --- Credentials stay secret ------------------------------------------------------------------


WINDOW = 16  # this many characters of a secret are too many to show anyone


def _secret_parts(credential: str) -> list[str]:
    """What of a credential is secret: a personal token's random part, a JWT's payload and
    signature (its header only names the algorithm and key), anything else whole."""
    if credential.startswith("slc_"):
        return [credential[len("slc_") :]]
    segments = credential.split(".")
    if len(segments) == 3:
        return [s for s in segments[1:] if s]
    return [credential]


def _windows(text: str) -> set[str]:
    return {text[i : i + WINDOW] for i in range(len(text) - WINDOW + 1)}


def _shown(credential: str, seen: set[str]) -> bool:
    """Whether any WINDOW characters of the credential's secret parts are in `seen`."""
    return any(
        part[i : i + WINDOW] in seen
        for part in _secret_parts(credential)
        for i in range(max(1, len(part) - WINDOW + 1))
    )


async def test_no_credential_appears_in_logs_or_error_bodies(
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    forge: Forge,
    sluice: Sluice,
    oidc_issuer: FakeOIDCIssuer,
) -> None:
    used: list[str] = []
    bodies: list[str] = []
    for credential in (oidc_issuer.mint(), oidc_issuer.mint(key="ec"), await sluice.issue_token()):
        used.append(credential)
        assert await chat(sluice, credential)
    for build in ATTACKS.values():
        credential = await build(forge)
        used.append(credential)
        refused = await chat_error(sluice, credential)
        bodies.append(refused.response.text)
        refused_messages = await message_error(sluice, credential)
        bodies.append(refused_messages.response.text)
    # An outage, so the identity provider's failure is logged too.
    oidc_issuer.down = True
    await asyncio.sleep(REFRESH_S + 0.1)
    credential = oidc_issuer.mint(kid="kid-during-outage")
    used.append(credential)
    bodies.append((await chat_error(sluice, credential)).response.text)

    out, err = capfd.readouterr()
    logs = out + err + caplog.text  # structlog prints; aiohttp and others use `logging`
    # The capture works: Sluice's own log lines are in it.
    assert "jwks_fetched" in logs and "jwks_fetch_failed" in logs
    logged, echoed = _windows(logs), set().union(*map(_windows, bodies))
    for credential in used:
        assert not _shown(credential, logged), "a credential, or part of one, was logged"
        assert not _shown(credential, echoed), "a credential, or part of one, was echoed"


async def test_header_too_large_even_for_the_http_server_is_not_echoed(
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    sluice: Sluice,
    fake_openai: FakeOpenAI,
) -> None:
    # Beyond the server's 64 KiB header-line limit aiohttp refuses the request before any
    # handler runs; the refusal must still not show or log what the credential was.
    credential = "slc_" + secrets.token_urlsafe(70 * 1024)[: 70 * 1024]
    refused = await chat_error(sluice, credential)
    assert fake_openai.received == []
    assert refused.status_code in (400, 401, 431)
    out, err = capfd.readouterr()
    assert not _shown(credential, _windows(refused.response.text)), "the credential was echoed"
    assert not _shown(credential, _windows(out + err + caplog.text)), "the credential was logged"
    body = refused.response.json()  # provider-shaped JSON, not aiohttp's text/plain
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
