"""Shared fixtures: real fake upstreams on loopback, a real Sluice in front of them, real SDKs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import anthropic
import openai
import pytest
import structlog
import structlog.testing
import yaml
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.app import build_app, start_server
from proxy.audit.chain import GENESIS, Chain
from proxy.classify.pool import ClassifierPool
from proxy.identity.tokens import LocalTokenStore, new_record, new_token, token_hash
from proxy.policy.store import PolicyStore
from proxy.settings import Settings
from proxy.testing import FakeAnthropic, FakeOIDCIssuer, FakeOpenAI, FakeVLLM

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_OPENAI_KEY = "sk-upstream-openai-0123456789abcdef"
UPSTREAM_ANTHROPIC_KEY = "sk-ant-upstream-0123456789abcdef"


@dataclass
class Sluice:
    url: str
    store: PolicyStore
    app: web.Application
    policy_dir: Path
    settings: Settings

    async def issue_token(
        self,
        role: str = "employee",
        subject: str = "alice@corp.example",
        *,
        ttl_seconds: float | None = 3600,
        models: tuple[str, ...] | None = None,
    ) -> str:
        """A personal token in this gateway's store, as `sluice token issue` makes them."""
        token = new_token()
        record = new_record(subject, (role,), ttl_seconds=ttl_seconds, models=models)
        store = LocalTokenStore(self.settings.data_dir / "tokens.sqlite3")
        try:
            await store.add(token_hash(token), record)
        finally:
            await store.close()
        return token


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def fake_vllm() -> AsyncIterator[FakeVLLM]:
    async with FakeVLLM() as fake:
        yield fake


@pytest.fixture
def policy_dir(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_vllm: FakeVLLM,
) -> Path:
    """A copy of the default policies, pointed at the fakes through the environment."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", UPSTREAM_OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", UPSTREAM_ANTHROPIC_KEY)
    monkeypatch.setenv("VLLM_BASE_URLS", fake_vllm.url + "/v1")
    target = tmp_path / "policies"
    target.mkdir()
    for source in (REPO / "policies").glob("*.yaml"):
        shutil.copy(source, target / source.name)
    return target


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """This test's own local state; never the machine's shared Redis."""
    return Settings(data_dir=tmp_path / "var", redis_url=None)


_SHARED_POOL: list[ClassifierPool] = []


def shared_classifier() -> ClassifierPool:
    """One classification worker for the whole run: spaCy loads once, not once per test.
    Pass it to every `build_app` a test makes."""
    if not _SHARED_POOL:
        _SHARED_POOL.append(ClassifierPool(workers=1))
    return _SHARED_POOL[0]


@pytest.fixture(scope="session")
def classifier_pool() -> Iterator[ClassifierPool]:
    pool = shared_classifier()
    try:
        yield pool
    finally:
        pool.shutdown()


@contextlib.asynccontextmanager
async def running_sluice(
    policy_dir: Path,
    settings: Settings,
    classifier_pool: ClassifierPool,
    *,
    watch_interval: float = 0.05,
    span_exporter: InMemorySpanExporter | None = None,
    shadow_store: PolicyStore | None = None,
) -> AsyncIterator[Sluice]:
    """The real gateway on a free loopback port, sharing the session's classifier pool."""
    store = PolicyStore.open(policy_dir)
    app = build_app(
        store,
        settings,
        watch_interval=watch_interval,
        classifier=classifier_pool,
        span_exporter=span_exporter,
        shadow_store=shadow_store,
    )
    runner, url = await start_server(app, "127.0.0.1", 0)
    try:
        yield Sluice(url, store, app, policy_dir, settings)
    finally:
        await runner.cleanup()


@pytest.fixture
async def sluice(
    policy_dir: Path, settings: Settings, classifier_pool: ClassifierPool
) -> AsyncIterator[Sluice]:
    async with running_sluice(policy_dir, settings, classifier_pool) as gateway:
        yield gateway


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Every span a gateway started with `span_exporter=spans` makes, kept in memory."""
    return InMemorySpanExporter()


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog event emitted during the test, as dicts."""
    with structlog.testing.capture_logs() as captured:
        yield cast(list[dict[str, Any]], captured)  # structlog types them as MutableMapping


@pytest.fixture
async def employee_token(sluice: Sluice) -> str:
    return await sluice.issue_token("employee")


@pytest.fixture
def auth_headers(employee_token: str) -> dict[str, str]:
    """For raw HTTP clients: an employee's credential."""
    return {"Authorization": f"Bearer {employee_token}"}


