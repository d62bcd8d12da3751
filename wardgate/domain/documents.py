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
    """Which requests a route takes (Envoy ``route.match``). Exactly one of ``prefix``,
    ``path`` or ``regex`` is required; ``methods``, ``headers`` and ``hosts`` narrow the
    match, and every condition given must hold."""

    prefix: str | None = Field(
        default=None,
        description=(
            "Path prefix: starts with '/', holds no '?', '#' or space. Without a trailing '/' "
            "it becomes Envoy's path_separated_prefix ('/api/users' matches /api/users and "
            "/api/users/42, not /api/usersX); ending in '/' a plain prefix ('/' matches every "
            "path). Exactly one of prefix, path or regex."
        ),
    )
    path: str | None = Field(
        default=None,
        description=(
            "Exact path (Envoy match.path), same character rules as prefix. Exactly one of "
            "prefix, path or regex."
        ),
    )
    regex: str | None = Field(
        default=None,
        description=(
            "RE2 regex the whole path (without the query string) must match (Envoy "
            "match.safe_regex). Refused if RE2 rejects it or its program size is over 100. "
            "Exactly one of prefix, path or regex."
        ),
    )
    methods: list[str] | None = Field(
        default=None,
        description=(
            "HTTP methods the route takes, upper-cased: GET, HEAD, POST, PUT, PATCH, DELETE, "
            "OPTIONS, CONNECT, TRACE (a ':method' header matcher in Envoy; OPTIONS is added "
            "when the route has cors, for preflights). Unset: any method."
        ),
    )
    headers: dict[str, str] | None = Field(
        default=None,
        description=(
            "Request headers that must be present with exactly this value (Envoy header "
            "matcher, string_match.exact). Names are lower-cased HTTP tokens; x-user-id, "
            "x-user-roles, x-auth-method, x-request-id, cookie, authorization and x-api-key "
            "cannot be named."
        ),
    )
    hosts: list[str] | None = Field(
        default=None,
        description=(
            "Host names the Host/:authority header must be one of, with any port (an "
            "':authority' regex matcher in Envoy). A leading '*.' matches any subdomain, not "
            "the bare domain; names are lower-cased. Unset: any host."
        ),
    )

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
    """One service of a route's traffic split (an entry of Envoy's
    ``weighted_clusters.clusters``)."""

    service: Name = Field(
        description="Name of the Service document (the Envoy cluster) that gets this share."
    )
    weight: int = Field(
        ge=0,
        le=10000,
        description=(
            "Relative share of the traffic, 0 to 10000 (Envoy cluster weight). The weights of "
            "a route's backends must add up to more than 0."
        ),
    )


class Retries(_Doc):
    """Retry policy of a route (Envoy ``route.retry_policy``)."""

    attempts: int = Field(
        ge=0, le=10, description="Retries after the first try, 0 to 10 (Envoy num_retries)."
    )
    on: list[str] = Field(
        default_factory=lambda: ["5xx", "reset", "connect-failure"],
        description=(
            "When to retry (Envoy retry_on, comma-joined): 5xx, gateway-error, reset, "
            "connect-failure, retriable-4xx, refused-stream, retriable-status-codes, "
            "http3-post-connect-failure. Default: [5xx, reset, connect-failure]."
        ),
    )
    per_try_timeout: str | None = Field(
        default=None,
        description=(
            "Timeout of each try, a duration such as '250ms' or '2s' (more than 0, at most "
            "1d; Envoy per_try_timeout). Unset: each try is bounded only by the route's "
            "timeout."
        ),
    )

    @field_validator("on")
    @classmethod
    def _on(cls, value: list[str]) -> list[str]:
        bad = [c for c in value if c not in RETRY_CONDITIONS]
        if bad:
            raise ValueError(f"unknown retry condition(s) {bad}; use {sorted(RETRY_CONDITIONS)}")
        return value

    _ptt = field_validator("per_try_timeout")(classmethod(lambda cls, v: v and _duration(v)))


