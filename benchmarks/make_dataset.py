"""Writes the labeled evaluation set that benchmarks/classify.py measures against.

Run `python benchmarks/make_dataset.py`; the output is the same on every run (seeded), so the
files under benchmarks/data/ can be regenerated rather than edited:

- `classify.jsonl`: one case per line, `{"id", "kind", "text", "entities": [{"type", "start",
  "end"}]}`; business prose, mixed-language text, logs, JSON payloads, source code with and
  without PII or secrets, and hand-written edge cases. Every span is computed, not typed.
- `prompts.jsonl`: English prompts of about 1,500 characters (same format), for throughput.
- `conversation.json`: a system prompt and 20 user/assistant turns, for the per-text cache.

Texts are templates with slots, `<<name>>`: `<<p1>>` is a person's full name, `<<p1.first>>`,
`<<p1.email>>`, `<<p1.phone>>` belong to the same person, `<<card>>`, `<<iban2>>`,
`<<aws_key_id>>` are values of their kind; a slot used twice in one text has one value.
Everything is made up: the names and companies come from small lists below, numbers are
random with valid checksums, and no secret is real.

Labeled (every occurrence): PERSON, EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE,
US_SSN, IP_ADDRESS, LOCATION (the cities and country codes the templates insert; templates
mention no other place), the secret entities of proxy/classify/secrets.py, and the default
policy's own recognizers. Not labeled: organisations, dates, URLs, version strings, hashes,
UUIDs, order and ticket numbers -- a finding on one of these is a false positive.

The secrets have the shapes providers issue (prefixes, lengths, alphabets) but random
contents; a secret scanner run over benchmarks/data/ will still flag many of them.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import string
import sys
import unicodedata
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

DATA = Path(__file__).resolve().parent / "data"
CASES_FILE = DATA / "classify.jsonl"
PROMPTS_FILE = DATA / "prompts.jsonl"
CONVERSATION_FILE = DATA / "conversation.json"
SEED = 20240917
PROMPT_CHARS = 1500
PROMPT_COUNT = 300
CONVERSATION_TURNS = 20
CONVERSATION_CHARS = PROMPT_CHARS  # per message, user and assistant alike
CLEAN_CODE_CHUNKS = 130


class Entity(TypedDict):
    type: str
    start: int
    end: int


class Case(TypedDict):
    id: str
    kind: str
    text: str
    entities: list[Entity]


# --- made-up people, companies and places ----------------------------------------------------

FEMALE = (  # noqa: SIM905
    "Anna Maria Emma Olivia Sophie Laura Priya Mei Fatima Elena Claire Ingrid Aisha Hannah "
    "Julia Chloe Zoe Camille Lucia Sarah Rachel Grace Nadia Yuki Keiko Amara Ines Katarzyna "
    "Freya Leila Beatriz Signe Marta Noor Ayesha Charlotte"
).split()
MALE = (  # noqa: SIM905
    "James Michael David Daniel Thomas Lukas Jonas Pierre Javier Carlos Raj Wei Ahmed Omar "
    "Ivan Mateo Liam Noah Ethan Oliver Kenji Tomasz Erik Samuel Marco Hugo Felix Arjun "
    "Kwame Diego Henrik Pablo Andrei Malik Stefan Benjamin"
).split()
LAST = (  # noqa: SIM905
    "Smith Johnson Williams Brown Garcia Miller Davis Rodriguez Martinez Schmidt Müller "
    "Schneider Fischer Weber Wagner Becker Hoffmann Dubois Martin Bernard Lefèvre Moreau "
    "Fernández López González Sánchez Rossi Russo Bianchi Kowalski Nowak Novak Jensen "
    "Nielsen Andersson Johansson Patel Sharma Gupta Nguyen Tran Chen Wang Zhang Kim Park "
    "Tanaka Suzuki Sato Murphy Kelly Walsh Okafor Mensah Haddad Khan Cohen Levi Silva "
    "Santos Costa Pereira Ivanova Petrov Hughes Clarke Wright Turner Parker Baker Cooper "
    "Reed Bailey Bennett Lindqvist Eriksen Varga Horvat Dimitrov Yilmaz Demir Rahman Osei "
    "Abara"
).split()
COMPANIES = (
    "Globex",
    "Initech",
    "Northwind Traders",
    "Contoso",
    "Fabrikam",
    "Umbrella Logistics",
    "Vandelay Industries",
    "Stark Components",
    "Wayne Freight",
    "Acme Analytics",
    "Soylent Foods",
    "Hooli",
    "Cyberdyne Systems",
    "Tyrell Biotech",
    "Oceanic Airlines",
    "Massive Dynamic",
    "Aperture Labs",
    "Blue Harbor Insurance",
    "Gringotts Lending",
    "Monarch Retail",
)
FREE_MAIL = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "web.de", "orange.fr", "gmx.net")
CITIES = (
    "Berlin",
    "Munich",
    "Hamburg",
    "Paris",
    "Lyon",
    "Madrid",
    "Barcelona",
    "London",
    "Manchester",
    "Dublin",
    "Amsterdam",
    "Rotterdam",
    "Vienna",
    "Zurich",
    "Milan",
    "Warsaw",
    "Prague",
    "Stockholm",
    "Copenhagen",
    "Lisbon",
    "New York",
    "Chicago",
    "Boston",
    "Seattle",
    "Austin",
    "Denver",
    "Toronto",
    "San Francisco",
    "Atlanta",
    "Singapore",
)

# Words for identifiers in code.
NOUNS = (  # noqa: SIM905
    "order invoice session payment report shipment customer account ledger catalog quota "
    "tenant webhook metric schedule batch export snapshot bucket queue event price"
).split()
CLASS_HEADS = (  # noqa: SIM905
    "Order Invoice Session Payment Report Shipment Inventory Cache Metrics Audit Billing "
    "Catalog Ledger Queue Schema Event Webhook Tenant Quota Price"
).split()
CLASS_TAILS = (  # noqa: SIM905
    "Service Manager Repository Client Handler Store Builder Worker Processor Registry "
    "Validator Scheduler Exporter Adapter"
).split()
VERBS = "load fetch sync parse build render resolve flush refresh validate compute export".split()  # noqa: SIM905
CONSTANTS = (  # noqa: SIM905
    "MAX_RETRIES DEFAULT_TIMEOUT BATCH_SIZE CACHE_TTL PAGE_SIZE RETRY_BACKOFF MAX_WORKERS "
    "BUFFER_SIZE MAX_CONNECTIONS POLL_INTERVAL"
).split()
FILES = (
    "setup.py",
    "main.go",
    "index.ts",
    "config.yaml",
    "requirements.txt",
    "docker-compose.yml",
    "Makefile",
    "package.json",
    "go.mod",
    "pom.xml",
    "settings.py",
    "app.module.ts",
    "schema.sql",
    "build.gradle",
)
HOSTS = (
    "db.internal",
    "cache-01.prod.internal",
    "localhost",
    "queue.svc.cluster.local",
    "api.staging.internal",
    "metrics.internal",
)
ORGS = ("acme", "northwind", "globex-labs", "initech-oss", "contoso-dev", "hooli-eng")
REPOS = ("payments", "billing-api", "data-pipeline", "web-frontend", "infra", "auth-service")
DOMAINS = (
    "globex.com",
    "initech.io",
    "northwind-traders.com",
    "contoso.com",
    "fabrikam.net",
    "umbrella-logistics.com",
    "vandelay.co",
    "starkcomponents.de",
    "acme-analytics.io",
    "hooli.xyz",
    "blueharbor-insurance.com",
    "monarch-retail.fr",
)

_ALNUM = string.ascii_letters + string.digits
_UPPER32 = string.ascii_uppercase + "234567"
_BASE64 = _ALNUM + "+/"
_BASE64URL = _ALNUM + "-_"
_HEX = "0123456789abcdef"


def ascii_fold(value: str) -> str:
    """`Müller` -> `muller`, for the local part of an e-mail address."""
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z]", "", folded.lower())


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, digit in enumerate(reversed(body)):
        d = int(digit)
        if i % 2 == 0:  # these digits are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    compact = iban.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


# BBAN layouts: n digits, a capital letters, c digits or capitals.
IBAN_LAYOUTS = {
    "DE": "8n10n",
    "GB": "4a6n8n",
    "FR": "5n5n11c2n",
    "ES": "4n4n2n10n",
    "NL": "4a10n",
    "IT": "1a5n5n12c",
    "AT": "5n11n",
    "BE": "3n7n2n",
    "CH": "5n12c",
    "PL": "8n16n",
}


@dataclass
class Person:
    first: str
    last: str
    female: bool
    domain: str
    phone: str

    @property
    def full(self) -> str:
        return f"{self.first} {self.last}"

    def email(self, style: int) -> str:
        first, last = ascii_fold(self.first), ascii_fold(self.last)
        local = (f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}", f"{first}{last[0]}")[
            style % 4
        ]
        return f"{local}@{self.domain}"


class Values:
    """Random values of every kind a slot can ask for, from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, options: Iterable[str]) -> str:
        return self.rng.choice(tuple(options))

    def text(self, alphabet: str, length: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(length))

    def digits(self, length: int) -> str:
        return self.text(string.digits, length)

    # people

    def person(self) -> Person:
        female = self.rng.random() < 0.5
        first = self.pick(FEMALE if female else MALE)
        domain = self.pick(FREE_MAIL) if self.rng.random() < 0.25 else self.pick(DOMAINS)
        return Person(first, self.pick(LAST), female, domain, self.phone())

    # numbers people have

    def phone(self, country: str | None = None) -> str:
        country = country or self.pick(["US", "US", "US", "US", "GB", "DE", "DE", "FR", "ES"])
        for _ in range(100):
            number, region = self._phone(country)
            if _phone_valid(number, region):
                return number
        raise RuntimeError(f"no valid {country} phone number generated")

    def _phone(self, country: str) -> tuple[str, str]:
        r, d = self.rng, self.digits
        if country == "US":
            area = self.pick(
                [
                    "212",
                    "415",
                    "312",
                    "617",
                    "206",
                    "512",
                    "303",
                    "404",
                    "305",
                    "702",
                    "503",
                    "214",
                    "646",
                    "718",
                    "919",
                ]
            )
            exchange = str(r.randint(2, 9)) + d(2)
            if exchange[1:] == "11" or exchange == "555":
                exchange = "734"
            line = d(4)
            style = r.randrange(5)
            return (
                (
                    f"({area}) {exchange}-{line}",
                    f"{area}-{exchange}-{line}",
                    f"+1 {area} {exchange} {line}",
                    f"{area}.{exchange}.{line}",
                    f"+1-{area}-{exchange}-{line}",
                )[style],
                "US",
            )
        if country == "GB":
            if r.random() < 0.5:
                return f"+44 20 7{d(3)} {d(4)}", "GB"
            return f"020 7{d(3)} {d(4)}", "GB"
        if country == "DE":
            style = r.randrange(3)
            if style == 0:
                return f"+49 {self.pick(['30', '89', '40', '69'])} {d(7)}", "DE"
            if style == 1:
                return f"+49 15{r.choice('127')} {d(8)}", "DE"
            return f"0{self.pick(['30', '89', '40'])} {d(7)}", "DE"
        if country == "FR":
            pairs = " ".join(d(2) for _ in range(4))
            if r.random() < 0.5:
                return f"+33 {r.choice('1234567')} {pairs}", "FR"
            return f"0{r.choice('167')} {pairs}", "FR"
        if country == "ES":
            if r.random() < 0.5:
                return f"+34 91{d(1)} {d(3)} {d(3)}", "ES"
            return f"+34 6{d(2)} {d(3)} {d(3)}", "ES"
        raise ValueError(country)

    def card(self, compact: bool = False) -> str:
        brand = self.rng.choices(["visa", "mc", "mc2", "amex", "discover"], [5, 3, 1, 2, 1])[0]
        if brand == "amex":
            number = luhn_complete(self.pick(["34", "37"]), 15, self.rng)
            groups = [number[:4], number[4:10], number[10:]]
        else:
            prefix = {
                "visa": "4",
                "mc": str(self.rng.randint(51, 55)),
                "mc2": str(self.rng.randint(2221, 2720)),
                "discover": "6011",
            }[brand]
            number = luhn_complete(prefix, 16, self.rng)
            groups = [number[i : i + 4] for i in range(0, 16, 4)]
        if compact:
            return number
        return self.rng.choices([" ", "-", ""], [5, 2, 2])[0].join(groups)

    def iban(self, country: str | None = None, compact: bool | None = None) -> str:
        country = country or self.pick(
            ["DE", "DE", "DE", "GB", "FR", "ES", "NL", "IT", "AT", "BE", "CH", "PL"]
        )
        bban = ""
        for count, kind in re.findall(r"(\d+)([nac])", IBAN_LAYOUTS[country]):
            alphabet = {
                "n": string.digits,
                "a": string.ascii_uppercase,
                "c": string.digits + string.ascii_uppercase,
            }[kind]
            bban += self.text(alphabet, int(count))
        numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
        iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
        assert iban_valid(iban)
        if compact is None:
            compact = self.rng.random() < 0.3
        return iban if compact else " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))

    def ssn(self) -> str:
        area = self.rng.choice([a for a in range(1, 900) if a != 666])
        group, serial = self.rng.randint(1, 99), self.rng.randint(1, 9999)
        separator = self.rng.choices(["-", " "], [9, 1])[0]
        return f"{area:03d}{separator}{group:02d}{separator}{serial:04d}"

    def ipv4(self, private: bool | None = None) -> str:
        r = self.rng
        if private is None:
            private = r.random() < 0.4
        if private:
            return self.pick(
                [
                    f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
                    f"192.168.{r.randint(0, 255)}.{r.randint(1, 254)}",
                    f"172.{r.randint(16, 31)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
                ]
            )
        first = r.choice([23, 34, 45, 52, 63, 78, 81, 85, 91, 104, 141, 151, 176, 185, 193, 203])
        return f"{first}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def ipv6(self) -> str:
        groups = [f"{self.rng.randint(0, 0xFFFF):x}" for _ in range(6)]
        prefix = self.pick(["2a02:8108", "2a01:4f8", "2600:1f18", "2001:41d0"])
        if self.rng.random() < 0.5:
            return f"{prefix}:{groups[0]}:{groups[1]}::{groups[2]}"
        return f"{prefix}:" + ":".join(groups)

    # secrets: the shapes the providers issue, random contents

    def pem(self, label: str = "RSA PRIVATE KEY", newline: str = "\n") -> str:
        encoded = base64.b64encode(self.rng.randbytes(self.rng.randint(600, 1200))).decode()
        body = newline.join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
        dashes = "-" * 5
        return f"{dashes}BEGIN {label}{dashes}{newline}{body}{newline}{dashes}END {label}{dashes}"

    def b64url_json(self, value: object) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def jwt(self) -> str:
        header = self.b64url_json({"alg": self.pick(["HS256", "RS256"]), "typ": "JWT"})
        payload = self.b64url_json(
            {
                "sub": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                "iat": self.rng.randint(1_700_000_000, 1_730_000_000),
                "scope": self.pick(["read:orders", "admin", "billing:write"]),
            }
        )
        return f"{header}.{payload}.{self.text(_BASE64URL, 43)}"

    def password(self) -> str:
        if self.rng.random() < 0.3:  # chosen by a person
            word = self.pick(["Harbor", "Falcon", "Winter", "Maple", "Copper", "Orbit"])
            return f"{word}{self.rng.randint(1970, 2030)}{self.pick('!#%*')}{self.text(_ALNUM, 4)}"
        return self.text(_ALNUM + "!#%*+-_", self.rng.randint(12, 22))

    def secret(self, kind: str) -> tuple[str, str]:
        """A made-up secret of `kind` and the entity proxy/classify/secrets.py names it."""
        t, r = self.text, self.rng
        marker = "T3Blbk" + "FJ"  # "OpenAI" in base64, in every OpenAI key
        makers: dict[str, Callable[[], tuple[str, str]]] = {
            "aws_key_id": lambda: ("AKIA" + t(_UPPER32, 16), "AWS_ACCESS_KEY_ID"),
            "aws_secret": lambda: (t(_BASE64, 40), "AWS_SECRET_ACCESS_KEY"),
            "github_token": lambda: (
                ("ghp_" + t(_ALNUM, 36))
                if r.random() < 0.7
                else ("github_pat_" + t(_ALNUM, 22) + "_" + t(_ALNUM, 59)),
                "GITHUB_TOKEN",
            ),
            "gitlab_token": lambda: ("glpat-" + t(_BASE64URL, 20), "GITLAB_TOKEN"),
            "slack_token": lambda: (
                f"xoxb-{self.digits(12)}-{self.digits(13)}-{t(_ALNUM, 24)}",
                "SLACK_TOKEN",
            ),
            "slack_webhook": lambda: (
                "https://hooks.slack.com/services/"
                f"T{t(_UPPER32, 10)}/B{t(_UPPER32, 10)}/{t(_ALNUM, 24)}",
                "SLACK_WEBHOOK",
            ),
            "openai_key": lambda: (
                ("sk-proj-" + t(_BASE64URL, 74) + marker + t(_BASE64URL, 74))
                if r.random() < 0.6
                else ("sk-" + t(_ALNUM, 20) + marker + t(_ALNUM, 20)),
                "OPENAI_API_KEY",
            ),
            "anthropic_key": lambda: (
                "sk-ant-api03-" + t(_BASE64URL, 93) + "AA",
                "ANTHROPIC_API_KEY",
            ),
            "stripe_key": lambda: (
                self.pick(["sk_live_", "rk_live_"]) + t(_ALNUM, r.choice([24, 99])),
                "STRIPE_KEY",
            ),
            "sendgrid_key": lambda: (
                "SG." + t(_BASE64URL, 22) + "." + t(_BASE64URL, 43),
                "SENDGRID_KEY",
            ),
            "npm_token": lambda: ("npm_" + t(_ALNUM, 36), "NPM_TOKEN"),
            "pypi_token": lambda: ("pypi-AgEIcHlwaS5vcmc" + t(_BASE64URL, 140), "PYPI_TOKEN"),
            "gcp_api_key": lambda: ("AIza" + t(_BASE64URL, 35), "GCP_API_KEY"),
            "twilio_key": lambda: ("SK" + t(_HEX, 32), "TWILIO_KEY"),
            "azure_storage_key": lambda: (t(_BASE64, 86) + "==", "AZURE_STORAGE_KEY"),
            "private_key": lambda: (
                self.pem(self.pick(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY"])),
                "PRIVATE_KEY",
            ),
            "gcp_private_key": lambda: (self.pem("PRIVATE KEY", "\\n"), "GCP_PRIVATE_KEY"),
            "jwt": lambda: (self.jwt(), "JWT"),
            "db_password": lambda: (t(_ALNUM, r.randint(14, 24)), "DATABASE_URL_PASSWORD"),
            "password": lambda: (self.password(), "GENERIC_SECRET"),
            "sluice_token": lambda: ("slc_" + t(_ALNUM, 40), "SLUICE_TOKEN"),
        }
        return makers[kind]()

    # things that are not entities, for realistic surroundings

    def filler(self, kind: str) -> str:
        r, d = self.rng, self.digits
        makers: dict[str, Callable[[], str]] = {
            "company": lambda: self.pick(COMPANIES),
            "domain": lambda: self.pick(DOMAINS),
            "cls": lambda: self.pick(CLASS_HEADS) + self.pick(CLASS_TAILS),
            "fn": lambda: f"{self.pick(VERBS)}_{self.pick(NOUNS)}",
            "fnc": lambda: self.pick(VERBS) + self.pick(NOUNS).capitalize(),
            "noun": lambda: self.pick(NOUNS),
            "const": lambda: self.pick(CONSTANTS),
            "ver": lambda: ".".join(
                str(r.randint(0, 12)) for _ in range(r.choices([2, 3, 4], [1, 5, 2])[0])
            ),
            "build": lambda: ".".join(str(r.randint(0, 20)) for _ in range(4)),
            "sha": lambda: self.text(_HEX, 40),
            "short_sha": lambda: self.text(_HEX, 7),
            "digest": lambda: self.text(_HEX, 64),
            "uuid": lambda: str(uuid.UUID(int=r.getrandbits(128), version=4)),
            "url": lambda: self.pick(
                [
                    f"https://api.{self.pick(DOMAINS)}/v{r.randint(1, 3)}/{self.pick(NOUNS)}s",
                    "https://docs.python.org/3/library/asyncio-task.html",
                    f"https://github.com/{self.pick(ORGS)}/{self.pick(REPOS)}/blob/main/README.md",
                    "https://developer.mozilla.org/en-US/docs/Web/API/Fetch_API",
                    f"https://{self.pick(DOMAINS)}/docs/{self.pick(NOUNS)}-api",
                    "https://pkg.go.dev/net/http#Client",
                ]
            ),
            "port": lambda: self.pick(["8080", "5432", "6379", "9090", "3000", "8443", "5672"]),
            "num": lambda: str(r.randint(2, 999)),
            "big": lambda: str(r.randint(10_000, 9_999_999)),
            "epoch": lambda: str(r.randint(1_690_000_000, 1_740_000_000)),
            "file": lambda: self.pick(FILES),
            "host": lambda: self.pick(HOSTS),
            "org": lambda: self.pick(ORGS),
            "repo": lambda: self.pick(REPOS),
            "date": lambda: f"20{r.randint(22, 25)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
            "day": lambda: self.pick(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]),
            "money": lambda: f"{r.randint(120, 98000):,}.{r.randint(0, 99):02d}",
            "order": lambda: f"{self.pick(['ORD', 'SO', 'PO'])}-{r.randint(2022, 2025)}-{d(5)}",
            "ticket": lambda: f"{self.pick(['OPS', 'SUP', 'IT', 'BILL'])}-{r.randint(100, 9999)}",
            "refno": lambda: str(r.randint(1000, 9999)),
            "cardtail": lambda: d(4),
            "bic": lambda: self.text(string.ascii_uppercase, 6) + self.text(_UPPER32, 2),
            "dob": lambda: f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/{r.randint(1955, 2002)}",
            "ident": lambda: self.text(_ALNUM, 14),
            "hexid": lambda: self.text(_HEX, 8),
            "ts": lambda: (
                f"20{r.randint(23, 25)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
                f"T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}."
                f"{d(3)}Z"
            ),
            "pct": lambda: f"{r.randint(1, 99)}.{r.randint(0, 9)}",
            "pid": lambda: str(r.randint(300, 65000)),
            "ms": lambda: f"{r.randint(1, 4000)}.{d(3)}",
            "user": lambda: self.pick(["deploy", "svc-etl", "ci-runner", "backup", "www-data"]),
            "region": lambda: self.pick(["eu-west-1", "us-east-1", "eu-central-1", "us-west-2"]),
        }
        return makers[kind]()


def _phone_valid(number: str, region: str) -> bool:
    """python-phonenumbers' verdict, when it is installed (it comes with presidio-analyzer)."""
    try:
        import phonenumbers
    except ImportError:
        return True
    try:
        return bool(phonenumbers.is_valid_number(phonenumbers.parse(number, region)))
    except phonenumbers.NumberParseException:
        return False


# --- templates ---------------------------------------------------------------------------------

SLOT = re.compile(r"<<([a-z][a-z0-9_]*?)(\d*)(?:\.([a-z_]+))?>>")
SECRET_SLOTS = frozenset(
    [
        "aws_key_id",
        "aws_secret",
        "github_token",
        "gitlab_token",
        "slack_token",
        "slack_webhook",
        "openai_key",
        "anthropic_key",
        "stripe_key",
        "sendgrid_key",
        "npm_token",
        "pypi_token",
        "gcp_api_key",
        "twilio_key",
        "azure_storage_key",
        "private_key",
        "gcp_private_key",
        "jwt",
        "db_password",
        "password",
        "sluice_token",
    ]
)
# Org recognizers of the default policy (policies/classification.yaml).
ORG_SLOTS = {
    "doclabel": ("DOCUMENT_LABEL", ("CONFIDENTIAL", "Internal use only", "Do not distribute")),
    "codename": ("PROJECT_CODENAME", ("Project Bluebird", "Nightjar")),
}


@dataclass
class Render:
    """One text being written from a template: its slots' values and the spans they occupy."""

    values: Values
    people: dict[str, Person] = field(default_factory=dict)
    slots: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def person(self, number: str) -> Person:
        if number not in self.people:
            taken = {p.full for p in self.people.values()}
            person = self.values.person()
            while person.full in taken:
                person = self.values.person()
            self.people[number] = person
        return self.people[number]

    def value(self, base: str, number: str, attribute: str | None) -> tuple[str, str | None]:
        v = self.values
        if base == "p":
            person = self.person(number)
            if attribute is None:
                return person.full, "PERSON"
            if attribute == "first":
                return person.first, "PERSON"
            if attribute == "last":
                return person.last, "PERSON"
            if attribute == "upper":
                return person.full.upper(), "PERSON"
            if attribute == "lower":
                return person.full.lower(), "PERSON"
            if attribute == "email":
                return person.email(v.rng.randrange(4)), "EMAIL_ADDRESS"
            if attribute == "phone":
                return person.phone, "PHONE_NUMBER"
            if attribute == "email_plus":
                local, domain = person.email(0).split("@")
                return f"{local}+billing@{domain}", "EMAIL_ADDRESS"
            if attribute == "title":
                return ("Ms." if person.female else "Mr."), None
            if attribute == "they":
                return ("she" if person.female else "he"), None
            if attribute == "their":
                return ("her" if person.female else "his"), None
            if attribute == "user":
                return ascii_fold(person.first)[0] + ascii_fold(person.last), None
            raise ValueError(f"unknown person attribute {attribute!r}")
        if attribute is not None:
            raise ValueError(f"slot {base!r} has no attributes")
        if base == "email":
            return v.person().email(v.rng.randrange(4)), "EMAIL_ADDRESS"
        if base == "role_email":
            role = v.pick(["support", "billing", "security", "hr", "accounts", "noreply", "it"])
            return f"{role}@{v.pick(DOMAINS)}", "EMAIL_ADDRESS"
        if base == "service_email":
            return f"etl@{v.pick(REPOS)}.iam.gserviceaccount.com", "EMAIL_ADDRESS"
        if base == "cc":  # a country, as addresses in payloads name it
            return v.pick(["DE", "FR", "ES", "GB", "NL", "US", "IT"]), "LOCATION"
        if base == "phone":
            return v.phone(), "PHONE_NUMBER"
        if base in ("phone_us", "phone_gb", "phone_de", "phone_fr", "phone_es"):
            return v.phone(base[-2:].upper()), "PHONE_NUMBER"
        if base == "phone_intl":
            number = v.phone()
            while not number.startswith("+"):
                number = v.phone()
            return re.sub(r"[^\d+]", "", number), "PHONE_NUMBER"
        if base == "card":
            return v.card(), "CREDIT_CARD"
        if base == "card_compact":
            return v.card(compact=True), "CREDIT_CARD"
        if base == "iban":
            return v.iban(), "IBAN_CODE"
        if base in ("iban_de", "iban_fr", "iban_es", "iban_gb"):
            return v.iban(base[-2:].upper()), "IBAN_CODE"
        if base == "ssn":
            return v.ssn(), "US_SSN"
        if base == "ip":
            return v.ipv4(), "IP_ADDRESS"
        if base == "public_ip":
            return v.ipv4(private=False), "IP_ADDRESS"
        if base == "private_ip":
            return v.ipv4(private=True), "IP_ADDRESS"
        if base == "ipv6addr":
            return v.ipv6(), "IP_ADDRESS"
        if base == "any_ip":
            return "0.0.0.0", "IP_ADDRESS"
        if base == "loopback":
            return "127.0.0.1", "IP_ADDRESS"
        if base == "net":  # private ranges, as code writes them
            return ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")[int(number) - 1], "IP_ADDRESS"
        if base == "city":
            return v.pick(CITIES), "LOCATION"
        if base in SECRET_SLOTS:
            return v.secret(base)
        if base in ORG_SLOTS:
            entity, terms = ORG_SLOTS[base]
            return v.pick(terms), entity
        if base == "employee_id":
            return "E" + v.digits(6), "EMPLOYEE_ID"
        return v.filler(base), None

    def render(self, template: str) -> tuple[str, list[Entity]]:
        pieces: list[str] = []
        entities: list[Entity] = []
        position = last = 0
        for match in SLOT.finditer(template):
            literal = template[last : match.start()]
            pieces.append(literal)
            position += len(literal)
            key = match.group(0)
            if key not in self.slots:
                self.slots[key] = self.value(match[1], match[2], match[3])
            value, entity = self.slots[key]
            if entity is not None:
                entities.append({"type": entity, "start": position, "end": position + len(value)})
            pieces.append(value)
            position += len(value)
            last = match.end()
        pieces.append(template[last:])
        return "".join(pieces), entities


def shift(entities: list[Entity], offset: int) -> list[Entity]:
    return [
        Entity(type=e["type"], start=e["start"] + offset, end=e["end"] + offset) for e in entities
    ]


def render(values: Values, template: str) -> tuple[str, list[Entity]]:
    return Render(values).render(template)


# English business prose with PII. Each template is rendered several times with new values.
PROSE = (
    """Subject: Follow-up on the <<company>> renewal

Hi <<p1.first>>,

Thanks for taking the time to walk us through the renewal terms yesterday. As discussed, <<p2>> \
from our procurement team will own the paperwork from here. You can reach <<p2.first>> at \
<<p2.email>> or on <<p2.phone>>.

Could you send the updated order form by <<day>>? If anything changes on your side, just reply \
to this thread.

Best regards,
<<p3>>
Account Manager, <<company2>>""",
    """Meeting notes - Q3 planning (<<date>>)
Attendees: <<p1>>, <<p2>>, <<p3>>, <<p4>>

- <<p1.first>> presented the hiring plan for the <<city>> office; two backend roles approved.
- Budget for the data platform stays flat; <<p2.first>> to confirm vendor quotes by end of month.
- <<p3.first>> raised the on-call load again. Action: <<p4.first>> drafts a rotation proposal.
- Dial-in for the follow-up: <<phone>>.""",
    """Ticket <<ticket>> - customer cannot update payment method
Reported by: <<p1>> (<<p1.email>>)
Customer: <<p2>>, phone <<p2.phone>>

The customer tried to replace the card ending in <<cardtail>> with a new card, <<card>>, but the \
form keeps returning "payment declined". The card holder name matches the account. Please check \
the gateway logs for request <<uuid>> and let me know if we need anything else from the customer.
Priority: high""",
    """Hi team,

please welcome <<p1>>, who joins the finance team in <<city>> on <<day>>. For payroll, HR still \
needs a corrected Social Security number: the one on file (<<ssn>>) was rejected by the provider, \
so <<p1.first>> will bring the card on the first day. Salary goes to IBAN <<iban>>.

<<p1.first>>'s work e-mail will be <<p1.email>>. The laptop is ordered and will be ready at the \
front desk.

Thanks,
<<p2>>""",
    """Dear <<p1.title>> <<p1.last>>,

we have not yet received payment for invoice INV-<<refno>> (EUR <<money>>). Please transfer the \
amount to the following account:

Account holder: <<company>>
IBAN: <<iban>>
BIC: <<bic>>
Reference: INV-<<refno>>

If you have already paid, please disregard this reminder. For questions, contact our accounts \
receivable team at <<role_email>> or <<phone>>.

Kind regards,
<<p2>>""",
    """Incident summary: between 02:10 and 02:45 UTC the checkout API returned 502s. The load \
balancer marked backend <<private_ip>> unhealthy after the deploy of release <<ver>>, and traffic \
shifted to <<private_ip2>>, which ran out of database connections. <<p1>>, who was on call, \
rolled back at 02:41. Root cause: a missing index on the orders table made a hot query scan the \
whole table. Follow-up owner: <<p2>>. External monitoring from <<public_ip>> confirmed recovery \
at 02:47.""",
    """Call with <<p1>> (<<company>>, Head of IT) on <<date>>.
They are evaluating us against two competitors. Main concerns: SSO, data residency in <<city>>, \
and price per seat. <<p1.first>> asked for our security whitepaper; send it to <<p1.email>>. \
Mobile: <<p1.phone>>. A decision is expected next quarter, and <<p2.first>> from their finance \
team joins the next call.""",
    """hey <<p1.first>>, can you reset the VPN access for <<p2>>? the laptop was replaced and the \
old certificate is still bound to <<ip>>. <<p2.first>> is reachable at <<p2.phone>> if you need \
to verify identity first. thanks!""",
    """Hello,

my name is <<p1>> and I have been a customer for six years. Last week I was charged twice on my \
credit card <<card>> for order <<order>>. I called your hotline twice and was promised a refund, \
but nothing has happened so far. Please refund the duplicate charge or call me back at \
<<p1.phone>>.

Regards,
<<p1>>""",
    """Applicant: <<p1>>
Date of birth: <<dob>>
SSN: <<ssn>>
Phone: <<p1.phone>>
Email: <<p1.email>>
Employer: <<company>>
Notes: the applicant asked that all correspondence go to the e-mail address above rather than \
by post.""",
    """Hi <<p1.first>>, we noticed a sign-in to your account from a new device at <<public_ip>> \
near <<city>>. If this was you, there is nothing to do. If it was not, reset your password right \
away and contact <<role_email>> so we can review the activity.""",
    """Booking confirmation for <<p1>>: flight to <<city>> on <<date>>, hotel for three nights \
close to the venue. The total of EUR <<money>> was charged to the corporate card <<card>> \
(card holder: <<p2>>). Please forward all receipts to <<role_email>> within 30 days of travel.""",
    """New vendor request
Vendor: <<company>>
Contact: <<p1>>, <<p1.email>>, <<p1.phone>>
Bank details: IBAN <<iban>>, BIC <<bic>>
Approver: <<p2>>
Comment: they replace our current courier for the <<city>> warehouse from next month.""",
    """Quick update from the platform team: <<p1>> is moving to the data engineering group next \
month, and <<p2>> takes over as tech lead for the payments service. Please route architecture \
questions to <<p2.first>> from now on. Big thanks to <<p1.first>> for three great years on the \
team!""",
    """Change request CR-<<refno>>: open port 5432 from <<private_ip>> (reporting host) to the \
read replica at <<private_ip2>>. Requested by <<p1>>, approved by <<p2>>. Window: Saturday \
22:00 to 23:00. Rollback: remove the security group rule and restart the reporting job.""",
    """Can you draft a polite reply to this customer? Here is their message:

"Hi, I'm <<p1>>. I ordered a standing desk two weeks ago and it still hasn't arrived. My order \
number is <<order>> and my phone number is <<p1.phone>>. Please e-mail me at <<p1.email>> with an \
update."

Keep it short, apologise for the delay and offer a 10% discount on the next order.""",
    """Summarize the thread below in three bullet points.

From: <<p1>> <<<p1.email>>>
To: <<p2>> <<<p2.email>>>
Cc: <<p3.email>>
Subject: Re: contract amendment

<<p2.first>>, legal is fine with the new liability cap but wants the termination notice at 90 \
days. <<p3.first>> will update the draft tonight. Can you confirm with the customer tomorrow?""",
    """Our payment webhook failed for customer <<p1>> (<<p1.email>>). The card used was <<card>>, \
expiry 08/27. The processor returned "do_not_honor". Why would a charge be declined with that code \
when the same card worked last month?""",
    """Candidate: <<p1>>
Referred by: <<p2>>
Contact: <<p1.email>> / <<p1.phone>>
Based in <<city>>, open to relocation.
Summary: seven years of backend experience (Go, PostgreSQL); led the move from a monolith to \
services at <<company>>. Strong system design interview; <<p3.first>> recommends the final \
round.""",
    """Access review for the finance share: <<p1>> (<<p1.email>>) and <<p2>> (<<p2.email>>) \
still have write access although they moved teams in spring. Their last logins came from \
<<ip>> and <<ip2>>. Please confirm the removal by <<day>>.""",
    """I'm getting AccessDenied when the nightly sync runs. These are the credentials from the \
pipeline variables:

AWS_ACCESS_KEY_ID=<<aws_key_id>>
AWS_SECRET_ACCESS_KEY=<<aws_secret>>

Is the problem the bucket policy or the IAM user? The bucket is in <<region>>.""",
    """The GitHub token <<github_token>> stopped working after we turned on SSO for the \
organisation. Do I need to authorise it for the org, or create a new one?""",
    """Please refund the remaining balance of EUR <<money>> to my account, IBAN <<iban>>, account \
holder <<p1>>. You can reach me on <<p1.phone>> if anything is unclear.""",
    """Hi <<p1.first>>, the new hire <<p2>> (badge <<employee_id>>, employee in the <<city>> \
office) needs access to the analytics workspace. Manager approval is attached. Thanks, <<p3>>""",
    """Hi both, for the audit please send me the list of admin accounts. So far I have \
<<p1.email>>, <<p2.email>> and the break-glass account <<role_email>>. Anything else I am \
missing? -- <<p3.first>>""",
    """Reminder: the <<codename>> steering group meets on <<day>> at 10:00. <<p1>> presents the \
launch checklist; <<p2>> covers the budget. The deck is <<doclabel>> -- please do not forward it \
outside the group.""",
    """Our new webhook endpoint keeps returning 401 from the vendor. This is the call we make:

curl -X POST https://api.<<domain>>/v1/events -H "Authorization: Bearer <<jwt>>" -d @event.json

Did the token expire, or is the header wrong?""",
    """Dear <<p1.first>>,

your pension statement is ready. For identification we have your SSN as <<ssn>> and your phone \
number as <<p1.phone>>. If either is wrong, please call us before the end of the month.

Sincerely,
<<p2>>, Member Services""",
)

# English business prose without anything to find: company and product names, figures, dates,
# versions. Every finding here is a false positive.
PROSE_CLEAN = (
    """Our Q3 revenue grew 12% to EUR <<money>>, driven by the Enterprise tier. Churn fell to \
<<pct>>%, and net revenue retention reached 118%. The board approved the budget for next year, \
including two new product squads and a larger security team. Please prepare a one-page summary \
for the all-hands on <<day>>.""",
    """Please summarise the release notes for version <<ver>>: the scheduler now retries failed \
jobs with exponential backoff, the export API supports CSV and Parquet, and the admin console \
shows per-tenant quotas. Deprecated: the v1 webhooks endpoint, which will be removed in the next \
major release.""",
    """Write a job description for a Senior Data Engineer. The role owns our batch pipelines \
(Airflow, dbt, Snowflake), mentors two junior engineers and works closely with the analytics \
team. We offer a hybrid setup, a learning budget and 30 days of paid leave.""",
    """Explain the difference between SOC 2 Type I and Type II reports in plain language, and \
list what evidence an auditor usually asks for around access reviews, change management and \
incident response.""",
    """We are comparing three vendors for customer support software. Vendor A is cheapest but \
has no data residency option. Vendor B has the best integrations but charges per agent and per \
channel. Vendor C is strong on reporting. Draft a decision matrix with weights for cost, \
security, integrations and support quality.""",
    """Rewrite this paragraph for our newsletter so it sounds less formal: "<<company>> is pleased \
to announce that the mobile application has been updated to version <<ver>>, which introduces \
offline mode, faster synchronisation and an improved accessibility experience for all users."\
""",
    """The warehouse team reports that pallet scanning takes 40% longer since the firmware \
update <<build>>. Scanners reboot every few hours, and batch <<big>> had to be re-scanned twice. \
What questions should we ask the hardware vendor before we roll the update back?""",
    """Create a checklist for onboarding a new enterprise customer: contract signed, SSO \
configured, data processing agreement filed, admin accounts created, training scheduled, first \
quarterly business review booked. Mark which steps belong to sales and which to customer \
success.""",
    """What are good practices for rotating API keys in a team of twenty engineers? We keep the \
keys in a secrets manager, but some scripts still read them from environment variables, and \
nobody is sure which services use which key.""",
    """Translate the following into formal English: the shipment with order number <<order>> \
left the warehouse on <<date>> and should arrive within five business days. Tracking details \
will follow in a separate message.""",
    """Summarise the main risks of migrating our billing system from the monolith to separate \
services: data consistency during the cut-over, double invoicing, reporting gaps, and the \
on-call load while both systems run in parallel.""",
    """Our status page showed degraded performance for 37 minutes on <<date>>. Draft a customer \
facing post-mortem: what happened (a configuration change to the cache cluster), the impact \
(slower page loads, no data loss), and what we changed to prevent it from happening again.""",
    """Give me a SQL-free explanation of how our churn model works for the sales team: it looks \
at login frequency, support tickets, seat utilisation and contract age, and produces a score \
between 0 and 100 each week.""",
    """Draft an internal announcement: starting next month, all laptops must run disk encryption \
and the latest OS patch level. Devices that are not compliant after 14 days lose access to \
e-mail and the VPN until IT has checked them.""",
)

# German, French and Spanish business text, alone or inside an English request.
MIXED = (
    """Hallo <<p1.first>>,

vielen Dank für das Gespräch heute. Wie besprochen schicke ich dir die Unterlagen bis <<day>>. \
Die Rechnung bitte an <<p2.email>> senden; die Überweisung geht auf das Konto <<iban_de>>. Bei \
Rückfragen erreichst du mich unter <<phone_de>>.

Viele Grüße
<<p2>>""",
    """Sehr geehrte Frau <<p1.last>>,

leider konnten wir die Lastschrift für Ihre Bestellung <<order>> nicht einziehen. Bitte prüfen \
Sie Ihre Bankverbindung (<<iban_de>>) oder zahlen Sie per Kreditkarte. Unser Kundenservice ist \
unter <<role_email>> erreichbar.

Mit freundlichen Grüßen
<<p2>>""",
    """Can you translate this German e-mail into English for our legal team?

"Guten Tag, mein Name ist <<p1>>. Ich habe am <<date>> einen Vertrag mit Ihnen geschlossen und \
möchte ihn fristgerecht kündigen. Bitte bestätigen Sie die Kündigung schriftlich an \
<<p1.email>>. Telefonisch bin ich unter <<phone_de>> erreichbar." """,
    """Protokoll der Teamrunde: <<p1>> übernimmt ab sofort die Rufbereitschaft, <<p2>> kümmert \
sich um die Migration der Datenbank auf Version <<ver>>. Offene Frage an <<p3.first>>: brauchen \
wir für das Büro in <<city>> einen eigenen VPN-Zugang?""",
    """Bonjour <<p1.first>>,

suite à notre échange, je vous confirme le rendez-vous de <<day>> à 14h. Merci d'envoyer le \
contrat signé à <<p2.email>>. Pour le paiement, voici notre IBAN : <<iban_fr>>. N'hésitez pas à \
m'appeler au <<phone_fr>>.

Cordialement,
<<p2>>""",
    """Madame, Monsieur,

je vous écris au sujet de la facture <<order>>. Mon nom est <<p1>> et ma carte bancaire \
(<<card>>) a été débitée deux fois. Merci de me rembourser le montant en double ou de me \
contacter à <<p1.email>>.

<<p1>>""",
    """Please summarise this French message in English: "L'équipe de <<p1.first>> a terminé \
l'audit de sécurité. <<p2>> présentera les résultats jeudi. Les accès de l'ancien prestataire \
depuis <<ip>> ont été révoqués. Contact : <<p2.email>>." """,
    """Compte rendu : <<p1>> et <<p2>> ont validé le budget du projet. Le lancement à <<city>> est \
prévu pour le trimestre prochain. Prochaine réunion avec <<p3>>, à confirmer par e-mail \
(<<p3.email>>).""",
    """Hola <<p1.first>>,

gracias por la reunión de ayer. Te confirmo que <<p2>> se encargará del contrato a partir de \
ahora; su correo es <<p2.email>> y su teléfono <<phone_es>>. El pago se hará a la cuenta \
<<iban_es>>.

Un saludo,
<<p3>>""",
    """Estimado cliente: hemos detectado un inicio de sesión desde la dirección <<public_ip>> en \
su cuenta. Si no fue usted, cambie su contraseña y escriba a <<role_email>>. Atentamente, el \
equipo de seguridad de <<company>>.""",
    """Translate into English for the board: "<<p1>> (directora financiera) propone aumentar el \
presupuesto de la oficina de <<city>>. <<p2>> revisará las cifras antes del viernes. Dudas a \
<<p1.email>>." """,
    """Resumen de la llamada con <<p1>>: quiere cambiar la tarjeta asociada a su cuenta por la \
<<card>> y actualizar su teléfono a <<phone_es>>. Pendiente: confirmar la identidad por correo \
(<<p1.email>>).""",
)

# Log lines, a few to a dozen per text, newest last.
LOG_LINES = (
    '<<ip>> - - [12/Mar/2024:10:15:32 +0000] "GET /api/v1/orders/<<big>> HTTP/1.1" 200 <<num>> \
"-" "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"',
    '<<public_ip>> - - [12/Mar/2024:10:15:33 +0000] "POST /api/v1/login HTTP/1.1" 401 87 "-" \
"python-requests/2.31.0"',
    '{"ts":"<<ts>>","level":"info","msg":"user login","user":"<<p1.email>>","ip":"<<ip>>",\
"request_id":"<<uuid>>"}',
    '{"ts":"<<ts>>","level":"warn","msg":"slow query","duration_ms":<<big>>,"table":"orders",\
"request_id":"<<uuid2>>"}',
    "Mar 12 10:15:32 bastion sshd[<<pid>>]: Failed password for invalid user admin from \
<<public_ip>> port <<big>> ssh2",
    "Mar 12 10:15:40 bastion sshd[<<pid>>]: Accepted publickey for <<user>> from <<private_ip>> \
port 50122 ssh2: ED25519 SHA256:<<hexid>>",
    "<<ts>> ERROR [billing.worker] charge failed for customer <<p2.email>>: card_declined \
(request_id=<<uuid3>>)",
    "<<ts>> INFO  [auth] password reset requested for <<p3.email>> from <<ip2>>",
    "I0312 10:15:32.123456       1 controller.go:114] Successfully synced pod \
default/api-7d9f8b6c5-x2x9z on node <<private_ip3>>",
    "postfix/smtp[<<pid>>]: 3F2A81C2E: to=<<<email>>>, relay=mx.<<domain>>[<<public_ip2>>]:25, \
delay=1.2, status=sent (250 2.0.0 OK)",
    "<<ts>> audit user=<<p4.email>> action=export_report report=finance-q3 src_ip=<<ip3>>",
    "<<ts>> LOG:  duration: <<ms>> ms  statement: SELECT id, status FROM orders WHERE tenant_id = \
$1 LIMIT 100",
    "<<ts>> WARN  [gateway] upstream <<private_ip4>>:<<port>> timed out after 30000 ms, retrying \
(attempt 2 of 3)",
    "<<ts>> INFO  [http] GET /healthz 200 1.2ms",
    "<<ts>> DEBUG [cache] miss key=session:<<hexid>> ttl=3600",
    "<<ts>> INFO  [admin] role changed: <<p5>> is now billing-admin (by <<p6.email>>)",
    "<<ts>> INFO  [conn] client connected from [<<ipv6addr>>]:443 tls=1.3",
    "<<ts>> ERROR [export] upload to s3://reports-<<hexid>>/daily failed: SlowDown, backing off \
2.0s",
    "<<ts>> INFO  [deploy] rolled out <<repo>> <<ver>> (commit <<short_sha>>) to 6/6 pods",
    "<<ts>> WARN  [auth] 5 failed logins for <<p1.email>> in 60s, locking the account for 15 \
minutes",
)

# JSON payloads: API requests and responses, exports, webhooks.
JSON_PAYLOADS = (
    """{
  "customer": {
    "id": "cus_<<ident>>",
    "name": "<<p1>>",
    "email": "<<p1.email>>",
    "phone": "<<phone_intl>>",
    "address": {"city": "<<city>>", "country": "<<cc>>"}
  },
  "payment_method": {
    "type": "card",
    "card": {"number": "<<card_compact>>", "exp_month": 8, "exp_year": 2027}
  },
  "metadata": {"order_id": "<<order>>", "source": "checkout-v2"}
}""",
    """{"event": "invoice.payment_failed", "id": "evt_<<ident>>", "created": <<epoch>>,
 "data": {"invoice": "in_<<ident>>", "amount_due": <<big>>, "currency": "eur",
  "customer_email": "<<p1.email>>", "customer_name": "<<p1>>",
  "attempt_count": 3, "next_payment_attempt": null}}""",
    """[
  {"employee": "<<p1>>", "email": "<<p1.email>>", "iban": "<<iban>>", "net": <<big>>},
  {"employee": "<<p2>>", "email": "<<p2.email>>", "iban": "<<iban2>>", "net": <<big2>>}
]""",
    """{"ticket": {"id": <<big>>, "subject": "Cannot log in", "status": "open",
  "requester": {"name": "<<p1>>", "email": "<<p1.email>>"},
  "description": "Since the update I get error 403. My colleague <<p2>> has the same problem.",
  "tags": ["login", "sso"], "created_at": "<<ts>>"}}""",
    """{"user": {"id": "<<uuid>>", "display_name": "<<p1>>", "email": "<<p1.email>>",
  "last_login_ip": "<<ip>>", "mfa": true, "roles": ["viewer", "exporter"]},
 "session": {"id": "<<uuid2>>", "expires_at": "<<ts>>"}}""",
    """{"applicant": {"first_name": "<<p1.first>>", "last_name": "<<p1.last>>",
  "ssn": "<<ssn>>", "phone": "<<p1.phone>>", "email": "<<p1.email>>"},
 "loan": {"amount": <<big>>, "term_months": 36, "purpose": "home_improvement"}}""",
    """{"messages": [
  {"role": "system", "content": "You are a helpful support assistant for <<company>>."},
  {"role": "user", "content": "My name is <<p1>>, my order <<order>> never arrived. Reach me at \
<<p1.email>> or <<p1.phone>>."}
 ], "model": "gpt-4o", "temperature": 0.2}""",
    """{"contacts": [
  {"name": "<<p1>>", "company": "<<company>>", "phone": "<<p1.phone>>", "city": "<<city>>"},
  {"name": "<<p2>>", "company": "<<company2>>", "phone": "<<p2.phone>>", "city": "<<city2>>"},
  {"name": "<<p3>>", "company": "<<company3>>", "email": "<<p3.email>>"}
 ], "exported_at": "<<ts>>", "count": 3}""",
    """{"alert": "impossible_travel", "severity": "high", "user": "<<p1.email>>",
 "sign_ins": [{"ip": "<<public_ip>>", "city": "<<city>>", "at": "<<ts>>"},
  {"ip": "<<public_ip2>>", "city": "<<city2>>", "at": "<<ts2>>"}], "rule_id": "<<uuid>>"}""",
    """{"refund": {"id": "re_<<ident>>", "amount": <<big>>, "currency": "eur",
  "destination": {"type": "sepa", "iban": "<<iban>>", "holder": "<<p1>>"},
  "reason": "duplicate", "requested_by": "<<p2.email>>"}}""",
    """{"service": "<<repo>>", "version": "<<ver>>", "build": {"commit": "<<sha>>",
  "image": "registry.internal/<<repo>>@sha256:<<digest>>", "built_at": "<<ts>>"},
 "replicas": 3, "healthcheck": {"path": "/healthz", "interval_s": 10}}""",
    """{"order": {"id": "<<order>>", "items": [{"sku": "DESK-<<refno>>", "qty": 1, \
"price": <<num>>.99}],
  "shipping": {"city": "<<city>>", "method": "express"}, "status": "paid",
  "trace_id": "<<uuid>>"}}""",
)

# Source code without PII or secrets (IP addresses such as a bind address are allowed: the
# default policy lets them through). Each chunk is one to three blocks of one language.
CODE_CLEAN: dict[str, tuple[str, ...]] = {
    "python": (
        r'''class <<cls>>:
    """Keeps a bounded cache of <<noun>> records keyed by id."""

    MAX_ENTRIES = <<big>>
    DEFAULT_TTL = <<num>>

    def __init__(self, loader, ttl=DEFAULT_TTL):
        self.loader = loader
        self.ttl = ttl
        self._entries = {}
        self.mo = None

    def get(self, key):
        entry = self._entries.get(key)
        if entry is None or entry.expired(self.ttl):
            entry = self._entries[key] = self.loader(key)
        if len(self._entries) > self.MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)))
        return entry.value''',
        r"""from setuptools import find_packages, setup

setup(
    name="<<repo>>",
    version="<<ver>>",
    description="Internal tools for the <<noun>> pipeline",
    url="https://github.com/<<org>>/<<repo>>",
    packages=find_packages(exclude=["tests"]),
    python_requires=">=3.10",
    install_requires=["requests>=2.31", "pydantic>=2.6", "structlog>=24.1"],
    entry_points={"console_scripts": ["<<repo>>=<<noun>>.cli:main"]},
)""",
        r'''import logging
import time

import requests

log = logging.getLogger(__name__)
<<const>> = <<num>>
BASE_URL = "<<url>>"


def <<fn>>(session: requests.Session, page: int = 1) -> list[dict]:
    """Fetch one page, retrying on 5xx with exponential backoff."""
    for attempt in range(5):
        response = session.get(BASE_URL, params={"page": page}, timeout=10)
        if response.status_code < 500:
            response.raise_for_status()
            return response.json()["items"]
        delay = 2 ** attempt
        log.warning("upstream returned %s, retrying in %ss", response.status_code, delay)
        time.sleep(delay)
    raise RuntimeError(f"giving up on page {page}")''',
        r"""@dataclass(frozen=True)
class <<cls>>Config:
    host: str = "<<any_ip>>"
    port: int = <<port>>
    workers: int = 4
    api_key: str | None = None  # read from the environment, never from this file
    build: str = "<<short_sha>>"

    @classmethod
    def from_env(cls) -> "<<cls>>Config":
        return cls(
            host=os.environ.get("HOST", cls.host),
            port=int(os.environ.get("PORT", cls.port)),
            api_key=os.environ.get("API_KEY"),
        )""",
        r'''def <<fn>>(rows, *, chunk_size=<<num>>):
    """Yield rows in chunks, with a checksum per chunk for the audit log."""
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == chunk_size:
            yield chunk, hashlib.sha256(repr(chunk).encode()).hexdigest()
            chunk = []
    if chunk:
        yield chunk, hashlib.sha256(repr(chunk).encode()).hexdigest()


# Expected digest of the empty export, pinned in tests.
EMPTY_DIGEST = "<<digest>>"''',
        r"""class Test<<cls>>(unittest.TestCase):
    def setUp(self):
        self.mo = mock.MagicMock()
        self.store = InMemoryStore()
        self.service = <<cls>>(store=self.store, clock=lambda: <<epoch>>)

    def test_retries_then_succeeds(self):
        self.mo.side_effect = [TimeoutError(), {"status": "ok"}]
        result = self.service.run(self.mo)
        self.assertEqual(result["status"], "ok")
        self.assertEqual(self.mo.call_count, 2)

    def test_rejects_unknown_version(self):
        with self.assertRaises(ValueError):
            self.service.migrate(to_version="<<build>>")""",
        r'''async def <<fn>>(app: web.Application) -> None:
    """Start the background refresher; stop it cleanly on shutdown."""
    app["refresher"] = asyncio.create_task(refresh_forever(app["db"], interval=<<num>>))
    yield
    app["refresher"].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await app["refresher"]


def create_app() -> web.Application:
    app = web.Application(client_max_size=<<big>>)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/<<noun>>s/{id}", get_item)
    app.cleanup_ctx.append(<<fn>>)
    return app''',
        r"""# requirements.txt pinned by pip-compile
aiohttp==3.9.5
certifi==2024.2.2
charset-normalizer==3.3.2
idna==3.7
multidict==6.0.5
pydantic==2.7.1
pydantic-core==2.18.2
urllib3==2.2.1
yarl==1.9.4""",
        r'''def parse_version(text: str) -> tuple[int, ...]:
    """'1.2.3.4' -> (1, 2, 3, 4); used to compare agent builds."""
    return tuple(int(part) for part in text.split("."))


MIN_AGENT = parse_version("<<build>>")
KNOWN_BAD = {parse_version(v) for v in ("2.0.1.3", "2.0.1.4", "<<build>>")}


def agent_supported(version: str) -> bool:
    parsed = parse_version(version)
    return parsed >= MIN_AGENT and parsed not in KNOWN_BAD''',
        r'''class <<cls>>(Base):
    __tablename__ = "<<noun>>s"

    id = Column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id = Column(String(36), nullable=False, index=True)
    status = Column(Enum("pending", "active", "archived", name="status"), default="pending")
    password_hash = Column(String(128), nullable=True)
    created_at = Column(DateTime(timezone=True), server_default=func.now())

    def __repr__(self) -> str:
        return f"<<<cls>> id={self.id} status={self.status}>"''',
        r'''def get_secret(name: str) -> str:
    """Read a secret from the mounted secrets directory, falling back to the environment."""
    path = Path("/run/secrets") / name
    if path.exists():
        return path.read_text().strip()
    value = os.environ.get(name.upper())
    if value is None:
        raise KeyError(f"secret {name} is not configured")
    return value


DB_PASSWORD = get_secret("db_password")
STRIPE_API_KEY = get_secret("stripe_api_key")''',
    ),
    "javascript": (
        r"""export class <<cls>> {
  constructor(client, { retries = 3, timeoutMs = <<big>> } = {}) {
    this.client = client;
    this.retries = retries;
    this.timeoutMs = timeoutMs;
    this.cache = new Map();
  }

  async <<fnc>>(id) {
    if (this.cache.has(id)) return this.cache.get(id);
    const response = await this.client.get(`/v2/<<noun>>s/${id}`, { timeout: this.timeoutMs });
    this.cache.set(id, response.data);
    return response.data;
  }
}""",
        r"""const express = require("express");
const helmet = require("helmet");

const app = express();
const PORT = process.env.PORT || <<port>>;
const API_KEY = process.env.API_KEY;

app.use(helmet());
app.use(express.json({ limit: "1mb" }));

app.get("/healthz", (req, res) => res.json({ ok: true, version: "<<ver>>" }));

app.listen(PORT, "<<any_ip>>", () => console.log(`listening on ${PORT}`));""",
        r"""{
  "name": "@<<org>>/<<repo>>",
  "version": "<<ver>>",
  "private": true,
  "scripts": {
    "build": "tsc -p tsconfig.json",
    "test": "vitest run",
    "lint": "eslint . --ext .ts"
  },
  "dependencies": {"axios": "^1.6.8", "zod": "^3.23.4"},
  "devDependencies": {"typescript": "^5.4.5", "vitest": "^1.5.0"}
}""",
        r"""export function debounce<T extends (...args: unknown[]) => void>(fn: T, waitMs = 250) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return (...args: Parameters<T>) => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => fn(...args), waitMs);
  };
}

export const <<const>> = <<num>>;
export const DOCS_URL = "<<url>>";""",
        r"""interface <<cls>>Props {
  items: Array<{ id: string; label: string; updatedAt: number }>;
  onSelect?: (id: string) => void;
}

export function <<cls>>List({ items, onSelect }: <<cls>>Props) {
  const sorted = useMemo(() => [...items].sort((a, b) => b.updatedAt - a.updatedAt), [items]);
  return (
    <ul className="list">
      {sorted.map((item) => (
        <li key={item.id} onClick={() => onSelect?.(item.id)}>{item.label}</li>
      ))}
    </ul>
  );
}""",
        r"""describe("<<cls>>", () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(new Date(<<epoch>>000));
  });

  it("expires entries after the ttl", async () => {
    const store = new <<cls>>({ ttlMs: 1000 });
    store.set("a", 1);
    vi.advanceTimersByTime(1001);
    expect(store.get("a")).toBeUndefined();
  });
});""",
        r"""const integrity = "sha384-<<ident>><<ident2>><<ident3>>";
const script = document.createElement("script");
script.src = "https://cdn.jsdelivr.net/npm/chart.js@<<ver>>/dist/chart.umd.min.js";
script.integrity = integrity;
script.crossOrigin = "anonymous";
document.head.appendChild(script);""",
    ),
    "go": (
        r"""package <<noun>>

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

const <<const>> = <<num>>

type <<cls>> struct {
	client  *http.Client
	baseURL string
}

func New<<cls>>(baseURL string) *<<cls>> {
	return &<<cls>>{client: &http.Client{Timeout: 10 * time.Second}, baseURL: baseURL}
}

func (s *<<cls>>) Get(ctx context.Context, id string) (*http.Response, error) {
	url := fmt.Sprintf("%s/<<noun>>s/%s", s.baseURL, id)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	return s.client.Do(req)
}""",
        r"""module github.com/<<org>>/<<repo>>

go 1.22

require (
	github.com/go-chi/chi/v5 v5.0.12
	github.com/jackc/pgx/v5 v5.5.5
	github.com/prometheus/client_golang v1.19.0
	golang.org/x/sync v0.7.0
)""",
        r"""func main() {
	addr := flag.String("addr", "<<any_ip>>:<<port>>", "listen address")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		fmt.Fprintf(w, "ok %s", version)
	})
	log.Printf("listening on %s (build %s)", *addr, "<<short_sha>>")
	log.Fatal(http.ListenAndServe(*addr, mux))
}""",
        r"""func Test<<cls>>Retry(t *testing.T) {
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		if calls < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"id":"<<uuid>>"}`))
	}))
	defer srv.Close()

	s := New<<cls>>(srv.URL)
	if _, err := s.Get(context.Background(), "x"); err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
}""",
        r"""var allowedCIDRs = []string{"<<net1>>", "<<net2>>", "<<net3>>"}

func isInternal(ip net.IP) bool {
	for _, cidr := range allowedCIDRs {
		_, block, _ := net.ParseCIDR(cidr)
		if block.Contains(ip) {
			return true
		}
	}
	return ip.IsLoopback()
}""",
    ),
    "java": (
        r"""@Service
public class <<cls>> {
    private static final int <<const>> = <<num>>;
    private static final Logger LOG = LoggerFactory.getLogger(<<cls>>.class);

    private final <<cls>>Repository repository;

    public <<cls>>(<<cls>>Repository repository) {
        this.repository = repository;
    }

    @Transactional(readOnly = true)
    public Optional<<<cls>>Dto> findById(UUID id) {
        LOG.debug("loading {} {}", "<<noun>>", id);
        return repository.findById(id).map(<<cls>>Dto::from);
    }
}""",
        r"""<dependency>
    <groupId>org.springframework.boot</groupId>
    <artifactId>spring-boot-starter-web</artifactId>
    <version><<ver>></version>
</dependency>
<dependency>
    <groupId>org.postgresql</groupId>
    <artifactId>postgresql</artifactId>
    <version>42.7.3</version>
</dependency>""",
        r"""public record <<cls>>Event(UUID id, String type, Instant at, Map<String, Object> data) {
    public static <<cls>>Event of(String type, Map<String, Object> payload) {
        return new <<cls>>Event(UUID.randomUUID(), type, Instant.now(), Map.copyOf(payload));
    }

    public boolean isExpired(Duration ttl) {
        return at.plus(ttl).isBefore(Instant.now());
    }
}""",
        r"""spring.datasource.url=jdbc:postgresql://<<host>>:5432/<<noun>>s
spring.datasource.username=${DB_USER}
spring.datasource.password=${DB_PASSWORD}
spring.jpa.hibernate.ddl-auto=validate
server.port=<<port>>
management.endpoints.web.exposure.include=health,info,prometheus""",
    ),
    "sql": (
        r"""CREATE TABLE <<noun>>s (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   UUID NOT NULL REFERENCES tenants(id),
    status      TEXT NOT NULL DEFAULT 'pending',
    amount_cents BIGINT NOT NULL CHECK (amount_cents >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX <<noun>>s_tenant_created_idx ON <<noun>>s (tenant_id, created_at DESC);""",
        r"""-- Monthly revenue per plan, excluding refunds and test tenants.
SELECT date_trunc('month', i.paid_at) AS month,
       p.name                          AS plan,
       sum(i.amount_cents) / 100.0     AS revenue
FROM invoices i
JOIN plans p ON p.id = i.plan_id
WHERE i.status = 'paid'
  AND i.tenant_id NOT IN (SELECT id FROM tenants WHERE is_test)
  AND i.paid_at >= now() - interval '12 months'
GROUP BY 1, 2
ORDER BY 1, 3 DESC;""",
        r"""WITH ranked AS (
    SELECT s.*, row_number() OVER (PARTITION BY s.user_id ORDER BY s.started_at DESC) AS rn
    FROM sessions s
    WHERE s.started_at > now() - interval '<<num>> days'
)
SELECT user_id, count(*) AS sessions, max(started_at) AS last_seen
FROM ranked
WHERE rn <= 50
GROUP BY user_id
HAVING count(*) > 3;""",
        r"""ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN password_changed_at TIMESTAMPTZ;
UPDATE schema_migrations SET version = '<<date>>.<<num>>' WHERE name = 'users';
GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO analyst;""",
    ),
    "shell": (
        r"""#!/usr/bin/env bash
set -euo pipefail

VERSION="${1:-<<ver>>}"
IMAGE="registry.internal/<<repo>>:${VERSION}"

docker build --build-arg VERSION="${VERSION}" -t "${IMAGE}" .
docker push "${IMAGE}"
kubectl set image deployment/<<repo>> app="${IMAGE}" --record
kubectl rollout status deployment/<<repo>> --timeout=300s""",
        r"""# Back up the database and keep the last 14 dumps.
BACKUP_DIR=/var/backups/<<noun>>
STAMP=$(date +%Y%m%d-%H%M%S)
pg_dump --host="${PGHOST}" --username="${PGUSER}" --format=custom "<<noun>>s" \
  > "${BACKUP_DIR}/${STAMP}.dump"
sha256sum "${BACKUP_DIR}/${STAMP}.dump" >> "${BACKUP_DIR}/SHA256SUMS"
ls -1t "${BACKUP_DIR}"/*.dump | tail -n +15 | xargs -r rm --""",
        r"""$ git log --oneline -5
<<short_sha>> Fix retry loop in the <<noun>> exporter
<<short_sha2>> Bump pydantic to 2.7.1
<<short_sha3>> Add healthz endpoint
$ python -m pytest -q
........................................................ [100%]
56 passed in 3.41s""",
        r"""for host in $(cat hosts.txt); do
  ssh -o ConnectTimeout=5 "${DEPLOY_USER}@${host}" "sudo systemctl restart <<repo>>" \
    && echo "restarted ${host}" \
    || echo "FAILED ${host}" >&2
done
curl -fsS "http://<<loopback>>:<<port>>/healthz" || exit 1""",
    ),
    "yaml": (
        r"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: <<repo>>
  labels: {app: <<repo>>, version: "<<ver>>"}
spec:
  replicas: 3
  selector:
    matchLabels: {app: <<repo>>}
  template:
    metadata:
      labels: {app: <<repo>>}
    spec:
      containers:
        - name: app
          image: registry.internal/<<repo>>@sha256:<<digest>>
          ports: [{containerPort: <<port>>}]
          env:
            - name: DB_PASSWORD
              valueFrom: {secretKeyRef: {name: <<repo>>-db, key: password}}""",
        r"""name: ci
on: [push, pull_request]
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with: {python-version: "3.11"}
      - run: pip install -e ".[test]"
      - run: pytest -q
        env:
          API_KEY: ${{ secrets.API_KEY }}""",
        r"""services:
  db:
    image: postgres:16.2
    environment:
      POSTGRES_DB: <<noun>>s
      POSTGRES_PASSWORD_FILE: /run/secrets/db_password
    ports: ["<<loopback>>:5432:5432"]
  cache:
    image: redis:7.2.4
    command: ["redis-server", "--maxmemory", "256mb"]""",
        r"""logging:
  level: info
  format: json
server:
  bind: <<any_ip>>
  port: <<port>>
  read_timeout: 30s
upstream:
  url: <<url>>
  retries: 3
  backoff: [0.5, 1, 2]
feature_flags:
  new_<<noun>>_flow: true
  legacy_export: false""",
    ),
    "json": (
        r"""{
  "compilerOptions": {
    "target": "ES2022",
    "module": "ESNext",
    "moduleResolution": "bundler",
    "strict": true,
    "outDir": "dist",
    "paths": {"@/*": ["./src/*"]}
  },
  "include": ["src/**/*.ts"],
  "exclude": ["node_modules", "dist"]
}""",
        r"""{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "<<cls>>",
  "type": "object",
  "required": ["id", "status"],
  "properties": {
    "id": {"type": "string", "format": "uuid", "examples": ["<<uuid>>"]},
    "status": {"enum": ["pending", "active", "archived"]},
    "amount": {"type": "integer", "minimum": 0},
    "password": {"type": "string", "writeOnly": true, "minLength": 12}
  }
}""",
        r"""{
  "lockfileVersion": 3,
  "packages": {
    "node_modules/axios": {
      "version": "1.6.8",
      "resolved": "https://registry.npmjs.org/axios/-/axios-1.6.8.tgz",
      "integrity": "sha512-<<ident>><<ident2>><<ident3>><<ident4>>"
    }
  }
}""",
    ),
    "dockerfile": (
        r"""FROM python:3.11.9-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
EXPOSE <<port>>
HEALTHCHECK CMD curl -f http://localhost:<<port>>/healthz || exit 1
CMD ["gunicorn", "-b", "<<any_ip>>:<<port>>", "app:create_app()"]""",
        r""".PHONY: test lint build
VERSION ?= <<ver>>

test:
	pytest -q --timeout=120

lint:
	ruff check . && mypy src

build:
	docker build -t registry.internal/<<repo>>:$(VERSION) .""",
    ),
    "rust": (
        r"""#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct <<cls>> {
    pub id: Uuid,
    pub status: Status,
    pub retries: u32,
}

impl <<cls>> {
    pub const <<const>>: u32 = <<num>>;

    pub fn should_retry(&self) -> bool {
        self.retries < Self::<<const>> && self.status != Status::Failed
    }
}""",
        r"""[package]
name = "<<repo>>"
version = "<<ver>>"
edition = "2021"

[dependencies]
tokio = { version = "1.37", features = ["full"] }
serde = { version = "1.0", features = ["derive"] }
reqwest = { version = "0.12", default-features = false, features = ["rustls-tls", "json"] }""",
    ),
}

# Source code and configuration with PII or secrets in it: a block of this kind, maybe with
# clean blocks of the same language around it.
CODE_PII: dict[str, tuple[str, ...]] = {
    "python": (
        r"""# settings/production.py
from .base import *  # noqa: F403

DEBUG = False
ALLOWED_HOSTS = ["<<domain>>", "www.<<domain>>"]
ADMINS = [("<<p1>>", "<<p1.email>>")]
EMAIL_HOST = "smtp.<<domain>>"
EMAIL_HOST_USER = "<<role_email>>"
EMAIL_HOST_PASSWORD = "<<password>>"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "HOST": "<<private_ip>>",
        "PORT": 5432,
    }
}""",
        r"""import openai

