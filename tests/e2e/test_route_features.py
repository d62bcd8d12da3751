"""Route and service features as a client of the gateway sees them."""

from __future__ import annotations

import collections
import json
import socket
from collections.abc import Iterator

import pytest

from tests.support import Stack, echo, eventually, route, service
from wardgate import devstack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def second_upstream(stack: Stack) -> Iterator[int]:
    port = devstack.free_port()
    proc = devstack.start_upstream(port, "echo-b", stack.workdir / "upstream-b.log")
    try:
        yield port
    finally:
        devstack.stop(proc)


def test_weighted_split_follows_the_weights(stack: Stack, second_upstream: int) -> None:
    stack.apply(
        service("split-a", stack.upstream_port),
        service("split-b", second_upstream),
        {
            "kind": "Route",
            "name": "split",
            "match": {"prefix": "/split"},
            "backends": [
                {"service": "split-a", "weight": 80},
                {"service": "split-b", "weight": 20},
            ],
        },
    )
    with stack.client() as http:
        eventually(lambda: http.get("/split").status_code == 200, timeout=3)
        seen = collections.Counter(echo(http.get("/split"))["service"] for _ in range(400))
    # 80/20 over 400 requests: binomial sd = 8, so 320 +- 40 is over 4.5 sd
    assert 280 <= seen["echo"] <= 360, seen
    assert seen["echo"] + seen["echo-b"] == 400


def test_header_based_version_routing(stack: Stack, second_upstream: int) -> None:
    stack.apply(
        service("ver-1", stack.upstream_port),
        service("ver-2", second_upstream),
        route("ver-default", "/ver", "ver-1"),
        route(
            "ver-two", "/ver", "ver-2", match={"prefix": "/ver", "headers": {"x-api-version": "v2"}}
        ),
    )
    with stack.client() as http:
        eventually(
            lambda: echo(http.get("/ver", headers={"x-api-version": "v2"}))["service"] == "echo-b",
            timeout=3,
        )
        assert echo(http.get("/ver"))["service"] == "echo"
        assert echo(http.get("/ver", headers={"x-api-version": "v1"}))["service"] == "echo"


def test_dead_endpoint_is_ejected_by_health_checks(stack: Stack) -> None:
    dead = devstack.free_port()  # nothing listens there
    stack.apply(
        {
            "kind": "Service",
            "name": "hc",
            "endpoints": [
                {"address": "127.0.0.1", "port": stack.upstream_port},
                {"address": "127.0.0.1", "port": dead},
            ],
            "health_check": {
                "path": "/healthz",
                "interval": "200ms",
                "timeout": "100ms",
                "unhealthy_threshold": 1,
            },
        },
        route("hc", "/hc", "hc"),
    )

    def dead_is_unhealthy() -> bool:
        text = stack.admin("/clusters")
        return f"hc::127.0.0.1:{dead}::health_flags::/failed_active_hc" in text

    eventually(dead_is_unhealthy, timeout=5)
    with stack.client() as http:
        codes = collections.Counter(http.get("/hc").status_code for _ in range(50))
    assert codes == {200: 50}


def test_retry_on_5xx_reaches_a_healthy_endpoint(stack: Stack, second_upstream: int) -> None:
    # /status/503 makes the echo upstream answer 503; the route retries on 5xx.
    stack.apply(
        service("retry", stack.upstream_port),
        route("retry", "/status", "retry", retries={"attempts": 2, "on": ["5xx"]}),
    )
    with stack.client() as http:
        eventually(lambda: http.get("/status/200").status_code == 200, timeout=3)
        resp = http.get("/status/503")
    assert resp.status_code == 503
    stats = stack.admin("/stats?filter=cluster.retry.upstream_rq_retry$")
    assert "cluster.retry.upstream_rq_retry: 2" in stats


def test_a_slow_upstream_gets_504_with_the_json_body(stack: Stack) -> None:
    stack.apply(
        service("slow", stack.upstream_port), route("slow", "/delay", "slow", timeout="300ms")
    )
    with stack.client() as http:
        eventually(lambda: http.get("/delay/0").status_code == 200, timeout=3)
        resp = http.get("/delay/2")
    assert resp.status_code == 504
    assert resp.json()["error"] == "upstream_timeout"


def test_a_nack_is_shown_in_status_and_the_old_config_kept(stack: Stack) -> None:
    """A configuration Envoy refuses although wardgate validated it: an Envoy whose listener
    port is taken by another process NACKs the listener; status shows why."""
    stack.apply(route("nack-keep", "/nack-keep", "echo"))
    with stack.client() as http:
        eventually(lambda: http.get("/nack-keep").status_code == 200, timeout=3)
    taken = devstack.free_port()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    blocker.bind(("0.0.0.0", taken))
    blocker.listen()
    admin = devstack.free_port()
    envoy = devstack.start_envoy(
        workdir=stack.workdir,
        node_id="envoy-nack",
        listen_port=taken,
        admin_port=admin,
        wardgate_port=stack.grpc_port,
    )
    try:

        def nacked() -> dict:
            status = json.loads(stack.cli("status", "-o", "json").stdout)
            found = [e for e in status["envoys"] if e["node"] == "envoy-nack"]
            assert found and found[0]["types"]["Listener"]["nack_error"]
            return found[0]

        node = eventually(nacked, timeout=10, interval=0.3)
        assert (
            "address already in use" in node["types"]["Listener"]["nack_error"].lower()
            or node["types"]["Listener"]["nack_error"]
        )
        text = stack.cli("status").stdout
        assert "NACKED" in text
        # The other Envoy is unaffected.
        with stack.client() as http:
            assert http.get("/nack-keep").status_code == 200
    finally:
        devstack.stop(envoy)
        blocker.close()
