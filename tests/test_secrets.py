"""Secret rules as prompts meet them: each rule's examples found and its near misses not, plain
code left alone, secrets pasted into it found, and a megabyte of mixed text in well under a second.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
import string
import time

import pytest

from proxy.classify.findings import Finding
from proxy.classify.secrets import (
    SECRET_ENTITIES,
    SECRET_RULES,
    SecretRule,
    find_secrets,
    shannon_entropy,
)
from proxy.identity.tokens import TOKEN_PATTERN, new_token

ENTITIES = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "GCP_PRIVATE_KEY",
    "GCP_API_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_CLIENT_SECRET",
    "GITHUB_TOKEN",
    "GITLAB_TOKEN",
    "SLACK_TOKEN",
    "SLACK_WEBHOOK",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "STRIPE_KEY",
    "SENDGRID_KEY",
    "TWILIO_KEY",
    "NPM_TOKEN",
    "PYPI_TOKEN",
    "PRIVATE_KEY",
    "JWT",
    "DATABASE_URL_PASSWORD",
    "GENERIC_SECRET",
    "SLUICE_TOKEN",
}
MULTILINE = {"PRIVATE_KEY", "GCP_PRIVATE_KEY"}  # key blocks span lines; nothing else may
ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"


def _rule_id(rule: SecretRule) -> str:
    return f"{SECRET_RULES.index(rule):02d}-{rule.entity}"


EXAMPLES = [
    pytest.param(rule, text, id=f"{_rule_id(rule)}-{n}")
    for rule in SECRET_RULES
    for n, text in enumerate(rule.examples)
]
NEAR_MISSES = [
    pytest.param(rule, text, id=f"{_rule_id(rule)}-{n}")
    for rule in SECRET_RULES
    for n, text in enumerate(rule.near_misses)
]


def _found(text: str) -> list[tuple[str, str]]:
    return [(f.entity, text[f.start : f.end]) for f in find_secrets(text)]


# --- the rule set itself ---------------------------------------------------------------------


def test_the_rule_set_covers_every_entity_and_nothing_else() -> None:
    assert SECRET_ENTITIES == ENTITIES


@pytest.mark.parametrize("rule", SECRET_RULES, ids=_rule_id)
def test_every_rule_has_examples_near_misses_and_lowercase_keywords(rule: SecretRule) -> None:
    assert len(rule.examples) >= 2
    assert len(rule.near_misses) >= 2
    assert all(keyword == keyword.lower() for keyword in rule.keywords)
    assert 0.5 <= rule.score <= 1.0  # the policy's default min_score is 0.5


@pytest.mark.parametrize(("rule", "text"), EXAMPLES)
def test_example_is_found_and_its_span_is_the_secret(rule: SecretRule, text: str) -> None:
    matching = [f for f in find_secrets(text) if f.entity == rule.entity]
    assert matching, f"{rule.entity} not found; found {_found(text)}"
    for finding in matching:
        secret = text[finding.start : finding.end]
        assert finding.detector == "secret"
        assert finding.score == rule.score
        assert len(secret) >= 8
        assert shannon_entropy(secret) >= rule.min_entropy
        # The whole secret: the characters either side are not part of it...
        before = text[finding.start - 1] if finding.start else " "
        after = text[finding.end] if finding.end < len(text) else " "
        assert not before.isalnum() and not after.isalnum(), (before, secret, after)
        # ...and only the secret, not the line of prose or code around it.
        if rule.entity in MULTILINE:
            assert secret.startswith("-----BEGIN ")
        else:
            assert not any(c.isspace() for c in secret), secret
            line = next(line for line in text.splitlines() if secret in line)
            assert len(secret) < len(line.strip())


@pytest.mark.parametrize(("rule", "text"), NEAR_MISSES)
def test_near_miss_is_not_that_secret(rule: SecretRule, text: str) -> None:
    assert rule.entity not in {entity for entity, _ in _found(text)}, _found(text)


def test_shannon_entropy() -> None:
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaaaaaa") == 0.0
    assert shannon_entropy("abab") == pytest.approx(1.0)
    assert shannon_entropy("abcdefgh") == pytest.approx(3.0)


# --- exact spans, with secrets made here rather than taken from the rules --------------------


class Fake:
    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def text(self, alphabet: str, length: int) -> str:
        return "".join(self.random.choice(alphabet) for _ in range(length))


def _pem_block(label: str, size: int, newline: str, seed: int) -> str:
    encoded = base64.b64encode(random.Random(seed).randbytes(size)).decode()
    body = newline.join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
    dashes = "-----"
    return f"{dashes}BEGIN {label}{dashes}{newline}{body}{newline}{dashes}END {label}{dashes}"


def _jwt(seed: int) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    signature = Fake(seed).text(B64URL, 43)
    return f"{part({'alg': 'ES256', 'typ': 'JWT'})}.{part({'sub': 'svc-batch'})}.{signature}"


F = Fake(2024)
EXACT = [
    ("AWS_ACCESS_KEY_ID", "key = '{}'", "AKIA" + F.text(string.ascii_uppercase + "234567", 16)),
    ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key={}\n", F.text(ALNUM + "+/", 40)),
    ("GCP_API_KEY", "?key={}&q=1", "AIza" + F.text(B64URL, 35)),
    ("AZURE_STORAGE_KEY", "AccountName=a;AccountKey={};", F.text(ALNUM + "+/", 86) + "=="),
    ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_SECRET='{}'", F.text(ALNUM + "~.", 40)),
    ("AZURE_CLIENT_SECRET", "secret: {}", F.text(ALNUM, 3) + "7Q~" + F.text(ALNUM, 34)),
    ("GITHUB_TOKEN", "token {}", "ghs_" + F.text(ALNUM, 36)),
    ("GITLAB_TOKEN", "PRIVATE-TOKEN: {}", "glpat-" + F.text(B64URL, 20)),
    ("SLACK_TOKEN", "token={}", f"xoxb-{F.text('123456789', 12)}-{F.text(ALNUM, 24)}"),
    (
        "SLACK_WEBHOOK",
        "post to {} please",
        f"https://hooks.slack.com/services/T{F.text('ABCDEFGH2345', 9)}/B{F.text('KLMNPQ67', 9)}/"
        + F.text(ALNUM, 24),
    ),
    ("OPENAI_API_KEY", "Bearer {}", "sk-proj-" + F.text(B64URL, 156)),
    ("ANTHROPIC_API_KEY", "x-api-key: {}", "sk-ant-api03-" + F.text(B64URL, 93) + "AA"),
    ("STRIPE_KEY", "Stripe key {}.", "sk_live_" + F.text(ALNUM, 99)),
    ("SENDGRID_KEY", "key='{}'", "SG." + F.text(B64URL, 22) + "." + F.text(B64URL, 43)),
    ("TWILIO_KEY", "twilio sid {} here", "SK" + F.text("0123456789abcdef", 32)),
    ("NPM_TOKEN", "//registry.npmjs.org/:_authToken={}", "npm_" + F.text(ALNUM, 36)),
    ("PYPI_TOKEN", "password: {}", "pypi-AgEIcHlwaS5vcmc" + F.text(B64URL, 80)),
    ("PRIVATE_KEY", "key:\n{}\nend", _pem_block("DSA PRIVATE KEY", 440, "\n", 1)),
    ("GCP_PRIVATE_KEY", '{{"private_key": "{}\\n"}}', _pem_block("PRIVATE KEY", 600, "\\n", 2)),
    ("JWT", "cookie: session={}; Path=/", _jwt(3)),
    ("DATABASE_URL_PASSWORD", "amqps://worker:{}@mq.internal/vhost", F.text(ALNUM, 18)),
    ("GENERIC_SECRET", "<add key='x' />\nclient_secret={}\n", F.text(ALNUM + "#!", 22)),
    ("GENERIC_SECRET", "git clone https://ci:{}@git.corp/x.git", F.text(ALNUM, 18)),
    ("SLUICE_TOKEN", "token: {}", new_token()),
]


@pytest.mark.parametrize(("entity", "template", "secret"), EXACT, ids=[e[0] for e in EXACT])
def test_span_is_exactly_the_secret(entity: str, template: str, secret: str) -> None:
    text = template.format(secret)
    assert _found(text) == [(entity, secret)]


# --- overlaps --------------------------------------------------------------------------------


def test_a_specific_rule_wins_over_the_generic_one_for_the_same_span() -> None:
    key = "sk-proj-" + F.text(B64URL, 120)
    assert _found(f'api_key = "{key}"') == [("OPENAI_API_KEY", key)]
    token = "ghp_" + F.text(ALNUM, 36)
    assert _found(f"password: {token}") == [("GITHUB_TOKEN", token)]
    secret = F.text(ALNUM + "+/", 40)
    assert _found(f"aws_secret_access_key = {secret}") == [("AWS_SECRET_ACCESS_KEY", secret)]


def test_a_service_account_key_is_one_gcp_finding_not_two() -> None:
    block = _pem_block("PRIVATE KEY", 900, "\n", 4)
    text = json.dumps({"type": "service_account", "private_key": block + "\n"}, indent=2)
    assert _found(text) == [("GCP_PRIVATE_KEY", block.replace("\n", "\\n"))]


def test_findings_are_in_text_order_and_never_overlap() -> None:
    text = "\n".join(example for rule in SECRET_RULES for example in rule.examples)
    findings = find_secrets(text)
    assert len(findings) > len(SECRET_RULES)
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))


def test_sluice_tokens_match_exactly_what_token_pattern_matches() -> None:
    fake = Fake(7)
    texts = [
        f"token {new_token()} here",
        f"x{new_token()}",  # glued to a word: not a token
        f"{new_token()}x",
        f"slc_{fake.text(ALNUM, 39)}",
        f"slc_{fake.text(ALNUM, 41)}",
        f"é{new_token()}",
        f"({new_token()}),{new_token()}.",
    ]
    for text in texts:
        expected = [m.span() for m in TOKEN_PATTERN.finditer(text)]
        found = [(f.start, f.end) for f in find_secrets(text) if f.entity == "SLUICE_TOKEN"]
        assert found == expected, text


# --- ordinary code -------------------------------------------------------------------------

ORDINARY_MODULE = r'''
"""Acme billing client: accounts, invoices and webhooks over the Acme REST API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

