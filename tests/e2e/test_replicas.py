"""Two wardgate replicas behind one Redis, and an Envoy moving between them.

Replica B is made to lag on purpose: keyspace events are off and its re-read interval is a
day, so a raw HSET reaches only replica A (which re-reads every second). The Envoy takes the
change from A; A dies; the Envoy reconnects to B. B must check the store before its first
answer and serve the change, never the older snapshot it still holds
(envoyproxy/gateway#6618)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.inproc_cli import apply as cli_apply
from tests.support import Stack, eventually, new_stack, route, service
from wardgate import devstack
from wardgate.envoy_proc import find_envoy, render_bootstrap

pytestmark = pytest.mark.e2e
QUIET = ("--log-level", "warning", "--drain-time-s", "1")


def _envoy_on_both(stack: Stack, grpc_ports: list[int], *, delta: bool) -> subprocess.Popen[bytes]:
    """An Envoy whose wardgate cluster holds both replicas: when one dies, it reconnects to
    the other."""
    config = yaml.safe_load(
        render_bootstrap(
            node_id="envoy-replicas",
            listen_port=stack.listen_port,
            admin_port=stack.admin_port,
            wardgate_port=grpc_ports[0],
            delta=delta,
        )
    )
    cluster = config["static_resources"]["clusters"][0]
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in grpc_ports
    ]
    path = stack.workdir / "envoy-replicas.yaml"
    path.write_text(yaml.safe_dump(config))
    with open(stack.workdir / "envoy-replicas.log", "ab") as out:
        proc = subprocess.Popen(
            [find_envoy(), "-c", str(path), "--use-dynamic-base-id", "--concurrency", "1", *QUIET],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stack.procs["envoy"] = proc
    devstack.wait_port(stack.admin_port, proc=proc, what="envoy", timeout=30)
    return proc


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    port = devstack.free_port()
    redis_proc = devstack.start_redis(port, tmp_path / "redis")
    url = f"redis://127.0.0.1:{port}/0"
    a = new_stack(tmp_path / "a", url, "wardgate:")
    b = new_stack(tmp_path / "b", url, "wardgate:")
    b.listen_port, b.admin_port, b.upstream_port = a.listen_port, a.admin_port, a.upstream_port
    for s in (a, b):
        s.workdir.mkdir()
    try:
        a.procs["upstream"] = devstack.start_upstream(a.upstream_port, "echo", tmp_path / "up.log")
        a.start_wardgate(extra_env={"WARDGATE_RESYNC_INTERVAL": "1s"})
        yield a, b
    finally:
        b.stop_all()
        a.stop_all()
        devstack.stop(redis_proc)


def _path_seen(http: httpx.Client) -> str | None:
    got = http.get("/rep/x")
    return str(got.json()["path"]) if got.status_code == 200 else None


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_an_envoy_moving_to_a_lagging_replica_never_gets_an_older_snapshot(
    replicas: tuple[Stack, Stack], delta: bool
) -> None:
    a, b = replicas
    mode = "delta" if delta else "sotw"
    cli_apply(
        a, service("echo", a.upstream_port), route("rep", "/rep/", "echo", rewrite_prefix="/v1/")
    )
    envoy = _envoy_on_both(a, [a.grpc_port, b.grpc_port], delta=delta)
    with a.client() as http:
        eventually(lambda: _path_seen(http) == "/v1/x", timeout=15)  # served by A
        # B starts now (the Envoy already streams from A), reads the same documents, then
        # hears nothing more: no keyspace events, a re-read once a day.
        b.start_wardgate(extra_env={"WARDGATE_RESYNC_INTERVAL": "1d"})
        ready = f"http://127.0.0.1:{b.http_port}/readyz"
        eventually(lambda: httpx.get(ready, timeout=5).status_code == 200, timeout=10)
        r = a.redis()
        r.config_set("notify-keyspace-events", "")
        changed = route("rep", "/rep/", "echo", rewrite_prefix="/v2/")
        r.hset("wardgate:routes", "rep", json.dumps(changed))
        eventually(lambda: _path_seen(http) == "/v2/x", timeout=15)  # A re-read it
        # B still holds the old snapshot: its metrics show one build, and no stream check.
        devstack.stop(a.procs.pop("wardgate"))
        # The Envoy reconnects to B. From now on it must never see /v1/ again.
        seen: list[str | None] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            seen.append(_path_seen(http))
            metrics = httpx.get(f"http://127.0.0.1:{b.http_port}/metrics", timeout=5).text
            if f'wardgate_xds_connected_nodes{{mode="{mode}"}} 1.0' in metrics:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the Envoy never reconnected to replica B")
        for _ in range(20):  # and a while after it took B's answers
            seen.append(_path_seen(http))
            time.sleep(0.05)
        assert "/v1/x" not in seen
        assert seen[-1] == "/v2/x"
        # The stream is counted as connected at its first request, before the check that
        # answers it has finished reading the store: wait for that check's count.
        synced = 'wardgate_xds_stream_checks_total{result="synced"} 1.0'
        eventually(
            lambda: synced in httpx.get(f"http://127.0.0.1:{b.http_port}/metrics", timeout=5).text,
            timeout=5,
        )
        assert envoy.poll() is None
        r.config_set("notify-keyspace-events", "Khg")
