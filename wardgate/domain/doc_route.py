"""The Route document and its parts."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from wardgate.domain.doc_base import (
    HEADER_NAME_RE,
    HTTP_METHODS,
    RESERVED_HEADERS,
    RETRY_CONDITIONS,
    Name,
    _cidrs,
    _Doc,
    _duration,
    check_envoy_regex,
    host_regex,
)
from wardgate.domain.durations import parse_period

# What Envoy matches as it comes (RFC 3986 path characters, '[' and ']'); it percent-encodes
# the rest of ASCII ('|', '^', '{', ...) before routing and refuses raw non-ASCII bytes.
_PCHAR = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/\[\]]|%[0-9A-Fa-f]{2})*")
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%\[\]]")
_DECODED = re.compile(r"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DdEeFf]|5[CcFf]|7[Ee])")


def check_path_chars(value: str, where: str) -> None:
    """A path as Envoy compares it: URL path characters, others percent-encoded; and no
    percent-encoded letter, digit, '-._~' or slash, which Envoy decodes (or redirects)
    before routing, so that the encoded form would never match."""
    bad = next((c for c in value if not _PLAIN.fullmatch(c)), None)
    if bad is not None:
        encoded = "".join(f"%{b:02X}" for b in bad.encode())
        raise ValueError(
            f"{where} holds {bad!r}: paths are matched as sent on the wire; write it "
            f"percent-encoded ({encoded})"
        )
    if not _PCHAR.fullmatch(value):
        raise ValueError(f"{where}: '%' must start a percent-encoding such as %25")
    if m := _DECODED.search(value):
        decoded = bytes.fromhex(m.group(0)[1:]).decode()
        if decoded in "/\\":
            raise ValueError(
                f"{where} holds {m.group(0)}: Envoy answers requests holding an escaped "
                "slash with a redirect to the unescaped path, so no route ever sees one"
            )
        raise ValueError(
            f"{where} holds {m.group(0)}: Envoy decodes it to {decoded!r} before routing; "
            f"write {decoded!r}"
        )


class Match(_Doc):
    """Which requests a route takes (Envoy ``route.match``). Exactly one of ``prefix``,
    ``path`` or ``regex`` is required; ``methods``, ``headers`` and ``hosts`` narrow the
    match, and every condition given must hold."""

    prefix: str | None = Field(
        default=None,
        description=(
            "Path prefix: starts with '/', holds no '?', '#' or space, and is written as on "
            "the wire: URL path characters, anything else percent-encoded ('/caf%C3%A9'), "
            "never an encoded letter, digit, '-._~' or slash (Envoy decodes those before "
            "routing). Without a trailing '/' "
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
            "x-user-roles, x-auth-method, x-request-id, x-wardgate-scope, cookie, authorization "
            "and x-api-key cannot be named."
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
            if value is not None:
                check_path_chars(value, f"match.{key}")
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


class Route(_Doc):
    """A Route document: which requests go to which service, and the policies on the way.
    Each route becomes one route of the route table Envoy receives, split into scopes by path."""

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
            check_path_chars(self.rewrite_prefix, "rewrite_prefix")
        return self

    def services(self) -> list[str]:
        if self.backend is not None:
            return [self.backend]
        return [b.service for b in self.backends or []]
