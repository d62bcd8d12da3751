"""Route and Service documents: the schema operators write, validated with pydantic.

``parse_document`` turns one mapping into a model or raises ``DocumentError`` with a one-line
reason; ``check_references`` validates a whole set (a route naming an unknown service).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

import re2  # type: ignore[import-untyped]
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from wardgate.domain.durations import parse_duration, parse_period
from wardgate.errors import DocumentError, ReferenceError_

NAME_RE = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
RESERVED_PREFIX = "wardgate"


def _not_reserved(name: str) -> str:
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(f"names starting with '{RESERVED_PREFIX}' are reserved for the gateway")
    return name


Name = Annotated[
    str,
    Field(pattern=NAME_RE, description="lower-case letters, digits, '.', '_', '-'"),
    AfterValidator(_not_reserved),
]
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
RETRY_CONDITIONS = {
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "http3-post-connect-failure",
}
HEADER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9!#$%&'*+.^_`|~-]*$")
RESERVED_HEADERS = {"x-user-id", "x-user-roles", "x-auth-method", "x-request-id"}


# Envoy's safe_regex is RE2 with a program-size limit (runtime re2.max_program_size.error_level,
# 100 by default): check with RE2 itself so a regex Envoy would NACK is refused here.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
RE2_MAX_PROGRAM_SIZE = 100


def check_envoy_regex(pattern: str, where: str) -> None:
    try:
        program = re2.compile(pattern, _RE2_OPTIONS).programsize
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"{where} is not a regex Envoy accepts (RE2): {reason}") from None
    if program > RE2_MAX_PROGRAM_SIZE:
        raise ValueError(
            f"{where} is too complex for Envoy (RE2 program size {program} > "
            f"{RE2_MAX_PROGRAM_SIZE}); simplify it"
        )


def host_regex(hosts: list[str]) -> str:
    """The ``:authority`` regex for ``hosts`` (``*.example.com`` allowed), any port."""
    alts = []
    for host in hosts:
        if host.startswith("*."):
            alts.append(r"[^.:]+(\.[^.:]+)*" + re.escape(host[1:]))
        else:
            alts.append(re.escape(host))
    return rf"^({'|'.join(alts)})(:[0-9]+)?$"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: Any) -> str:
    seconds = parse_duration(value)
    if not 0 < seconds <= 86400:
        raise ValueError(f"'{value}' must be more than 0 and at most 1d")
    return str(value)


class Match(_Doc):
    prefix: str | None = None
    path: str | None = None
    regex: str | None = None
    methods: list[str] | None = None
    headers: dict[str, str] | None = None
    hosts: list[str] | None = None

    @model_validator(mode="after")
    def _one_path_matcher(self) -> Match:
        given = [k for k in ("prefix", "path", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("match needs exactly one of prefix, path or regex")
        for key in ("prefix", "path"):
            value = getattr(self, key)
            if value is not None and (not value.startswith("/") or any(c in value for c in "?# ")):
                raise ValueError(f"match.{key} must start with '/' and hold no '?', '#' or space")
        if self.regex is not None:
            check_envoy_regex(self.regex, "match.regex")
        return self

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        upper = [m.upper() for m in value]
        bad = [m for m in upper if m not in HTTP_METHODS]
        if bad or not upper:
            raise ValueError(f"unknown HTTP method(s) {bad}; use {sorted(HTTP_METHODS)}")
        return upper

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        out = {}
        for name, want in value.items():
            lname = name.lower()
            if not HEADER_NAME_RE.match(lname):
                raise ValueError(f"'{name}' is not a valid header name")
            if lname in RESERVED_HEADERS or lname in ("cookie", "authorization", "x-api-key"):
                raise ValueError(
                    f"'{lname}' cannot be matched: the gateway sets or strips it, and a client "
                    "could otherwise choose the route by sending it"
                )
            out[lname] = want
        return out

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for host in value:
            if not re.match(r"^(\*\.)?[A-Za-z0-9.-]+$", host):
                raise ValueError(f"'{host}' is not a host name (a leading '*.' is allowed)")
        hosts = [h.lower() for h in value]
        check_envoy_regex(host_regex(hosts), "match.hosts (as a regex)")
        return hosts


class WeightedBackend(_Doc):
    service: Name
    weight: int = Field(ge=0, le=10000)


class Retries(_Doc):
    attempts: int = Field(ge=0, le=10)
    on: list[str] = Field(default_factory=lambda: ["5xx", "reset", "connect-failure"])
    per_try_timeout: str | None = None

    @field_validator("on")
    @classmethod
    def _on(cls, value: list[str]) -> list[str]:
        bad = [c for c in value if c not in RETRY_CONDITIONS]
        if bad:
            raise ValueError(f"unknown retry condition(s) {bad}; use {sorted(RETRY_CONDITIONS)}")
        return value

    _ptt = field_validator("per_try_timeout")(classmethod(lambda cls, v: v and _duration(v)))


class Auth(_Doc):
    require: Literal["none", "session", "jwt", "api_key", "any"] = "none"
    roles: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _roles_need_auth(self) -> Auth:
        if self.roles and self.require == "none":
            raise ValueError("auth.roles needs auth.require other than 'none'")
        return self


RATE_DIMENSIONS_RE = re.compile(r"^(ip|user|api_key|route|header:[a-z0-9][a-z0-9_-]*)$")


class RateLimit(_Doc):
    """One limit. ``by`` names what is counted apart: one dimension, or several together
    (``[user, header:x-tenant]``: per user per tenant); every rule also counts per route
    unless ``key`` names a counter shared by the routes that use the same key."""

    by: str | list[str]
    requests: int = Field(ge=1, le=10**9)
    per: str
    algorithm: Literal["fixed_window", "sliding_window", "token_bucket"] = "fixed_window"
    shadow: bool = False
    # Per API key tier: requests for keys of that tier (others get ``requests``).
    tiers: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")], int] | None = None
    key: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")] | None = None

    @field_validator("by")
    @classmethod
    def _by(cls, value: str | list[str]) -> str | list[str]:
        values = [value] if isinstance(value, str) else list(value)
        if not values or len(values) > 4:
            raise ValueError("rate_limits.by: one to four dimensions")
        out = []
        for v in values:
            v = v.strip().lower()
            if not RATE_DIMENSIONS_RE.match(v):
                raise ValueError(
                    f"rate_limits.by '{v}': use ip, user, api_key, route or header:NAME"
                )
            out.append(v)
        if len(set(out)) != len(out):
            raise ValueError("rate_limits.by names a dimension twice")
        return out[0] if isinstance(value, str) else out

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None and any(not 1 <= n <= 10**9 for n in value.values()):
            raise ValueError("rate_limits.tiers: each tier's requests is 1 to 1e9")
        return value

    @property
    def dimensions(self) -> list[str]:
        return [self.by] if isinstance(self.by, str) else list(self.by)

    @field_validator("per")
    @classmethod
    def _per(cls, value: str) -> str:
        parse_period(value)
        return value

    @property
    def period_seconds(self) -> int:
        return int(parse_period(self.per))


class Cors(_Doc):
    allow_origins: list[str]
    allow_methods: list[str] | None = None
    allow_headers: list[str] | None = None
    expose_headers: list[str] | None = None
    allow_credentials: bool = False
    max_age: str | None = None

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.match(r"^https?://[A-Za-z0-9.-]+(:\d+)?$", origin):
                raise ValueError(f"'{origin}' is not an origin such as https://app.example.com")
        return value

    _max_age = field_validator("max_age")(classmethod(lambda cls, v: v and _duration(v)))


def _cidrs(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    for cidr in value:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"'{cidr}' is not an IP address or CIDR block") from None
    return value


class Route(_Doc):
    kind: Literal["Route"] = "Route"
    name: Name
    match: Match
    backend: Name | None = None
    backends: list[WeightedBackend] | None = None
    priority: int = Field(default=0, ge=-1000, le=1000)
    rewrite_prefix: str | None = None
    timeout: str | None = None
    retries: Retries | None = None
    auth: Auth = Field(default_factory=Auth)
    rate_limits: list[RateLimit] = Field(default_factory=list, max_length=16)
    cors: Cors | None = None
    ip_deny: list[str] | None = None
    ip_allow: list[str] | None = None
    max_body_bytes: int | None = Field(default=None, ge=1, le=1 << 30)
    websocket: bool = False

    _timeout = field_validator("timeout")(classmethod(lambda cls, v: v and _duration(v)))
    _ip = field_validator("ip_deny", "ip_allow")(classmethod(lambda cls, v: _cidrs(v)))

    @model_validator(mode="after")
    def _one_backend(self) -> Route:
        if (self.backend is None) == (self.backends is None):
            raise ValueError("a route needs exactly one of backend or backends")
        if self.backends is not None:
            if not self.backends:
                raise ValueError("backends must list at least one service")
            if sum(b.weight for b in self.backends) <= 0:
                raise ValueError("the weights of backends must add up to more than 0")
            names = [b.service for b in self.backends]
            if len(set(names)) != len(names):
                raise ValueError("backends lists a service twice")
        if self.rewrite_prefix is not None:
            if self.match.prefix is None:
                raise ValueError("rewrite_prefix needs match.prefix")
            if not self.rewrite_prefix.startswith("/"):
                raise ValueError("rewrite_prefix must start with '/'")
        return self

    def services(self) -> list[str]:
        if self.backend is not None:
            return [self.backend]
        return [b.service for b in self.backends or []]


class Endpoint(_Doc):
    address: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$")
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=1, le=128)


class HealthCheck(_Doc):
    path: str = "/healthz"
    interval: str = "5s"
    timeout: str = "1s"
    unhealthy_threshold: int = Field(default=2, ge=1, le=100)
    healthy_threshold: int = Field(default=1, ge=1, le=100)

    _d = field_validator("interval", "timeout")(classmethod(lambda cls, v: _duration(v)))


class CircuitBreaker(_Doc):
    max_connections: int | None = Field(default=None, ge=1)
    max_pending_requests: int | None = Field(default=None, ge=1)
    max_requests: int | None = Field(default=None, ge=1)
    max_retries: int | None = Field(default=None, ge=0)


class OutlierDetection(_Doc):
    consecutive_5xx: int = Field(default=5, ge=1)
    interval: str = "10s"
    base_ejection_time: str = "30s"
    max_ejection_percent: int = Field(default=50, ge=1, le=100)

    _d = field_validator("interval", "base_ejection_time")(classmethod(lambda cls, v: _duration(v)))


class Service(_Doc):
    kind: Literal["Service"] = "Service"
    name: Name
    protocol: Literal["http", "http2", "grpc"] = "http"
    endpoints: list[Endpoint] | None = None
    discovery: Literal["static", "registry"] = "static"
    lb: Literal["round_robin", "least_request", "random", "ring_hash", "maglev"] = "round_robin"
    connect_timeout: str = "1s"
    health_check: HealthCheck | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None

    _ct = field_validator("connect_timeout")(classmethod(lambda cls, v: _duration(v)))

    @model_validator(mode="after")
    def _endpoints(self) -> Service:
        if self.discovery == "registry":
            if self.endpoints:
                raise ValueError(
                    "a registry service takes its endpoints from heartbeats; drop endpoints"
                )
        elif not self.endpoints:
            raise ValueError(
                "a static service needs at least one endpoint (or discovery: registry)"
            )
        return self


ENV_NAME_RE = r"^[A-Z_][A-Z0-9_]{0,127}$"
CLAIM_RE = r"^[A-Za-z0-9_.:/-]{1,128}$"


class Issuer(_Doc):
    """A trusted JWT issuer: tokens it signs are accepted on routes with ``auth.require``
    ``jwt`` or ``any``."""

    kind: Literal["Issuer"] = "Issuer"
    name: Name
    issuer: str = Field(min_length=1, max_length=512)
    audiences: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(min_length=1)
    jwks_file: str | None = Field(default=None, min_length=1, max_length=4096)
    jwks: dict[str, Any] | None = None
    hs256_secret_env: str | None = Field(default=None, pattern=ENV_NAME_RE)
    roles_claim: str = Field(default="roles", pattern=CLAIM_RE)
    user_claim: str = Field(default="sub", pattern=CLAIM_RE)
    clock_skew: str = "30s"

    @field_validator("clock_skew")
    @classmethod
    def _skew(cls, value: str) -> str:
        seconds = parse_duration(value)
        if seconds > 600:
            raise ValueError("clock_skew is at most 10m")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> Issuer:
        given = [k for k in ("jwks_file", "jwks", "hs256_secret_env") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("an issuer needs exactly one of jwks_file, jwks or hs256_secret_env")
        if self.jwks is not None:
            from wardgate.domain.tokens import keys_from_jwks

            keys_from_jwks(self.jwks)  # raises ValueError with the reason
        return self


Document = Route | Service | Issuer
KINDS: dict[str, type[Route] | type[Service] | type[Issuer]] = {
    "Route": Route,
    "Service": Service,
    "Issuer": Issuer,
}


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_document(raw: Any, *, expect_kind: str | None = None) -> Document:
    """Validate one document (a mapping); raise ``DocumentError`` with a one-line reason."""
    if not isinstance(raw, dict):
        raise DocumentError(f"a document is a mapping, not {type(raw).__name__}")
    kind = raw.get("kind")
    name: str = raw["name"] if isinstance(raw.get("name"), str) else ""
    if kind is None and expect_kind is not None:
        kind = expect_kind
        raw = {**raw, "kind": kind}
    if kind not in KINDS:
        raise DocumentError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}", name=name)
    if expect_kind is not None and kind != expect_kind:
        raise DocumentError(f"expected kind {expect_kind}, found {kind}", kind=kind, name=name)
    try:
        return KINDS[kind].model_validate(raw)
    except ValidationError as exc:
        raise DocumentError(_reason(exc), kind=kind, name=name) from None


def check_references(routes: dict[str, Route], services: dict[str, Service]) -> None:
    """Raise ``ReferenceError_`` for the first route naming a service that is not there."""
    for route in sorted(routes.values(), key=lambda r: r.name):
        missing = [s for s in route.services() if s not in services]
        if missing:
            raise ReferenceError_(
                f"backend service {', '.join(missing)} does not exist",
                kind="Route",
                name=route.name,
            )


def to_json_dict(doc: Document) -> dict[str, Any]:
    """The stored form: everything the operator set, nothing defaulted in."""
    return doc.model_dump(mode="json", exclude_unset=True) | {"kind": doc.kind, "name": doc.name}
