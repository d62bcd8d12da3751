"""discovery: registry: instances join the endpoint set (EDS) by heartbeat and leave when
their heartbeats stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = pytest.mark.e2e


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
        first = httpx.post(hb, json=body, timeout=3)
        assert first.status_code == 200 and first.json()["new"] is True
        eventually(lambda: http.get("/reg").status_code == 200, timeout=1.0, interval=0.01)
        # The heartbeats stop: the instance leaves within its ttl (plus the 1 s sweep).
        eventually(lambda: http.get("/reg").status_code == 503, timeout=5)


def test_heartbeat_refuses_bad_input(stack: Stack) -> None:
    stack.apply({"kind": "Service", "name": "reg2", "discovery": "registry"})
    hb = f"http://127.0.0.1:{stack.http_port}/registry/heartbeat"
    cases = [
        ({"service": "nope", "address": "127.0.0.1", "port": 1}, 404),
        ({"service": "echo", "address": "127.0.0.1", "port": 1}, 404),  # static service
        ({"service": "reg2", "address": "not-an-ip", "port": 1}, 400),
        ({"service": "reg2", "address": "127.0.0.1", "port": 70000}, 400),
        ({"service": "reg2", "address": "127.0.0.1", "port": 1, "ttl": 0}, 400),
        ({"address": "127.0.0.1"}, 400),
    ]
    for body, status in cases:
        resp = httpx.post(hb, json=body, timeout=3)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]


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
