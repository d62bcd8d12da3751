"""discovery: registry: instances join the endpoint set (EDS) by heartbeat and leave when
their heartbeats stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.support import REGISTRY_TOKEN, Stack, eventually, route
from wardgate import devstack

pytestmark = pytest.mark.e2e
AUTH = {"authorization": f"Bearer {REGISTRY_TOKEN}"}


def test_registry_instances_come_and_go(stack: Stack) -> None:
    stack.apply(
        {"kind": "Service", "name": "reg", "discovery": "registry"},
        route("reg", "/reg", "reg"),
    )
    hb = f"http://127.0.0.1:{stack.http_port}/registry/heartbeat"
    with stack.client() as http:
        eventually(lambda: http.get("/reg").status_code == 503, timeout=3)  # no instance yet
        assert http.get("/reg").json()["error"] == "unavailable"
        body = {"service": "reg", "address": "127.0.0.1", "port": stack.upstream_port, "ttl": 2}
        first = httpx.post(hb, json=body, headers=AUTH, timeout=3)
        assert first.status_code == 200 and first.json()["new"] is True
        eventually(lambda: http.get("/reg").status_code == 200, timeout=1.0, interval=0.01)
        # The heartbeats stop: the instance leaves within its ttl (plus the 1 s sweep).
        eventually(lambda: http.get("/reg").status_code == 503, timeout=5)


def test_heartbeat_refuses_bad_input(stack: Stack) -> None:
    """Issue 10, item 8: strict types, no unspecified, link-local, multicast or reserved
    addresses, none of the gateway's own endpoints."""
    stack.apply({"kind": "Service", "name": "reg2", "discovery": "registry"})
    hb = f"http://127.0.0.1:{stack.http_port}/registry/heartbeat"
    redis_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    ok = {"service": "reg2", "address": "127.0.0.1", "port": 1}
    cases = [
        ({"service": "nope", "address": "127.0.0.1", "port": 1}, 404),
        ({"service": "echo", "address": "127.0.0.1", "port": 1}, 404),  # static service
        ({**ok, "address": "not-an-ip"}, 400),
        ({**ok, "port": 70000}, 400),
        ({**ok, "ttl": 0}, 400),
        ({"address": "127.0.0.1"}, 400),
        ({**ok, "port": True}, 400),  # not port 1
        ({**ok, "port": "8080"}, 400),
        ({**ok, "port": 80.0}, 400),
        ({**ok, "weight": False}, 400),
        ({**ok, "ttl": "10"}, 400),
        ({**ok, "address": 2130706433}, 400),
        ({**ok, "extra": 1}, 400),
        ({**ok, "address": "169.254.169.254"}, 400),  # the cloud metadata service
        ({**ok, "address": "::ffff:169.254.169.254"}, 400),
        ({**ok, "address": "fe80::1"}, 400),
        ({**ok, "address": "0.0.0.0"}, 400),
        ({**ok, "address": "::"}, 400),
        ({**ok, "address": "224.0.0.1"}, 400),
        ({**ok, "address": "255.255.255.255"}, 400),
        ({**ok, "address": "127.0.0.1", "port": redis_port}, 400),  # wardgate's Redis
        ({**ok, "address": "127.0.0.2", "port": stack.grpc_port}, 400),  # its gRPC port
        ({**ok, "address": "::1", "port": stack.http_port}, 400),  # its HTTP port
        ({**ok, "port": stack.admin_port}, 400),  # Envoy's admin: it can stop Envoy
        ({**ok, "port": stack.listen_port}, 400),  # Envoy's own listener: a loop
        ({**ok, "address": "fd00:ec2::254"}, 400),  # AWS's IPv6 metadata service
        ({**ok, "address": "100.100.100.200"}, 400),
    ]
    for body, status in cases:
        resp = httpx.post(hb, json=body, headers=AUTH, timeout=3)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]
    bad_json = httpx.post(hb, content=b"{nope", headers=AUTH, timeout=3)
    assert bad_json.status_code == 400
    assert httpx.post(hb, json=ok, headers=AUTH, timeout=3).status_code == 200


def test_heartbeats_need_the_registry_token(stack: Stack) -> None:
    hb = f"http://127.0.0.1:{stack.http_port}/registry/heartbeat"
    body = {"service": "reg2", "address": "127.0.0.1", "port": 1}
    assert httpx.post(hb, json=body, timeout=3).status_code == 401
    wrong = {"authorization": "Bearer not-the-token"}
    assert httpx.post(hb, json=body, headers=wrong, timeout=3).status_code == 401
    raw = {"authorization": b"Bearer \xff\xfe"}  # not UTF-8: 401, never a 500
    assert httpx.post(hb, json=body, headers=raw, timeout=3).status_code == 401


def test_without_a_registry_token_heartbeats_are_off(private_stack: Stack) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate(extra_env={"WARDGATE_REGISTRY_TOKEN": ""})
    s.apply({"kind": "Service", "name": "reg4", "discovery": "registry"})
    hb = f"http://127.0.0.1:{s.http_port}/registry/heartbeat"
    body = {"service": "reg4", "address": "127.0.0.1", "port": 1}
    for headers in ({}, {"authorization": "Bearer x"}):
        resp = httpx.post(hb, json=body, headers=headers, timeout=3)
        assert resp.status_code == 403
        assert "set registry_token" in resp.json()["message"]


def test_register_command_heartbeats_and_deregisters_on_ctrl_c(stack: Stack) -> None:
    stack.apply(
        {"kind": "Service", "name": "reg3", "discovery": "registry"}, route("reg3", "/reg3", "reg3")
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wardgate",
            "register",
            "reg3",
            "--address",
            "127.0.0.1",
            "--port",
            str(stack.upstream_port),
            "--ttl",
            "30s",
        ],
        env={**os.environ, **stack.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with stack.client() as http:
            eventually(lambda: http.get("/reg3").status_code == 200, timeout=5)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
            assert "deregistered" in out
            # Deregistration is immediate, not after the 30 s ttl.
            eventually(lambda: http.get("/reg3").status_code == 503, timeout=2)
    finally:
        devstack.stop(proc)  # type: ignore[arg-type]