client = openai.OpenAI(api_key="<<openai_key>>")

def summarize(text: str) -> str:
    response = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize:\n{text}"}],
    )
    return response.choices[0].message.content""",
        r"""def test_invoice_email_is_rendered():
    customer = Customer(name="<<p1>>", email="<<p1.email>>", phone="<<p1.phone>>")
    invoice = Invoice(number="INV-<<refno>>", customer=customer, total=Decimal("<<num>>.50"))
    message = render_invoice_email(invoice)
    assert "<<p1.first>>" in message.body
    assert message.to == ["<<p1.email>>"]""",
        r"""s3 = boto3.client(
    "s3",
    region_name="<<region>>",
    aws_access_key_id="<<aws_key_id>>",
    aws_secret_access_key="<<aws_secret>>",
)
for obj in s3.list_objects_v2(Bucket="<<repo>>-exports")["Contents"]:
    print(obj["Key"], obj["Size"])""",
        r"""import anthropic

client = anthropic.Anthropic(api_key="<<anthropic_key>>")
message = client.messages.create(
    model="claude-3-5-sonnet-latest",
    max_tokens=512,
    messages=[{"role": "user", "content": "Classify this ticket: " + ticket.body}],
)""",
        r"""from slack_sdk import WebClient

slack = WebClient(token="<<slack_token>>")
slack.chat_postMessage(channel="#deploys", text=f"Deployed {VERSION} to production")""",
        r"""SEED_USERS = [
    {"name": "<<p1>>", "email": "<<p1.email>>", "role": "admin"},
    {"name": "<<p2>>", "email": "<<p2.email>>", "role": "editor"},
    {"name": "<<p3>>", "email": "<<p3.email>>", "role": "viewer"},
]

