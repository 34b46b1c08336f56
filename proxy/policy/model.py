"""The typed shape of `policies/*.yaml`: providers, models and request limits.

Untrusted YAML enters here, so every model forbids unknown keys and checks its values.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

ProviderKind = Literal["openai", "anthropic", "openai_compatible", "vllm"]
Trust = Literal["external", "internal"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Seconds allowed for each phase of an upstream call."""

    connect: float = Field(default=5.0, gt=0)
    first_byte: float = Field(default=60.0, gt=0)
    total: float = Field(default=600.0, gt=0)


class PoolSettings(_Strict):
    """How Sluice watches and balances the endpoints of a vLLM pool."""

    check_interval: float = Field(default=5.0, gt=0)  # seconds between /health + /metrics
    check_timeout: float = Field(default=2.0, gt=0)
    failure_threshold: int = Field(default=3, ge=1)  # consecutive failures that eject
    cooldown: float = Field(default=10.0, gt=0)  # seconds ejected before a half-open probe
    max_attempts: int = Field(default=3, ge=1)  # endpoints one request may try


def _http_url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


class ProviderConfig(_Strict):
    """An upstream API Sluice forwards to, and the credentials it uses there."""

    kind: ProviderKind
    base_url: str | None = None
    endpoints: tuple[str, ...] = ()
    api_key: SecretStr | None = None
    trust: Trust | None = None
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(default=100, ge=1)
    pool: PoolSettings | None = None  # kind vllm only; defaults apply when left out

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, value: object) -> object:
        # VLLM_BASE_URLS arrives as one comma-separated string.
        if isinstance(value, str):
            return tuple(part for part in (p.strip() for p in value.split(",")) if part)
        return value

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_http_url(v) for v in value)

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_targets(self) -> ProviderConfig:
        if self.kind == "vllm":
            if not self.endpoints and self.base_url is None:
                raise ValueError("a vllm provider needs `endpoints` (or `base_url`)")
        elif self.pool is not None:
            raise ValueError(f"`pool` is only for kind vllm, not {self.kind}")
        elif self.endpoints:
            raise ValueError(
                f"`endpoints` is only for kind vllm; a {self.kind} provider takes `base_url`"
            )
        elif self.base_url is None:
            raise ValueError(f"a {self.kind} provider needs `base_url`")
        return self

    @property
    def urls(self) -> tuple[str, ...]:
        """Every base URL of the provider (several for a vLLM pool)."""
        if self.endpoints:
            return self.endpoints
        assert self.base_url is not None  # guaranteed by _check_targets
        return (self.base_url,)

    @property
    def pool_settings(self) -> PoolSettings:
        return self.pool or PoolSettings()

    @property
    def trust_level(self) -> Trust:
        """Self-hosted vLLM is internal unless said otherwise; everything else is external."""
        if self.trust is not None:
            return self.trust
        return "internal" if self.kind == "vllm" else "external"


class Price(_Strict):
    """USD per million tokens, for daily budgets."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


ModelEndpoint = Literal["chat", "embeddings", "responses", "messages"]


class ModelConfig(_Strict):
    """A public model name and where it is served."""

    provider: str
    upstream_model: str | None = None
    price: Price | None = None
    # Models tried in order when this one's provider fails before answering (not transitive).
    fallbacks: tuple[str, ...] = ()
    # The APIs the model itself answers (chat, embeddings, responses, messages); left out:
    # every API its provider speaks. A chat-only model is never sent an embeddings request,
    # not even as a sensitive reroute.
    endpoints: tuple[ModelEndpoint, ...] | None = None


class Limits(_Strict):
    """Request limits; a limit left out is not enforced."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    requests_per_day: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    concurrent: int | None = Field(default=None, ge=1)
    daily_budget_usd: float | None = Field(default=None, gt=0)


class RateLimits(_Strict):
    """Overrides and ceilings beyond the per-role limits, and what to do when Redis fails."""

    on_redis_failure: Literal["deny", "local"] = "deny"
    users: dict[str, Limits] = {}  # per subject, replacing the role's value of each limit set
    models: dict[str, Limits] = {}  # per caller and model, on top of the caller's own limits
    global_models: dict[str, Limits] = {}  # per model, over all callers together


class RequestLimits(_Strict):
    """Bounds on a single request, checked before anything else looks at it."""

    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_messages: int = Field(default=2000, ge=1)


Endpoint = Literal["chat", "messages", "embeddings", "responses", "models"]
ENDPOINTS: tuple[Endpoint, ...] = ("chat", "messages", "embeddings", "responses", "models")
# Asymmetric algorithms only: `none` and HS* (which a public key could be abused to sign) never.
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]


