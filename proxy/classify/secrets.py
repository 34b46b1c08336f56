"""Secret detection: curated rules in the spirit of gitleaks, in plain `re`, on every prompt.

Each rule carries examples and near misses that the tests run; none of them is a real secret.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import string
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from proxy.classify.findings import Finding
from proxy.identity.tokens import TOKEN_PREFIX

# A check sees the secret part and the whole match (for context such as a quote or a user name).
SecretCheck = Callable[[str, re.Match[str]], bool]

# Marks of documentation and templates. The short ones are case-sensitive so that a random
# token containing, say, "yOUR" is not thrown away; the long ones are too rare to matter.
_PLACEHOLDER_MARKS = ("xxxx", "XXXX", "****", "...", "<", ">", "${", "{{", "your", "YOUR", "Your")
_PLACEHOLDER_WORDS = (
    "example",
    "placeholder",
    "changeme",
    "change_me",
    "redacted",
    "dummy",
    "sample",
    "12345678",
    "abcdefgh",
    "abc123",
)
_REPEATED = re.compile(r"(.)\1{5}")  # six of a kind: vanishingly rare in a random token


def shannon_entropy(value: str) -> float:
    """Bits per character of `value` taken as a sample of its own character distribution."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(count / n * math.log2(count / n) for count in Counter(value).values())


def _plausible(value: str, match: re.Match[str] | None = None) -> bool:
    """False for the usual stand-ins: `xxxx`, `<...>`, `${...}`, AWS's `...EXAMPLE`, `000000`."""
    if any(mark in value for mark in _PLACEHOLDER_MARKS):
        return False
    lowered = value.lower()
    if any(word in lowered for word in _PLACEHOLDER_WORDS):
        return False
    return _REPEATED.search(value) is None


@dataclass(frozen=True, slots=True)
class SecretRule:
    """One kind of secret: where it is in a text, and what shows a match is only a stand-in."""

    entity: str  # e.g. "AWS_ACCESS_KEY_ID"
    pattern: re.Pattern[str]
    group: int = 0  # which group is the secret (the span reported)
    min_entropy: float = 0.0  # Shannon entropy (bits/char) the secret part must reach
    keywords: tuple[str, ...] = ()  # cheap pre-check: one must appear (case-insensitive), if any
    examples: tuple[str, ...] = ()  # texts that MUST produce this entity
    near_misses: tuple[str, ...] = ()  # texts that must NOT produce this entity
    score: float = 1.0  # below 1 for rules that rest on a variable's name rather than a format
    check: SecretCheck = _plausible  # last word on a match that passed the entropy bar


# --- checks beyond the placeholder test --------------------------------------------------------

_STOPWORDS = frozenset(
    {
        "password",
        "passw0rd",
        "p@ssw0rd",
        "passwd",
        "changeme",
        "changeit",  # Java keystores
        "notasecret",  # Google's P12 files
        "secret",
        "mysecret",
        "mypassword",
        "yourpassword",
        "undefined",
        "required",
        "optional",
        "redacted",
        "hidden",
        "masked",
        "default",
        "string",
        "empty",
        "none",
        "null",
        "nil",
        "true",
        "false",
        "test",
        "testing",
        "pass",
        "root",
        "admin",
        "guest",
        "user",
        "postgres",
        "mysql",
        "redis",
        "mongo",
        "x-oauth-basic",  # GitHub's fixed password when the token is the user name
    }
)
_NOT_A_VALUE = (
    re.compile(r"[A-Za-z]+(?:[-_./:][A-Za-z]+)+"),  # prod/payments/stripe, aws:SourceArn
    re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+"),  # OPENAI_API_KEY: a variable's name
    re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*"),  # a URL (credentials in it have their rule)
    re.compile(r"(?:/|\./|\.\./|~/|[A-Za-z]:\\)\S*"),  # a file path
    re.compile(r"\$\{?[A-Za-z_]\w*\}?|%[A-Za-z_]\w*%|.*%\(\w+\)[sd].*"),  # $VAR, %VAR%, %(x)s
    re.compile(r".*\{[^{}]*\}.*"),  # f"{password}", {{ vault_password }}: a template's slot
    re.compile(r"\[.*\]|\(.*\)"),  # redis://[[username]:[password]]@host in a usage line
    re.compile(r"[a-z]*[A-Z]*(?:[A-Z][a-z]+)+"),  # challengePassword, AWSSecretKey: names
    re.compile(r"\*.*|.*\*"),  # arn:aws:secretsmanager:*:*:secret:app-*: a wildcard
    re.compile(r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),  # anonymous FTP's
)


def _plausible_value(value: str) -> bool:
    """A value typed by a person after `password =`: placeholders and references ruled out."""
    if not _plausible(value) or value.lower().strip("0123456789!") in _STOPWORDS:
        return False
    return not any(shape.fullmatch(value) for shape in _NOT_A_VALUE)


# Words after the keyword (`password_file`, `secretName`) that make the value a name, a size
# or a place rather than a secret.
_REFERENCE_SUFFIX = re.compile(
    r"(?:^|[_.-])(?:hash|digest|name|file|path|dir|url|uri|id|ids|len|length|count|type|field"
    r"|header|env|var|prompt|label|version|format|pattern|regex|min|max|size|ttl|expiry|expires"
    r"|expires_in|expires_at|rotation|policy|ref|source|provider|manager|store|encryption"
    r"|algorithm|method|mode|scheme|hasher|reset|timeout|lifetime|age)$"
)
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_KEY_START = re.compile(r"[\w.-]*.\Z", re.DOTALL)  # the name the keyword is a part of
_IDENTIFIER_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")
_VERSION = re.compile(r"[vV]?\d+(?:\.\d+)+(?:[-+.][\w.]+)?")