def seed(db):
    for user in SEED_USERS:
        db.users.insert_one({**user, "created_at": datetime.utcnow()})""",
        r"""engine = create_engine(
    "postgresql+psycopg://reporting:<<db_password>>@<<host>>:5432/warehouse",
    pool_size=5,
    pool_pre_ping=True,
)""",
        r"""# Debug: reproduce the failing charge from the support ticket
payment = stripe.PaymentIntent.create(
    amount=4999,
    currency="eur",
    payment_method_data={"type": "card", "card": {"number": "<<card_compact>>", "exp_month": 8,
                                                  "exp_year": 2027, "cvc": "314"}},
    receipt_email="<<p1.email>>",
)""",
    ),
    "javascript": (
        r"""const stripe = require("stripe")("<<stripe_key>>");

async function refund(chargeId) {
  return stripe.refunds.create({ charge: chargeId, reason: "requested_by_customer" });
}""",
        r"""const firebaseConfig = {
  apiKey: "<<gcp_api_key>>",
  authDomain: "<<repo>>.firebaseapp.com",
  projectId: "<<repo>>",
  storageBucket: "<<repo>>.appspot.com",
};
initializeApp(firebaseConfig);""",
        r"""export const fixtures = {
  customer: {
    id: "<<uuid>>",
    name: "<<p1>>",
    email: "<<p1.email>>",
    phone: "<<p1.phone>>",
    iban: "<<iban>>",
  },
};""",
        r"""sgMail.setApiKey("<<sendgrid_key>>");