@pytest.fixture
async def openai_client(sluice: Sluice, employee_token: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=sluice.url + "/v1", api_key=employee_token, max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def anthropic_client(
    sluice: Sluice, employee_token: str
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=sluice.url, api_key=employee_token, max_retries=0
    ) as client:
        yield client


# --- Identity: a fake OIDC issuer, a policy that trusts it, and a real Redis -----------------


@pytest.fixture
async def oidc_issuer() -> AsyncIterator[FakeOIDCIssuer]:
    """A running fake identity provider (RSA and EC keys), trusted by `oidc_policy_dir`."""
    async with FakeOIDCIssuer() as issuer:
        yield issuer


def trust_oidc_issuer(policy_dir: Path, issuer_url: str, **settings: object) -> None:
    """Replace the policy's identity.yaml with one that trusts `issuer_url` (and keeps
    personal tokens on). `settings` override the issuer's entry."""
    issuer: dict[str, object] = {
        "issuer": issuer_url,
        "audience": "sluice",
        "roles_claim": "groups",
        "role_map": {"engineering": "employee", "contractors": "contractor"},
        "jwks_refresh_seconds": 1,
        **settings,
    }
    identity = {
        "identity": {
            "personal_tokens": {"enabled": True, "max_ttl_days": 365},
            "oidc": [issuer],
        }
    }
    (policy_dir / "identity.yaml").write_text(yaml.safe_dump(identity, sort_keys=False))


@pytest.fixture
def oidc_policy_dir(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_vllm: FakeVLLM,
    oidc_issuer: FakeOIDCIssuer,
) -> Path:
    """Like `policy_dir`, but its identity section trusts `oidc_issuer` (groups claim,
    engineering -> employee, contractors -> contractor, JWKS refetch at most once a second).

    It does not use `policy_dir`, so a test module can make the `sluice` fixture use it by
    overriding `policy_dir`: `def policy_dir(oidc_policy_dir): return oidc_policy_dir`.
    """
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", UPSTREAM_OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", UPSTREAM_ANTHROPIC_KEY)
    monkeypatch.setenv("VLLM_BASE_URLS", fake_vllm.url + "/v1")
    target = tmp_path / "oidc-policies"
    target.mkdir()
    for source in (REPO / "policies").glob("*.yaml"):
        shutil.copy(source, target / source.name)
    trust_oidc_issuer(target, oidc_issuer.url)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    """A private `redis-server` on a free loopback port, without persistence.

    `stop()` kills it (as a crash would) and `start()` brings it back on the same port, empty.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        log = (self.directory / "redis.log").open("ab")
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self._process = subprocess.Popen(command, cwd=self.directory, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._process.returncode}: "
                    + (self.directory / "redis.log").read_text()[-2000:]
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {timeout}s")
            time.sleep(0.01)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real Redis of this test's own; never the machine's shared one on 6379."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    for _attempt in range(3):  # another process may take the free port before redis binds it
        try:
            server.start()
            break
        except RuntimeError:
            server = RedisServer(directory)
    else:
        server.start()
    try:
        yield server
    finally:
        server.stop()


# --- `sluice serve` as a real process -------------------------------------------------------


async def wait_until_ready(process: subprocess.Popen[bytes], url: str, timeout: float = 60) -> None:
    """Poll `url`/ready until the gateway answers 200; fail if the process exits first."""
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + "/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert process.poll() is None, "sluice serve exited during startup"
            await asyncio.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as an orchestrator would; SIGKILL if it does not stop within 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- Audit segments for the dashboard ------------------------------------------------------


class AuditLogWriter:
    """Writes audit segments in the shared record schema (chained, hashed), as the audit
    writer does, so dashboard tests have a log to read without running requests."""

    def __init__(self, directory: Path, key: bytes | None = None) -> None:
        self.directory = directory
        self.key = key
        self.seq = 0
        self.prev = GENESIS
        self.segment = 0
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        return self.directory / f"audit-{self.segment:06d}.jsonl"

    def append(self, record: dict[str, object]) -> dict[str, object]:
        full: dict[str, object] = {"v": 1, "seq": self.seq, "prev": self.prev, **record}
        line, digest = Chain(self.key).seal(full)  # sealed exactly as the audit writer seals
        with self.path.open("ab") as file:
            file.write(line)
        full["hash"] = digest
        self.seq += 1
        self.prev = digest
        return full

    def rotate(self) -> None:
        self.segment += 1
        self.append({"kind": "segment_start", "ts": time.time(), "request_id": None})

    def exchange(
        self,
        *,
        subject: str = "alice@corp.example",
        roles: tuple[str, ...] = ("employee",),
        team: str | None = "engineering",
        model: str = "gpt-4o",
        text: str = "Summarise the quarterly report",
        answer: str = "Here is the summary.",
        mode: str = "redacted",
        decision: str = "allowed",
        level: str | None = "public",
        entities: dict[str, int] | None = None,
        status: int = 200,
        route: str = "direct",
        ts: float | None = None,
    ) -> str:
        """A request record and its response record; returns the request id."""
        ts = time.time() if ts is None else ts
        request_id = "req_" + uuid.uuid4().hex[:24]
        if mode in ("full", "redacted"):
            content: object = {"messages": [{"role": "user", "text": text}]}
            answer_content: object = {"response": answer}
        elif mode == "hash":
            content = [{"role": "user", "sha256": hashlib.sha256(text.encode()).hexdigest()}]
            answer_content = {"response_sha256": hashlib.sha256(answer.encode()).hexdigest()}
        else:
            content = answer_content = None
        principal = {"subject": subject, "roles": list(roles), "auth_method": "token"}
        self.append(
            {
                "kind": "request",
                "ts": ts,
                "request_id": request_id,
                "principal": principal,
                "client": "127.0.0.1",
                "endpoint": "openai.chat",
                "requested_model": model,
                "stream": False,
                "policy_version": "test",
                "content_mode": mode,
                "content": content,
            }
        )
        entities = entities or {}
        findings = [
            {"type": kind, "start": 10 * i, "end": 10 * i + 5, "where": "messages[0].content"}
            for kind, n in entities.items()
            for i in range(n)
        ]
        self.append(
            {
                "kind": "response",
                "ts": ts + 0.8,
                "request_id": request_id,
                "status": status,
                "decision": decision,
                "ended": "completed" if status < 400 else "denied",
                "subject": subject,
                "roles": list(roles),
                "team": team,
                "endpoint": "openai.chat",
                "requested_model": model,
                "route": {"kind": route, "model": model, "provider": "openai"},
                "model_answered": model,
                "level": level,
                "entities": entities,
                "findings": findings,
                "output_entities": {},
                "trail": [
                    {"filter": "authn", "verdict": "pass", "reason": None, "ms": 0.2},
                    {"filter": "classify", "verdict": "pass", "reason": level, "ms": 3.1},
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 30},
                "cost_usd": 0.0004,
                "latency_ms": {"total": 812.0, "overhead": 5.0, "upstream_ttfb": 300.0},
                "policy_version": "test",
                "shadow": None,
                "content": answer_content,
            }
        )
        return request_id


DASHBOARD_CLIENT_ID = "sluice-dashboard"


def enable_dashboard(policy_dir: Path, issuer_url: str | None, **dashboard: object) -> None:
    """identity.yaml for dashboard tests: personal tokens, and (with `issuer_url`) single
    sign-on at that issuer, whose `security` and `security-viewers` groups map to the
    dashboard roles. Cookies without `Secure`, as plain-HTTP loopback needs."""
    identity: dict[str, object] = {
        "personal_tokens": {"enabled": True, "max_ttl_days": 365},
        "dashboard": {"secure_cookie": False, **dashboard},
    }
    if issuer_url is not None:
        identity["oidc"] = [
            {
                "issuer": issuer_url,
                "audience": "sluice",
                "roles_claim": "groups",
                "role_map": {
                    "engineering": "employee",
                    "security": "security",
                    "security-viewers": "security_viewer",
                },
            }
        ]
        identity["dashboard"] = {
            "oidc_issuer": issuer_url,
            "client_id": DASHBOARD_CLIENT_ID,
            **identity["dashboard"],  # type: ignore[dict-item]
        }
    text = yaml.safe_dump({"identity": identity}, sort_keys=False)
    (policy_dir / "identity.yaml").write_text(text)


@pytest.fixture
def dashboard_policy_dir(oidc_policy_dir: Path, oidc_issuer: FakeOIDCIssuer) -> Path:
    """The default policies with the dashboard's single sign-on at `oidc_issuer`. A test
    module uses it for `sluice` with `def policy_dir(dashboard_policy_dir): return ...`."""
    enable_dashboard(oidc_policy_dir, oidc_issuer.url)
    # The tests write the log the dashboard reads (`audit_log`); the gateway's own audit
    # writer is off so the two never share a segment.
    audit = oidc_policy_dir / "audit.yaml"
    document = yaml.safe_load(audit.read_text())
    document["audit"]["enabled"] = False
    audit.write_text(yaml.safe_dump(document))
    return oidc_policy_dir


@pytest.fixture
def audit_log(settings: Settings) -> AuditLogWriter:
    """Segments in the directory the `sluice` fixture's dashboard reads."""
    return AuditLogWriter(settings.data_dir / "audit")


async def scrape_metrics(url: str) -> dict[str, float]:
    """Sluice's `/metrics`, parsed: each series (name and labels, as rendered) to its value."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values