class Auth(_Doc):
    """Who may pass a route. Unless ``require`` is ``none``, the route's policy travels to
    wardgate's ext_authz in the per-route ``check_settings.context_extensions``."""

    require: Literal["none", "session", "jwt", "api_key", "any"] = Field(
        default="none",
        description=(
            "The credential the route accepts: none (public route: ext_authz is off, no "
            "identity), session (the wg_session cookie), jwt ('authorization: Bearer' token "
            "signed by a trusted Issuer), api_key (the x-api-key header) or any of the three. "
            "Default: none."
        ),
    )
    roles: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]] = Field(
        default_factory=list,
        description=(
            "Role names (^[A-Za-z0-9._:-]{1,64}$); the caller needs at least one of them, "
            "otherwise 403 forbidden. Not allowed with require none. Default: [] (any "
            "authenticated caller)."
        ),
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

    by: str | list[str] = Field(
        description=(
            "What is counted separately: one dimension, or a list of 1 to 4 different ones "
            "(each combination counted apart). A dimension is ip (the client address, Envoy "
            "remote_address), user (the identity from ext_authz), api_key (the key's name), "
            "route (one counter for all clients) or header:NAME (the request header NAME). "
            "A rule whose user, api_key or header has no value does not apply."
        )
    )
    requests: int = Field(
        ge=1,
        le=10**9,
        description=(
            "Requests allowed per period, 1 to 10^9 (API keys of a tier listed in tiers get "
            "that tier's number instead)."
        ),
    )
    per: str = Field(
        description=(
            "The period: second, minute, hour, day, or a duration that is a whole number of "
            "seconds, at least 1s (such as '30s' or '5m')."
        )
    )
    algorithm: Literal["fixed_window", "sliding_window", "token_bucket"] = Field(
        default="fixed_window",
        description=(
            "Counting method, in wardgate's rate-limit service: fixed_window, sliding_window "
            "or token_bucket. Default: fixed_window."
        ),
    )
    shadow: bool = Field(
        default=False,
        description="Count and report, but never refuse a request. Default: false.",
    )
    # Per API key tier: requests for keys of that tier (others get ``requests``).
    tiers: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")], int] | None = Field(
        default=None,
        description=(
            "A different requests (1 to 10^9) for API keys of each tier named (tier names "
            "like role names). The tier comes from ext_authz ('default' for a key without one "
            "and for requests without an API key); tiers not listed get requests. The tier "
            "does not split the count."
        ),
    )
    key: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")] | None = Field(
        default=None,
        description=(
            "A counter shared by every rule, on any route, naming the same key (rule id "
            "key:<key> instead of <route>#<index>); give such rules the same numbers and by. "
            "Unset: the rule counts for its route alone."
        ),
    )

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
    """CORS policy of a route: a per-route Envoy ``CorsPolicy``, applied by Envoy's CORS filter
    (which answers preflights before RBAC, ext_authz and rate limiting)."""

    allow_origins: list[str] = Field(
        description=(
            "Allowed origins: '*' alone, or origins such as https://app.example.com "
            "(http(s)://host[:port]), compared exactly (Envoy allow_origin_string_match; '*' "
            "becomes the regex '.*'). Origins other than '*' also pass the CSRF check."
        )
    )
    allow_methods: list[str] | None = Field(
        default=None,
        description=(
            "Methods allowed cross-origin (Envoy allow_methods, comma-joined). Unset: the "
            "route's match.methods."
        ),
    )
    allow_headers: list[str] | None = Field(
        default=None,
        description="Request headers allowed cross-origin (Envoy allow_headers, comma-joined).",
    )
    expose_headers: list[str] | None = Field(
        default=None,
        description=(
            "Response headers exposed to the browser (Envoy expose_headers, comma-joined)."
        ),
    )
    allow_credentials: bool = Field(
        default=False,
        description=(
            "Allow credentials such as cookies cross-origin (Envoy allow_credentials). "
            "Default: false."
        ),
    )
    max_age: str | None = Field(
        default=None,
        description=(
            "How long a browser may cache a preflight answer, a duration such as '10m' "
            "(more than 0, at most 1d); sent to Envoy (max_age) in whole seconds."
        ),
    )

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
    """A Route document: which requests go to which service, and the policies on the way.
    Each route becomes one route of Envoy's route configuration ``wardgate_routes``."""

    kind: Literal["Route"] = Field(default="Route", description="Document kind: Route.")
    name: Name = Field(
        description=(
            "Unique route name: 1 to 63 lower-case letters, digits, '.', '_' or '-', starting "
            "and ending with a letter or digit; names starting with 'wardgate' are reserved. "
            "Also the Envoy route name and the start of its rate-limit rule ids."
        )
    )
    match: Match = Field(description="Which requests this route takes (Envoy route.match).")
    backend: Name | None = Field(
        default=None,
        description=(
            "The one Service to send requests to (Envoy route.cluster). Exactly one of "
            "backend or backends."
        ),
    )
    backends: list[WeightedBackend] | None = Field(
        default=None,
        description=(
            "Traffic split between services (Envoy route.weighted_clusters): at least one, "
            "no service twice, weights adding up to more than 0. Exactly one of backend or "
            "backends."
        ),
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description=(
            "-1000 to 1000: a route with a higher value is tried earlier. Default: 0 (equal "
            "priorities: exact paths, then regexes, then prefixes, longer ones first)."
        ),
    )
    rewrite_prefix: str | None = Field(
        default=None,
        description=(
            "Replaces the matched match.prefix before the request goes upstream (Envoy "
            "prefix_rewrite). Starts with '/'; needs match.prefix."
        ),
    )
    timeout: str | None = Field(
        default=None,
        description=(
            "Timeout of the whole upstream request, a duration such as '250ms', '5s' or '1m' "
            "(more than 0, at most 1d; Envoy route.timeout). Unset: 15s."
        ),
    )
    retries: Retries | None = Field(
        default=None,
        description="Retry policy (Envoy route.retry_policy). Unset: no retries.",
    )
    auth: Auth = Field(
        default_factory=Auth,
        description=(
            "Who may pass (per-route ext_authz configuration). Default: require none, a "
            "public route."
        ),
    )
    rate_limits: list[RateLimit] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Rate limits, at most 16, each one entry of Envoy's route.rate_limits judged by "
            "wardgate's rate-limit service; a refused request gets 429. Default: none."
        ),
    )
    cors: Cors | None = Field(
        default=None,
        description="CORS policy (per-route Envoy CorsPolicy). Unset: no CORS policy.",
    )
    ip_deny: list[str] | None = Field(
        default=None,
        description=(
            "IP addresses or CIDR blocks (IPv4 or IPv6; host bits ignored) refused on this "
            "route with 403 (per-route Envoy RBAC on the client's remote_ip)."
        ),
    )
    ip_allow: list[str] | None = Field(
        default=None,
        description=(
            "IP addresses or CIDR blocks (IPv4 or IPv6; host bits ignored) that alone may use "
            "this route, less those in ip_deny; others get 403 (per-route Envoy RBAC ALLOW "
            "policy on the client's remote_ip)."
        ),
    )
    max_body_bytes: int | None = Field(
        default=None,
        ge=1,
        le=1 << 30,
        description=(
            "Largest request body in bytes, 1 to 2^30: turns on Envoy's buffer filter for "
            "this route (max_request_bytes), so the body is buffered and a larger one gets "
            "413. Unset: the body streams, no limit."
        ),
    )
    websocket: bool = Field(
        default=False,
        description=(
            "Allow WebSocket upgrades (Envoy route upgrade_configs, upgrade_type websocket). "
            "Default: false."
        ),
    )

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
    """One host of a static service (an Envoy ``lb_endpoint``)."""

    address: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9.:-]+$",
        description=(
            "IP address or host name (Envoy socket_address.address). When any endpoint of the "
            "service is a host name, the cluster is STRICT_DNS and Envoy resolves the names; "
            "otherwise the endpoints go by EDS."
        ),
    )
    port: int = Field(ge=1, le=65535, description="TCP port, 1 to 65535 (Envoy port_value).")
    weight: int = Field(
        default=1,
        ge=1,
        le=128,
        description=(
            "Relative share of the traffic, 1 to 128 (Envoy load_balancing_weight). Default: 1."
        ),
    )


