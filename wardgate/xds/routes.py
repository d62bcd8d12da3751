"""Route documents -> Envoy route entries, in the global order (``docs/ROUTING.md``), and what
every route shares: the virtual host and wardgate's own routes.

Entries are dicts in Envoy's JSON form; ``assemble.py`` serializes them, ``scope_layout.py``
places them in scopes.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

# Importing these registers the message types that "@type" below refers to.
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2  # noqa: F401
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: F401

from wardgate.domain.doc_base import QUOTA_HEADERS
from wardgate.domain.documents import RateLimit, Route, host_regex
from wardgate.domain.durations import parse_duration
from wardgate.domain.origin_patterns import is_wildcard, parse_wildcard
from wardgate.domain.ratelimit import RULE_KEY, TIER_KEY, encode_rule
from wardgate.domain.tickets import TICKET_SID_HEADER
from wardgate.xds.extproc import compose_action, extproc_off
from wardgate.xds.extproc import route_filters as extproc_filters
from wardgate.xds.local_guard import F_LOCAL_RATELIMIT, guard_bucket, route_guard
from wardgate.xds.local_limits import F_LOCAL_LIMITS, route_local_limits
from wardgate.xds.native_auth import route_filters as native_auth_filters
from wardgate.xds.pbencode import shared
from wardgate.xds.quota import F_QUOTA_KEYS, route_quota_keys, route_rules
from wardgate.xds.scope_key import SCOPE_HEADER
from wardgate.xds.transcoder import route_filters as transcoding_filters
from wardgate.xds.transcoder import transcoder_off
from wardgate.xds.translate import (
    EXT_AUTHZ,
    F_BUFFER,
    F_CORS,
    F_LUA,
    F_RBAC,
    HTTP_CLUSTER,
    TranslateOptions,
    envoy_duration,
)
from wardgate.xds.typeurls import (
    T_BUFFER_ROUTE,
    T_CORS_POLICY,
    T_EXT_AUTHZ_ROUTE,
    T_LUA_ROUTE,
    T_RBAC_ROUTE,
)

DEFAULT_OPTIONS = TranslateOptions()


def _regex_alternatives(values: list[str]) -> str:
    return "|".join(re.escape(v) for v in values)


def _route_match(route: Route) -> dict[str, Any]:
    m = route.match
    match: dict[str, Any] = {}
    if m.path is not None:
        match["path"] = m.path
    elif m.regex is not None:
        match["safe_regex"] = {"regex": m.regex}
    else:
        prefix = m.prefix or "/"
        # "/api/users" matches /api/users and /api/users/..., never /api/usersX.
        key = "prefix" if prefix.endswith("/") else "path_separated_prefix"
        match[key] = prefix
    headers: list[dict[str, Any]] = []
    if m.methods:
        if not m.headers and not m.hosts:
            match["headers"] = _methods_alone(tuple(m.methods), route.cors is not None)
            return match
        headers.append(_methods(tuple(m.methods), route.cors is not None))
    for name, value in (m.headers or {}).items():
        headers.append({"name": name, "string_match": {"exact": value}})
    if m.hosts:
        headers.append(
            {"name": ":authority", "string_match": {"safe_regex": {"regex": host_regex(m.hosts)}}}
        )
    if headers:
        match["headers"] = headers
    return match


@functools.lru_cache(maxsize=256)
def _methods(methods: tuple[str, ...], cors: bool) -> dict[str, Any]:
    """The header matcher for a route's methods (many routes share it)."""
    names = list(methods)
    if cors and "OPTIONS" not in names:
        names.append("OPTIONS")  # the CORS preflight must reach the CORS filter
    regex = f"^({_regex_alternatives(names)})$"
    return shared(  # type: ignore[no-any-return]
        {"name": ":method", "string_match": {"safe_regex": {"regex": regex}}}
    )


@functools.lru_cache(maxsize=256)
def _methods_alone(methods: tuple[str, ...], cors: bool) -> list[dict[str, Any]]:
    return shared([_methods(methods, cors)])  # type: ignore[no-any-return]