import httpx

__version__ = "2.14.3"
__all__ = ["AcmeClient", "Invoice", "Account", "verify_signature"]

log = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

API_BASE_URL = "https://api.acme.io/v2"
TOKEN_URL = "https://auth.acme.io/oauth/token"
DOCS_URL = "https://docs.acme.io/billing/webhooks#signatures"
DEFAULT_TIMEOUT = 30.0
MAX_RETRIES = 5
USER_AGENT = f"acme-billing/{__version__} (+https://github.com/acme/billing-python)"
API_KEY_HEADER = "X-Api-Key"
API_KEY_ENV = "ACME_API_KEY"
SECRET_NAME = "prod/billing/webhook"
PASSWORD_MIN_LENGTH = 12
PASSWORD_PATTERN = re.compile(r"^(?=.*[A-Z])(?=.*\d).{12,}$")
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
NAMESPACE = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
DEFAULT_REGION = "eu-west-1"
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://localhost:5432/billing")
CACHE_URL = "redis://cache.internal:6379/2"
PNG_MAGIC = base64.b64decode("iVBORw0KGgo=")
BUILD_COMMIT = "9fceb02d0ae598e95dc970b74767f19372d61af8"
IMAGE = (
    "ghcr.io/acme/billing"
    "@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
)


class AcmeError(Exception):
    """Any failure talking to Acme."""


