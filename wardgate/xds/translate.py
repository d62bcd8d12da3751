"""Documents -> Envoy resources: clusters, endpoints, routes (the listener: listener.py).

Resources are built as plain dicts in Envoy's JSON form (readable, diffable, the same shape as
Envoy's documentation) and parsed into protobuf messages once. Route order is explicit:
``docs/ROUTING.md`` and ``route_sort_key`` below.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any

# Importing these registers the message types that "@type" below refers to.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2  # noqa: F401
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from wardgate.domain.documents import Route, Service, host_regex
from wardgate.domain.durations import format_duration, parse_duration
from wardgate.domain.ratelimit import RULE_KEY, TIER_KEY, encode_rule
from wardgate.xds.scopes import SCOPE_HEADER
from wardgate.xds.typeurls import (
    N_HTTP_OPTIONS,
    T_BUFFER_ROUTE,
    T_CORS_POLICY,
    T_EXT_AUTHZ_ROUTE,
    T_HTTP_OPTIONS,
    T_LUA_ROUTE,
    T_RBAC_ROUTE,
)

ROUTE_CONFIG_NAME = "wardgate_routes"
LISTENER_NAME = "wardgate_http"
GRPC_CLUSTER = "wardgate_grpc"  # static in the bootstrap: ADS, ext_authz, rate limit
HTTP_CLUSTER = "wardgate_auth"  # wardgate's HTTP side (/auth/*), served by CDS
RATELIMIT_DOMAIN = "wardgate"
IDENTITY_HEADERS = ["x-user-id", "x-user-roles", "x-auth-method"]
EXT_AUTHZ = "envoy.filters.http.ext_authz"
F_CORS = "envoy.filters.http.cors"
F_RBAC = "envoy.filters.http.rbac"
F_BUFFER = "envoy.filters.http.buffer"
# Its own name, not the extension's: Envoy falls back from a filter's name to its extension's
# for per-route config, and the scope filter (scopes.py), also Lua, must never be disabled.
F_LUA = "wardgate.session_cookie"


LB_POLICIES = {
    "round_robin": "ROUND_ROBIN",
    "least_request": "LEAST_REQUEST",
    "random": "RANDOM",
    "ring_hash": "RING_HASH",
    "maglev": "MAGLEV",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TranslateOptions:
    http_host: str = "127.0.0.1"
    http_port: int = 18080
    ext_authz_timeout: float = 0.25
    ratelimit_timeout: float = 0.1
    authz_fail_open: bool = False
    ratelimit_fail_closed: bool = False
    login_limit_per_minute: int = 30
    trusted_proxy_hops: int = 0
    session_cookie: str = "wg_session"
    max_request_bytes: int = 1 << 20


def _d(text: str) -> str:
    return format_duration(parse_duration(text))


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


# --- clusters -----------------------------------------------------------------------------


def uses_eds(svc: Service) -> bool:
    """Endpoints by EDS (changing them never touches the cluster), unless an endpoint is a
    host name, which only a STRICT_DNS cluster resolves."""
    return svc.discovery == "registry" or all(_is_ip(e.address) for e in svc.endpoints or [])


def build_load_assignment(
    name: str, endpoints: list[tuple[str, int, int]]
) -> endpoint_pb2.ClusterLoadAssignment:
    cla: dict[str, Any] = {"cluster_name": name, "endpoints": []}
    if endpoints:
        cla["endpoints"] = [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": _socket(a, p)}, "load_balancing_weight": w}
                    for a, p, w in endpoints
                ]
            }
        ]
    return json_format.ParseDict(cla, endpoint_pb2.ClusterLoadAssignment())


def build_cluster(svc: Service) -> cluster_pb2.Cluster:
    c: dict[str, Any] = {
        "name": svc.name,
        "connect_timeout": _d(svc.connect_timeout),
        "lb_policy": LB_POLICIES[svc.lb],
    }
    if uses_eds(svc):
        c["type"] = "EDS"
        c["eds_cluster_config"] = {
            "service_name": svc.name,
            "eds_config": {"ads": {}, "resource_api_version": "V3"},
        }
    else:
        c["type"] = "STRICT_DNS"
        c["load_assignment"] = json_format.MessageToDict(
            build_load_assignment(
                svc.name, [(e.address, e.port, e.weight) for e in svc.endpoints or []]
            ),
            preserving_proto_field_name=True,
        )
    if svc.protocol in ("http2", "grpc"):
        c["typed_extension_protocol_options"] = {
            N_HTTP_OPTIONS: {
                "@type": T_HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    if svc.health_check:
        hc = svc.health_check
        check: dict[str, Any] = {
            "timeout": _d(hc.timeout),
            "interval": _d(hc.interval),
            "unhealthy_threshold": hc.unhealthy_threshold,
            "healthy_threshold": hc.healthy_threshold,
            "no_traffic_interval": _d(hc.interval),
        }
        if svc.protocol == "grpc":
            check["grpc_health_check"] = {}
        else:
            check["http_health_check"] = {"path": hc.path}
        c["health_checks"] = [check]
    if svc.circuit_breaker:
        cb = svc.circuit_breaker.model_dump(exclude_none=True)
        if cb:
            c["circuit_breakers"] = {"thresholds": [cb]}
    if svc.outlier_detection:
        od = svc.outlier_detection
        c["outlier_detection"] = {
            "consecutive_5xx": od.consecutive_5xx,
            "interval": _d(od.interval),
            "base_ejection_time": _d(od.base_ejection_time),
            "max_ejection_percent": od.max_ejection_percent,
        }
    return json_format.ParseDict(c, cluster_pb2.Cluster())


def build_auth_cluster(opts: TranslateOptions) -> cluster_pb2.Cluster:
    c = {
        "name": HTTP_CLUSTER,
        "type": "STATIC" if _is_ip(opts.http_host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": HTTP_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket(opts.http_host, opts.http_port)}}
                    ]
                }
            ],
        },
    }
    return json_format.ParseDict(c, cluster_pb2.Cluster())


# --- routes -------------------------------------------------------------------------------


def route_sort_key(route: Route) -> tuple[int, int, int, int, str]:
    """Higher ``priority`` first; then exact path, regex, prefix; longer paths first; routes
    with more conditions (methods, headers, hosts) first; then by name."""
    m = route.match
    kind = 0 if m.path is not None else (1 if m.regex is not None else 2)
    length = len(m.path or m.prefix or m.regex or "")
    conditions = bool(m.methods) + len(m.headers or {}) + bool(m.hosts)
    return (-route.priority, kind, -length, -conditions, route.name)


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
        methods = list(m.methods)
        if route.cors is not None and "OPTIONS" not in methods:
            methods.append("OPTIONS")  # the CORS preflight must reach the CORS filter
        regex = f"^({_regex_alternatives(methods)})$"
        headers.append({"name": ":method", "string_match": {"safe_regex": {"regex": regex}}})
    for name, value in (m.headers or {}).items():
        headers.append({"name": name, "string_match": {"exact": value}})
    if m.hosts:
        headers.append(
            {"name": ":authority", "string_match": {"safe_regex": {"regex": host_regex(m.hosts)}}}
        )
    if headers:
        match["headers"] = headers
    return match


def _metadata_action(key: str, field: str, default: str | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {
        "descriptor_key": key,
        "metadata_key": {"key": EXT_AUTHZ, "path": [{"key": field}]},
        "source": "DYNAMIC",
    }
    if default is not None:
        action["default_value"] = default
    return {"metadata": action}


def _rate_limit_actions(route: Route) -> list[dict[str, Any]]:
    out = []
    for i, rule in enumerate(route.rate_limits):
        rule_id = f"key:{rule.key}" if rule.key else f"{route.name}#{i}"
        value = encode_rule(
            rule_id, rule.requests, rule.period_seconds, rule.algorithm, rule.shadow, rule.tiers
        )
        actions: list[dict[str, Any]] = [
            {"generic_key": {"descriptor_key": RULE_KEY, "descriptor_value": value}}
        ]
        for dim in rule.dimensions:
            if dim == "ip":
                actions.append({"remote_address": {}})
            elif dim in ("user", "api_key"):
                # No identity (a public route, or another credential): no descriptor, no limit.
                actions.append(_metadata_action(dim, dim))
            elif dim.startswith("header:"):
                name = dim.split(":", 1)[1]
                actions.append({"request_headers": {"header_name": name, "descriptor_key": name}})
        if rule.tiers:
            actions.append(_metadata_action(TIER_KEY, "tier", default="default"))
        out.append({"actions": actions})
    return out


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
        "allow_origin_string_match": [
            {"safe_regex": {"regex": ".*"}} if o == "*" else {"exact": o} for o in c.allow_origins
        ],
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


def route_entry(route: Route, *, hashing: bool = False) -> dict[str, Any]:
    """One route in Envoy's JSON form. ``hashing``: a backend balances by consistent hashing
    (ring_hash, maglev), so the route says what to hash: the client's address."""
    action: dict[str, Any] = {}
    if hashing:
        action["hash_policy"] = [{"connection_properties": {"source_ip": True}}]
    if route.backend is not None:
        action["cluster"] = route.backend
    else:
        action["weighted_clusters"] = {
            "clusters": [{"name": b.service, "weight": b.weight} for b in route.backends or []]
        }
    if route.rewrite_prefix is not None:
        action["prefix_rewrite"] = route.rewrite_prefix
    action["timeout"] = _d(route.timeout) if route.timeout else "15s"
    if route.retries is not None:
        policy: dict[str, Any] = {
            "retry_on": ",".join(route.retries.on),
            "num_retries": route.retries.attempts,
        }
        if route.retries.per_try_timeout:
            policy["per_try_timeout"] = _d(route.retries.per_try_timeout)
        action["retry_policy"] = policy
    if route.rate_limits:
        action["rate_limits"] = _rate_limit_actions(route)
    if route.websocket:
        action["upgrade_configs"] = [{"upgrade_type": "websocket"}]

    per_filter: dict[str, Any] = {}
    entry: dict[str, Any] = {"name": route.name, "match": _route_match(route), "route": action}
    # Public routes and routes without max_body_bytes carry no ext_authz or buffer config:
    # they inherit the virtual host's (both disabled). Envoy pays per per-route config, and
    # with ten thousand routes that dominates how fast it takes a new route table.
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
    if cors := _cors(route):
        per_filter[F_CORS] = cors
    if rbac := _rbac(route):
        per_filter[F_RBAC] = rbac
    if route.max_body_bytes is not None:
        per_filter[F_BUFFER] = {
            "@type": T_BUFFER_ROUTE,
            "buffer": {"max_request_bytes": route.max_body_bytes},
        }
    if per_filter:
        entry["typed_per_filter_config"] = per_filter
    return entry