await sgMail.send({
  to: "<<p1.email>>",
  from: "<<role_email>>",
  subject: "Your export is ready",
  text: "Hi <<p1.first>>, your export finished.",
});""",
        r"""{
  "name": "<<repo>>",
  "version": "<<ver>>",
  "author": "<<p1>> <<<p1.email>>>",
  "contributors": ["<<p2>> <<<p2.email>>>"],
  "license": "MIT"
}""",
    ),
    "go": (
        r"""sess := session.Must(session.NewSession(&aws.Config{
	Region:      aws.String("<<region>>"),
	Credentials: credentials.NewStaticCredentials("<<aws_key_id>>", "<<aws_secret>>", ""),
}))
uploader := s3manager.NewUploader(sess)""",
        r"""const dsn = "postgres://app:<<db_password>>@<<private_ip>>:5432/orders?sslmode=require"

func openDB() (*sql.DB, error) {
	return sql.Open("pgx", dsn)
}""",
        r"""var testUsers = []User{
	{Name: "<<p1>>", Email: "<<p1.email>>", Phone: "<<p1.phone>>"},
	{Name: "<<p2>>", Email: "<<p2.email>>", Phone: "<<p2.phone>>"},
}""",
        r"""req.Header.Set("Authorization", "Bearer <<jwt>>")
