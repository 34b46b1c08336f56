"""Personal tokens as admins handle them: `sluice token issue|list|revoke` run as processes, the
store that keeps only hashes, and revocation seen by every replica sharing one Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from proxy.app import build_app, start_server
from proxy.identity.tokens import TOKEN_PATTERN, token_hash
from proxy.policy.store import PolicyStore
from proxy.settings import Settings
from proxy.testing import FakeOpenAI
from tests.conftest import (
    REPO,
    RedisServer,
    Sluice,
    free_port,
    shared_classifier,
    stop_process,
    wait_until_ready,
)

MESSAGES: Any = [{"role": "user", "content": "hi"}]
CHALLENGE = 'Bearer error="invalid_token"'
POLICY_ROLES = "admin, contractor, employee, security, security_viewer, service"  # roles.yaml


@dataclass(frozen=True)
class Cli:
    returncode: int
    stdout: str
    stderr: str


def _env(redis_url: str | None) -> dict[str, str]:
    """This process's environment (with the fakes' URLs), and Redis only when asked for."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SLUICE_DATA_DIR")}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


async def sluice_cli(*args: str, redis_url: str | None = None) -> Cli:
    """`sluice ARGS...` as an admin runs it, without blocking the test's event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(redis_url),
        cwd=REPO,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Cli(process.returncode, stdout.decode(), stderr.decode())


async def issue(
    policy_dir: Path,
    data_dir: Path,
    *extra: str,
    sub: str = "bob@corp.example",
    role: str = "employee",
    ttl: str = "1h",
    redis_url: str | None = None,
) -> tuple[str, str]:
    """Issue a token with the CLI; returns (token, id)."""
    result = await sluice_cli(
        *("token", "issue", "--sub", sub, "--role", role, "--ttl", ttl),
        *("--policies", str(policy_dir), "--data-dir", str(data_dir)),
        *extra,
        redis_url=redis_url,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    token = result.stdout.strip()
    assert TOKEN_PATTERN.fullmatch(token), "stdout is not just the token"
    assert result.stdout == token + "\n"
    assert token not in result.stderr
    found = re.search(r"\bid (tok_[0-9a-f]+) ", result.stderr)
    assert found, result.stderr
    return token, found.group(1)


def openai_for(url: str, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=token, max_retries=0)


async def chat(url: str, token: str) -> str:
    async with openai_for(url, token) as client:
        answer = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    content = answer.choices[0].message.content
    assert content
    return content


async def chat_status(client: openai.AsyncOpenAI) -> int:
    """200, or the status of the `APIStatusError` the SDK raised."""
    try:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


async def chat_error(url: str, token: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await chat(url, token)
    return caught.value


def openai_error(exc: openai.APIStatusError, status: int, kind: str, code: str) -> None:
    assert exc.status_code == status, exc
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == (kind, code), body
    assert body["error"]["message"]


def assert_401(exc: openai.APIStatusError) -> None:
    assert isinstance(exc, openai.AuthenticationError), exc
    assert exc.response.headers.get("WWW-Authenticate") == CHALLENGE
    openai_error(exc, 401, "invalid_request_error", "invalid_api_key")


def assert_503(exc: openai.APIStatusError) -> None:
    assert "WWW-Authenticate" not in exc.response.headers
    openai_error(exc, 503, "server_error", "service_unavailable")


# --- The CLI against the local store ----------------------------------------------------------


async def test_issue_prints_the_token_once_and_list_never_shows_it(sluice: Sluice) -> None:
    data_dir = sluice.settings.data_dir
    token, token_id = await issue(sluice.policy_dir, data_dir, "--name", "laptop")
    narrowed, narrowed_id = await issue(
        sluice.policy_dir, data_dir, "--models", "gpt-4o-mini", sub="carol@corp.example"
    )
    listing, as_json = await asyncio.gather(
        sluice_cli("token", "list", "--data-dir", str(data_dir)),
        sluice_cli("token", "list", "--json", "--data-dir", str(data_dir)),
    )
    assert listing.returncode == 0 and as_json.returncode == 0
    for output in (listing.stdout + listing.stderr, as_json.stdout + as_json.stderr):
        assert token_id in output and narrowed_id in output
        assert token not in output and narrowed not in output
        assert token[len("slc_") :] not in output
    line = next(line for line in listing.stdout.splitlines() if token_id in line)
    assert "active" in line and "bob@corp.example" in line and "laptop" in line
    records = {record["id"]: record for record in json.loads(as_json.stdout)}
    assert set(records) == {token_id, narrowed_id}
    assert records[token_id]["state"] == "active"
    assert records[token_id]["roles"] == ["employee"]
    assert records[narrowed_id]["models"] == ["gpt-4o-mini"]
    # And the printed token works, through a Sluice reading that store.
    assert await chat(sluice.url, token)


async def test_revoked_token_is_refused_within_a_second(sluice: Sluice) -> None:
    data_dir = sluice.settings.data_dir
    token, token_id = await issue(sluice.policy_dir, data_dir)
    assert await chat(sluice.url, token)  # its lookup is now cached
    result = await sluice_cli("token", "revoke", token_id, "--data-dir", str(data_dir))
    revoked_at = time.monotonic()
    assert result.returncode == 0, result.stdout + result.stderr
    assert token_id in result.stdout and token not in result.stdout + result.stderr
    async with openai_for(sluice.url, token) as client:
        while True:
            sent_at = time.monotonic()
            status = await chat_status(client)
            if status == 401:
                break
            assert status == 200
            assert sent_at - revoked_at <= 1.0, "the revoked token is still accepted after 1 s"
            await asyncio.sleep(0.05)
    assert_401(await chat_error(sluice.url, token))
    listing = await sluice_cli("token", "list", "--json", "--data-dir", str(data_dir))
    [record] = json.loads(listing.stdout)
    assert record["state"] == "revoked" and record["revoked_at"] is not None


async def test_cli_mistakes_exit_1_and_say_why(sluice: Sluice) -> None:
    data_dir = str(sluice.settings.data_dir)
    policies = str(sluice.policy_dir)
    base = ("token", "issue", "--sub", "bob@corp.example", "--policies", policies)
    unknown_id, unknown_role, too_long, bad_ttl, longest = await asyncio.gather(
        sluice_cli("token", "revoke", "tok_000000000000", "--data-dir", data_dir),
        sluice_cli(*base, "--role", "root", "--role", "employee", "--data-dir", data_dir),
        sluice_cli(*base, "--role", "employee", "--ttl", "366d", "--data-dir", data_dir),
        sluice_cli(*base, "--role", "employee", "--ttl", "forever", "--data-dir", data_dir),
        sluice_cli(*base, "--role", "employee", "--ttl", "365d", "--data-dir", data_dir),
    )
    assert unknown_id.returncode == 1
    assert "no token with id tok_000000000000" in unknown_id.stdout + unknown_id.stderr
    assert unknown_role.returncode == 1
    said = unknown_role.stdout + unknown_role.stderr
    assert "root" in said and POLICY_ROLES in said
    assert too_long.returncode == 1
    assert "max_ttl_days (365)" in too_long.stdout + too_long.stderr
    assert bad_ttl.returncode == 1 and "not a duration" in bad_ttl.stdout + bad_ttl.stderr
    for result in (unknown_id, unknown_role, too_long, bad_ttl):
        assert "slc_" not in result.stdout + result.stderr
    # The limit itself is allowed, and it is the only token that was stored.
    assert longest.returncode == 0 and longest.stdout.startswith("slc_")
    listing = await sluice_cli("token", "list", "--json", "--data-dir", data_dir)
    assert len(json.loads(listing.stdout)) == 1


async def test_the_store_keeps_only_a_hash(sluice: Sluice) -> None:
    data_dir = sluice.settings.data_dir
    token, token_id = await issue(sluice.policy_dir, data_dir)
    assert await chat(sluice.url, token)
    files = sorted(data_dir.glob("tokens.sqlite3*"))
    assert data_dir / "tokens.sqlite3" in files
    stored = b"".join(path.read_bytes() for path in files)
    assert token_id.encode() in stored and token_hash(token).encode() in stored
    assert token.encode() not in stored
    assert token[len("slc_") :].encode() not in stored


# --- Several replicas sharing Redis -----------------------------------------------------------


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    url: str
    log: Path


@asynccontextmanager
async def running_replica(
    policy_dir: Path, data_dir: Path, redis_url: str, log: Path
) -> AsyncIterator[Replica]:
    """`sluice serve` in its own process, as deployed: stopped with SIGTERM on exit."""
    port = free_port()
    command = [sys.executable, "-m", "proxy", "serve", "--port", str(port)]
    command += ["--policies", str(policy_dir), "--reload-interval", "0"]
    command += ["--data-dir", str(data_dir)]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command, env=_env(redis_url), cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr
        )
    replica = Replica(process, f"http://127.0.0.1:{port}", log)
    try:
        await wait_until_ready(process, replica.url)
        yield replica
    finally:
        stop_process(process)


@pytest.fixture
async def replicas(
    tmp_path: Path, policy_dir: Path, redis_server: RedisServer, fake_openai: FakeOpenAI
) -> AsyncIterator[list[Replica]]:
    """Two `sluice serve` processes, each with its own data dir, sharing `redis_server`.

    The employee's per-minute limit is lifted: the revocation test polls both replicas for as
    long as the revoke command takes, which on a loaded machine is more than 60 requests."""
    roles = policy_dir / "roles.yaml"
    roles.write_text(
        roles.read_text().replace("requests_per_minute: 60\n", "requests_per_minute: 6000\n")
    )
    async with AsyncExitStack() as stack:
        started = await asyncio.gather(
            *(
                stack.enter_async_context(
                    running_replica(
                        policy_dir, tmp_path / f"var-{n}", redis_server.url, tmp_path / f"{n}.log"
                    )
                )
                for n in (1, 2)
            ),
            return_exceptions=True,  # so every replica that did start is in the stack
        )
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        yield [outcome for outcome in started if isinstance(outcome, Replica)]


async def test_revocation_reaches_every_replica_within_a_second(
    replicas: list[Replica],
    policy_dir: Path,
    redis_server: RedisServer,
    tmp_path: Path,
    fake_openai: FakeOpenAI,
) -> None:
    admin_dir = tmp_path / "admin"  # the CLI's own, unused: the store is Redis
    token, token_id = await issue(policy_dir, admin_dir, redis_url=redis_server.url)
    assert not admin_dir.exists() or not list(admin_dir.glob("tokens.sqlite3*"))
    for replica in replicas:
        assert await chat(replica.url, token) == fake_openai.behaviour.reply_text

    clients = [openai_for(replica.url, token) for replica in replicas]
    try:
        # Keep both replicas' lookups fresh while the revocation runs: the worst case.
        revoking = asyncio.create_task(
            sluice_cli(
                *("token", "revoke", token_id, "--data-dir", str(admin_dir)),
                redis_url=redis_server.url,
            )
        )
        while not revoking.done():
            statuses = await asyncio.gather(*(chat_status(c) for c in clients))
            assert set(statuses) <= {200, 401}
            await asyncio.sleep(0.05)
        result = revoking.result()
        revoked_at = time.monotonic()
        assert result.returncode == 0, result.stdout + result.stderr

        accepting = set(range(len(replicas)))
        while accepting:
            sent_at = time.monotonic()
            statuses = await asyncio.gather(*(chat_status(clients[i]) for i in accepting))
            for index, status in zip(list(accepting), statuses, strict=True):
                if status == 401:
                    accepting.discard(index)
                    continue
                assert status == 200, status
                assert sent_at - revoked_at <= 1.0, (
                    f"replica {index + 1} still accepts the token "
                    f"{sent_at - revoked_at:.2f} s after its revocation"
                )
            await asyncio.sleep(0.05)
    finally:
        for client in clients:
            await client.close()
    for replica in replicas:
        assert_401(await chat_error(replica.url, token))
    listing = await sluice_cli(
        *("token", "list", "--json", "--data-dir", str(admin_dir)), redis_url=redis_server.url
    )
    assert [r["state"] for r in json.loads(listing.stdout)] == ["revoked"]
    for replica in replicas:
        replica.process.send_signal(signal.SIGTERM)
        assert replica.process.wait(timeout=10) == 0
        logs = replica.log.read_text()
        assert '"token_store": "redis"' in logs
        assert token not in logs


@pytest.fixture
async def redis_sluice(
    policy_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[Sluice]:
    """A Sluice whose token store is `redis_server`."""
    settings = Settings(data_dir=tmp_path / "var", redis_url=redis_server.url)
    store = PolicyStore.open(policy_dir)
    app = build_app(store, settings, watch_interval=0, classifier=shared_classifier())
    runner, url = await start_server(app, "127.0.0.1", 0)
    try:
        yield Sluice(url, store, app, policy_dir, settings)
    finally:
        await runner.cleanup()


async def test_token_store_down_is_503_not_401(
    redis_sluice: Sluice, redis_server: RedisServer, fake_openai: FakeOpenAI
) -> None:
    issued = await asyncio.gather(
        *(
            issue(
                redis_sluice.policy_dir, redis_sluice.settings.data_dir, redis_url=redis_server.url
            )
            for _ in range(2)
        )
    )
    (used, _), (fresh, _) = issued
    assert await chat(redis_sluice.url, used)
    received = len(fake_openai.received)

    redis_server.stop()
    assert_503(await chat_error(redis_sluice.url, fresh))
    async with anthropic.AsyncAnthropic(
        base_url=redis_sluice.url, api_key=fresh, max_retries=0
    ) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(
                model="claude-sonnet-4-6", max_tokens=16, messages=MESSAGES
            )
    assert caught.value.status_code == 503
    assert caught.value.response.json()["type"] == "error"
    assert caught.value.response.json()["error"]["type"] == "api_error"
    # A token looked up before the outage is refused too once its cached lookup is stale.
    await asyncio.sleep(1.1)
    assert_503(await chat_error(redis_sluice.url, used))
    assert len(fake_openai.received) == received
    # Admins are told, too.
    listing = await sluice_cli(
        *("token", "list", "--data-dir", str(redis_sluice.settings.data_dir)),
        redis_url=redis_server.url,
    )
    assert listing.returncode == 1 and "cannot be reached" in listing.stderr

    # Redis comes back empty (no persistence): the gateway reconnects and finds no such token.
    redis_server.start()
    deadline = time.monotonic() + 5
    async with openai_for(redis_sluice.url, fresh) as client:
        while (status := await chat_status(client)) == 503:
            assert time.monotonic() < deadline, "still 503 after Redis came back"
            await asyncio.sleep(0.1)
    assert status == 401
