"""Writes grafana/dashboards/wardgate.json: the panels and their queries, in one readable list.

    python observability/build_dashboard.py

tests/unit/test_observability.py keeps the JSON equal to what this script writes, and
tests/e2e/test_dashboards.py runs every query against a real Prometheus scraping a running
stack. Queries over counters that may have no series yet end in ``or vector(0)`` so that a
panel shows 0 rather than "no data".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "wardgate-prometheus"}
RATE = "$__rate_interval"

# (row, title, unit, [(legend, query), ...])
PANELS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    (
        "Traffic",
        "Requests per second by route",
        "reqps",
        [("{{route}}", f"sum by (route) (rate(wardgate_route_requests_total[{RATE}]))")],
    ),
    (
        "Traffic",
        "Requests per second by status class",
        "reqps",
        [
            (
                "{{status_class}}",
                f"sum by (status_class) (rate(wardgate_route_requests_total[{RATE}]))",
            )
        ],
    ),
    (
        "Traffic",
        "Bytes per second by route",
        "Bps",
        [
            ("in {{route}}", f"sum by (route) (rate(wardgate_route_received_bytes_total[{RATE}]))"),
            ("out {{route}}", f"sum by (route) (rate(wardgate_route_sent_bytes_total[{RATE}]))"),
        ],
    ),
    (
        "Errors",
        "5xx share by route",
        "percentunit",
        [
            (
                "{{route}}",
                f'(sum by (route) (rate(wardgate_route_requests_total{{status_class="5xx"}}[{RATE}]))'
                f" or sum by (route) (rate(wardgate_route_requests_total[{RATE}])) * 0)"
                f" / sum by (route) (rate(wardgate_route_requests_total[{RATE}]))",
            )
        ],
    ),
    (
        "Errors",
        "Refusals per second (4xx) by route",
        "reqps",
        [
            (
                "{{route}}",
                f'sum by (route) (rate(wardgate_route_requests_total{{status_class="4xx"}}[{RATE}]))'
                " or vector(0)",
            )
        ],
    ),
    (
        "Latency",
        "p50 and p99 by route",
        "s",
        [
            (
                "p50 {{route}}",
                "histogram_quantile(0.5, sum by (route, le) "
                f"(rate(wardgate_route_request_duration_seconds_bucket[{RATE}])))",
            ),
            (
                "p99 {{route}}",
                "histogram_quantile(0.99, sum by (route, le) "
                f"(rate(wardgate_route_request_duration_seconds_bucket[{RATE}])))",
            ),
        ],
    ),
    (
        "Latency",
        "wardgate's own answers: Check and ShouldRateLimit p99",
        "s",
        [
            (
                "Check",
                "histogram_quantile(0.99, sum by (le) "
                f"(rate(wardgate_authz_check_seconds_bucket[{RATE}])))",
            ),
            (
                "ShouldRateLimit",
                "histogram_quantile(0.99, sum by (le) "
                f"(rate(wardgate_ratelimit_decision_seconds_bucket[{RATE}])))",
            ),
        ],
    ),
    (
        "Authorization and rate limits",
        "Authorization decisions per second",
        "reqps",
        [
            (
                "{{decision}} {{reason}}",
                f"sum by (decision, reason) (rate(wardgate_authz_decisions_total[{RATE}]))"
                " or vector(0)",
            )
        ],
    ),
    (
        "Authorization and rate limits",
        "Rate-limit decisions per second",
        "reqps",
        [
            (
                "{{rule}} {{decision}}",
                f"sum by (rule, decision) (rate(wardgate_ratelimit_decisions_total[{RATE}]))"
                " or vector(0)",
            ),
            (
                "failed {{mode}}",
                f"sum by (mode) (rate(wardgate_ratelimit_failures_total[{RATE}])) or vector(0)",
            ),
        ],
    ),
    (
        "Authorization and rate limits",
        "Rate-limited clients (last 5 min)",
        "short",
        [
            ("distinct clients", "max(wardgate_ratelimited_clients)"),
            ("{{client}}", "topk(10, max by (client) (wardgate_ratelimited_client_requests))"),
        ],
    ),
    (
        "Control plane",
        "xDS pushes and NACKs",
        "short",
        [
            ("push {{type}}", f"sum by (type) (rate(wardgate_xds_pushes_total[{RATE}]))"),
            ("NACK {{type}}", "sum by (type) (increase(wardgate_xds_nacks_total[1h])) or vector(0)"),
        ],
    ),
    (
        "Control plane",
        "Connected Envoys, documents served and refused",
        "short",
        [
            ("Envoys {{mode}}", "sum by (mode) (wardgate_xds_connected_nodes)"),
            ("documents {{kind}}", "max by (kind) (wardgate_documents)"),
            ("refused", "max(wardgate_documents_refused)"),
        ],
    ),
    (
        "Redis",
        "Redis errors per second by component",
        "short",
        [
            (
                "{{component}}",
                f"sum by (component) (rate(wardgate_store_errors_total[{RATE}])) or vector(0)",
            )
        ],
    ),
    (
        "Redis",
        "Subscriptions, eviction risk, usage flushes",
        "short",
        [
            ("subscription {{name}}", "min by (name) (wardgate_subscriptions)"),
            ("may evict", "max(wardgate_redis_may_evict)"),
            (
                "usage flush {{result}}",
                f"sum by (result) (rate(wardgate_usage_flushes_total[{RATE}])) or vector(0)",
            ),
        ],
    ),
    (
        "Envoy",
        "Upstream requests per second by cluster and class",
        "reqps",
        [
            (
                "{{envoy_cluster_name}} {{envoy_response_code_class}}xx",
                "sum by (envoy_cluster_name, envoy_response_code_class) "
                f"(rate(envoy_cluster_upstream_rq_xx[{RATE}]))",
            )
        ],
    ),
    (
        "Envoy",
        "Upstream p99 by cluster",
        "ms",
        [
            (
                "{{envoy_cluster_name}}",
                "histogram_quantile(0.99, sum by (envoy_cluster_name, le) "
                f"(rate(envoy_cluster_upstream_rq_time_bucket[{RATE}])))",
            )
        ],
    ),
    (
        "Envoy",
        "Upstream hosts and connections",
        "short",
        [
            ("healthy {{envoy_cluster_name}}", "sum by (envoy_cluster_name) (envoy_cluster_membership_healthy)"),
            ("connections {{envoy_cluster_name}}", "sum by (envoy_cluster_name) (envoy_cluster_upstream_cx_active)"),
            (
                "timeouts {{envoy_cluster_name}}",
                f"sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_timeout[{RATE}]))",
            ),
        ],
    ),
    (
        "Envoy",
        "Access log and callouts",
        "short",
        [
            ("entries received", f"sum(rate(wardgate_access_log_entries_total[{RATE}]))"),
            (
                "entries dropped by Envoy",
                f"sum(rate(envoy_access_logs_grpc_access_log_logs_dropped[{RATE}]))",
            ),
            ("ext_authz errors", f"sum(rate(envoy_http_ext_authz_error[{RATE}])) or vector(0)"),
        ],
    ),
]


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    row_name = None
    x = 0
    pid = 1
    for row, title, unit, targets in PANELS:
        if row != row_name:
            if x:
                y += 8
                x = 0
            panels.append(
                {"id": pid, "type": "row", "title": row, "collapsed": False,
                 "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
            )
            pid += 1
            y += 1
            row_name = row
        panels.append(
            {
                "id": pid,
                "type": "timeseries",
                "title": title,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
                     "legendFormat": legend}
                    for i, (legend, expr) in enumerate(targets)
                ],
            }
        )
        pid += 1
        x = 12 - x
        if x == 0:
            y += 8
    return {
        "uid": "wardgate",
        "title": "Wardgate",
        "description": "Traffic, errors, latency, authorization and rate limits, the control "
        "plane, Redis and Envoy's upstreams (observability/build_dashboard.py).",
        "tags": ["wardgate", "envoy"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "editable": True,
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "grafana" / "dashboards" / "wardgate.json"
    out.write_text(render())
    print(f"wrote {out}")