req.Header.Set("X-Request-ID", "<<uuid>>")
resp, err := http.DefaultClient.Do(req)""",
    ),
    "java": (
        r"""private static final String URL = "jdbc:mysql://<<host>>:3306/billing";
private static final String USER = "billing_app";
private static final String PASSWORD = "<<password>>";

Connection connection = DriverManager.getConnection(URL, USER, PASSWORD);""",
        r"""@Test
void sendsWelcomeMail() {
    User user = new User("<<p1>>", "<<p1.email>>", "<<p1.phone>>");
    mailer.sendWelcome(user);
    verify(smtp).send(argThat(m -> m.getTo().equals("<<p1.email>>")));
}""",
        r"""twilio.account.sid=AC<<sha>>
twilio.api.key=<<twilio_key>>
notifications.sender=<<phone_us>>
notifications.fallback.email=<<role_email>>""",
    ),
    "sql": (
        r"""INSERT INTO customers (id, full_name, email, phone, created_at) VALUES
  (<<big>>, '<<p1>>', '<<p1.email>>', '<<p1.phone>>', '<<date>>'),
  (<<big2>>, '<<p2>>', '<<p2.email>>', '<<p2.phone>>', '<<date2>>');""",
        r"""-- why does this return nothing for the customer who called?
SELECT * FROM payments
WHERE card_number = '<<card_compact>>'
   OR billing_email = '<<p1.email>>';""",
        r"""UPDATE employees SET iban = '<<iban>>', ssn = '<<ssn>>'
