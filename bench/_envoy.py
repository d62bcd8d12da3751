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

T = "type.googleapis.com/"


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
                    "@type": T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
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
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
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
            "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    hcm = {
        "@type": T
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
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
