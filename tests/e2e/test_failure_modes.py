"""Redis or wardgate going away: authorization fails closed, rate limiting fails open, Envoy
keeps its configuration, and everything recovers by itself."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_redis_down_fails_closed_for_auth_open_for_limits_and_recovers(
    private_stack: Stack,
) -> None:
    s = private_stack
    assert (
        s.cli("users", "add", "carol", "--password-stdin", stdin="carol-password\n").returncode == 0
    )
    s.apply(
        route(
            "fm-open",
            "/fm-open",
            "echo",
            rate_limits=[{"by": "ip", "requests": 1000, "per": "day"}],
        ),
        route("fm-closed", "/fm-closed", "echo", auth={"require": "session"}),
    )
    with s.client() as http:
        eventually(lambda: http.get("/fm-open").status_code == 200, timeout=3)
        assert (
            http.post(
                "/auth/login", json={"username": "carol", "password": "carol-password"}
            ).status_code
            == 200
        )
        assert http.get("/fm-closed").status_code == 200
        # The session ticket is decided by Envoy alone (tests/e2e/test_tickets.py): without
        # it, every request here asks wardgate, which is what this test is about. A process
        # signs no ticket in its first seconds (its key reaches Envoy first): ext_authz sets
        # one on a later request.
        eventually(
            lambda: http.get("/fm-closed").status_code == 200 and "wg_ticket" in http.cookies,
            timeout=15,
        )
        ticket = http.cookies["wg_ticket"]
        http.cookies.delete("wg_ticket")

        devstack.stop(s.procs.pop("redis-server"))
        with_ticket = httpx.get(f"{s.base}/fm-closed", cookies={"wg_ticket": ticket}, timeout=5)
        assert with_ticket.status_code == 200  # needs neither Redis nor wardgate until it expires
        resp = http.get("/fm-closed")
        assert resp.status_code == 503
        assert resp.json()["error"] == "unavailable"
        assert http.get("/fm-open").status_code == 200  # fail open
        assert (
            http.post(
                "/auth/login", json={"username": "carol", "password": "carol-password"}
            ).status_code
            == 503
        )
        metrics = http.get(f"http://127.0.0.1:{s.http_port}/metrics").text
        assert 'wardgate_ratelimit_failures_total{mode="open"}' in metrics
        assert (
            'wardgate_authz_decisions_total{decision="error",method="none",reason="store_error"}'
            in metrics
        )

        ready = f"http://127.0.0.1:{s.http_port}/readyz"
        not_ready = eventually(lambda: (r := http.get(ready)).status_code == 503 and r, timeout=8)
        assert "redis" in not_ready.text

        port = int(s.redis_url.rsplit(":", 1)[1].split("/")[0])
        s.procs["redis-server"] = devstack.start_redis(port, s.workdir / "redis2")
        # A fresh, empty Redis: the session is gone, so 401 means wardgate reaches Redis again.
        eventually(lambda: http.get("/fm-closed").status_code == 401, timeout=5)
        eventually(lambda: http.get(ready).status_code == 200, timeout=10)


def test_envoy_keeps_serving_while_wardgate_is_down_and_reconnects(private_stack: Stack) -> None:
    s = private_stack
    s.apply(route("fm-keep", "/fm-keep", "echo"))
    with s.client() as http:
        eventually(lambda: http.get("/fm-keep").status_code == 200, timeout=3)
        devstack.stop(s.procs.pop("wardgate"))
        assert http.get("/fm-keep").status_code == 200
        assert http.get("/nothing-here").status_code == 404
        s.start_wardgate()
        s.apply(route("fm-new", "/fm-new", "echo"))
        eventually(lambda: http.get("/fm-new").status_code == 200, timeout=10)
        assert http.get("/fm-keep").status_code == 200


def test_failing_open_never_lets_spoofed_identity_headers_through(private_stack: Stack) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate(extra_env={"WARDGATE_AUTHZ_FAILURE_MODE": "open"})
    s.apply(route("fo-prot", "/fo-prot", "echo", auth={"require": "session"}))
    spoof = {"x-user-id": "mallory", "x-user-roles": "admin", "x-auth-method": "session"}
    with s.client() as http:
        eventually(lambda: http.get("/fo-prot").status_code == 401, timeout=10)
        devstack.stop(s.procs.pop("wardgate"))
        # ext_authz cannot be reached: the request passes (fail open) but as nobody.
        resp = eventually(
            lambda: (r := http.get("/fo-prot", headers=spoof)).status_code == 200 and r, timeout=5
        )
        seen = resp.json()["headers"]
        assert not set(spoof) & set(seen)


def test_rate_limit_failing_closed_answers_503_json(private_stack: Stack) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate(extra_env={"WARDGATE_RATELIMIT_FAILURE_MODE": "closed"})
    s.apply(
        route(
            "fc-rl", "/fc-rl", "echo", rate_limits=[{"by": "ip", "requests": 100, "per": "minute"}]
        )
    )
    with s.client() as http:
        eventually(lambda: http.get("/fc-rl").status_code == 200, timeout=10)
        devstack.stop(s.procs.pop("redis-server"))
        resp = http.get("/fc-rl")
        assert resp.status_code == 429  # wardgate up, Redis down: refused, with a retry hint
        assert resp.json()["error"] == "rate_limited"
        assert resp.headers["retry-after"] == "1"
        devstack.stop(s.procs.pop("wardgate"))
        resp = http.get("/fc-rl")
        assert resp.status_code == 503
        assert resp.json()["error"] == "unavailable"


def test_a_hung_redis_costs_milliseconds_not_a_hang(private_stack: Stack) -> None:
    """Redis stops answering (SIGSTOP, as a stuck or swapping server would): rate limiting
    gives up after its deadline and fails open; authorization answers 503; both recover."""
    import os
    import signal
    import time

    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate(
        extra_env={
            "WARDGATE_RATELIMIT_TIMEOUT": "100ms",
            "WARDGATE_RATELIMIT_REDIS_TIMEOUT": "50ms",
        }
    )
    s.apply(
        route(
            "hung-rl",
            "/hung-rl",
            "echo",
            rate_limits=[{"by": "ip", "requests": 1000, "per": "day"}],
        ),
        route("hung-auth", "/hung-auth", "echo", auth={"require": "session"}),
    )
    redis_pid = s.procs["redis-server"].pid
    with s.client() as http:
        eventually(lambda: http.get("/hung-rl").status_code == 200, timeout=10)
        eventually(lambda: http.get("/hung-auth").status_code == 401, timeout=10)
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            codes = [http.get("/hung-rl").status_code for _ in range(5)]
            took = time.monotonic() - started
            # A well-formed session id must be looked up in Redis, which does not answer.
            auth = http.get("/hung-auth", headers={"cookie": "wg_session=" + "A" * 43})
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        assert codes == [200] * 5  # failed open
        assert took < 4.0  # five requests, each bounded by the deadlines (not a hang)
        assert auth.status_code == 503 and auth.json()["error"] == "unavailable"
        metrics = http.get(f"http://127.0.0.1:{s.http_port}/metrics").text
        assert 'wardgate_ratelimit_failures_total{mode="open"}' in metrics
        eventually(lambda: http.get("/hung-auth").status_code == 401, timeout=10)


def _gauge(s: Stack, name: str, label: str) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{s.http_port}/metrics", timeout=3).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{name="{label}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_subscriptions_come_back_after_a_cold_start_against_a_stalled_redis(
    private_stack: Stack,
) -> None:
    """Issue 10, item 10: started while Redis does not answer (SIGSTOP), wardgate must end
    up with keyspace events and the revocation channel once Redis answers again, so a raw
    write is live at once, not at the next periodic re-read (set to 60 s here)."""
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    redis_proc = s.procs["redis-server"]
    os.kill(redis_proc.pid, signal.SIGSTOP)
    try:
        s.start_wardgate(extra_env={"WARDGATE_RESYNC_INTERVAL": "60s"})
        time.sleep(7)  # past the control client's 5 s deadline: its first attempts time out
    finally:
        os.kill(redis_proc.pid, signal.SIGCONT)
    devstack.wait_http(f"http://127.0.0.1:{s.http_port}/readyz", timeout=30)
    eventually(lambda: _gauge(s, "wardgate_subscriptions", "keyspace") == 1, timeout=15)
    eventually(lambda: _gauge(s, "wardgate_subscriptions", "revocations") == 1, timeout=15)
    # Envoy's ADS stream was sent away while the store could not be read (a replica that
    # cannot check its snapshot serves none); it comes back after Envoy's retry backoff.
    eventually(
        lambda: (
            "control_plane.connected_state: 1"
            in s.admin("/stats?filter=control_plane.connected_state")
        ),
        timeout=30,
    )
    with s.client() as http:
        s.redis().hset(
            f"{s.prefix}routes",
            "after-stall",
            json.dumps(route("after-stall", "/after-stall", "echo")),
        )
        eventually(lambda: http.get("/after-stall").status_code == 200, timeout=3)
