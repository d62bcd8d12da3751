"""The parts of a Route besides its match: the traffic split (``WeightedBackend``) and the
policies on the way (``Retries``, ``Auth``, ``RateLimit``, ``Cors``)."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from wardgate.domain.doc_base import (
    QUOTA_SLOTS,
    RETRY_CONDITIONS,
    ROLE_PATTERN,
    HeaderName,
    MethodToken,
    Name,
    _Doc,
    _duration,
    _no_control,
    shown,
)
from wardgate.domain.durations import parse_period
from wardgate.domain.grpc_api import SERVICE_NAME_RE
from wardgate.domain.origin_patterns import (
    EXACT_ORIGIN_PATTERN,
    WILDCARD_ORIGIN_PATTERN,
    check_origin,
)


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
    roles: list[Annotated[str, Field(pattern=ROLE_PATTERN)]] = Field(
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


RATE_DIMENSIONS_RE = re.compile(r"ip|user|api_key|route|header:[a-z0-9][a-z0-9_-]*")
QUOTA_DIMENSIONS = frozenset({"user", "api_key", "route"})


class RateLimit(_Doc):
    """One limit. ``by`` names what is counted apart: one dimension, or several together
    (``[user, header:x-tenant]``: per user per tenant); every rule also counts per route
    unless ``key`` names a counter shared by the routes that use the same key."""

    by: str | list[str] = Field(
        description=(
            "What is counted separately: one dimension, or a list of 1 to 4 different ones "
            "(each combination counted apart). A dimension is ip (the client address, Envoy "
            "remote_address), user (the identity the gateway established: ext_authz, or "
            "Envoy from a ticket or JWT), api_key (the key's name), "
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
    failure_mode: Literal["open", "closed"] | None = Field(
        default=None,
        description=(
            "What this rule does when wardgate cannot answer in time (overloaded, or Redis "
            "down): open lets the request through (Envoy's local guard still caps each "
            "client), closed refuses it with 503. Default: the ratelimit_failure_mode "
            "setting."
        ),
    )
    # Per API key tier: requests for keys of that tier (others get ``requests``).
    tiers: dict[Annotated[str, Field(pattern=ROLE_PATTERN)], int] | None = Field(
        default=None,
        description=(
            "A different requests (1 to 10^9) for API keys of each tier named (tier names "
            "like role names). The tier comes from ext_authz ('default' for a key without one "
            "and for requests without an API key); tiers not listed get requests. The tier "
            "does not split the count."
        ),
    )
    enforce: Literal["global", "local", "quota"] = Field(
        default="global",
        description=(
            "Where the limit is enforced: global (wardgate's rate-limit service decides every "
            "request, exactly, against counters in Redis), local (each Envoy enforces the "
            "limit on its own, no callout: N Envoys admit up to N times the limit) or quota "
            "(no callout per request: wardgate leases each Envoy a share of one budget kept "
            "in Redis; a burst can overshoot by a documented margin). local and quota take no "
            "sliding_window, shadow, failure_mode or tiers; local takes no key; quota counts "
            "only identities the gateway established (by: user, api_key, route). At most "
            f"{QUOTA_SLOTS} quota rules per route. Default: global (docs/DECISIONS.md 50-53)."
        ),
    )
    key: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")] | None = Field(
        default=None,
        description=(
            "A counter shared by every rule, on any route, naming the same key (rule id "
            "key:<key> instead of <route>#<index>); such rules must have the same requests, "
            "per, algorithm, by and tiers (a route whose rule differs is refused). "
            "Unset: the rule counts for its route alone."
        ),
    )

    @field_validator("by")
    @classmethod
    def _by(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            return _checked_by((value,))[0]
        return list(_checked_by(tuple(value)))

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None and any(not 1 <= n <= 10**9 for n in value.values()):
            raise ValueError("rate_limits.tiers: each tier's requests is 1 to 1e9")
        return value

    @model_validator(mode="after")
    def _enforce(self) -> RateLimit:
        if self.enforce == "global":
            return self
        where = f"enforce: {self.enforce}"
        if self.algorithm == "sliding_window":
            raise ValueError(f"{where} has no sliding_window: use fixed_window or token_bucket")
        for field in ("shadow", "failure_mode", "tiers"):
            if getattr(self, field):
                raise ValueError(f"{where} takes no {field} (only enforce: global does)")
        if self.enforce == "local" and self.key:
            raise ValueError(
                "enforce: local keeps its buckets per route and Envoy: a shared key needs "
                "enforce: global or quota"
            )
        if self.enforce == "quota":
            chosen = [d for d in self.dimensions if d not in QUOTA_DIMENSIONS]
            if chosen:
                raise ValueError(
                    f"enforce: quota counts only identities the gateway established (user, "
                    f"api_key, route), not {chosen[0]}: a client chooses those values, and every "
                    "value would be a bucket in every Envoy (use enforce: local or global)"
                )
        return self

    @property
    def dimensions(self) -> list[str]:
        return [self.by] if isinstance(self.by, str) else list(self.by)

    @field_validator("per")
    @classmethod
    def _per(cls, value: str) -> str:
        return _checked_period(value)

    @property
    def period_seconds(self) -> int:
        return int(parse_period(self.per))


# Rules repeat across routes (by: ip, per: minute): each value is checked once, and the rules
# share its strings. A value that is refused is not remembered.
@functools.lru_cache(maxsize=1024)
def _checked_by(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values or len(values) > 4:
        raise ValueError("rate_limits.by: one to four dimensions")
    out = []
    for v in values:
        v = _no_control(v).strip().lower()
        if not RATE_DIMENSIONS_RE.fullmatch(v):
            raise ValueError(
                f"rate_limits.by {shown(v)}: use ip, user, api_key, route or header:NAME"
            )
        out.append(v)
    if len(set(out)) != len(out):
        raise ValueError("rate_limits.by names a dimension twice")
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _checked_period(value: str) -> str:
    parse_period(value)
    return value


ORIGIN_PATTERN = EXACT_ORIGIN_PATTERN


class Cors(_Doc):
    """CORS policy of a route: a per-route Envoy ``CorsPolicy``, applied by Envoy's CORS filter
    (which answers preflights before RBAC, ext_authz and rate limiting)."""

    allow_origins: list[
        Annotated[
            str,
            Field(
                json_schema_extra={"pattern": f"{ORIGIN_PATTERN}|{WILDCARD_ORIGIN_PATTERN}|^[*]$"}
            ),
        ]
    ] = Field(
        description=(
            "Allowed origins: '*' alone, origins such as https://app.example.com "
            "(http(s)://host[:port]), compared exactly (Envoy allow_origin_string_match; '*' "
            "becomes the regex '.*'), or wildcard origins such as https://*.example.com ('*' "
            "is one or more whole labels in front of a domain of two labels or more; scheme "
            "and port fixed). Origins other than '*' also pass the CSRF check."
        )
    )
    allow_methods: list[MethodToken] | None = Field(
        default=None,
        description=(
            "Methods allowed cross-origin (Envoy allow_methods, comma-joined into the "
            "access-control-allow-methods header): HTTP tokens, such as GET or '*'. Unset: the "
            "route's match.methods."
        ),
    )
    allow_headers: list[HeaderName] | None = Field(
        default=None,
        description=(
            "Request headers allowed cross-origin (Envoy allow_headers, comma-joined into the "
            "access-control-allow-headers header): header names (HTTP tokens) or '*'."
        ),
    )
    expose_headers: list[HeaderName] | None = Field(
        default=None,
        description=(
            "Response headers exposed to the browser (Envoy expose_headers, comma-joined into "
            "the access-control-expose-headers header): header names (HTTP tokens) or '*'."
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
            try:
                check_origin(origin)
            except ValueError as exc:
                raise ValueError(f"{shown(origin)}: {exc}") from None
        return value

    _max_age = field_validator("max_age")(classmethod(lambda cls, v: v and _duration(v)))


class Transcode(_Doc):
    """REST/JSON in, gRPC to the backend: Envoy's gRPC-JSON transcoder with the services of a
    Descriptor document (docs/TRANSCODING.md)."""

    descriptor: Name = Field(description="The Descriptor document holding the services.")
    services: list[Annotated[str, Field(pattern=SERVICE_NAME_RE)]] = Field(
        min_length=1,
        max_length=16,
        description=(
            "Full names of the gRPC services exposed (package.Service), 1 to 16, each defined "
            "in the descriptor. Their methods answer per their google.api.http options; a "
            "method without one answers POST /package.Service/Method with a JSON body."
        ),
    )

    @field_validator("services")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("transcode.services names a service twice")
        return value
