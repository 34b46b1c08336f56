"""No secret in operational output: prompts full of known e-mails, card numbers, API keys and
tokens go through every path, and no log line, span, metric or error body shows any of them.

Every path: allowed, masked, rerouted, blocked, denied by authz, rate-limited, unauthenticated,
bad JSON, upstream failure, a stream that breaks, a client that leaves mid-stream; through the
official OpenAI and Anthropic SDKs, with a real Sluice and real classification.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import yaml
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.classify.pool import ClassifierPool
from proxy.identity.tokens import new_token
from proxy.settings import Settings
from proxy.testing import FakeAnthropic, FakeOpenAI, FakeVLLM, hs256_token
from tests.conftest import Sluice, running_sluice

WINDOW = 12  # this many characters of a secret in a row count as showing it


def _random(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _luhn_card() -> str:
    """A fresh Visa-shaped number that passes the Luhn check, so the classifier finds it."""
    digits = [4] + [secrets.randbelow(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d
    digits.append((10 - total % 10) % 10)
    text = "".join(map(str, digits))
    return " ".join(text[i : i + 4] for i in range(0, 16, 4))


ALNUM = string.ascii_letters + string.digits
EMAIL = f"canary.{_random(string.ascii_lowercase, 10)}@leaky.example.org"
CARD = _luhn_card()
OPENAI_KEY = "sk-proj-" + _random(ALNUM, 48)
AWS_KEY = "AKIA" + _random(string.ascii_uppercase + string.digits, 16)
GITHUB_TOKEN = "ghp_" + _random(ALNUM, 36)
SLUICE_TOKEN = new_token()
JWT = hs256_token(
    {"sub": "canary-" + _random(ALNUM, 20), "aud": "sluice", "exp": 4102444800},
    secrets.token_bytes(32),
)
PROMPT = (
    f"Write to {EMAIL} about card {CARD}. Our keys: openai {OPENAI_KEY}, aws {AWS_KEY}, "
    f"github {GITHUB_TOKEN}, gateway {SLUICE_TOKEN}, and Authorization: Bearer {JWT}."
)
REPLY = f"Noted: {EMAIL} and {OPENAI_KEY}."
# A key pasted into `model` by mistake: the 404 names it back to its sender, as OpenAI's does,
# but no log line, span or metric may carry it.
MODEL_KEY = "sk-proj-" + _random(ALNUM, 48)


def _secret_parts(value: str) -> list[str]:
    """The parts of a value that are secret: a JWT's header only names the algorithm."""
    if value.count(".") == 2 and value.startswith("eyJ"):
        return value.split(".")[1:]
    if value == CARD:
        return [CARD, CARD.replace(" ", "")]
    return [value]


def _windows(text: str) -> set[str]:
    return {text[i : i + WINDOW] for i in range(len(text) - WINDOW + 1)}


def _leaked(values: list[str], seen: set[str]) -> list[str]:
    return [
        value
        for value in values
        for part in _secret_parts(value)
        if any(part[i : i + WINDOW] in seen for i in range(max(1, len(part) - WINDOW + 1)))
    ]


@pytest.fixture
def policy_dir(policy_dir: Path) -> Path:
    """The default policy plus roles that take each classification path, and a tiny limit."""
    roles_file = policy_dir / "roles.yaml"
    roles = yaml.safe_load(roles_file.read_text())
    grant = {"models": ["gpt-*", "claude-*", "llama-*", "text-embedding-*"]}
    for name in ("open", "masking", "rerouting"):
        roles["roles"][name] = grant
    roles["roles"]["limited"] = {**grant, "limits": {"requests_per_minute": 1}}
    roles_file.write_text(yaml.safe_dump(roles))
    classification_file = policy_dir / "classification.yaml"
    document = yaml.safe_load(classification_file.read_text())
    levels = ("public", "internal", "confidential", "restricted")
    document["classification"]["role_actions"] = {
        "open": dict.fromkeys(levels, "allow"),
        "limited": dict.fromkeys(levels, "allow"),
        "masking": dict.fromkeys(levels, "mask"),
        "rerouting": dict.fromkeys(levels, "reroute"),
    }
    classification_file.write_text(yaml.safe_dump(document))
    return policy_dir


@pytest.fixture
async def sluice(
    policy_dir: Path,
    settings: Settings,
    classifier_pool: ClassifierPool,
    spans: InMemorySpanExporter,
) -> AsyncIterator[Sluice]:
    """The real gateway, tracing into memory so every span can be searched."""
    async with running_sluice(policy_dir, settings, classifier_pool, span_exporter=spans) as it:
        yield it