def _metadata_action(key: str, field: str, default: str | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {
        "descriptor_key": key,
        "metadata_key": {"key": EXT_AUTHZ, "path": [{"key": field}]},
        "source": "DYNAMIC",
    }
    if default is not None:
        action["default_value"] = default
    return {"metadata": action}


def _rules(route: Route) -> list[tuple[str, RateLimit]]:
    """The route's rules, each with its value as its descriptor carries it
    (``domain/ratelimit.py``)."""
    return route_rules(route)


def _exact(rules: list[tuple[str, RateLimit]]) -> list[tuple[str, RateLimit]]:
    """The rules wardgate's rate-limit service decides (enforce: global); local and quota
    rules are Envoy's own (``local_limits.py``, ``quota.py``)."""
    return [(v, r) for v, r in rules if r.enforce == "global"]


def _rate_limit_actions(
    rules: list[tuple[str, RateLimit]], opts: TranslateOptions
) -> list[dict[str, Any]]:
    """The descriptors' actions, one list per rule. A rule whose failure mode differs from
    the setting's is checked by the second rate-limit filter (``stage`` 1,
    ``listener.py``), whose failure mode is the other one."""
    default = "closed" if opts.ratelimit_fail_closed else "open"
    out = []
    for value, rule in rules:
        actions: list[dict[str, Any]] = [
            {"generic_key": {"descriptor_key": RULE_KEY, "descriptor_value": value}},
            *_client_actions(tuple(rule.dimensions), bool(rule.tiers)),
        ]
        stage = 1 if (rule.failure_mode or default) != default else 0
        out.append({"stage": stage, "actions": actions} if stage else {"actions": actions})
    return out


@functools.lru_cache(maxsize=256)
def _client_actions(dimensions: tuple[str, ...], tiers: bool) -> tuple[dict[str, Any], ...]:
    """A rule's actions after its own entry: its client, and its tier (many rules share
    them)."""
    actions: list[dict[str, Any]] = []
    for dim in dimensions:
        if dim == "ip":
            actions.append({"remote_address": {}})
        elif dim == "user":
            # The user as the upstream sees it: set by ext_authz, or by Envoy from a
            # session ticket or JWT (native_auth.py); a client's own value is removed
            # first. No identity (a public route): no descriptor, no limit.
            actions.append({"request_headers": {"header_name": "x-user-id", "descriptor_key": dim}})
        elif dim == "api_key":
            # No API key (a public route, or another credential): no descriptor, no limit.
            actions.append(_metadata_action(dim, dim))
        elif dim.startswith("header:"):
            # Keyed "header:NAME": a header named "user" or "remote_address" cannot pass
            # for the entries the gateway itself sets.
            name = dim.split(":", 1)[1]
            actions.append({"request_headers": {"header_name": name, "descriptor_key": dim}})
    if tiers:
        actions.append(_metadata_action(TIER_KEY, "tier", default="default"))
    return tuple(shared(a) for a in actions)


def _guard(rules: list[tuple[str, RateLimit]], opts: TranslateOptions) -> dict[str, Any] | None:
    """The local guard's buckets for these rules (``local_guard.py``): the rules that fail
    open; shadow rules, which never refuse, get none."""
    guard = opts.guard
    if not guard.enabled:
        return None
    default = "closed" if opts.ratelimit_fail_closed else "open"
    buckets = [
        guard_bucket(value, rule, guard.burst)
        for value, rule in rules
        if not rule.shadow and (rule.failure_mode or default) == "open"
    ]
    # The rules that fail open are in stage 1 when the setting says closed (_rate_limit_actions).
    stage = 1 if opts.ratelimit_fail_closed else 0
    return route_guard(buckets, guard, stage=stage) if buckets else None


def _rbac(route: Route) -> dict[str, Any] | None:
    def ids(cidrs: list[str]) -> dict[str, Any]:
        principals = []
        for cidr in cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            principals.append(
                {
                    "remote_ip": {
                        "address_prefix": str(net.network_address),
                        "prefix_len": net.prefixlen,
                    }
                }
            )
        return {"or_ids": {"ids": principals}}

    if not route.ip_allow and not route.ip_deny:
        return None
    if route.ip_allow:
        principal: dict[str, Any] = ids(route.ip_allow)
        if route.ip_deny:
            principal = {"and_ids": {"ids": [principal, {"not_id": ids(route.ip_deny)}]}}
        action = "ALLOW"
    else:
        principal, action = ids(route.ip_deny or []), "DENY"
    policy = {"permissions": [{"any": True}], "principals": [principal]}
    return {
        "@type": T_RBAC_ROUTE,
        "rbac": {"rules": {"action": action, "policies": {"ip": policy}}},
    }


def _cors(route: Route) -> dict[str, Any] | None:
    if route.cors is None:
        return None
    c = route.cors
    policy: dict[str, Any] = {
        "@type": T_CORS_POLICY,
        "allow_origin_string_match": [_origin_matcher(o) for o in c.allow_origins],
        "allow_credentials": c.allow_credentials,
    }
    methods = c.allow_methods or route.match.methods
    if methods:
        policy["allow_methods"] = ", ".join(methods)
    if c.allow_headers:
        policy["allow_headers"] = ", ".join(c.allow_headers)
    if c.expose_headers:
        policy["expose_headers"] = ", ".join(c.expose_headers)
    if c.max_age:
        policy["max_age"] = str(int(parse_duration(c.max_age)))
    return policy


def _origin_matcher(origin: str) -> dict[str, Any]:
    if origin == "*":
        return {"safe_regex": {"regex": ".*"}}
    if is_wildcard(origin):  # domain/origin_patterns.py: the same answer as the CSRF check
        return {"safe_regex": {"regex": parse_wildcard(origin).regex()}}
    return {"exact": origin}


_HASH_BY_CLIENT = shared([{"connection_properties": {"source_ip": True}}])
_WEBSOCKET = shared([{"upgrade_type": "websocket"}])


def _route_action(
    route: Route, rules: list[tuple[str, RateLimit]], hashing: bool, opts: TranslateOptions
) -> dict[str, Any]:
    action: dict[str, Any] = {}
    if hashing:
        action["hash_policy"] = _HASH_BY_CLIENT
    if route.backend is not None:
        action["cluster"] = route.backend
    elif route.compose is not None:
        action.update(compose_action())
    else:
        action["weighted_clusters"] = {
            "clusters": [{"name": b.service, "weight": b.weight} for b in route.backends or []]
        }
    if route.rewrite_prefix is not None:
        action["prefix_rewrite"] = route.rewrite_prefix
    action["timeout"] = envoy_duration(route.timeout) if route.timeout else "15s"
    if route.retries is not None:
        policy: dict[str, Any] = {
            "retry_on": ",".join(route.retries.on),
            "num_retries": route.retries.attempts,
        }
        if route.retries.per_try_timeout:
            policy["per_try_timeout"] = envoy_duration(route.retries.per_try_timeout)
        action["retry_policy"] = policy
    if exact := _exact(rules):
        action["rate_limits"] = _rate_limit_actions(exact, opts)
    if route.websocket:
        action["upgrade_configs"] = _WEBSOCKET
    return action


def _per_filter_config(
    route: Route, rules: list[tuple[str, RateLimit]], opts: TranslateOptions
) -> dict[str, Any]:
    """The route's own configuration of the listener's filters; empty for most routes.

    Public routes and routes without max_body_bytes carry no ext_authz or buffer config:
    they inherit the virtual host's (both disabled). Envoy pays per per-route config, and
    with ten thousand routes that dominates how fast it takes a new route table."""
    per_filter: dict[str, Any] = {}
    if route.auth.require != "none":
        ctx = {"route": route.name, "auth": route.auth.require}
        if route.auth.roles:
            ctx["roles"] = ",".join(route.auth.roles)
        if route.cors:
            ctx["cors_origins"] = " ".join(o for o in route.cors.allow_origins if o != "*")
        per_filter[EXT_AUTHZ] = {
            "@type": T_EXT_AUTHZ_ROUTE,
            "check_settings": {"context_extensions": ctx},
        }
        per_filter.update(native_auth_filters(route))  # tickets, JWTs, roles in Envoy
    if cors := _cors(route):
        per_filter[F_CORS] = cors
    if rbac := _rbac(route):
        per_filter[F_RBAC] = rbac
    if limits := _guard(_exact(rules), opts):
        per_filter[F_LOCAL_RATELIMIT] = limits
    if local := route_local_limits(rules, clients=opts.guard.clients):
        per_filter[F_LOCAL_LIMITS] = local
    if keys := route_quota_keys(rules):
        per_filter[F_QUOTA_KEYS] = keys
    if route.transcode is not None:
        per_filter.update(transcoding_filters(route.transcode.services))
    per_filter.update(extproc_filters(route))
    if route.max_body_bytes is not None:
        per_filter[F_BUFFER] = {
            "@type": T_BUFFER_ROUTE,
            "buffer": {"max_request_bytes": route.max_body_bytes},
        }
    return per_filter


def route_entry(
    route: Route, *, hashing: bool = False, opts: TranslateOptions = DEFAULT_OPTIONS
) -> dict[str, Any]:
    """One route in Envoy's JSON form. ``hashing``: a backend balances by consistent hashing
    (ring_hash, maglev), so the route says what to hash: the client's address."""
    rules = _rules(route)
    action = _route_action(route, rules, hashing, opts)
    entry: dict[str, Any] = {"name": route.name, "match": _route_match(route), "route": action}
    if per_filter := _per_filter_config(route, rules, opts):
        entry["typed_per_filter_config"] = per_filter
    return entry


def virtual_host_head(*, transcoding: bool = False) -> dict[str, Any]:
    """The one virtual host, without its routes: what every route inherits. Without
    ``transcoding`` (a scope none of whose routes transcodes) it turns the transcoder off;
    with it, each route that does not transcode does that itself (``transcoder_off``)."""
    head: dict[str, Any] = {
        "name": "wardgate",
        "domains": ["*"],
        # Applied by the router, after ext_authz has read it: the API key is for the gateway;
        # the scope key is for Envoy (scope_key.py).
        # The quota rules' headers are for Envoy's quota filters (quota.py).
        "request_headers_to_remove": [
            "x-api-key",
            SCOPE_HEADER,
            TICKET_SID_HEADER,
            *QUOTA_HEADERS,
        ],
        "typed_per_filter_config": {
            EXT_AUTHZ: {"@type": T_EXT_AUTHZ_ROUTE, "disabled": True},
            F_BUFFER: {"@type": T_BUFFER_ROUTE, "disabled": True},
            **extproc_off(),
        },
    }
    if not transcoding:
        head["typed_per_filter_config"].update(transcoder_off())
    return head


def builtin_routes(opts: TranslateOptions) -> list[dict[str, Any]]:
    """wardgate's own endpoints, reached through Envoy: /auth/login, /auth/logout, /auth/session."""
    common: dict[str, Any] = {
        F_BUFFER: {"@type": T_BUFFER_ROUTE, "buffer": {"max_request_bytes": 16384}},
        F_LUA: {"@type": T_LUA_ROUTE, "disabled": True},  # /auth/* needs the cookie
    }
    login_rule = RateLimit(by="ip", requests=opts.login_limit_per_minute, per="minute")
    login = [
        (
            encode_rule("wardgate.login#0", login_rule.requests, 60, "fixed_window", False),
            login_rule,
        )
    ]
    out = []
    for path in ("/auth/login", "/auth/logout", "/auth/session"):
        action: dict[str, Any] = {"cluster": HTTP_CLUSTER, "timeout": "5s"}
        per_filter = dict(common)
        if path == "/auth/login":
            action["rate_limits"] = _rate_limit_actions(login, opts)
            if limits := _guard(login, opts):
                per_filter[F_LOCAL_RATELIMIT] = limits
        out.append(
            {
                "name": f"wardgate{path.replace('/', '.')}",
                "match": {"path": path},
                "route": action,
                "typed_per_filter_config": per_filter,
            }
        )
    return out