WHERE email = '<<p1.email>>';""",
    ),
    "shell": (
        r'''export GITHUB_TOKEN=<<github_token>>
gh release create "v<<ver>>" dist/*.whl --notes "Release <<ver>>"''',
        r'''curl -s -H "PRIVATE-TOKEN: <<gitlab_token>>" \
  "https://gitlab.<<domain>>/api/v4/projects/<<num>>/pipelines?status=failed"''',
        r"""# ~/.npmrc on the build agent
//registry.npmjs.org/:_authToken=<<npm_token>>""",
        r'''ssh -i ~/.ssh/deploy_key deploy@<<public_ip>> 'sudo systemctl restart <<repo>>'
scp build.tar.gz deploy@<<public_ip>>:/opt/<<repo>>/
echo "notify <<p1.email>> when done"''',
        r"""export OPENAI_BASE_URL=https://sluice.<<domain>>/v1
export OPENAI_API_KEY=<<sluice_token>>
python scripts/eval.py --model gpt-4o""",
        r"""cat ~/.ssh/id_rsa
<<private_key>>""",
    ),
    "yaml": (
        r"""notify:
  stage: deploy
  script:
    - >
      curl -X POST -H 'Content-type: application/json'
      --data '{"text":"Deployed <<ver>>"}'
      <<slack_webhook>>""",
        r"""spring:
  mail:
    host: smtp.<<domain>>
    username: <<role_email>>
    password: <<password>>
  datasource:
    url: jdbc:postgresql://<<private_ip>>:5432/app""",
        r"""oncall:
  primary: {name: <<p1>>, phone: "<<p1.phone>>", email: <<p1.email>>}
  secondary: {name: <<p2>>, phone: "<<p2.phone>>", email: <<p2.email>>}
escalation_minutes: 15""",
        r"""storage:
  connection_string: >-
    DefaultEndpointsProtocol=https;AccountName=<<repo>>;
    AccountKey=<<azure_storage_key>>;EndpointSuffix=core.windows.net""",
    ),
    "json": (
        r"""{
  "type": "service_account",
  "project_id": "<<repo>>",
  "private_key_id": "<<sha>>",
  "private_key": "<<gcp_private_key>>\n",
  "client_email": "<<service_email>>"
}""",
        r"""{
  "pypi": {"username": "__token__", "password": "<<pypi_token>>"},
  "maintainers": [{"name": "<<p1>>", "email": "<<p1.email>>"}]
}""",
    ),
    "dotenv": (
        r"""APP_ENV=production
DATABASE_URL=postgres://app:<<db_password>>@<<host>>:5432/app
REDIS_URL=redis://<<host2>>:6379/0
STRIPE_SECRET_KEY=<<stripe_key>>
SENDGRID_API_KEY=<<sendgrid_key>>
SUPPORT_EMAIL=<<role_email>>""",
        r"""# .env.local -- do not commit
OPENAI_API_KEY=<<openai_key>>
ANTHROPIC_API_KEY=<<anthropic_key>>
ADMIN_EMAIL=<<p1.email>>
ADMIN_PHONE=<<p1.phone>>""",
    ),
}