# What a role may do beyond calling models: `audit:read` opens the security dashboard,
# `audit:read_content` also shows the prompt and response text the audit recorded.
Permission = Literal["audit:read", "audit:read_content"]


class RoleConfig(_Strict):
    """What holders of a role may use. Anything not granted here is denied."""

    models: tuple[str, ...] = ()
    endpoints: tuple[Endpoint, ...] = ENDPOINTS
    tools: tuple[str, ...] | None = None  # glob patterns of tool names; None: any tool
    limits: Limits = Limits()
    permissions: tuple[Permission, ...] = ()


class OidcIssuer(_Strict):
    """A trusted OpenID Connect issuer whose access tokens Sluice accepts."""

    issuer: str
    audience: str
    jwks_url: str | None = None  # default: discovered from /.well-known/openid-configuration
    algorithms: tuple[JwtAlgorithm, ...] = ("RS256", "ES256", "PS256")
    leeway_seconds: float = Field(default=60.0, ge=0, le=600)
    subject_claim: str = "sub"
    roles_claim: str = "groups"  # a dotted path, e.g. realm_access.roles
    role_map: dict[str, str] = {}
    default_roles: tuple[str, ...] = ()  # roles every valid token of this issuer gets
    jwks_refresh_seconds: float = Field(default=300.0, ge=1)  # at most one refetch per interval

    @field_validator("issuer", "jwks_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class PersonalTokens(_Strict):
    """Tokens Sluice issues itself (`sluice token issue`), for tools that take a static key."""

    enabled: bool = True
    max_ttl_days: int = Field(default=365, ge=1)


class DashboardSignIn(_Strict):
    """How people sign in to the security dashboard (`/dashboard`).

    With `oidc_issuer` set (one of `identity.oidc`), the dashboard runs the authorization code
    flow with PKCE against it as client `client_id`; the ID token is verified with that
    issuer's settings (audience: `client_id`) and its roles claim mapped by its `role_map`.
    The endpoints default to the issuer's discovery document.
    """

    enabled: bool = True
    oidc_issuer: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None  # for confidential clients; PKCE is used anyway
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    redirect_url: str | None = None  # default: this request's origin + /dashboard/auth/callback
    personal_tokens: bool = True  # pasting a Sluice personal token signs in too
    secure_cookie: bool = True  # false only for local development over plain HTTP
    session_minutes: int = Field(default=480, ge=1, le=7 * 24 * 60)

    @field_validator("oidc_issuer", "authorization_endpoint", "token_endpoint", "redirect_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _client_for_issuer(self) -> DashboardSignIn:
        if self.oidc_issuer is not None and not self.client_id:
            raise ValueError("`oidc_issuer` needs the dashboard's `client_id` at that issuer")
        return self


class Identity(_Strict):
    oidc: tuple[OidcIssuer, ...] = ()
    personal_tokens: PersonalTokens = PersonalTokens()
    dashboard: DashboardSignIn = DashboardSignIn()


LevelName = Literal["public", "internal", "confidential", "restricted"]
Action = Literal["allow", "mask", "reroute", "block"]
ACTION_ORDER: tuple[Action, ...] = ("allow", "mask", "reroute", "block")  # least to most strict


class OrgRecognizer(_Strict):
    """An organisation's own detector, written by admins: a regex or a list of terms."""

    entity: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    level: LevelName
    pattern: str | None = None  # a regular expression
    terms: tuple[str, ...] = ()  # words or phrases, matched whole and (by default) in any case
    context: tuple[str, ...] = ()  # for `pattern`: count a match only near one of these words
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> OrgRecognizer:
        if (self.pattern is None) == (not self.terms):
            raise ValueError("give either `pattern` or `terms`")
        if self.pattern is not None:
            import re

            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"`pattern` is not a valid regular expression: {exc}") from None
        return self


class OutputScan(_Strict):
    """What happens to the model's answers: findings are recorded for the audit (`record`), and
    with `mask` a whole (non-streamed) answer reaches the client with placeholders instead of
    the values. Streamed answers are scanned when they end and only recorded."""

    scan: bool = False
    action: Literal["record", "mask"] = "record"


class Classification(_Strict):
    """What counts as sensitive, how sensitive, and what to do about it."""

    enabled: bool = True
    levels: dict[str, LevelName] = {}  # entity type -> level; secrets default to restricted
    actions: dict[LevelName, Action] = {
        "public": "allow",
        "internal": "allow",
        "confidential": "reroute",
        "restricted": "block",
    }
    role_actions: dict[str, dict[LevelName, Action]] = {}  # per role, overriding `actions`
    sensitive_route: str | None = None  # the self-hosted model rerouted requests go to
    non_text: Literal["allow", "block"] = "allow"  # images, files, audio
    min_score: float = Field(default=0.5, ge=0, le=1)
    recognizers: tuple[OrgRecognizer, ...] = ()
    timeout_seconds: float = Field(default=5.0, gt=0)
    output: OutputScan = OutputScan()


AuditContent = Literal["full", "redacted", "hash", "none"]


class Audit(_Strict):
    """The audit log: what content it keeps, where, and for how long.

    `dir`, segment sizes and `fsync` are read when Sluice starts; `content` applies per request
    from the policy snapshot the request pinned.
    """

    enabled: bool = True  # off: no records at all (for measuring; never in production)
    content: AuditContent = "redacted"  # prompt and answer text: as sent, masked, hashed, none
    dir: str | None = None  # default: <data dir>/audit
    segment_max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    segment_max_seconds: float = Field(default=86400.0, gt=0)
    retention_days: float | None = Field(default=None, gt=0)  # None: keep every segment
    fsync: bool = True  # off: records reach the OS but a power cut can lose the last ones


class Policy(_Strict):
    """The whole policy, merged from every file in the policy directory."""

    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    roles: dict[str, RoleConfig] = {}
    identity: Identity = Identity()
    limits: RateLimits = RateLimits()
    classification: Classification = Classification(enabled=False)
    request_limits: RequestLimits = RequestLimits()
    audit: Audit = Audit()


def reference_problems(policy: Policy) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-references that do not resolve, as (path in the policy, message)."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for name, model in policy.models.items():
        if model.provider not in policy.providers:
            known = ", ".join(sorted(policy.providers)) or "none"
            problems.append(
                (
                    ("models", name, "provider"),
                    f"model {name!r} names provider {model.provider!r}, which is not defined "
                    f"(defined: {known})",
                )
            )
        for index, target in enumerate(model.fallbacks):
            where: tuple[str | int, ...] = ("models", name, "fallbacks", index)
            if target == name:
                problems.append((where, f"model {name!r} lists itself as a fallback"))
            elif target not in policy.models:
                problems.append(
                    (where, f"model {name!r} names fallback {target!r}, which is not defined")
                )
            elif target in model.fallbacks[:index]:
                problems.append((where, f"model {name!r} lists fallback {target!r} twice"))
    for section in ("models", "global_models"):
        for name in getattr(policy.limits, section):
            if name not in policy.models:
                problems.append(
                    (("limits", section, name), f"limits.{section} names unknown model {name!r}")
                )
    classification = policy.classification
    route = classification.sensitive_route
    uses_reroute = "reroute" in classification.actions.values() or any(
        "reroute" in actions.values() for actions in classification.role_actions.values()
    )
    if route is not None and route not in policy.models:
        problems.append(
            (
                ("classification", "sensitive_route"),
                f"sensitive_route names unknown model {route!r}",
            )
        )
    elif route is not None:
        provider = policy.providers.get(policy.models[route].provider)
        if provider is not None and provider.trust_level != "internal":
            problems.append(
                (
                    ("classification", "sensitive_route"),
                    f"sensitive_route {route!r} is served by an external provider; "
                    "sensitive traffic may only go to a provider with trust: internal",
                )
            )
    elif uses_reroute and classification.enabled:
        problems.append(
            (("classification", "actions"), "an action is `reroute` but no sensitive_route is set")
        )
    for role in classification.role_actions:
        if role not in policy.roles:
            problems.append(
                (
                    ("classification", "role_actions", role),
                    f"role_actions names unknown role {role!r}",
                )
            )
    for index, issuer in enumerate(policy.identity.oidc):
        for claim_value, role in issuer.role_map.items():
            if role not in policy.roles:
                problems.append(
                    (
                        ("identity", "oidc", index, "role_map", claim_value),
                        f"role_map maps {claim_value!r} to role {role!r}, which is not defined",
                    )
                )
        for role in issuer.default_roles:
            if role not in policy.roles:
                problems.append(
                    (
                        ("identity", "oidc", index, "default_roles"),
                        f"default role {role!r} is not defined",
                    )
                )
    dashboard = policy.identity.dashboard
    if dashboard.oidc_issuer is not None and not any(
        issuer.issuer == dashboard.oidc_issuer for issuer in policy.identity.oidc
    ):
        problems.append(
            (
                ("identity", "dashboard", "oidc_issuer"),
                f"dashboard oidc_issuer {dashboard.oidc_issuer!r} is not one of identity.oidc",
            )
        )
    return problems