def _assigned_secret(value: str, match: re.Match[str]) -> bool:
    """`password = "..."` holds a secret; `password = password`, `api_key: Optional[str]` do not."""
    text = match.string
    key = _KEY_START.search(text, max(0, match.start() - 64), match.start() + 1)
    if key is not None and text[key.start() - 1 : key.start()] in (":", "/"):
        return False  # `arn:aws:secretsmanager:...`, `AWS::MSK::ScramSecret`: part of a name
    if _REFERENCE_SUFFIX.search(_CAMEL_HUMP.sub("_", match["suffix"]).lower()):
        return False
    key_word = text[match.start() : match.start() + 5].lower()
    bare_pass = key_word[:4] == "pass" and not key_word[4:].isalpha()
    if bare_pass and (text[match.start() - 1 : match.start()].isalpha() or match["op"] == "is"):
        return False  # `bypass=`, `compass =`; "the boarding pass is ..."
    if match["op"] == "is" and _VERSION.fullmatch(value):
        return False  # prose: "the secret is v2.3.1-beta"
    start, end = match.span("secret")
    quote = text[start - 1 : start]
    quoted = quote in ('"', "'", "`") and text[end : end + 1] == quote
    if not quoted:
        # Unquoted, it is code unless it cannot be: a call, a subscript, an attribute path, a
        # bare name without digits or the start of an f-string slot all refer to a secret kept
        # elsewhere.
        if text[end : end + 1] in ("(", "[", "{"):
            return False
        if _IDENTIFIER_PATH.fullmatch(value) and (
            "." in value or not any(c.isdigit() for c in value) or _SNAKE_CASE.fullmatch(value)
        ):
            return False
    return _plausible_value(value)


# `://user:password@host`: the pattern opens with `://`, a literal `re` can jump to, and each
# rule's check looks back for the schemes it covers.
_URL_CREDENTIALS = re.compile(
    r"""://(?P<user>[^:/?#@\s"'`<>]{0,128}):(?P<secret>[^:/?#@\s"'`<>]{1,256})@(?=[A-Za-z0-9\[])"""
)


def _url_password(schemes: str, min_length: int = 1) -> SecretCheck:
    """A check for `scheme://user:password@host` with a real password, not `${DB_PASSWORD}`."""
    scheme = re.compile(rf"(?i)(?<![A-Za-z0-9+.-])(?:{schemes})(?:\+[a-z0-9]+)?\Z")

    def check(value: str, match: re.Match[str]) -> bool:
        start = match.start()
        return (
            scheme.search(match.string, max(0, start - 32), start) is not None
            and len(value) >= min_length
            and value != match["user"]
            and _plausible_value(value)
        )

    return check


def _jwt_header(value: str, match: re.Match[str]) -> bool:
    """Only a token whose first part decodes to a JSON header naming its algorithm is a JWT."""
    header = value.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except ValueError:  # bad base64, bad UTF-8 and bad JSON all derive from ValueError
        return False
    return isinstance(decoded, dict) and isinstance(decoded.get("alg"), str)


_PEM_LINE_BREAK = re.compile(r"\\r\\n|\\n|\\r|\r?\n")
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=]{64,}")


def _pem_body(value: str, match: re.Match[str]) -> bool:
    """A key block with at least a line of base64 in it, not `...` or prose between the markers."""
    body = value.split("-----", 2)[2].split("-----END", 1)[0]
    # Header lines (`Proc-Type: 4,ENCRYPTED`, `Version: GnuPG`) carry no key material.
    lines = (line for line in _PEM_LINE_BREAK.split(body) if ":" not in line)
    data = "".join("".join(lines).split())
    return _PEM_BODY.fullmatch(data) is not None


# --- patterns shared by several rules --------------------------------------------------------

# A private key block: either complete, with the END marker matching BEGIN, or cut off (a
# paste that stops half way still leaks the key), in which case base64 lines follow BEGIN.
# The body stops at the next `-----` whatever follows it, so a text of a thousand BEGIN lines
# costs one pass, not a thousand.
_PEM = (
    r"-----BEGIN[ ](?P<kind>(?:[A-Z0-9]+[ ]){0,3})PRIVATE[ ]KEY(?P<block>[ ]BLOCK|)-----"
    r"(?:(?:[^-]++|-(?!----))*+-----END[ ](?P=kind)PRIVATE[ ]KEY(?P=block)-----"
    r"|(?:(?:\\r)?(?:\\n|\r?\n)[ \t]*[A-Za-z0-9+/=]{16,}+)+)"
)
_ASSIGN = r"""["'`]?[ \t]*(?::=|=>|[:=])[ \t]*["'`]?"""  # `key = "`, `"key": "`, `KEY=`, `key => '`


def _any_case(*names: str) -> str:
    """`names` (regexes that open with a letter) in any case, written `[AaSs](?i:ws...|ecret...)`.

    With a character class in front, `re` skips to the next candidate letter; `(?i:...)` alone
    is tried at every position and was six times slower. A first letter may meet another name's
    tail ("Secret", but also "Aecret"): no such word stands before a secret in practice.
    """
    firsts = sorted({case(name[0]) for name in names for case in (str.lower, str.upper)})
    return f"[{''.join(firsts)}](?i:{'|'.join(name[1:] for name in names)})"


def _not_after(alphabet: str, distance: int) -> str:
    """A left boundary checked `distance` characters into a match, just after its literal prefix.

    `re` jumps from one occurrence of a leading literal to the next, but tries every position of
    a pattern that opens with a lookbehind: up front, the boundaries made the rules ~15x slower.
    """
    return rf"(?<![{alphabet}][\s\S]{{{distance}}})"


# --- deterministic stand-ins for the examples --------------------------------------------------

_ALNUM = string.ascii_letters + string.digits
_UPPER32 = string.ascii_uppercase + "234567"
_BASE64 = _ALNUM + "+/"
_BASE64URL = _ALNUM + "-_"
_HEX = "0123456789abcdef"