def _user(text: str = PROMPT) -> Any:
    return [{"role": "user", "content": text}]


class Run:
    """The clients of one test run, and every error body they were given."""

    def __init__(self, sluice: Sluice) -> None:
        self.sluice = sluice
        self.bodies: list[str] = []
        self.credentials: list[str] = []
        self.requests = 0

    async def openai_client(self, role: str) -> openai.AsyncOpenAI:
        token = await self.sluice.issue_token(role, subject=f"{role}-user@corp.example")
        self.credentials.append(token)
        return openai.AsyncOpenAI(base_url=self.sluice.url + "/v1", api_key=token, max_retries=0)

    async def anthropic_client(self, role: str) -> anthropic.AsyncAnthropic:
        token = await self.sluice.issue_token(role, subject=f"{role}-user@corp.example")
        self.credentials.append(token)
        return anthropic.AsyncAnthropic(base_url=self.sluice.url, api_key=token, max_retries=0)

    async def ok(self, call: Callable[[], Any]) -> Any:
        self.requests += 1
        return await call()

    async def refused(
        self, call: Callable[[], Any], error: type[Exception] = openai.APIStatusError
    ) -> int:
        self.requests += 1
        with pytest.raises(error) as caught:
            await call()
        exc = caught.value
        response = exc.response  # type: ignore[attr-defined]
        self.bodies.append(response.text)
        self.bodies.append(json.dumps(dict(response.headers)))
        return int(response.status_code)


async def _drain(stream: Any) -> None:
    async for _event in stream:
        pass


