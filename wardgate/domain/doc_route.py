"""The Route document: which requests go to which service, and the policies on the way. Its
match is in ``doc_match``, its other parts in ``doc_route_parts``."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from wardgate.domain.doc_base import (
    QUOTA_SLOTS,
    Name,
    _cidrs,
    _Doc,
    _duration,
    shared,
)
from wardgate.domain.doc_extproc import Cache, Compose, Transform, check_compose
from wardgate.domain.doc_match import Match, check_path_chars
from wardgate.domain.doc_route_parts import (
    Auth,
    Cors,
    RateLimit,
    Retries,
    Transcode,
    WeightedBackend,
)
from wardgate.domain.extproc_policy import encode_policy

# The defaults of a route that sets no auth or no rate_limits, shared by all such routes (a
# document is frozen, and nothing changes its lists).
_PUBLIC = Auth()
_NO_RATE_LIMITS: list[RateLimit] = []


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
        default_factory=lambda: _PUBLIC,
        description=(
            "Who may pass (per-route ext_authz configuration). Default: require none, a "
            "public route."
        ),
    )
    rate_limits: list[RateLimit] = Field(
        default_factory=lambda: _NO_RATE_LIMITS,
        max_length=16,
        description=(
            "Rate limits, at most 16; a refused request gets 429. Each is judged as its "
            "enforce says: by wardgate's rate-limit service (global), by each Envoy (local), "
            "or by each Envoy within a lease from wardgate (quota). Default: none."
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
    transcode: Transcode | None = Field(
        default=None,
        description=(
            "Answer REST/JSON with gRPC services of a Descriptor document (Envoy's gRPC-JSON "
            "transcoder): the backends must be protocol grpc; no rewrite_prefix. Unset: none."
        ),
    )
    transform: Transform | None = Field(
        default=None,
        description=(
            "Headers set or removed and JSON fields kept or dropped, by wardgate's external "
            "processor (docs/TRANSFORMS.md). Unset: none."
        ),
    )
    cache: Cache | None = Field(
        default=None,
        description=(
            "Answers to GET and HEAD kept in the shared response cache (Redis), per user on "
            "an authenticated route unless shared (docs/TRANSFORMS.md). Unset: no cache."
        ),
    )
    compose: Compose | None = Field(
        default=None,
        description=(
            "One JSON answer from several backends called at once, each part's JSON under "
            "its name (1 to 16 parts; part names are letters, digits, '_' and '-'). Instead "
            "of backend or backends; the route answers GET and HEAD."
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
    # Last, so that it wraps the validators above.
    _shared = field_validator(
        "backends", "retries", "auth", "rate_limits", "cors", "ip_deny", "ip_allow", mode="wrap"
    )(classmethod(shared))

    @model_validator(mode="after")
    def _one_backend(self) -> Route:
        if [self.backend, self.backends, self.compose].count(None) != 2:
            raise ValueError("a route needs exactly one of backend, backends or compose")
        self._check_extproc()
        if self.backends is not None:
            if not self.backends:
                raise ValueError("backends must list at least one service")
            if sum(b.weight for b in self.backends) <= 0:
                raise ValueError("the weights of backends must add up to more than 0")
            names = [b.service for b in self.backends]
            if len(set(names)) != len(names):
                raise ValueError("backends lists a service twice")
        if self.transcode is not None and self.rewrite_prefix is not None:
            raise ValueError("transcode and rewrite_prefix do not go together (the gRPC path)")
        if self.rewrite_prefix is not None:
            if self.match.prefix is None:
                raise ValueError("rewrite_prefix needs match.prefix")
            if not self.rewrite_prefix.startswith("/"):
                raise ValueError("rewrite_prefix must start with '/'")
            check_path_chars(self.rewrite_prefix, "rewrite_prefix")
        self._quota_slots()
        return self

    def _check_extproc(self) -> None:
        if self.compose is not None:
            check_compose(self.compose)
            if self.transcode is not None or self.rewrite_prefix is not None or self.websocket:
                raise ValueError("compose goes without transcode, rewrite_prefix and websocket")
            methods = set(self.match.methods or [])
            if not methods or not methods <= {"GET", "HEAD"}:
                raise ValueError("a compose route answers GET and HEAD: set match.methods: [GET]")
        if self.websocket and (self.transform is not None or self.cache is not None):
            raise ValueError("websocket goes without transform and cache")
        if self.transform is None and self.cache is None and self.compose is None:
            return
        encode_policy(
            route=self.name,
            authenticated=self.auth.require != "none",
            transform=self.transform,
            cache=self.cache,
            compose=self.compose,
            timeout=self.timeout,
        )

    def _quota_slots(self) -> None:
        quota = [r for r in self.rate_limits if r.enforce == "quota"]
        if len(quota) > QUOTA_SLOTS:
            raise ValueError(
                f"a route takes at most {QUOTA_SLOTS} rate limits with enforce: quota "
                f"(it has {len(quota)})"
            )

    def services(self) -> list[str]:
        if self.backend is not None:
            return [self.backend]
        if self.compose is not None:
            return sorted({p.backend for p in self.compose.values()})
        return [b.service for b in self.backends or []]
