"""The shipped dashboard is what its generator writes, and its pieces fit the provisioning."""

from __future__ import annotations

import importlib.util
import json

import yaml

from tests.e2e.test_dashboards import DASHBOARD, alert_queries, dashboard_queries, metric_names
from tests.prometheus import OBSERVABILITY


def test_the_dashboard_json_is_generated() -> None:
    spec = importlib.util.spec_from_file_location(
        "build_dashboard", OBSERVABILITY / "build_dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), "run: python observability/build_dashboard.py"


def test_panels_use_the_provisioned_data_source() -> None:
    ds = yaml.safe_load(
        (OBSERVABILITY / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    uid = ds["datasources"][0]["uid"]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    graphs = [p for p in panels if p["type"] != "row"]
    assert graphs and all(p["datasource"]["uid"] == uid for p in graphs)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))


def test_metric_names_are_found_and_labels_are_not() -> None:
    expr = (
        'sum by (envoy_cluster_name, le) (rate(envoy_cluster_upstream_rq_time_bucket{envoy_x="a"}'
        "[1m])) / on (route) wardgate_route_requests_total"
    )
    assert metric_names(expr) == {
        "envoy_cluster_upstream_rq_time_bucket",
        "wardgate_route_requests_total",
    }
    used = set().union(*(metric_names(q) for q in dashboard_queries() + alert_queries()))
    # The areas the dashboard and alerts must cover, each by at least one real metric.
    for needed in (
        "wardgate_route_requests_total",
        "wardgate_route_request_duration_seconds_bucket",
        "wardgate_route_received_bytes_total",
        "wardgate_authz_decisions_total",
        "wardgate_ratelimit_decisions_total",
        "wardgate_ratelimited_clients",
        "wardgate_xds_nacks_total",
        "wardgate_store_errors_total",
        "envoy_cluster_upstream_rq_xx",
        "envoy_http_ext_authz_error",
    ):
        assert needed in used