class AuthenticationError(AcmeError):
    """The API key or the OAuth client was refused."""


@dataclass(frozen=True)
class Account:
    id: str
    email: str
    created_at: datetime
    currency: str = "EUR"
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Invoice:
    id: str
    account_id: str
    amount_cents: int
    due: datetime
    paid: bool = False
    lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def overdue(self) -> bool:
        return not self.paid and self.due < datetime.now(timezone.utc)


@dataclass
class Credentials:
    """How the client authenticates: an API key, or an OAuth client id and secret."""

    api_key: Optional[str] = None
    client_id: Optional[str] = None
    client_secret: str | None = field(default=None, repr=False)
    access_token: str | None = None
    expires_at: datetime | None = None

    @classmethod
    def from_env(cls) -> "Credentials":
        api_key = os.environ.get(API_KEY_ENV)
        client_secret = os.getenv("ACME_CLIENT_SECRET")
        client_id = os.getenv("ACME_CLIENT_ID")
        return cls(api_key=api_key, client_id=client_id, client_secret=client_secret)

    def expired(self) -> bool:
        return self.expires_at is None or self.expires_at <= datetime.now(timezone.utc)


class AcmeClient:
    """A small synchronous client.

    Args:
        api_key: The API key used to authenticate requests.
        password: Only for the legacy basic-auth endpoints.
        timeout: Seconds before a request is abandoned.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        base_url: str = API_BASE_URL,
    ) -> None:
        self.api_key = api_key or os.environ["ACME_API_KEY"]
        self.username = username
        self.password = password
        self.base_url = base_url.rstrip("/")
        self._credentials = Credentials(api_key=self.api_key)
        self._http = httpx.Client(timeout=timeout, headers={"User-Agent": USER_AGENT})

    def _headers(self) -> dict[str, str]:
        headers = {API_KEY_HEADER: self.api_key, "Accept": "application/json"}
        if self._credentials.access_token:
            headers["Authorization"] = f"Bearer {self._credentials.access_token}"
        return headers

    def _refresh_token(self) -> None:
        creds = self._credentials
        response = self._http.post(
            TOKEN_URL,
            data={
                "grant_type": "client_credentials",
                "client_id": creds.client_id,
                "client_secret": creds.client_secret,
            },
        )
        if response.status_code == 401:
            raise AuthenticationError("client id or secret refused")
        payload = response.json()
        creds.access_token = payload["access_token"]
        creds.expires_at = datetime.now(timezone.utc) + timedelta(seconds=payload["expires_in"])

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.base_url}/{path.lstrip('/')}"
        for attempt in range(MAX_RETRIES):
            if self.username and self.password:
                kwargs["auth"] = (self.username, self.password)
            response = self._http.request(method, url, headers=self._headers(), **kwargs)
            if response.status_code == 429:
                log.warning("rate limited on %s (attempt %d)", path, attempt + 1)
                continue
            if response.status_code == 401:
                raise AuthenticationError(f"{method} {path}: invalid api key")
            response.raise_for_status()
            return response.json()
        raise AcmeError(f"{method} {path}: gave up after {MAX_RETRIES} attempts")

    def account(self, account_id: str) -> Account:
        data = self._request("GET", f"/accounts/{account_id}")
        return Account(
            id=data["id"],
            email=data["email"],
            created_at=datetime.fromisoformat(data["created_at"]),
            currency=data.get("currency", "EUR"),
        )

    def invoices(self, account_id: str, *, unpaid_only: bool = False) -> list[Invoice]:
        params = {"account": account_id, "status": "unpaid" if unpaid_only else "all"}
        items = self._request("GET", "/invoices", params=params)["items"]
        return [
            Invoice(
                id=item["id"],
                account_id=account_id,
                amount_cents=item["amount_cents"],
                due=datetime.fromisoformat(item["due"]),
                paid=item["paid"],
            )
            for item in items
        ]

    def change_password(self, old_password: str, new_password: str) -> None:
        if len(new_password) < PASSWORD_MIN_LENGTH:
            raise ValueError("password must be at least 12 characters")
        if not PASSWORD_PATTERN.match(new_password):
            raise ValueError("password needs an upper-case letter and a digit")
        self._request("POST", "/me/password", json={"old": old_password, "new": new_password})
        self.password = new_password

    def rotate_api_key(self) -> str:
        data = self._request("POST", "/me/api-keys")
        self.api_key = data["api_key"]
        log.info("rotated api key %s", data["id"])
        return self.api_key

    def close(self) -> None:
        self._http.close()


def verify_signature(payload: bytes, signature: str, secret: str) -> bool:
    """Webhooks are signed with HMAC-SHA256 over the raw body, hex encoded."""
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def password_hash(password: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 600_000).hex()


def idempotency_key(account_id: str, amount_cents: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{account_id}:{amount_cents}"))


def load_settings(path: str = "~/.config/acme/settings.toml") -> dict[str, Any]:
    settings: dict[str, Any] = {
        "region": DEFAULT_REGION,
        "api_key": os.environ.get("ACME_API_KEY", ""),
        "password": None,
        "secret_name": SECRET_NAME,
        "timeout": DEFAULT_TIMEOUT,
    }
    log.debug("settings loaded from %s", os.path.expanduser(path))
    return settings


# --- tests --------------------------------------------------------------------------------


def test_idempotency_key_is_stable():
    assert idempotency_key("acct_42", 1999) == idempotency_key("acct_42", 1999)
    assert str(NAMESPACE) == "6ba7b810-9dad-11d1-80b4-00c04fd430c8"


def test_empty_body_digest():
    assert hashlib.sha256(b"").hexdigest() == EMPTY_SHA256


def test_signature_roundtrip():
    secret = "whsec_test"
    body = b'{"id": "evt_1", "type": "invoice.paid"}'
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert verify_signature(body, signature, secret)
    assert not verify_signature(body, "0" * 64, secret)


def test_password_hash_known_value():
    digest = password_hash("correct horse battery staple", b"NaCl")
    assert len(digest) == 64
    assert digest != "a3c1d8f0b7e2946d5c0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4a3"


def test_client_reads_key_from_env(monkeypatch):
    monkeypatch.setenv("ACME_API_KEY", "test")
    client = AcmeClient()
    assert client.api_key == os.environ["ACME_API_KEY"]
    client.close()


def test_change_password_rejects_short(monkeypatch):
    client = AcmeClient(api_key="k", password=None)
    try:
        client.change_password(old_password="old", new_password="short")
    except ValueError as exc:
        assert "12 characters" in str(exc)


def test_request_ids_are_uuids():
    request_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert uuid.UUID(request_id).version == 4
    trace = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
    assert len(trace["trace_id"]) == 32


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    client = AcmeClient(api_key=os.environ.get("ACME_API_KEY"))
    for invoice in client.invoices(os.environ.get("ACME_ACCOUNT", "acct_demo"), unpaid_only=True):
        print(invoice.id, invoice.amount_cents / 100, "overdue" if invoice.overdue else "")
    client.close()
'''

CONFIG_FILES = r"""
# docker-compose.yml
services:
  db:
    image: postgres:16.3
    environment:
      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}
      POSTGRES_USER: billing
  app:
    image: ghcr.io/acme/billing:2.14.3
    environment:
      DATABASE_URL: postgres://billing:${POSTGRES_PASSWORD}@db:5432/billing
      ACME_API_KEY: ${ACME_API_KEY}
      REDIS_URL: redis://cache:6379/0
    secrets:
      - source: webhook_secret
        target: /run/secrets/webhook
