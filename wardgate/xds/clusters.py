"""Services -> Envoy clusters and their endpoints (ClusterLoadAssignment), and the cluster of
wardgate's own HTTP side."""

from __future__ import annotations

import ipaddress
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

# Importing this registers the message type that "@type" below refers to.
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from wardgate.domain.documents import Service
from wardgate.xds import canonical
from wardgate.xds.translate import (
    HTTP_CLUSTER,
    TranslateOptions,
    envoy_duration,
    socket_address,
)
from wardgate.xds.typeurls import N_HTTP_OPTIONS, T_HTTP_OPTIONS
from wardgate.xds.upstream_tls import transport_socket

LB_POLICIES = {
    "round_robin": "ROUND_ROBIN",
    "least_request": "LEAST_REQUEST",
    "random": "RANDOM",
    "ring_hash": "RING_HASH",
    "maglev": "MAGLEV",
}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


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
                    {"endpoint": {"address": socket_address(a, p)}, "load_balancing_weight": w}
                    for a, p, w in endpoints
                ]
            }
        ]
    return canonical.parse(cla, endpoint_pb2.ClusterLoadAssignment())


def build_cluster(svc: Service) -> cluster_pb2.Cluster:
    c: dict[str, Any] = {
        "name": svc.name,
        "connect_timeout": envoy_duration(svc.connect_timeout),
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
            "timeout": envoy_duration(hc.timeout),
            "interval": envoy_duration(hc.interval),
            "unhealthy_threshold": hc.unhealthy_threshold,
            "healthy_threshold": hc.healthy_threshold,
            "no_traffic_interval": envoy_duration(hc.interval),
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
            "interval": envoy_duration(od.interval),
            "base_ejection_time": envoy_duration(od.base_ejection_time),
            "max_ejection_percent": od.max_ejection_percent,
        }
    if svc.tls is not None:
        c["transport_socket"] = transport_socket(svc.tls, svc.protocol)
    return canonical.parse(c, cluster_pb2.Cluster())


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
                        {"endpoint": {"address": socket_address(opts.http_host, opts.http_port)}}
                    ]
                }
            ],
        },
    }
    return canonical.parse(c, cluster_pb2.Cluster())
