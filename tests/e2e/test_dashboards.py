"""The shipped Grafana dashboard and Prometheus alert rules against a real Prometheus scraping
a running stack: every metric their queries name is one wardgate or Envoy exports, every
dashboard query returns data, and the rules load (and pass promtool)."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.prometheus import OBSERVABILITY, ensure_binary, start_prometheus
from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "wardgate.json"
ALERTS = OBSERVABILITY / "prometheus" / "alerts.yml"
_NAME = re.compile(r"\b((?:wardgate|envoy)_[A-Za-z0-9_:]+)")


def dashboard_queries() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in data["panels"] for t in p.get("targets", [])]


def alert_queries() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metrics an expression names: wardgate's and Envoy's carry their prefix. Any other
    identifier is PromQL's own (functions, `by`, `le`, ...) or `up`."""
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    bare = re.sub(r"\{[^}]*\}", " ", bare)  # label matchers name labels, not metrics
    return set(_NAME.findall(bare))


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[str]:
    proc, port = start_prometheus(
        tmp_path / "prometheus",
        wardgate=f"127.0.0.1:{stack.http_port}",
        envoy=f"127.0.0.1:{stack.admin_port}",
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        devstack.stop(proc)


def query(base: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_every_query_names_a_real_metric_and_returns_data(stack: Stack, prometheus: str) -> None:
    s = stack
    name = f"dash-{uuid.uuid4().hex[:6]}"
    s.apply(
        route(name, f"/{name}", "echo", rate_limits=[{"by": "ip", "requests": 3, "per": "1h"}]),
        route(f"{name}-auth", f"/{name}-auth", "echo", auth={"require": "session"}),
    )
    with s.client() as http:
        eventually(lambda: http.get(f"/{name}/x").status_code in (200, 429), timeout=10)
        eventually(lambda: http.get(f"/{name}-auth").status_code == 401, timeout=10)
        for _ in range(6):
            http.get(f"/{name}/x")
            http.get(f"/{name}-auth")
    # Enough scrapes for rate() over the panels' window, after the access log arrived.
    eventually(
        lambda: (
            query(prometheus, f'sum(wardgate_route_requests_total{{route="{name}"}}) >= 7')
            and query(prometheus, 'count_over_time(up{job="wardgate"}[1m]) >= 4')
            and query(prometheus, "max(wardgate_ratelimited_clients) >= 1")
        ),
        timeout=30,
        interval=0.5,
    )
    ups = {r["metric"]["job"]: r["value"][1] for r in query(prometheus, "up")}
    assert ups == {"wardgate": "1", "envoy": "1"}

    # Every name is a metric Prometheus scraped (with samples, or at least its HELP/TYPE).
    names = set(httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10).json()["data"])
    meta = httpx.get(f"{prometheus}/api/v1/metadata", timeout=10).json()["data"]
    exported = names | set(meta)
    for suffix in ("_bucket", "_count", "_sum"):
        exported |= {f"{m}{suffix}" for m in meta if meta[m][0]["type"] == "histogram"}
    used = set().union(*(metric_names(q) for q in dashboard_queries() + alert_queries()))
    assert used, "no metric names found"
    assert sorted(used - exported) == []

    # Every dashboard query returns data (the panels' $__rate_interval as Grafana would make it).
    empty = [
        q for q in dashboard_queries() if not query(prometheus, q.replace("$__rate_interval", "1m"))
    ]
    assert empty == []
    # The traffic sent shows on the per-route panels.
    rates = query(prometheus, "sum by (route) (rate(wardgate_route_requests_total[1m]))")
    assert name in {r["metric"].get("route") for r in rates}

    # The rules loaded, none failing to evaluate.
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = [r for g in rules for r in g["rules"]]
    assert len(loaded) == len(alert_queries())

    def evaluated() -> bool:
        rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        states = [r.get("health") for g in rules for r in g["rules"]]
        assert "err" not in states, rules
        return all(h == "ok" for h in states)

    eventually(evaluated, timeout=10, interval=0.5)


def test_promtool_checks_and_tests_the_rules() -> None:
    promtool = ensure_binary("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