class HealthCheck(_Doc):
    """Active health checking of a service's hosts (the Envoy cluster's
    ``health_checks[0]``)."""

    path: str = Field(
        default="/healthz",
        description=(
            "Path requested (Envoy http_health_check.path). Unused with protocol grpc, which "
            "checks the standard gRPC health service (grpc_health_check). Default: /healthz."
        ),
    )
    interval: str = Field(
        default="5s",
        description=(
            "Time between checks, a duration such as '5s' (more than 0, at most 1d; Envoy "
            "interval and no_traffic_interval). Default: 5s."
        ),
    )
    timeout: str = Field(
        default="1s",
        description=(
            "Time to wait for a check's answer, a duration such as '1s' (more than 0, at most "
            "1d; Envoy timeout). Default: 1s."
        ),
    )
    unhealthy_threshold: int = Field(
        default=2,
        ge=1,
        le=100,
        description=(
            "Failed checks in a row before a host is marked unhealthy, 1 to 100 (Envoy "
            "unhealthy_threshold). Default: 2."
        ),
    )
    healthy_threshold: int = Field(
        default=1,
        ge=1,
        le=100,
        description=(
            "Passed checks in a row before an unhealthy host is marked healthy again, 1 to "
            "100 (Envoy healthy_threshold). Default: 1."
        ),
    )

    _d = field_validator("interval", "timeout")(classmethod(lambda cls, v: _duration(v)))