# Hand-written edge cases: formats and contexts the templates above do not cover, and texts
# that look like PII without being any.
HANDWRITTEN = (
    "Please add <<p1>> <<<p1.email>>> to the distribution list.",
    'Contact: <a href="mailto:<<email>>"><<email>></a>',
    "Send the report to <<email>>; cc <<email2>>, <<email3>>.",
    "Her address is <<p1.email_plus>>, not the old one.",
    "ok so i talked to <<p1.lower>> about it and <<p1.they>> said the budget is fine",
    "APPLICANT NAME: <<p1.upper>>\nSIGNATURE ON FILE: YES",
    "<<p1.first>>'s laptop was stolen at the airport; please wipe it remotely.",
    "Call me at <<phone_us>> ext. 204 after 3pm.",
    "Mobile: <<phone_intl>>",
    "The backend listens on <<private_ip>>:8443 and the admin UI on [<<ipv6addr>>]:9443.",
    "Traffic from <<public_ip>>, <<public_ip2>> and <<public_ip3>> hit the rate limit.",
    "Card: <<card>> Exp: 11/26 CVV: 482",
    "Amex <<card>> was used for the team dinner.",
    "Wire it to <<iban_gb>> please (sort code is in the IBAN).",
    "IBAN <<iban_de>>, Kontoinhaber <<p1>>",
    "SSN <<ssn>>, DOB <<dob>>",
    "My social is <<ssn>> if you need it for the background check.",
    "Hi, this is <<p1.first>> from the <<city>> office -- is the offsite still on?",
    "Thanks <<p1.first>> and <<p2.first>> for covering the release on Sunday!",
    "This document is <<doclabel>>. Quarterly numbers for <<codename>> are attached.",
    "New staff badge <<employee_id>> was issued to <<p1>>.",
    "key id <<aws_key_id>>, secret <<aws_secret>>",
    "git clone https://oauth2:<<gitlab_token>>@gitlab.<<domain>>/<<org>>/<<repo>>.git",
    "token=<<github_token>>",
    "Use this key for the demo: <<openai_key>> (it gets revoked tomorrow).",
    "mongodb+srv://admin:<<db_password>>@cluster0.<<hexid>>.mongodb.net/?retryWrites=true",
    "The staging database password is <<password>> -- please change it after the demo.",
    "wifi for the offsite: network Guest-5G, password: <<password>>",
    '{"username": "svc-reports", "password": "<<password>>", "host": "<<host>>"}',
    "DB_PASS=<<password>>\nDB_USER=reporting",
    "client_secret: <<password>>\nclient_id: web-frontend",
    "mysql --host=<<host>> --user=etl --password='<<password>>' warehouse < dump.sql",
    'api_key = "<<password>>"\nresponse = requests.get(URL, headers={"X-Api-Key": api_key})',
    "Here's my Sluice token in case you need to reproduce it: <<sluice_token>>",
    # Nothing to find below: versions, builds, hashes, ids, amounts, times.
    "We run Python 3.11.7, Node 20.11.1 and PostgreSQL 16.2; the agent is at <<build>>.",
    "Firmware 4.2.0.1 fixes the scanner reboots; build <<big>> is the release candidate.",
    "Order <<order>> shipped; tracking number 1Z999AA10123456784, invoice total EUR <<money>>.",
    "ISBN 978-3-16-148410-0, published 2019, 412 pages.",
    "The job started at 1717171717 (epoch) and ran for 5400 seconds.",
    "Commit <<sha>> fixed it; the image digest is sha256:<<digest>>.",
    "Request <<uuid>> failed with status 503 after 30000 ms.",
    "set OPENAI_API_KEY to your own key before running the notebook",
    "password = os.environ['DB_PASSWORD']  # never hard-code it",
    "The meeting moved from 10:30 to 14:00 on <<date>>; room 4.12 is booked.",
    "Revenue grew from 1,204,331 to 1,877,120 (+55.9%) year over year.",
    "See RFC 5321 section 4.5.3.1 for the limits on the local part.",
)