# .env.example
ACME_API_KEY=your-api-key-here
ACME_CLIENT_SECRET=
DB_PASSWORD=changeme
# settings.json
{"api_key": null, "password": "", "access_token": "<ACCESS_TOKEN>", "timeout": 30}
"""


def test_ordinary_code_and_config_hold_no_secret() -> None:
    assert len(ORDINARY_MODULE.splitlines()) > 250
    assert _found(ORDINARY_MODULE) == []
    assert _found(CONFIG_FILES) == []


def test_secrets_pasted_into_ordinary_code_are_all_found() -> None:
    fake = Fake(99)
    planted = [
        ("OPENAI_API_KEY", "sk-proj-" + fake.text(B64URL, 156)),
        ("GITHUB_TOKEN", "ghp_" + fake.text(ALNUM, 36)),
        ("DATABASE_URL_PASSWORD", fake.text(ALNUM, 20)),
        ("GENERIC_SECRET", fake.text(ALNUM + "!#", 24)),
        ("PRIVATE_KEY", _pem_block("EC PRIVATE KEY", 121, "\n", 5)),
        ("AWS_ACCESS_KEY_ID", "AKIA" + fake.text(string.ascii_uppercase + "234567", 16)),
        ("JWT", _jwt(6)),
    ]
    lines = [
        f'OPENAI_KEY = "{planted[0][1]}"',
        f'GH_TOKEN = "{planted[1][1]}"',
        f'DATABASE_URL = "postgresql://billing:{planted[2][1]}@db.internal:5432/billing"',
        f'WEBHOOK_SECRET = "{planted[3][1]}"',
        f'SIGNING_KEY = """{planted[4][1]}"""',
        f'boto3.client("s3", aws_access_key_id="{planted[5][1]}")',
        f'SESSION = "{planted[6][1]}"',
    ]
    code = ORDINARY_MODULE.replace(
        "log = logging.getLogger(__name__)\n",
        "log = logging.getLogger(__name__)\n" + "\n".join(lines) + "\n",
    )
    assert sorted(_found(code)) == sorted(planted)


# --- speed and pathological input ----------------------------------------------------------


def _mixed_megabyte() -> str:
    """Prose, code, config and JSON logs, with a handful of secrets: roughly what prompts hold."""
    fake = Fake(11)
    words = re.findall(
        r"\w+",
        "the customer asked why the invoice was late and whether the api key or the password "
        "for the staging database had been rotated since the incident last week we agreed to "
        "review the access token scopes and the secret manager policy before the release",
    )
    prose = " ".join(fake.random.choice(words) for _ in range(2500))
    logs = "\n".join(
        json.dumps(
            {
                "ts": f"2024-05-01T12:00:{i % 60:02d}Z",
                "level": "info",
                "path": "/v1/chat",
                "user": f"u{i}",
                "api_key_id": f"key_{i:04d}",
                "latency_ms": i * 7 % 900,
            }
        )
        for i in range(300)
    )
    chunk = "\n".join([prose, ORDINARY_MODULE, CONFIG_FILES, logs])
    secrets = "\n".join(example for rule in SECRET_RULES for example in rule.examples[:1])
    body = (chunk * (1_000_000 // len(chunk) + 1))[: 1_000_000 - len(secrets)]
    return body + secrets


def test_a_megabyte_of_mixed_text_takes_well_under_a_second() -> None:
    text = _mixed_megabyte()
    find_secrets(text)  # warm up
    started = time.perf_counter()
    findings = find_secrets(text)
    elapsed = time.perf_counter() - started
    print(f"\nfind_secrets: {len(text) / elapsed / 1e6:.1f} MB/s over {len(text)} characters")
    assert {f.entity for f in findings} == SECRET_ENTITIES
    assert elapsed < 1.5, f"{elapsed:.2f}s for 1 MB"


PATHOLOGICAL = {
    "keywords": "password=" * 20_000,
    "long value": "password=" + "a" * 200_000,
    "BEGIN lines": "-----BEGIN PRIVATE KEY-----\n" * 7_000,
    "eyJ": "eyJ" * 60_000,
    "url": ("https://u:" + "p" * 50 + "@") * 3_000,
    "dashes": "-" * 200_000,
    "any case": "Azure_aAd_eNtra_" * 12_000,
}


@pytest.mark.parametrize("text", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_no_input_makes_a_rule_backtrack(text: str) -> None:
    started = time.perf_counter()
    find_secrets(text)
    assert time.perf_counter() - started < 0.5


def test_findings_are_plain_values() -> None:
    text = "token " + new_token()
    assert find_secrets(text) == [Finding("SLUICE_TOKEN", 6, len(text), 1.0, "secret")]
    assert re.fullmatch(r"slc_\w{40}", text[6:])
