"""`wardgate up`, as the README tells a new user to run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from wardgate import devstack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_up_serves_the_demo_and_ctrl_c_stops_everything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    offset = 0
    for candidate in range(300, 900, 37):
        ports = [10000, 9901, 9902, 18000, 18080, 16379, 8081, 8082]
        if not any(devstack.port_open(p + candidate) for p in ports):
            offset = candidate
            break
    assert offset
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wardgate",
            "up",
            "--port-offset",
            str(offset),
            "--workdir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{10000 + offset}"
    try:
        out = ""
        deadline = time.monotonic() + 60
        while "Ctrl-C stops everything" not in out and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line and proc.poll() is not None:
                break
            out += line
        assert "Ctrl-C stops everything" in out, out
        assert f"curl -i {base}/public/hello" in out
        assert httpx.get(f"{base}/public/hello").status_code == 200
        assert httpx.get(f"{base}/api/me").status_code == 401
        login = httpx.post(
            f"{base}/auth/login", json={"username": "alice", "password": "alice-password"}
        )
        assert login.status_code == 200
        me = httpx.get(f"{base}/api/me", cookies=login.cookies)
        assert me.json()["headers"]["x-user-id"] == "alice"
        assert httpx.get(f"{base}/api/admin", cookies=login.cookies).status_code == 403
        # The demo composition, through Envoy's compose listener (admin port + 1).
        dash = httpx.get(f"{base}/bff/dashboard", cookies=login.cookies, timeout=10)
        assert dash.status_code == 200, dash.text
        assert dash.json()["me"]["path"] == "/users/alice"
        grpc_call = subprocess.run(
            [
                sys.executable,
                "-m",
                "wardgate.demo.grpc_upstream",
                "--call",
                f"127.0.0.1:{10000 + offset}",
                "--name",
                "tester",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert 'message: "hello, tester"' in grpc_call.stdout, grpc_call.stderr
        assert f"curl -s {base}/v1/greeter/you" in out
        rest = httpx.get(f"{base}/v1/greeter/tester")  # transcoded to the same gRPC method
        assert rest.status_code == 200 and rest.json()["message"] == "hello, tester"
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert "stopped" in rest
    for port in (10000, 9901, 9902, 18000, 18080, 16379, 8081, 8082):
        assert not devstack.port_open(port + offset), port + offset