class CircuitBreaker(_Doc):
    """Connection and request caps of a service: the fields set become Envoy's
    ``circuit_breakers.thresholds[0]`` (default priority). Fields left unset keep Envoy's
    defaults; with none set, no ``circuit_breakers`` block is sent."""

    max_connections: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most connections to the service's hosts, at least 1 (Envoy max_connections). "
            "Unset: Envoy's default (1024)."
        ),
    )
    max_pending_requests: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most requests waiting for a connection, at least 1 (Envoy max_pending_requests). "
            "Unset: Envoy's default (1024)."
        ),
    )
    max_requests: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most requests in flight to the service at once, at least 1 (Envoy max_requests). "
            "Unset: Envoy's default (1024)."
        ),
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Most retries in flight to the service at once, 0 or more (Envoy max_retries). "
            "Unset: Envoy's default (3)."
        ),
    )


class OutlierDetection(_Doc):
    """Ejection of a service's failing hosts (the Envoy cluster's ``outlier_detection``)."""

    consecutive_5xx: int = Field(
        default=5,
        ge=1,
        description=(
            "5xx answers in a row after which a host is ejected, at least 1 (Envoy "
            "consecutive_5xx). Default: 5."
        ),
    )
    interval: str = Field(
        default="10s",
        description=(
            "Time between ejection analysis sweeps, a duration such as '10s' (more than 0, at "
            "most 1d; Envoy interval). Default: 10s."
        ),
    )
    base_ejection_time: str = Field(
        default="30s",
        description=(
            "Base time a host stays ejected, multiplied by the number of times it has been "
            "ejected; a duration such as '30s' (more than 0, at most 1d; Envoy "
            "base_ejection_time). Default: 30s."
        ),
    )
    max_ejection_percent: int = Field(
        default=50,
        ge=1,
        le=100,
        description=(
            "Largest share of the service's hosts ejected at once, 1 to 100 percent (Envoy "
            "max_ejection_percent). Default: 50."
        ),
    )

    _d = field_validator("interval", "base_ejection_time")(classmethod(lambda cls, v: _duration(v)))