class _Fake:
    """Random-looking, structurally valid, never real: the same strings on every import."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def text(self, alphabet: str, length: int) -> str:
        return "".join(self._random.choice(alphabet) for _ in range(length))

    def digits(self, length: int) -> str:
        return str(self._random.randint(1, 9)) + self.text(string.digits, length - 1)

    def pem_lines(self, size: int, newline: str) -> str:
        encoded = base64.b64encode(self._random.randbytes(size)).decode()
        return newline.join(encoded[i : i + 64] for i in range(0, len(encoded), 64))

    def openssh_lines(self) -> str:
        # The fixed opening of every unencrypted ed25519 key, with its runs of zero bytes.
        raw = b"openssh-key-v1\0" + b"\0\0\0\4none" * 2 + b"\0\0\0\0\0\0\0\1\0\0\0\x33"
        raw += b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + self._random.randbytes(300)
        encoded = base64.b64encode(raw).decode()
        return "\n".join(encoded[i : i + 70] for i in range(0, len(encoded), 70))

    def b64url_json(self, value: object) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _pem(label: str, body: str, newline: str = "\n") -> str:
    # Built from parts so that no complete key block appears in the source.
    dashes = "-" * 5
    return f"{dashes}BEGIN {label}{dashes}{newline}{body}{newline}{dashes}END {label}{dashes}"


# --- the rules -------------------------------------------------------------------------------


def _aws_rules() -> list[SecretRule]:
    f = _Fake(1)
    key_ids = ["AKIA" + f.text(_UPPER32, 16), "ASIA" + f.text(_UPPER32, 16)]
    access_key = SecretRule(
        "AWS_ACCESS_KEY_ID",
        re.compile(
            r"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])"
            + _not_after("A-Za-z0-9", 4)
            + r"[A-Z2-7]{16}(?![A-Za-z0-9])"
        ),
        min_entropy=2.5,  # 3.0 would drop about one real key id in four thousand
        keywords=("akia", "asia", "abia", "acca", "a3t"),
        examples=(
            "Why does boto3 say my credentials are invalid? ~/.aws/credentials:\n[default]\n"
            f"aws_access_key_id = {key_ids[0]}\nregion = eu-west-1\n",
            f's3 = boto3.client("s3", aws_access_key_id="{key_ids[1]}", aws_session_token=tok)',
        ),
        near_misses=(
            "aws_access_key_id = AKIAXXXXXXXXXXXXXXXX  # put yours here",
            "The AWS guide uses AKIAIOSFODNN7EXAMPLE as its sample access key id.",
            f"Key id AKIA{f.text(_UPPER32, 15)} is one character short.",
            f"Key id AKIA{f.text(_UPPER32, 17)} is one character long.",
        ),
    )
    secret_keys = [f.text(_BASE64, 40) for _ in range(4)]
    secret_key = SecretRule(
        "AWS_SECRET_ACCESS_KEY",
        re.compile(
            r"""(?x)
            (?:
                NAMES (?:["'`]?[ \t]*(?::=|=>|[:=])|[ \t]+is:?)[ \t]*["'`]?
              | (?:AKIA|ASIA) NOT_AFTER [A-Z2-7]{16}["'`]?[\s,;:|]{1,4}  # key id, secret
                (?:(?:and[ \t]+)?(?:the[ \t]+)?[Ss]ecret(?:[ \t_-]?(?:access[ \t_-]?)?key)?
                   (?:[ \t]+is)?[\s:=]{1,3})?  # "key id AKIA..., secret ..."
                ["'`]?
            )
            ([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])
            """.replace(
                "NAMES",
                _any_case(
                    "aws[_ -]?secret(?:[_ -]?access)?(?:[_ -]?key)?", "secret[_ -]?access[_ -]?key"
                ),
            ).replace("NOT_AFTER", _not_after("A-Za-z0-9", 4))
        ),
        group=1,
        min_entropy=4.0,
        keywords=("secret", "akia", "asia"),
        examples=(
            f"[default]\naws_access_key_id = {key_ids[0]}\n"
            f"aws_secret_access_key = {secret_keys[0]}\n",
            f'export AWS_SECRET_ACCESS_KEY="{secret_keys[1]}"\naws s3 ls s3://acme-backups/',
            '{"Credentials": {"AccessKeyId": "'
            + key_ids[1]
            + '", "SecretAccessKey": "'
            + secret_keys[2]
            + '", "SessionToken": "IQoJb3JpZ2luX2Vj"}}',
            f"Access key ID,Secret access key\n{key_ids[0]},{secret_keys[3]}\n",
            f"Use key id {key_ids[1]}, secret {secret_keys[0]} for the demo bucket.",
        ),
        near_misses=(
            'aws_secret_access_key = os.environ["AWS_SECRET_ACCESS_KEY"]',
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY",
            f"aws_secret_access_key = {f.text(_BASE64, 39)}",
            "aws_secret_access_key = " + "AbCd/+12" * 5,
        ),
        score=0.9,
    )
    return [access_key, secret_key]


def _gcp_rules() -> list[SecretRule]:
    f = _Fake(3)
    keys = [
        _pem("PRIVATE KEY", f.pem_lines(1200, "\\n"), "\\n"),
        _pem("PRIVATE KEY", f.pem_lines(1190, "\\n"), "\\n"),
    ]
    private_key = SecretRule(
        "GCP_PRIVATE_KEY",
        re.compile(r'"private_key"\s*:\s*"(' + _PEM + ")"),
        group=1,
        keywords=("private_key",),
        check=_pem_body,
        examples=(
            '{\n  "type": "service_account",\n  "project_id": "acme-analytics",\n'
            f'  "private_key_id": "{f.text(_HEX, 40)}",\n  "private_key": "{keys[0]}\\n",\n'
            '  "client_email": "etl@acme-analytics.iam.gserviceaccount.com"\n}',
            'credentials = service_account.Credentials.from_service_account_info({"type": '
            f'"service_account", "private_key": "{keys[1]}\\n", "client_id": "1234"}})',
        ),
        near_misses=(
            '"private_key": "' + _pem("PRIVATE KEY", "...", "\\n") + '\\n"',
            f'"private_key_id": "{f.text(_HEX, 40)}"',
            '"public_key": "' + _pem("PUBLIC KEY", f.pem_lines(270, "\\n"), "\\n") + '"',
        ),
    )
    api_keys = ["AIza" + f.text(_BASE64URL, 35) for _ in range(2)]
    api_key = SecretRule(
        "GCP_API_KEY",
        re.compile("AIza" + _not_after("A-Za-z0-9_-", 4) + r"[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])"),
        min_entropy=3.5,
        keywords=("aiza",),
        examples=(
            f'const firebaseConfig = {{\n  apiKey: "{api_keys[0]}",\n'
            '  authDomain: "acme-shop.firebaseapp.com",\n};',
            'curl "https://maps.googleapis.com/maps/api/geocode/json?address=Berlin'
            f'&key={api_keys[1]}"',
        ),
        near_misses=(
            "apiKey: AIzaSy" + "X" * 33,
            f"apiKey: AIza{f.text(_BASE64URL, 34)} (one short)",
            'apiKey: "YOUR_FIREBASE_API_KEY"',
        ),
    )
    return [private_key, api_key]


def _azure_rules() -> list[SecretRule]:
    f = _Fake(5)
    storage = [f.text(_BASE64, 86) + "==" for _ in range(2)]
    storage_key = SecretRule(
        "AZURE_STORAGE_KEY",
        re.compile(
            _any_case("account[_-]?key", "storage[_-]?(?:account[_-]?)?(?:access[_-]?)?key")
            + r"""(?:["'`]?\s*(?::=|=>|[:=])\s*["'`]?|\s+)"""
            r"([A-Za-z0-9+/]{86}==)(?![A-Za-z0-9+/=])"
        ),
        group=1,
        min_entropy=4.0,
        keywords=("accountkey", "account_key", "account-key", "storagekey", "storage_", "storage-"),
        examples=(
            "AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName="
            f"acmeprod;AccountKey={storage[0]};EndpointSuffix=core.windows.net",
            "az storage blob upload --account-name acmeprod "
            f"--account-key {storage[1]} -c exports -f out.csv",
        ),
        near_misses=(
            "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=<your-account-key>;",
            f"AccountKey={f.text(_BASE64, 42)}==;EndpointSuffix=core.windows.net",
            "AccountKey=${AZURE_STORAGE_KEY};",
        ),
    )
    secret_alphabet = _ALNUM + "~._-"
    client_secrets = [f.text(secret_alphabet, 40), f.text(secret_alphabet, 34)]
    client_secret = SecretRule(
        "AZURE_CLIENT_SECRET",
        re.compile(
            _any_case("azure", "aad", "entra")
            + r"(?i:[\w.-]{0,40}?secret)"
            + _ASSIGN
            + r"([A-Za-z0-9_~.+/=-]{34,40})(?![A-Za-z0-9_~.+/=-])"
        ),
        group=1,
        min_entropy=3.5,
        keywords=("azure", "aad", "entra"),
        examples=(
            f'export AZURE_CLIENT_SECRET="{client_secrets[0]}"\nexport AZURE_TENANT_ID=contoso',
            f"spring.cloud.azure.active-directory.credential.client-secret={client_secrets[1]}",
        ),
        near_misses=(
            "AZURE_CLIENT_SECRET=${AZURE_CLIENT_SECRET}",
            f"AZURE_CLIENT_SECRET={f.text(secret_alphabet, 20)}",
            "azure_client_secret = " + "ab" * 18,
        ),
        score=0.9,
    )
    # Secrets issued since 2022 name themselves: three characters, a digit, then `Q~`.
    marked = [
        f.text(_ALNUM, 3) + f.text(string.digits, 1) + "Q~" + f.text(secret_alphabet, 34)
        for _ in range(2)
    ]
    marked_secret = SecretRule(
        "AZURE_CLIENT_SECRET",
        re.compile(
            r"(?<![A-Za-z0-9_~.-])[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}(?![A-Za-z0-9_~.-])"
        ),
        min_entropy=3.5,
        keywords=("q~",),
        examples=(
            f'{{"tenantId": "contoso.onmicrosoft.com", "clientSecret": "{marked[0]}"}}',
            f"The new client secret is {marked[1]} and it expires in six months.",
        ),
        near_misses=(
            f"Value: {f.text(_ALNUM, 3)}8Q~{f.text(secret_alphabet, 20)} (cut short)",
            f"Value: abc8Q~{'x' * 34}",
        ),
    )
    return [storage_key, client_secret, marked_secret]


def _code_host_rules() -> list[SecretRule]:
    f = _Fake(8)
    github = [
        "ghp_" + f.text(_ALNUM, 36),
        "github_pat_" + f.text(_ALNUM, 22) + "_" + f.text(_ALNUM, 59),
        "gho_" + f.text(_ALNUM, 36),
    ]
    github_token = SecretRule(
        "GITHUB_TOKEN",
        re.compile(
            "g"
            + _not_after("A-Za-z0-9_", 1)
            + r"(?:h[pousr]_[A-Za-z0-9]{36}|ithub_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})"
            + r"(?![A-Za-z0-9_])"
        ),
        min_entropy=3.5,
        keywords=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        examples=(
            f"git clone https://{github[0]}@github.com/acme/payments.git fails with 403, why?",
            f"GITHUB_TOKEN={github[1]}\nGITHUB_REPOSITORY=acme/payments",
            f'curl -H "Authorization: token {github[2]}" https://api.github.com/user',
        ),
        near_misses=(
            f"ghp_{f.text(_ALNUM, 35)} is one short",
            "GITHUB_TOKEN=ghp_" + "x" * 36,
            f"ghx_{f.text(_ALNUM, 36)}",
            "GITHUB_TOKEN=github_pat_...",
        ),
    )
    gitlab = ["glpat-" + f.text(_BASE64URL, 20) for _ in range(2)]
    gitlab_token = SecretRule(
        "GITLAB_TOKEN",
        re.compile(
            "glpat-"
            + _not_after("A-Za-z0-9_-", 6)
            + r"[A-Za-z0-9_-]{20,}+(?:\.[A-Za-z0-9]{2}\.[A-Za-z0-9]{9})?(?![A-Za-z0-9_.-])"
        ),
        min_entropy=3.0,
        keywords=("glpat-",),
        examples=(
            f"git remote set-url origin https://oauth2:{gitlab[0]}@gitlab.com/acme/app.git",
            f'curl --header "PRIVATE-TOKEN: {gitlab[1]}" https://gitlab.acme.io/api/v4/projects',
        ),
        near_misses=(
            f"PRIVATE-TOKEN: glpat-{f.text(_BASE64URL, 19)}",
            "PRIVATE-TOKEN: glpat-" + "x" * 20,
            "PRIVATE-TOKEN: glpat-<your_access_token>",
        ),
    )
    npm = ["npm_" + f.text(_ALNUM, 36) for _ in range(2)]
    npm_token = SecretRule(
        "NPM_TOKEN",
        re.compile("npm_" + _not_after("A-Za-z0-9_", 4) + r"[A-Za-z0-9]{36}(?![A-Za-z0-9_])"),
        min_entropy=3.5,
        keywords=("npm_",),
        examples=(
            f"# ~/.npmrc\n//registry.npmjs.org/:_authToken={npm[0]}\n",
            f"NPM_TOKEN={npm[1]} npm publish --access public",
        ),
        near_misses=(
            "//registry.npmjs.org/:_authToken=${NPM_TOKEN}",
            "npm_config_cache=/tmp/npm npm_package_version=1.2.3",
            f"npm_{f.text(_ALNUM, 35)}",
        ),
    )
    pypi = [
        "pypi-AgEIcHlwaS5vcmc" + f.text(_BASE64URL, 140),
        "pypi-AgENdGVzdC5weXBpLm9yZw" + f.text(_BASE64URL, 120),
    ]
    pypi_token = SecretRule(
        "PYPI_TOKEN",
        re.compile(
            "pypi-"
            + _not_after("A-Za-z0-9_-", 5)
            + r"(?:AgEIcHlwaS5vcmc|AgENdGVzdC5weXBpLm9yZw)[A-Za-z0-9_-]{50,1000}+(?![A-Za-z0-9_-])"
        ),
        min_entropy=3.5,
        keywords=("pypi-",),
        examples=(
            f"[pypi]\n  username = __token__\n  password = {pypi[0]}\n",
            f"TWINE_USERNAME=__token__ TWINE_PASSWORD={pypi[1]} twine upload dist/*",
        ),
        near_misses=(
            "password = pypi-<your-token>",
            f"password = pypi-AgEIcHlwaS5vcmc{f.text(_BASE64URL, 20)}",
            f"password = pypi-AgEIcHlwaS5jb20{f.text(_BASE64URL, 100)}",
        ),
    )
    return [github_token, gitlab_token, npm_token, pypi_token]


def _chat_rules() -> list[SecretRule]:
    f = _Fake(10)
    slack = [
        f"xoxb-{f.digits(13)}-{f.digits(13)}-{f.text(_ALNUM, 24)}",
        f"xoxp-{f.digits(10)}-{f.digits(10)}-{f.digits(12)}-{f.text(_HEX, 32)}",
    ]
    slack_token = SecretRule(
        "SLACK_TOKEN",
        re.compile(
            "xox"
            + _not_after("A-Za-z0-9_.-", 3)
            + r"(?:e\.xox)?[abeprs]-[0-9]{1,13}(?:-[0-9]{1,13}){0,3}-[A-Za-z0-9]{20,250}+"
            + r"(?![A-Za-z0-9_-])"
        ),
        min_entropy=3.0,
        keywords=("xox",),
        examples=(
            f'app = App(token="{slack[0]}", signing_secret=os.environ["SLACK_SIGNING"])',
            f"SLACK_USER_TOKEN={slack[1]}",
        ),
        near_misses=(
            "SLACK_BOT_TOKEN=xoxb-your-bot-token",
            f"SLACK_BOT_TOKEN=xoxb-{f.digits(13)}-{f.digits(13)}-{f.text(_ALNUM, 12)}",
            f"SLACK_BOT_TOKEN=xoxq-{f.digits(13)}-{f.digits(13)}-{f.text(_ALNUM, 24)}",
            "SLACK_BOT_TOKEN=xoxb-0000000000000-0000000000000-" + "x" * 24,
        ),
    )
    hooks = [
        "https://hooks.slack.com/services/"
        f"T{f.text(_UPPER32, 10)}/B{f.text(_UPPER32, 10)}/{f.text(_ALNUM, 24)}"
        for _ in range(2)
    ]
    slack_webhook = SecretRule(
        "SLACK_WEBHOOK",
        re.compile(
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/"
            r"T[A-Z0-9]{8,12}/[AB][A-Z0-9]{8,12}/[A-Za-z0-9]{23,24}(?![A-Za-z0-9])"
        ),
        keywords=("hooks.slack.com",),
        examples=(
            f'requests.post("{hooks[0]}", json={{"text": "deploy finished"}})',
            f"SLACK_WEBHOOK_URL={hooks[1]}",
        ),
        near_misses=(
            "https://hooks.slack.com/services/T00000000/B00000000/" + "X" * 24,
            f"https://hooks.slack.com/services/T{f.text(_UPPER32, 10)}/B{f.text(_UPPER32, 10)}",
            "See https://api.slack.com/messaging/webhooks for how to create one.",
        ),
    )
    return [slack_token, slack_webhook]


def _ai_rules() -> list[SecretRule]:
    f = _Fake(12)
    marker = "T3Blbk" + "FJ"  # "OpenAI" in base64, inside every OpenAI key
    openai = [
        "sk-" + f.text(_ALNUM, 20) + marker + f.text(_ALNUM, 20),
        "sk-proj-" + f.text(_BASE64URL, 74) + marker + f.text(_BASE64URL, 74),
        "sk-admin-" + f.text(_BASE64URL, 58) + marker + f.text(_BASE64URL, 58),
        "sk-svcacct-" + f.text(_BASE64URL, 74) + marker + f.text(_BASE64URL, 74),
    ]
    openai_key = SecretRule(
        "OPENAI_API_KEY",
        re.compile(
            "sk-"
            + _not_after("A-Za-z0-9_-", 3)
            + r"(?:[A-Za-z0-9]{48}|(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,300}+)(?![A-Za-z0-9_-])"
        ),
        min_entropy=3.5,
        keywords=("sk-",),
        examples=(
            f'client = OpenAI(api_key="{openai[0]}")',
            f"OPENAI_API_KEY={openai[1]}\nOPENAI_ORG_ID=org-acme",
            f'curl https://api.openai.com/v1/organization/users -H "Authorization: Bearer '
            f'{openai[2]}"',
            f"Our batch job uses the service account key {openai[3]}.",
        ),
        near_misses=(
            "OPENAI_API_KEY=sk-...",
            'client = OpenAI(api_key="sk-your-api-key-here")',
            f"sk-{f.text(_ALNUM, 47)}",
            "OPENAI_API_KEY=sk-proj-abc123",
            "api_key = sk-upstream-openai-0123456789abcdef",
            f"the task-{f.text(_ALNUM, 48)} failed",
        ),
    )
    anthropic = [
        "sk-ant-api03-" + f.text(_BASE64URL, 93) + "AA",
        "sk-ant-admin01-" + f.text(_BASE64URL, 93) + "AA",
    ]
    anthropic_key = SecretRule(
        "ANTHROPIC_API_KEY",
        re.compile(
            "sk-ant-"
            + _not_after("A-Za-z0-9_-", 7)
            + r"(?:api|admin|oat)[0-9]{2}-[A-Za-z0-9_-]{80,300}+(?![A-Za-z0-9_-])"
        ),
        min_entropy=3.5,
        keywords=("sk-ant-",),
        examples=(
            f"client = anthropic.Anthropic(api_key='{anthropic[0]}')",
            f"curl https://api.anthropic.com/v1/organizations/me -H 'x-api-key: {anthropic[1]}'",
        ),
        near_misses=(
            "ANTHROPIC_API_KEY=sk-ant-api03-...",
            "ANTHROPIC_API_KEY=sk-ant-upstream-0123456789abcdef",
            f"ANTHROPIC_API_KEY=sk-ant-api03-{f.text(_BASE64URL, 40)}",
        ),
    )
    return [openai_key, anthropic_key]


def _saas_rules() -> list[SecretRule]:
    f = _Fake(14)
    stripe = ["sk_live_" + f.text(_ALNUM, 24), "rk_live_" + f.text(_ALNUM, 99)]
    stripe_key = SecretRule(
        "STRIPE_KEY",
        re.compile(
            r"[sr]k_live_" + _not_after("A-Za-z0-9_", 8) + r"[A-Za-z0-9]{24,247}+(?![A-Za-z0-9_])"
        ),
        min_entropy=3.5,
        keywords=("sk_live_", "rk_live_"),
        examples=(
            f"stripe.api_key = '{stripe[0]}'\nstripe.Charge.create(amount=2000, currency='eur')",
            f"STRIPE_RESTRICTED_KEY={stripe[1]}",
        ),
        near_misses=(
            f"stripe.api_key = 'sk_test_{f.text(_ALNUM, 24)}'  # test mode",
            "stripe.api_key = 'sk_live_...'",
            f"stripe.api_key = 'sk_live_{f.text(_ALNUM, 10)}'",
        ),
    )
    sendgrid = ["SG." + f.text(_BASE64URL, 22) + "." + f.text(_BASE64URL, 43) for _ in range(2)]
    sendgrid_key = SecretRule(
        "SENDGRID_KEY",
        re.compile(
            r"SG\."
            + _not_after("A-Za-z0-9_-", 3)
            + r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"
        ),
        min_entropy=3.5,
        keywords=("sg.",),
        examples=(
            f"sg = SendGridAPIClient('{sendgrid[0]}')",
            f"SENDGRID_API_KEY={sendgrid[1]}",
        ),
        near_misses=(
            "SENDGRID_API_KEY=SG.xxxxxxxx.yyyyyyyy",
            f"SENDGRID_API_KEY=SG.{f.text(_BASE64URL, 22)}.{f.text(_BASE64URL, 40)}",
        ),
    )
    twilio = ["SK" + f.text(_HEX, 32) for _ in range(2)]
    twilio_key = SecretRule(
        "TWILIO_KEY",
        # An `SK` and 32 hex digits names a Twilio key only where Twilio is mentioned.
        re.compile("SK" + _not_after("A-Za-z0-9", 2) + r"[0-9a-fA-F]{32}(?![A-Za-z0-9])"),
        min_entropy=2.5,
        keywords=("twilio",),
        examples=(
            f"TWILIO_ACCOUNT_SID=AC{f.text(_HEX, 32)}\nTWILIO_API_KEY={twilio[0]}\n",
            f'client = twilio.rest.Client("{twilio[1]}", api_secret, account_sid)',
        ),
        near_misses=(
            f"build artifact SK{f.text(_HEX, 32)} uploaded",
            f"TWILIO_API_KEY=SK{f.text(_HEX, 31)}",
            f"TWILIO_API_KEY=SK{f.text('GHIJKLMNOPQRSTUV', 32)}",
        ),
        score=0.9,
    )
    return [stripe_key, sendgrid_key, twilio_key]


def _structured_rules() -> list[SecretRule]:
    f = _Fake(19)
    private_key = SecretRule(
        "PRIVATE_KEY",
        re.compile(_PEM),
        keywords=("private key",),
        check=_pem_body,
        examples=(
            "Here is the deploy key, can you tell me why ssh rejects it?\n"
            + _pem("RSA PRIVATE KEY", f.pem_lines(1190, "\n"))
            + "\nThanks!",
            "id_ed25519:\n" + _pem("OPENSSH PRIVATE KEY", f.openssh_lines()) + "\n",
            'JWT_SIGNING_KEY="' + _pem("EC PRIVATE KEY", f.pem_lines(120, "\\n"), "\\n") + '"',
            _pem(
                "RSA PRIVATE KEY",
                "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,"
                + f.text("0123456789ABCDEF", 32)
                + "\n\n"
                + f.pem_lines(1190, "\n"),
            ),
            "The key starts like this, the rest got cut off:\n-----BEGIN PRIVATE KEY-----\n"
            + f.pem_lines(400, "\n"),
        ),
        near_misses=(
            _pem("PUBLIC KEY", f.pem_lines(294, "\n")),
            _pem("CERTIFICATE", f.pem_lines(900, "\n")),
            _pem("RSA PRIVATE KEY", "MIIEowIBAAKCAQEA...\n..."),
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ" + f.text(_BASE64, 300) + " jdoe@laptop",
        ),
    )
    header = f.b64url_json({"alg": "HS256", "typ": "JWT"})
    jwts = [
        header
        + "."
        + f.b64url_json({"sub": "1234567890", "name": "Jane Doe", "iat": 1716239022})
        + "."
        + f.text(_BASE64URL, 43),
        f.b64url_json({"alg": "RS256", "kid": f.text(_HEX, 16)})
        + "."
        + f.b64url_json({"iss": "https://login.acme.io", "aud": "api", "exp": 1893456000})
        + "."
        + f.text(_BASE64URL, 342),
    ]
    jwt = SecretRule(
        "JWT",
        re.compile(
            "eyJ"
            + _not_after("A-Za-z0-9_-", 3)
            + r"[A-Za-z0-9_-]{8,8192}+\.[A-Za-z0-9_-]{8,65536}+\.[A-Za-z0-9_-]{16,8192}+"
            + r"(?![A-Za-z0-9_-])"
        ),
        keywords=("eyj",),
        check=_jwt_header,
        examples=(
            f"curl -H 'Authorization: Bearer {jwts[0]}' https://api.acme.io/v1/orders",
            f'{{"access_token": "{jwts[1]}", "token_type": "Bearer", "expires_in": 3600}}',
        ),
        near_misses=(
            f"eyJ{f.text(_BASE64URL, 30)}.{f.text(_BASE64URL, 30)}.{f.text(_BASE64URL, 30)}",
            f.b64url_json({"typ": "JWT"})
            + "."
            + f.b64url_json({"sub": "42"})
            + "."
            + f.text(_BASE64URL, 43),
            f"Only the header: {header}",
        ),
    )
    passwords = [f.text(_ALNUM, 16), f.text(_ALNUM + "!*-_", 20), f.text(_ALNUM, 24)]
    database_url = SecretRule(
        "DATABASE_URL_PASSWORD",
        _URL_CREDENTIALS,
        group=2,
        keywords=(
            "postgres",
            "mysql",
            "mariadb",
            "mongodb",
            "redis",
            "amqp",
            "mssql",
            "sqlserver",
            "cockroachdb",
            "clickhouse",
        ),
        check=_url_password(
            "postgres(?:ql)?|mysql|mariadb|mongodb|rediss?|amqps?|mssql|sqlserver|cockroachdb"
            "|clickhouse"
        ),
        examples=(
            f"DATABASE_URL=postgres://app_user:{passwords[0]}@db.internal:5432/app",
            f'client = MongoClient("mongodb+srv://admin:{passwords[1]}@cluster0.ab1cd.mongodb.net'
            '/?retryWrites=true")',
            f"CELERY_BROKER_URL=redis://:{passwords[2]}@cache.internal:6379/0",
            f"engine = create_engine('mysql+pymysql://etl:{passwords[0]}@10.0.3.7/warehouse')",
        ),
        near_misses=(
            "DATABASE_URL=postgres://app_user@db.internal:5432/app",
            "DATABASE_URL=postgres://app:${DB_PASSWORD}@db:5432/app",
            "mysql://root:****@localhost/db",
            "postgresql://user:password@localhost/dbname",
            "amqp://guest:guest@localhost:5672/",
            "REDIS_URL=redis://localhost:6379/0",
            "redis://[[username]:[password]]@localhost:6379/0",
            'engine = create_engine(f"postgresql://{user}:{password}@{host}/{db}")',
        ),
        score=0.9,
    )
    return [private_key, jwt, database_url]


def _generic_rules() -> list[SecretRule]:
    f = _Fake(22)
    values = [f.text(_ALNUM + "!#%*+-_", 18) for _ in range(10)]
    assignment = SecretRule(
        "GENERIC_SECRET",
        re.compile(
            r"""(?x)
            NAMES
            (?P<suffix>[A-Za-z0-9_.-]{0,40}+)
            (?:\\?["'`]\]?)?    # the key's closing quote (escaped in JSON in JSON), or `"]`
            [ \t]*(?P<op>:[ \t]*[A-Za-z_][\w.\[\],|\ ]{0,40}?[ \t]*=|:=|=>|[:=]  # `key: str = `
              |(?<=[ \t])is(?=[ \t]))[ \t]*  # or prose: "the password is ..."
            (?:\\?["'`])?
            (?P<secret>[^\s"'`,;&<>()\[\]{}\\]{8,256}+)(?![^\s"'`,;&<>()\[\]{}\\])
            """.replace(
                "NAMES",
                _any_case(
                    "passw(?:or)?d",
                    "pass(?![a-z])",  # DB_PASS; `bypass`, `compass` are left by the check
                    "passphrase",
                    "pwd",
                    "secret",
                    "api[_-]?key",
                    "access[_-]?token",
                    "auth[_-]?token",
                ),
            )
        ),
        group=3,  # suffix, op, secret
        min_entropy=3.0,
        check=_assigned_secret,
        keywords=(
            "pass",
            "pwd",
            "secret",
            "api_key",
            "api-key",
            "apikey",
            "access_token",
            "access-token",
            "accesstoken",
            "auth_token",
            "auth-token",
            "authtoken",
        ),
        examples=(
            f"# .env\nDB_HOST=db.internal\nDB_PASSWORD={values[0]}\n",
            f"database:\n  host: db.internal\n  password: {values[1]}\n  pool: 10\n",
            f'{{"client_id": "web-frontend", "client_secret": "{values[2]}"}}',
            f'API_KEY = "{values[3]}"\n\ndef fetch(path):\n    return get(path, key=API_KEY)',
            f"[mysql]\nuser = report\npasswd = {values[4]}\n",
            f"Server=db01;Database=app;User Id=sa;Pwd={values[5]};",
            f"const config = {{ authToken: '{values[6]}', retries: 3 }};",
            f"curl 'https://api.acme.io/v2/items?apikey={values[7]}&page=2'",
            f'os.environ["ACCESS_TOKEN"] = "{values[8]}"',
            f'{{"request": "{{\\"username\\": \\"ci\\", \\"password\\": \\"{values[9]}\\"}}"}}',
            f"The staging database password is {values[0]} -- change it after the demo.",
            f"DB_PASS={values[1]}\nDB_USER=reporting",
        ),
        near_misses=(
            'password = os.environ["PW"]',
            "password: ${DB_PASSWORD}",
            'password = "changeme"',
            'api_key = "your-api-key-here"',
            "self.password = password",
            "password = None",
            '"password": "",',
            '"password": null,',
            'secret = "{{ vault_secret }}"',
            'api_key: "<API_KEY>"',
            'password = getenv("DB_PASSWORD")',
            'password = "xxxxxxxxxxxx"',
            "api_key: str",
            'password = "aaaaaaaaaaaa"',
            "def login(self, username: str, password: str, api_key: Credentials) -> None:",
            'api_key = settings.openai_api_key or os.getenv("OPENAI_API_KEY")',
            'secret_name = "prod/payments/stripe"',
            'API_KEY_ENV = "OPENAI_API_KEY"',
            f'password_hash = "{f.text(_HEX, 64)}"',
            "password: str = Field(min_length=12)",
            'if password == "hunter2x9":',
            '"Resource": "arn:aws:secretsmanager:*:*:secret:billing/prod-*"',
            '"AWS::MSK::BatchScramSecret": "ff2b807a577495b0",',
            'AttributeOID.CHALLENGE_PASSWORD: "challengePassword",',
            'passwd="anonymous@ftp.acme.io"',
            "#password_encryption = scram-sha-256",
            'url = f"https://api.acme.io/v1?api_key={api_key}&page={page}"',
            '{"keep_old_secret_active_for_24_hours": keep_old_secret_active_for_24_hours}',
            "BYPASS_CACHE=Xk3j9Lm2Qp7",
            "compass = N45E0123W7",
            "Your boarding pass is BA2490LHR7, gate B12.",
            "The secret is understanding your customers.",
            "The password is incorrect.",
            "Which build fixes it? The secret is v2.3.1-beta, out today.",
        ),
        score=0.7,
    )
    url_passwords = [f.text(_ALNUM, 14), f.text(_ALNUM, 20)]
    url_credentials = SecretRule(
        "GENERIC_SECRET",
        _URL_CREDENTIALS,
        group=2,
        keywords=("://",),
        check=_url_password("https?|ftps?|sftp|smtps?|ldaps?|git", min_length=6),
        examples=(
            f"pip install --index-url https://deploy:{url_passwords[0]}@pypi.acme.io/simple/ tools",
            f"git clone https://jdoe:{url_passwords[1]}@git.acme.io/team/repo.git",
        ),
        near_misses=(
            "curl https://user:password@api.acme.io/",
            "See https://docs.python.org/3/library/re.html#re.Match",
            "git clone https://jdoe@git.acme.io/team/repo.git",
            "http://localhost:8080/login?next=/home",
        ),
        score=0.7,
    )
    return [assignment, url_credentials]


def _sluice_rules() -> list[SecretRule]:
    f = _Fake(24)
    tokens = ["slc_" + f.text(_ALNUM, 40) for _ in range(2)]
    return [
        SecretRule(
            "SLUICE_TOKEN",
            # TOKEN_PATTERN with its leading `\b` moved behind the prefix, for speed (the
            # tests hold the two to the same matches).
            re.compile(
                re.escape(TOKEN_PREFIX)
                + _not_after(r"\w", len(TOKEN_PREFIX))
                + r"[A-Za-z0-9]{40}\b"
            ),
            min_entropy=3.5,
            keywords=("slc_",),
            examples=(
                f"export OPENAI_BASE_URL=https://sluice.acme.io/v1 OPENAI_API_KEY={tokens[0]}",
                f'curl -H "Authorization: Bearer {tokens[1]}" https://sluice.acme.io/v1/models',
            ),
            near_misses=(
                f"slc_{f.text(_ALNUM, 39)}",
                "OPENAI_API_KEY=slc_" + "x" * 40,
                "OPENAI_API_KEY=slc_<your-token>",
            ),
        )
    ]


# Order matters only to break ties: for one span, the earlier rule's entity is reported.
SECRET_RULES: tuple[SecretRule, ...] = tuple(
    _aws_rules()
    + _gcp_rules()
    + _azure_rules()
    + _code_host_rules()
    + _chat_rules()
    + _ai_rules()
    + _saas_rules()
    + _structured_rules()
    + _sluice_rules()
    + _generic_rules()
)
SECRET_ENTITIES: frozenset[str] = frozenset(rule.entity for rule in SECRET_RULES)


def find_secrets(text: str) -> list[Finding]:
    """Every secret in `text`, one finding per span, in text order.

    Where findings overlap, the surer one (higher score) stays, then the longer one.
    """
    lowered = text.lower()
    candidates: list[tuple[float, int, int, int, str]] = []
    for order, rule in enumerate(SECRET_RULES):
        # Most text holds no secret: a substring test skips most rules at a few GB/s.
        if rule.keywords and not any(keyword in lowered for keyword in rule.keywords):
            continue
        for match in rule.pattern.finditer(text):
            value = match.group(rule.group)
            if shannon_entropy(value) < rule.min_entropy or not rule.check(value, match):
                continue
            start, end = match.span(rule.group)
            candidates.append((-rule.score, start - end, order, start, rule.entity))
    return _without_overlaps(candidates)


def _without_overlaps(candidates: list[tuple[float, int, int, int, str]]) -> list[Finding]:
    # Sorted, candidates come surest first, then longest, then in rule order; each one kept
    # unless it overlaps one kept before it. `starts` mirrors `kept`, which stays in text order.
    kept: list[Finding] = []
    starts: list[int] = []
    for negative_score, negative_length, _, start, entity in sorted(candidates):
        end = start - negative_length
        i = bisect_left(starts, start)
        if (i > 0 and kept[i - 1].end > start) or (i < len(kept) and kept[i].start < end):
            continue
        starts.insert(i, start)
        kept.insert(i, Finding(entity, start, end, -negative_score, "secret"))
    return kept