async def test_no_secret_reaches_logs_spans_metrics_or_error_bodies(
    sluice: Sluice,
    logs: list[dict[str, Any]],
    spans: InMemorySpanExporter,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_vllm: FakeVLLM,
) -> None:
    run = Run(sluice)
    for fake in (fake_openai, fake_anthropic, fake_vllm):
        fake.behaviour.reply_text = REPLY
    open_client = await run.openai_client("open")
    masking = await run.openai_client("masking")
    rerouting = await run.openai_client("rerouting")
    employee = await run.openai_client("employee")
    contractor = await run.openai_client("contractor")
    limited = await run.openai_client("limited")
    claude_open = await run.anthropic_client("open")
    claude_employee = await run.anthropic_client("employee")
    chat = "gpt-4o"

    # Allowed, masked and rerouted: answered, whole and streamed, in each wire format.
    for client in (open_client, masking, rerouting):
        await run.ok(partial(client.chat.completions.create, model=chat, messages=_user()))
        stream = await run.ok(
            partial(client.chat.completions.create, model=chat, messages=_user(), stream=True)
        )
        await _drain(stream)
    await run.ok(lambda: open_client.responses.create(model=chat, input=PROMPT))
    await run.ok(
        lambda: open_client.embeddings.create(model="text-embedding-3-small", input=PROMPT)
    )
    await run.ok(
        lambda: claude_open.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=_user()
        )
    )
    async with claude_open.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=_user()
    ) as claude_stream:
        run.requests += 1
        await claude_stream.get_final_message()

    # Blocked for its content, denied by authz, rate-limited, unauthenticated.
    blocked = run.refused(lambda: employee.chat.completions.create(model=chat, messages=_user()))
    assert await blocked == 400
    assert (
        await run.refused(
            lambda: claude_employee.messages.create(
                model="claude-sonnet-4-6", max_tokens=64, messages=_user()
            ),
            anthropic.APIStatusError,
        )
        == 400
    )
    denied = run.refused(lambda: contractor.chat.completions.create(model=chat, messages=_user()))
    assert await denied == 404
    run.requests += 1
    with pytest.raises(openai.NotFoundError):
        await employee.chat.completions.create(model=MODEL_KEY, messages=_user("hi"))
    await run.ok(lambda: limited.chat.completions.create(model=chat, messages=_user()))
    limit = run.refused(lambda: limited.chat.completions.create(model=chat, messages=_user()))
    assert await limit == 429
    for credential in (JWT, SLUICE_TOKEN, OPENAI_KEY):
        async with openai.AsyncOpenAI(
            base_url=sluice.url + "/v1", api_key=credential, max_retries=0
        ) as stranger:
            unknown = run.refused(
                partial(stranger.chat.completions.create, model=chat, messages=_user())
            )
            assert await unknown == 401

    # Bad JSON: the SDKs cannot send it, so a raw client does, with the secrets in it.
    async with aiohttp.ClientSession() as http:
        broken = json.dumps({"model": chat, "messages": _user()})[:-3]
        run.requests += 1
        async with http.post(
            sluice.url + "/v1/chat/completions",
            data=broken,
            headers={"Authorization": f"Bearer {run.credentials[0]}"},
            json=None,
        ) as response:
            assert response.status in (400, 415)
            run.bodies.append(await response.text())
        run.requests += 1
        async with http.post(
            sluice.url + "/v1/chat/completions",
            data=broken,
            headers={
                "Authorization": f"Bearer {run.credentials[0]}",
                "Content-Type": "application/json",
            },
        ) as response:
            assert response.status == 400
            run.bodies.append(await response.text())

    # Upstream failures: an error status, a rejected gateway key, a stream cut midway.
    fake_openai.behaviour.fail_status = 500
    failed = run.refused(lambda: open_client.chat.completions.create(model=chat, messages=_user()))
    assert await failed == 500
    fake_openai.behaviour.fail_status = 401
    rejected = run.refused(
        lambda: open_client.chat.completions.create(model=chat, messages=_user())
    )
    assert await rejected == 401
    fake_openai.behaviour.fail_status = None
    fake_openai.behaviour.cut_after_events = 2
    stream = await run.ok(
        lambda: open_client.chat.completions.create(model=chat, messages=_user(), stream=True)
    )
    with pytest.raises(openai.APIError) as broke:
        await _drain(stream)
    run.bodies.append(str(broke.value.body))
    fake_openai.behaviour.cut_after_events = None

    # A client that leaves mid-stream.
    fake_openai.behaviour.event_delay_s = 0.05
    stream = await run.ok(
        lambda: open_client.chat.completions.create(model=chat, messages=_user(), stream=True)
    )
    async for _first in stream:
        break
    await stream.close()

    for client in (open_client, masking, rerouting, employee, contractor, limited):
        await client.close()
    for claude in (claude_open, claude_employee):
        await claude.close()

    # Every request has ended and been logged before the outputs are searched.
    async with asyncio.timeout(10):
        while sum(1 for e in logs if e["event"] == "access") < run.requests:
            await asyncio.sleep(0.02)
    async with aiohttp.ClientSession() as http, http.get(sluice.url + "/metrics") as response:
        metrics_text = await response.text()
    out, err = capfd.readouterr()

    finished = spans.get_finished_spans()
    assert not [e for e in logs if e["event"] == "telemetry_failed"]
    assert sum(1 for e in logs if e["event"] == "access") == run.requests
    assert len([s for s in finished if s.name.startswith("POST ")]) == run.requests
    decisions = {e["decision"] for e in logs if e["event"] == "access"}
    assert {"allowed", "masked", "rerouted", "blocked", "denied", "failed"} <= decisions
    assert 'decision="masked"' in metrics_text and 'decision="rerouted"' in metrics_text

    # The secrets did reach the fake providers on the allowed paths: the search is not vacuous.
    assert EMAIL in json.dumps([r.body for r in fake_openai.received])

    outputs = {
        "structlog": json.dumps(logs, default=str),
        "stderr/stdout": out + err,
        "logging": caplog.text,
        "spans": "\n".join(span.to_json() for span in finished),
        "metrics": metrics_text,
        "error bodies": "\n".join(run.bodies),
    }
    # Named, so a failure says which kind of secret leaked without printing it again.
    named = {
        "e-mail": EMAIL,
        "card": CARD,
        "openai key": OPENAI_KEY,
        "aws key": AWS_KEY,
        "github token": GITHUB_TOKEN,
        "sluice token in a prompt": SLUICE_TOKEN,
        "bearer jwt": JWT,
    }
    named.update({f"caller credential {i}": c for i, c in enumerate(run.credentials)})
    for where in ("structlog", "spans", "metrics", "error bodies"):
        assert outputs[where], f"nothing captured from {where}"
    for where, text in outputs.items():
        seen = _windows(text)
        hits = [name for name, value in named.items() if _leaked([value], seen)]
        if where != "error bodies" and _leaked([MODEL_KEY], seen):
            hits.append("key sent as the model name")
        assert hits == [], f"found in {where}: {hits}"


def test_an_unawaited_task_error_is_logged_by_type_only(logs: list[dict[str, Any]]) -> None:
    """asyncio's own report quotes the exception and the task; Sluice's handler does not."""
    import asyncio

    from proxy.app import _loop_exception

    secret = "sk-proj-" + "q" * 40
    loop = asyncio.new_event_loop()
    try:
        _loop_exception(
            loop,
            {"message": "Task exception was never retrieved", "exception": ValueError(secret)},
        )
    finally:
        loop.close()
    assert logs == [
        {
            "event": "event_loop_error",
            "log_level": "error",
            "what": "Task exception was never retrieved",
            "error_type": "ValueError",
        }
    ]