class Service(_Doc):
    """A Service document: an upstream service and how Envoy reaches it. Each service becomes
    one Envoy ``Cluster`` of the same name (type EDS, or STRICT_DNS when an endpoint is a host
    name)."""

    kind: Literal["Service"] = Field(default="Service", description="Document kind: Service.")
    name: Name = Field(
        description=(
            "Unique service name, also the Envoy cluster name: 1 to 63 lower-case letters, "
            "digits, '.', '_' or '-', starting and ending with a letter or digit; names "
            "starting with 'wardgate' are reserved."
        )
    )
    protocol: Literal["http", "http2", "grpc"] = Field(
        default="http",
        description=(
            "Upstream protocol: http, http2 or grpc. http2 and grpc use HTTP/2 (Envoy "
            "HttpProtocolOptions explicit_http_config.http2_protocol_options); a grpc "
            "service's health_check uses the gRPC health service. Default: http."
        ),
    )
    endpoints: list[Endpoint] | None = Field(
        default=None,
        description=(
            "Where the service runs (one Envoy locality of lb_endpoints, by EDS or inline for "
            "STRICT_DNS). At least one with discovery static; left out with discovery "
            "registry."
        ),
    )
    discovery: Literal["static", "registry"] = Field(
        default="static",
        description=(
            "static: the endpoints listed. registry: the instances currently sending "
            "heartbeats (POST /registry/heartbeat or wardgate register), by EDS. "
            "Default: static."
        ),
    )
    lb: Literal["round_robin", "least_request", "random", "ring_hash", "maglev"] = Field(
        default="round_robin",
        description=(
            "Load-balancing policy (Envoy lb_policy): round_robin, least_request, random, "
            "ring_hash or maglev; with ring_hash or maglev the routes to the service hash on "
            "the client's source IP. Default: round_robin."
        ),
    )
    connect_timeout: str = Field(
        default="1s",
        description=(
            "TCP connect timeout, a duration such as '250ms' or '1s' (more than 0, at most 1d; "
            "Envoy connect_timeout). Default: 1s."
        ),
    )
    health_check: HealthCheck | None = Field(
        default=None,
        description="Active health checking (Envoy health_checks[0]). Unset: none.",
    )
    circuit_breaker: CircuitBreaker | None = Field(
        default=None,
        description=(
            "Connection and request caps (Envoy circuit_breakers.thresholds[0]). Unset: "
            "Envoy's defaults."
        ),
    )
    outlier_detection: OutlierDetection | None = Field(
        default=None,
        description="Ejection of failing hosts (Envoy outlier_detection). Unset: none.",
    )

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

    kind: Literal["Issuer"] = Field(default="Issuer", description="Document kind: Issuer.")
    name: Name = Field(
        description=(
            "Unique issuer name (same rules as a route name; names starting with 'wardgate' "
            "are reserved). Not used in tokens."
        )
    )
    issuer: str = Field(
        min_length=1,
        max_length=512,
        description=(
            "The token's iss claim must equal this. One iss is trusted through one Issuer "
            "only: a later one (in name order) with the same value is refused."
        ),
    )
    audiences: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        min_length=1,
        description="At least one audience; the token's aud claim must name one of these.",
    )
    jwks_file: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "Path of a JWKS file on each host running wardgate serve, re-read every "
            "resync_interval; its RS256 and ES256 (P-256) signing keys are used. Exactly one "
            "of jwks_file, jwks or hs256_secret_env."
        ),
    )
    jwks: dict[str, Any] | None = Field(
        default=None,
        description=(
            'An inline JWKS ({"keys": [...]}) holding at least one RS256 or ES256 (P-256) '
            "signing key, checked when the document is validated. Exactly one of jwks_file, "
            "jwks or hs256_secret_env."
        ),
    )
    hs256_secret_env: str | None = Field(
        default=None,
        pattern=ENV_NAME_RE,
        description=(
            "Name of the environment variable of wardgate serve holding the HS256 shared "
            "secret (32 characters or more). Exactly one of jwks_file, jwks or "
            "hs256_secret_env."
        ),
    )
    roles_claim: str = Field(
        default="roles",
        pattern=CLAIM_RE,
        description=(
            "Claim holding the roles: a list of strings, or one string of names separated by "
            "spaces or commas; missing means no roles; at most 64 are kept. Default: roles."
        ),
    )
    user_claim: str = Field(
        default="sub",
        pattern=CLAIM_RE,
        description=(
            "Claim holding the user, a string of 1 to 256 characters sent upstream as "
            "x-user-id. Default: sub."
        ),
    )
    clock_skew: str = Field(
        default="30s",
        description=(
            "Leeway when checking exp, nbf and iat, a duration such as '30s', at most 10m. "
            "Default: 30s."
        ),
    )

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
