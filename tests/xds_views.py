"""Message views of what wardgate builds, for tests: the snapshot itself only holds bytes."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2

from wardgate.domain.documents import Route, Service
from wardgate.xds.assemble import Base, Translator
from wardgate.xds.scope_envoy import route_config_name
from wardgate.xds.scope_key import bucket, request_segments
from wardgate.xds.translate import TranslateOptions


def clusters(base: Base) -> list[cluster_pb2.Cluster]:
    return [cluster_pb2.Cluster.FromString(b) for _, b in base.cluster_bytes]


def endpoints(base: Base) -> list[endpoint_pb2.ClusterLoadAssignment]:
    return [endpoint_pb2.ClusterLoadAssignment.FromString(b) for _, b in base.endpoint_bytes]


def route_configs(base: Base) -> dict[str, route_pb2.RouteConfiguration]:
    """The scopes' route configurations (not the compose listener's)."""
    return {
        n: route_pb2.RouteConfiguration.FromString(b)
        for n, b in base.route_bytes
        if n.startswith("wardgate_routes")
    }


def routes_for(base: Base, path: str) -> list[route_components_pb2.Route]:
    """The routes a request for ``path`` is matched against, in order: what the scope
    script picks (a Python mirror of ``scope_key.scope_lua``)."""
    configs = dict(base.route_bytes)
    segs = request_segments(path)
    seg = segs[0] if segs else ""
    depth = base.depths.get(seg, 1)
    key = bucket(segs, depth)
    config = route_pb2.RouteConfiguration.FromString(configs[route_config_name(depth, key)])
    return list(config.virtual_hosts[0].routes)


def build_route_configuration(
    routes: list[Route],
    opts: TranslateOptions,
    services: Mapping[str, Service] | None = None,
) -> route_pb2.RouteConfiguration:
    """The whole table as one configuration, in the global order: what the scopes split."""
    data = Translator(opts).route_configuration(routes, services or {})
    return route_pb2.RouteConfiguration.FromString(data)