# English paragraphs with nothing to find, for assistant turns and for filling prompts.
PARAGRAPHS = (
    "Here is a summary of the main points. First, the migration should happen in stages, so "
    "that each service can be rolled back on its own. Second, reporting needs a single source "
    "of truth during the cut-over; otherwise finance will see numbers that disagree. Third, the "
    "on-call rotation has to cover both the old and the new system for at least a month.",
    "A good way to structure the rollout is to start with read-only traffic, compare the "
    "responses of both systems for a week, and only then move writes. Keep a feature flag per "
    "tenant, so that a problem with one large customer does not force a global rollback.",
    "To reduce the risk of double invoicing, make the invoice number the idempotency key and "
    "store it before the charge is attempted. If the charge succeeds but the write fails, the "
    "retry will find the existing record and skip the second charge.",
    "The error usually means that the client and the server disagree about the protocol version. "
    "Check which version each side negotiates, make sure the proxy in between does not downgrade "
    "the connection, and enable verbose logging on the client to see the handshake.",
    "For the quarterly review, I would group the findings into three themes: reliability, cost "
    "and customer experience. For each theme, show the trend over the last four quarters, one "
    "concrete example, and the decision you need from the leadership team.",
    "A checklist for the release: freeze the branch, run the full test suite, tag the build, "
    "deploy to staging, run the smoke tests, announce the maintenance window, deploy to "
    "production in two waves, and watch the error rate and latency dashboards for an hour.",
    "When you rotate the keys, create the new key first, deploy it everywhere, confirm that the "
    "old key is no longer used by looking at the access logs, and only then revoke it. Document "
    "which services use which key so that the next rotation is faster.",
    "The draft reads well, but it is long for a customer audience. I would cut the technical "
    "details of the cache configuration, keep the timeline, state clearly that no data was lost, "
    "and end with the two changes that prevent a repeat.",
    "There are two common causes for this. Either the job runs out of memory because the whole "
    "file is loaded at once, or a single malformed row stops the parser. Stream the file in "
    "chunks and log the line number of any row that cannot be parsed.",
    "Thanks for the context. Based on what you described, the simplest fix is to add an index "
    "on the tenant and creation date columns, then rewrite the report query to filter on both. "
    "That should bring the runtime from minutes down to a few seconds.",
    "In short: the contract allows termination with ninety days' notice, the liability cap is "
    "twelve months of fees, and the data processing agreement already covers the new region. "
    "Legal should still review the exclusivity clause in section nine.",
    "I would not change the pricing page yet. Run the experiment on new sign-ups only, measure "
    "conversion to paid after thirty days, and decide after at least two billing cycles, so that "
    "seasonal effects do not mislead you.",
    "Could you look at the numbers again? The totals in the second table do not match the sum "
    "of the rows, and the growth rate for the last quarter seems too high compared with the "
    "monthly figures in the appendix.",
    "Please rewrite the following section so that it is easier to read for people outside the "
    "engineering team, keep the list of risks, and add a short paragraph about what happens if "
    "we decide to postpone the project by one quarter.",
    "What would a reasonable on-call policy look like for a team of six engineers who support "
    "two customer-facing services? We want to avoid burnout but still respond to critical "
    "alerts within fifteen minutes, day and night.",
    "Our support team receives about four hundred tickets a week, most of them about invoices "
    "and login problems. Suggest categories for a new ticket form and a short set of canned "
    "replies for the five most frequent questions.",
)

SYSTEM_PROMPT = (
    "You are the internal assistant of a mid-sized software company. Answer questions about "
    "engineering, finance and operations clearly and briefly. When a question concerns a "
    "customer, stick to the facts given in the conversation, never invent account details, and "
    "suggest escalating to a human when a refund, a legal question or a security incident is "
    "involved."
)


# --- assembling the cases ----------------------------------------------------------------------


def _values(section: str) -> Values:
    """Each section has its own generator, so that editing one leaves the others unchanged."""
    return Values(SEED ^ zlib.crc32(section.encode()))


def _case(case_id: str, kind: str, text: str, entities: list[Entity]) -> Case:
    for entity in entities:
        assert 0 <= entity["start"] < entity["end"] <= len(text), (case_id, entity)
    return {"id": case_id, "kind": kind, "text": text, "entities": entities}


def _from_templates(
    kind: str, templates: tuple[str, ...], rounds: int, values: Values
) -> list[Case]:
    cases = []
    for round_ in range(rounds):
        for i, template in enumerate(templates):
            text, entities = render(values, template)
            cases.append(_case(f"{kind}-{i:02d}-{round_}", kind, text, entities))
    return cases


def _code_chunk(
    values: Values, lang: str, first: str | None, min_chars: int = 300, max_chars: int = 1500
) -> tuple[str, list[Entity]]:
    """One to three blocks of `lang` (starting from `first`, if given), 300-1500 characters."""
    clean = list(CODE_CLEAN.get(lang, ()))
    values.rng.shuffle(clean)
    blocks = [first] if first is not None else [clean.pop()]
    target = values.rng.randint(min_chars, max_chars)
    renderer = Render(values)
    text, entities = renderer.render("\n\n".join(blocks))
    while clean and len(blocks) < 3 and len(text) < target:
        candidate = blocks + [clean.pop()]
        if first is not None and values.rng.random() < 0.5:
            candidate = [candidate[-1], *candidate[:-1]]  # the PII block need not come first
        attempt = Render(values, dict(renderer.people), dict(renderer.slots)).render(
            "\n\n".join(candidate)
        )
        if len(attempt[0]) > max_chars:
            continue
        blocks, (text, entities) = candidate, attempt
    return text, entities


def code_cases() -> list[Case]:
    cases: list[Case] = []
    values = _values("code-clean")
    # Chunks per language in proportion to its blocks (largest remainder), so that a language
    # with few blocks does not repeat them over and over.
    blocks = sum(len(b) for b in CODE_CLEAN.values())
    shares = {lang: CLEAN_CODE_CHUNKS * len(b) / blocks for lang, b in CODE_CLEAN.items()}
    counts = {lang: int(share) for lang, share in shares.items()}
    for lang in sorted(shares, key=lambda lang: counts[lang] - shares[lang]):
        if sum(counts.values()) < CLEAN_CODE_CHUNKS:
            counts[lang] += 1
    i = 0
    for lang in sorted(counts):
        for _ in range(counts[lang]):
            text, entities = _code_chunk(values, lang, None)
            cases.append(_case(f"code-clean-{lang}-{i:03d}", "code-clean", text, entities))
            i += 1
    values = _values("code-pii")
    n = 0
    for _ in range(3):
        for lang in sorted(CODE_PII):
            for block in CODE_PII[lang]:
                text, entities = _code_chunk(values, lang, block, min_chars=0)
                cases.append(_case(f"code-pii-{lang}-{n:03d}", "code-pii", text, entities))
                n += 1
    return cases


def log_cases(count: int = 60) -> list[Case]:
    values = _values("log")
    cases = []
    for i in range(count):
        people: dict[str, Person] = {}  # the same users come back, timestamps and ids do not
        text, entities = "", []
        for line in values.rng.sample(LOG_LINES, values.rng.randint(4, 12)):
            line_text, line_entities = Render(values, people).render(line)
            if text and len(text) + len(line_text) > 1500:
                break
            offset = len(text)
            text += line_text + "\n"
            entities += shift(line_entities, offset)
        cases.append(_case(f"log-{i:03d}", "log", text, entities))
    return cases


def handwritten_cases() -> list[Case]:
    values = _values("handwritten")
    cases = []
    for i, template in enumerate(HANDWRITTEN):
        text, entities = render(values, template)
        cases.append(_case(f"handwritten-{i:02d}", "handwritten", text, entities))
    return cases


def all_cases() -> list[Case]:
    cases = _from_templates("prose", PROSE, 8, _values("prose"))
    cases += _from_templates("prose-clean", PROSE_CLEAN, 3, _values("prose-clean"))
    cases += _from_templates("mixed-language", MIXED, 6, _values("mixed"))
    cases += log_cases()
    cases += _from_templates("json", JSON_PAYLOADS, 5, _values("json"))
    cases += code_cases()
    cases += handwritten_cases()
    ids = [case["id"] for case in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return cases


def prompts(count: int = PROMPT_COUNT, size: int = PROMPT_CHARS) -> list[Case]:
    """English prompts of `size` characters: prose with PII and plain paragraphs, mixed."""
    values = _values("prompts")
    result = []
    for i in range(count):
        parts: list[tuple[str, list[Entity]]] = []
        length = 0
        while length < size:
            if values.rng.random() < 0.55:
                part = render(values, values.pick(PROSE + PROSE_CLEAN))
            else:
                part = (values.pick(PARAGRAPHS), [])
            parts.append(part)
            length += len(part[0]) + 2
        text, entities = "", []
        for part_text, part_entities in parts:
            offset = len(text)
            text += part_text + "\n\n"
            entities += shift(part_entities, offset)
        cut = text.rfind(" ", 0, size + 1)
        text = text[:cut] if cut > size - 40 else text[:size]
        kept = [e for e in entities if e["end"] <= len(text)]
        result.append(_case(f"prompt-{i:03d}", "prompt", text, kept))
    return result


CONVERSATION_ASKS = {
    "prose": (
        "Can you summarise this and draft a short reply?",
        "Please turn the following into a status update for my manager.",
        "What are the open questions in this thread?",
    ),
    "code": (
        "Why does this code fail in production but not on my laptop?",
        "Please review this before I open the pull request.",
        "How would you make this easier to test?",
    ),
    "log": (
        "What went wrong here? These are the last lines of the log.",
        "Is this the same incident as yesterday? Log excerpt below.",
    ),
}


def _conversation_prose(values: Values, size: int, parts: tuple[str, ...]) -> str:
    text = ""
    while len(text) < size:
        if parts is PARAGRAPHS or values.rng.random() < 0.5:
            part = values.pick(PARAGRAPHS)
        else:
            part = render(values, values.pick(parts))[0]
        text += part + "\n\n"
    return text.strip()


def _conversation_user(values: Values) -> str:
    """What an employee pastes: business prose with PII, source code, or a log excerpt."""
    kind = values.rng.choices(("prose", "code", "log"), weights=(2, 1, 1))[0]
    ask = values.pick(CONVERSATION_ASKS[kind]) + "\n\n"
    size = CONVERSATION_CHARS - len(ask)
    if kind == "prose":
        return ask + _conversation_prose(values, size, PROSE + PROSE_CLEAN)
    if kind == "code":
        lang = values.pick(sorted(CODE_CLEAN))
        first = (
            values.pick(CODE_PII[lang]) if lang in CODE_PII and values.rng.random() < 0.3 else None
        )
        return ask + _code_chunk(values, lang, first, min_chars=size - 300, max_chars=size)[0]
    people: dict[str, Person] = {}
    lines = ""
    while len(lines) < size:
        lines += Render(values, people).render(values.pick(LOG_LINES))[0] + "\n"
    return ask + lines


def _conversation_assistant(values: Values) -> str:
    """An answer as it came back: prose, sometimes with a snippet of code."""
    if values.rng.random() < 0.3:
        lang = values.pick(sorted(CODE_CLEAN))
        code = values.pick(CODE_CLEAN[lang])
        prose = _conversation_prose(values, max(300, CONVERSATION_CHARS - len(code)), PARAGRAPHS)
        return f"{prose}\n\n```{lang}\n{Render(values).render(code)[0]}\n```"
    return _conversation_prose(values, CONVERSATION_CHARS, PARAGRAPHS)


def conversation(turns: int = CONVERSATION_TURNS) -> dict[str, Any]:
    """A chat tool's conversation: a system prompt and `turns` exchanges of about 1.5k
    characters each, employees pasting prose with PII, code and logs."""
    values = _values("conversation")
    exchanges = []
    for _ in range(turns):
        user = _conversation_user(values)
        exchanges.append({"user": user, "assistant": _conversation_assistant(values)})
    return {"system": SYSTEM_PROMPT, "turns": exchanges}


def write(directory: Path = DATA) -> dict[str, int]:
    directory.mkdir(parents=True, exist_ok=True)
    cases = all_cases()
    prompt_cases = prompts()
    for path, rows in ((CASES_FILE, cases), (PROMPTS_FILE, prompt_cases)):
        target = directory / path.name
        with target.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    (directory / CONVERSATION_FILE.name).write_text(
        json.dumps(conversation(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    return {"cases": len(cases), "prompts": len(prompt_cases)}


def summary(cases: list[Case]) -> str:
    kinds: dict[str, int] = {}
    types: dict[str, int] = {}
    for case in cases:
        kinds[case["kind"]] = kinds.get(case["kind"], 0) + 1
        for entity in case["entities"]:
            types[entity["type"]] = types.get(entity["type"], 0) + 1
    lines = [f"{len(cases)} cases"]
    lines += [f"  {kind}: {n}" for kind, n in sorted(kinds.items())]
    lines += [f"  {entity}: {n} spans" for entity, n in sorted(types.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DATA, help="directory (default: data/)")
    parser.add_argument("--summary", action="store_true", help="print counts per kind and type")
    args = parser.parse_args(argv)
    counts = write(args.out)
    print(f"wrote {counts['cases']} cases and {counts['prompts']} prompts to {args.out}")
    if args.summary:
        print(summary(all_cases()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
