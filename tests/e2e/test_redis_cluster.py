"""The whole gateway on a real Redis Cluster (three redis-server nodes on this machine)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.cluster import RedisCluster

from tests.support import Stack, echo, eventually, new_stack, route, service
from wardgate import devstack
from wardgate.domain.quota import local_bound
from wardgate.store.keys import Keys

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a port too."""
    while True:
        port = devstack.free_port()
        if port < 55000 and not devstack.port_open(port + 10000):
            return port


def _start_cluster(workdir: Path) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    binary = devstack.ensure_redis_server()
    procs, ports = [], []
    try:
        for _ in range(3):
            port = _cluster_port()
            d = workdir / f"node-{port}"
            d.mkdir(parents=True)
            with open(d / "redis.log", "ab") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            binary,
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            str(d / "nodes.conf"),
                            "--dir",
                            str(d),
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--notify-keyspace-events",
                            "Khg",
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            devstack.wait_port(port, proc=procs[-1], what="redis cluster node")
            ports.append(port)
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli comes with redis-server"
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(
                redis.Redis(port=p).cluster("info").get("cluster_state") == "ok"  # type: ignore[union-attr]
                for p in ports
            ):
                return procs, ports
            time.sleep(0.1)
        raise TimeoutError("the Redis cluster did not become ok")
    except BaseException:
        for p in procs:
            devstack.stop(p)
        raise


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("cluster")
    nodes, ports = _start_cluster(work)
    s = new_stack(work, f"redis+cluster://127.0.0.1:{ports[0]}", "{wg}:")
    try:
        s.procs["upstream"] = devstack.start_upstream(
            s.upstream_port, "echo", work / "upstream.log"
        )
        s.start_wardgate()
        s.start_envoy()
        s.apply(service("echo", s.upstream_port))
        yield s
    finally:
        s.stop_all()
        for n in nodes:
            devstack.stop(n)


def cluster_client(s: Stack) -> RedisCluster:
    port = int(s.redis_url.rsplit(":", 1)[1])
    return RedisCluster(host="127.0.0.1", port=port, decode_responses=True)


def test_routes_sessions_and_raw_writes_on_a_cluster(cluster_stack: Stack) -> None:
    s = cluster_stack
    s.apply(
        route("cl-pub", "/cl-pub", "echo"),
        route("cl-me", "/cl-me", "echo", auth={"require": "session"}),
    )
    assert s.cli("users", "add", "cl", "--password-stdin", stdin="cl-password\n").returncode == 0
    with s.client() as http:
        eventually(lambda: http.get("/cl-pub").status_code == 200, timeout=3)
        assert http.get("/cl-me").status_code == 401
        assert (
            http.post("/auth/login", json={"username": "cl", "password": "cl-password"}).status_code
            == 200
        )
        assert echo(http.get("/cl-me"))["headers"]["x-user-id"] == "cl"
        # A raw write goes to the node holding the hash; its keyspace event is heard there.
        c = cluster_client(s)
        c.hset("{wg}:routes", "cl-raw", json.dumps(route("cl-raw", "/cl-raw", "echo")))
        eventually(lambda: http.get("/cl-raw").status_code == 200, timeout=1.0, interval=0.01)
        c.close()
    history = json.loads(s.cli("history", "-o", "json").stdout)
    assert history and history[0]["revision"] >= 2


def test_limits_in_several_slots_refuse_without_spending(cluster_stack: Stack) -> None:
    s = cluster_stack
    s.apply(
        route(
            "cl-rl",
            "/cl-rl",
            "echo",
            rate_limits=[
                {"by": "ip", "requests": 100, "per": "day"},
                {"by": "route", "requests": 3, "per": "day"},
            ],
        )
    )
    keys = Keys("{wg}:")
    with s.client() as http:
        eventually(lambda: http.get("/cl-rl").status_code == 200, timeout=3)
        codes = [http.get("/cl-rl").status_code for _ in range(5)]
    assert codes == [200, 200, 429, 429, 429]
    window = int(time.time() * 1000) // 86_400_000
    ip_key = keys.counter("cl-rl#0", "remote_address=127.0.0.1", window)
    route_key = keys.counter("cl-rl#1", "*", window)
    c = cluster_client(s)
    try:
        assert c.keyslot(ip_key) != c.keyslot(route_key)  # really two slots
        assert int(c.get(route_key)) == 3
        assert int(c.get(ip_key)) == 3  # the refused requests spent nothing from the ip limit
    finally:
        c.close()


def test_sessions_spread_over_the_cluster_while_documents_share_a_slot(
    cluster_stack: Stack,
) -> None:
    s = cluster_stack
    c = cluster_client(s)
    try:
        doc_slots = {
            c.keyslot(k) for k in ("{wg}:routes", "{wg}:services", "{wg}:history", "{wg}:revision")
        }
        assert len(doc_slots) == 1
        sessions = [k for k in c.scan_iter(match="wg:session:*")]
        assert sessions, "a session exists from the earlier test"
        keys = Keys("{wg}:")
        assert keys.session("a" * 64).startswith("wg:session:")
        assert len({c.keyslot(keys.session(f"{i:064x}")) for i in range(20)}) > 1
    finally:
        c.close()


def test_quota_budgets_live_on_the_cluster(cluster_stack: Stack) -> None:
    """enforce: quota: the ledger's scripts reach the nodes holding the buckets (redis-py
    pipelines no scripts on a cluster), and leases come back."""
    s = cluster_stack
    rule = {"by": "route", "requests": 3, "per": "day", "enforce": "quota"}
    s.apply(route("cl-quota", "/cl-quota", "echo", rate_limits=[rule]))
    with s.client() as http:
        eventually(lambda: http.get("/cl-quota").status_code == 200, timeout=3)
        codes = [200] + [http.get("/cl-quota").status_code for _ in range(9)]

    def metric(name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{s.http_port}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and 'rule="cl-quota#0"' in line
        )

    # Every request reported (the quota filter counts what the local bound then refused).
    eventually(lambda: metric("wardgate_quota_requests_total") == 10, timeout=15, interval=0.5)
    assert metric("wardgate_quota_leases_total") >= 1  # answered: the stream did not fail
    unleased = metric("wardgate_quota_unleased_total")
    # The budget of 3, and what passed before the first lease came back (unleased, counted),
    # never more than the Envoy's local bound for a fixed window (twice the requests).
    admitted = codes.count(200)
    assert 3 <= admitted <= min(3 + unleased, local_bound(3, "fixed_window"))
    assert codes[-3:] == [429, 429, 429]
    c = cluster_client(s)
    try:
        key = Keys("{wg}:").quota("cl-quota#0|3|86400|fixed_window", "*")
        assert c.hget(key, "g") is not None  # the budget is where its key says
    finally:
        c.close()
