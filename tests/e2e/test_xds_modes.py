"""State of the world and delta ADS side by side: several Envoys converge on the same routes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def delta_envoy(stack: Stack) -> Iterator[str]:
    listen, admin = devstack.free_port(), devstack.free_port()
    proc = devstack.start_envoy(
        workdir=stack.workdir,
        node_id="envoy-delta",
        listen_port=listen,
        admin_port=admin,
        wardgate_port=stack.grpc_port,
        delta=True,
    )
    try:
        devstack.wait_http(f"http://127.0.0.1:{listen}/nothing", ok=(404,), timeout=15)
        yield f"http://127.0.0.1:{listen}"
    finally:
        devstack.stop(proc)


def test_delta_and_sotw_envoys_converge_on_every_change(stack: Stack, delta_envoy: str) -> None:
    bases = [stack.base, delta_envoy]

    def all_answer(path: str, code: int) -> bool:
        return all(httpx.get(b + path, timeout=2).status_code == code for b in bases)

    stack.apply(route("conv", "/conv", "echo"))
    eventually(lambda: all_answer("/conv", 200), timeout=1.0, interval=0.01)
    stack.apply(route("conv", "/conv", "echo", auth={"require": "session"}))
    eventually(lambda: all_answer("/conv", 401), timeout=1.0, interval=0.01)
    assert stack.cli("delete", "route", "conv").returncode == 0
    eventually(lambda: all_answer("/conv", 404), timeout=1.0, interval=0.01)


def test_delta_envoy_is_listed_with_its_acks(stack: Stack, delta_envoy: str) -> None:
    def listed() -> dict:
        status = json.loads(stack.cli("status", "-o", "json").stdout)
        found = [e for e in status["envoys"] if e["node"] == "envoy-delta"]
        assert found and found[0]["types"]["RouteConfiguration"]["acked_version"]
        return found[0]

    envoy = eventually(listed, timeout=5, interval=0.3)
    assert envoy["mode"] == "delta"
    for t in ("Cluster", "Listener", "RouteConfiguration"):
        assert envoy["types"][t]["acked_version"] == envoy["types"][t]["sent_version"]


def test_delta_removes_clusters_of_deleted_services(stack: Stack, delta_envoy: str) -> None:
    from tests.support import service

    stack.apply(service("gone-soon", stack.upstream_port))
    admin_port = None
    for line in (stack.workdir / "envoy-envoy-delta.yaml").read_text().splitlines():
        if "port_value" in line and "127.0.0.1" in line and admin_port is None:
            admin_port = int(line.split("port_value:")[1].strip(" }"))
    assert admin_port
    clusters = lambda: httpx.get(f"http://127.0.0.1:{admin_port}/clusters", timeout=2).text  # noqa: E731
    eventually(lambda: "gone-soon::" in clusters(), timeout=2)
    assert stack.cli("delete", "service", "gone-soon").returncode == 0
    eventually(lambda: "gone-soon::" not in clusters(), timeout=2)
