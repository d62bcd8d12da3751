"""Every protobuf type URL wardgate writes, spelled once.

Resource types are what ADS serves (``TYPE_*``); typed-config types are what goes under
``@type`` in Envoy's JSON form (``T_*``). ``of`` builds one from a full message name.
"""

from __future__ import annotations

PREFIX = "type.googleapis.com/"


def of(full_name: str) -> str:
    """The type URL of a message given its full protobuf name."""
    return PREFIX + full_name


# Resource types served over ADS.
TYPE_CLUSTER = of("envoy.config.cluster.v3.Cluster")
TYPE_ENDPOINT = of("envoy.config.endpoint.v3.ClusterLoadAssignment")
TYPE_LISTENER = of("envoy.config.listener.v3.Listener")
TYPE_ROUTE = of("envoy.config.route.v3.RouteConfiguration")
TYPE_SCOPED_ROUTE = of("envoy.config.route.v3.ScopedRouteConfiguration")
TYPE_EXTENSION_CONFIG = of("envoy.config.core.v3.TypedExtensionConfig")  # ECDS

# Typed configs: filters, their per-route configs, cluster options.
N_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
T_HTTP_OPTIONS = of(N_HTTP_OPTIONS)
T_HCM = of("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
T_ROUTER = of("envoy.extensions.filters.http.router.v3.Router")
T_CORS = of("envoy.extensions.filters.http.cors.v3.Cors")
T_CORS_POLICY = of("envoy.extensions.filters.http.cors.v3.CorsPolicy")
T_RBAC = of("envoy.extensions.filters.http.rbac.v3.RBAC")
T_RBAC_ROUTE = of("envoy.extensions.filters.http.rbac.v3.RBACPerRoute")
T_EXT_AUTHZ = of("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
T_EXT_AUTHZ_ROUTE = of("envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute")
T_RATELIMIT = of("envoy.extensions.filters.http.ratelimit.v3.RateLimit")
T_LOCAL_RATELIMIT = of("envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit")
T_LUA = of("envoy.extensions.filters.http.lua.v3.Lua")
T_LUA_ROUTE = of("envoy.extensions.filters.http.lua.v3.LuaPerRoute")
T_BUFFER = of("envoy.extensions.filters.http.buffer.v3.Buffer")
T_BUFFER_ROUTE = of("envoy.extensions.filters.http.buffer.v3.BufferPerRoute")
T_HEADER_MUTATION = of("envoy.extensions.filters.http.header_mutation.v3.HeaderMutation")
T_HEADER_MUTATION_ROUTE = of(
    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
)


def short_name(type_url: str) -> str:
    """The message's own name (``Cluster``), for logs, metric labels and status."""
    return type_url.rsplit(".", 1)[-1]


# TLS (listener_tls.py, clusters' upstream TLS): the secret type ADS serves (SDS), the
# transport sockets and the listener filter that tells TLS from plain text.
TYPE_SECRET = of("envoy.extensions.transport_sockets.tls.v3.Secret")
T_DOWNSTREAM_TLS = of("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")
T_UPSTREAM_TLS = of("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext")
T_TLS_INSPECTOR = of("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector")
