"""Documents -> Envoy resources: the options and the names the pieces share.

Resources are built as plain dicts in Envoy's JSON form (readable, diffable, the same shape as
Envoy's documentation) and parsed into protobuf messages once. The pieces:

- ``clusters.py``: a service's cluster and endpoints, and wardgate's own HTTP cluster;
- ``routes.py``: a route document's entry (in the global order of ``domain/route_order.py``,
  ``docs/ROUTING.md``), the virtual host and wardgate's built-in routes;
- ``listener.py``: the listener and its HTTP filters;
- ``scope_key.py``, ``scope_layout.py``, ``scope_envoy.py``: the routes split into scopes
  (the key, what each scope holds, what Envoy is told);
- ``assemble.py``: the snapshot's resources assembled from all of the above.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wardgate.domain.durations import format_duration, parse_duration
from wardgate.xds.access_log import AccessLogOptions
from wardgate.xds.listener_tls import ListenerTls
from wardgate.xds.local_guard import GuardOptions
from wardgate.xds.tracing import TracingOptions

ROUTE_CONFIG_NAME = "wardgate_routes"
LISTENER_NAME = "wardgate_http"
GRPC_CLUSTER = "wardgate_grpc"  # static in the bootstrap: ADS, ext_authz, rate limit
HTTP_CLUSTER = "wardgate_auth"  # wardgate's HTTP side (/auth/*), served by CDS
RATELIMIT_DOMAIN = "wardgate"
# HTTP filters' names: the listener's chain, and the routes' per-filter configs.
EXT_AUTHZ = "envoy.filters.http.ext_authz"
F_CORS = "envoy.filters.http.cors"
F_RBAC = "envoy.filters.http.rbac"
F_BUFFER = "envoy.filters.http.buffer"
# Its own name, not the extension's: Envoy falls back from a filter's name to its extension's
# for per-route config, and the scope filter (scope_envoy.py), also Lua, must never be disabled.
F_LUA = "wardgate.session_cookie"


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
    ticket_cookie: str = "wg_ticket"  # session tickets (domain/tickets.py)
    max_request_bytes: int = 1 << 20
    extproc_timeout: float = 0.2  # Envoy's deadline per ext_proc message (xds/extproc.py)
    # The local guard behind exact limits (local_guard.py).
    guard: GuardOptions = dataclasses.field(default_factory=GuardOptions)
    # The access log streamed to wardgate (xds/access_log.py); None: off.
    access_log: AccessLogOptions | None = None
    # Envoy's OpenTelemetry tracer (xds/tracing.py); None: no tracing.
    tracing: TracingOptions | None = None
    # TLS on the listener (listener_tls.py); None: plain text.
    tls: ListenerTls | None = None


def envoy_duration(text: str) -> str:
    """A document's duration ("2500ms") as Envoy's JSON writes one ("2.500s")."""
    return format_duration(parse_duration(text))


def socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}