def virtual_host_head() -> dict[str, Any]:
    """The one virtual host, without its routes: what every route inherits."""
    return {
        "name": "wardgate",
        "domains": ["*"],
        # Applied by the router, after ext_authz has read it: the API key is for the gateway;
        # the scope key is for Envoy (scopes.py).
        "request_headers_to_remove": ["x-api-key", SCOPE_HEADER],
        "typed_per_filter_config": {
            EXT_AUTHZ: {"@type": T_EXT_AUTHZ_ROUTE, "disabled": True},
            F_BUFFER: {"@type": T_BUFFER_ROUTE, "disabled": True},
        },
    }


def builtin_routes(opts: TranslateOptions) -> list[dict[str, Any]]:
    """wardgate's own endpoints, reached through Envoy: /auth/login, /auth/logout, /auth/session."""
    common = {
        "typed_per_filter_config": {
            F_BUFFER: {"@type": T_BUFFER_ROUTE, "buffer": {"max_request_bytes": 16384}},
            F_LUA: {"@type": T_LUA_ROUTE, "disabled": True},  # /auth/* needs the cookie
        },
    }
    login_limit = encode_rule(
        "wardgate.login#0", opts.login_limit_per_minute, 60, "fixed_window", False
    )
    out = []
    for path in ("/auth/login", "/auth/logout", "/auth/session"):
        action: dict[str, Any] = {"cluster": HTTP_CLUSTER, "timeout": "5s"}
        if path == "/auth/login":
            action["rate_limits"] = [
                {
                    "actions": [
                        {
                            "generic_key": {
                                "descriptor_key": RULE_KEY,
                                "descriptor_value": login_limit,
                            }
                        },
                        {"remote_address": {}},
                    ]
                }
            ]
        out.append(
            {
                "name": f"wardgate{path.replace('/', '.')}",
                "match": {"path": path},
                "route": action,
                **common,
            }
        )
    return out
