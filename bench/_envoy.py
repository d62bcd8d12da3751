"""Envoy for the baselines: a static configuration (no ADS), and its admin statistics."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from wardgate import devstack
from wardgate.envoy_proc import find_envoy
from wardgate.xds import typeurls as tu


def static_envoy_config(
    *, listen_port: int, admin_port: int, authz_port: int | None
) -> dict[str, Any]:
    http_filters: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    if authz_port is not None:
        # The same ext_authz settings wardgate's translator gives its listener.
        http_filters.append(
            {
                "name": "envoy.filters.http.ext_authz",
                "typed_config": {
                    "@type": tu.T_EXT_AUTHZ,
                    "grpc_service": {
                        "envoy_grpc": {"cluster_name": "noop_authz"},
                        "timeout": "0.25s",
                    },
                    "transport_api_version": "V3",
                    "failure_mode_allow": False,
                    "status_on_error": {"code": "ServiceUnavailable"},
                },
            }
        )
        clusters.append(
            {
                "name": "noop_authz",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    tu.N_HTTP_OPTIONS: {
                        "@type": tu.T_HTTP_OPTIONS,
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "load_assignment": {
                    "cluster_name": "noop_authz",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(authz_port)}}]}],
                },
            }
        )
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": tu.T_ROUTER},
        }
    )
    hcm = {
        "@type": tu.T_HCM,
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "route_config": {
            "name": "bench",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                        }
                    ],
                }
            ],
        },
        "http_filters": http_filters,
    }
    return {
        "node": {"id": "bench", "cluster": "bench"},
        "admin": {"address": _addr(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": _addr(listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def start_static_envoy(workdir: Path, name: str, config: dict[str, Any]) -> subprocess.Popen[bytes]:
    path = workdir / f"envoy-{name}.json"
    path.write_text(json.dumps(config, indent=1))
    with open(workdir / f"envoy-{name}.log", "ab") as out:
        proc = subprocess.Popen(
            [
                find_envoy(),
                "-c",
                str(path),
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "--log-level",
                "warning",
                "--drain-time-s",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        devstack.wait_port(
            config["admin"]["address"]["socket_address"]["port_value"],
            proc=proc,
            what="envoy",
            timeout=30,
        )
    except BaseException:
        devstack.stop(proc)
        raise
    return proc


def envoy_stats(admin_port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as resp:
        text = resp.read().decode()
    stats: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            stats[name] = int(value)
    return stats


def callouts(stats: dict[str, int]) -> dict[str, int]:
    """Completed ext_authz checks and rate-limit calls, summed over Envoy's stat scopes."""
    return {
        "authz": sum(v for k, v in stats.items() if re.fullmatch(r"http\.[^.]+\.ext_authz\.ok", k)),
        "ratelimit": sum(
            v for k, v in stats.items() if re.fullmatch(r"cluster\..+\.ratelimit\.ok", k)
        ),
    }


# --- building blocks for benchmarks of one callout (authz_check.py, ratelimit_decisions.py) ---


def grpc_cluster(name: str, port: int, *, max_streams: int = 0) -> dict[str, Any]:
    """A static HTTP/2 cluster for a gRPC service on 127.0.0.1:``port``.

    ``max_streams`` > 0 caps the concurrent streams per connection, so that Envoy opens more
    connections under load: with one connection, every call would reach the same one of the
    processes sharing a port through SO_REUSEPORT (``wardgate serve --workers N``).
    """
    h2: dict[str, Any] = {}
    if max_streams > 0:
        h2["max_concurrent_streams"] = max_streams
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            tu.N_HTTP_OPTIONS: {
                "@type": tu.T_HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": h2},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}],
        },
    }


def ext_authz_filter(cluster: str, *, timeout: str = "1s") -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": tu.T_EXT_AUTHZ,
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": timeout},
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "status_on_error": {"code": "ServiceUnavailable"},
        },
    }


def ratelimit_filter(cluster: str, *, domain: str, timeout: str = "1s") -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": tu.T_RATELIMIT,
            "domain": domain,
            "timeout": timeout,
            "failure_mode_deny": False,
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                "transport_api_version": "V3",
            },
        },
    }


def callout_envoy_config(
    *,
    listen_port: int,
    admin_port: int,
    http_filters: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
    route: dict[str, Any],
    sink_port: int | None = None,
) -> dict[str, Any]:
    """``static_envoy_config`` with the given filters (the router is appended) and clusters,
    and one route ``/`` whose action and per-route settings come from ``route``.

    With ``sink_port``, the same Envoy also listens there with a bare ``direct_response``
    listener, reachable as cluster ``sink``: the rate-limit filter skips ``direct_response``
    routes (it needs a route entry and an upstream cluster), so its route forwards to it.
    """
    config = static_envoy_config(listen_port=listen_port, admin_port=admin_port, authz_port=None)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["use_remote_address"] = True  # as wardgate's listener
    hcm["typed_config"]["http_filters"] = [*http_filters, *hcm["typed_config"]["http_filters"]]
    vhost = hcm["typed_config"]["route_config"]["virtual_hosts"][0]
    vhost["routes"] = [{"match": {"prefix": "/"}, **route}]
    config["static_resources"]["clusters"] = list(clusters)
    if sink_port is not None:
        sink = static_envoy_config(listen_port=sink_port, admin_port=admin_port, authz_port=None)
        listener = sink["static_resources"]["listeners"][0]
        listener["name"] = "sink"
        listener["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = "sink"
        config["static_resources"]["listeners"].append(listener)
        config["static_resources"]["clusters"].append(
            {
                "name": "sink",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "sink",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(sink_port)}}]}],
                },
            }
        )
    return config


def direct_response(body: str = "ok\n") -> dict[str, Any]:
    return {"direct_response": {"status": 200, "body": {"inline_string": body}}}
