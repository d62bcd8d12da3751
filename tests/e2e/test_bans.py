"""Automatic bans (issue 10): a client refused too often is refused by Envoy itself for a
while, before any callout; the list reaches Envoy over ECDS; operators manage it."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = pytest.mark.e2e


def _metric(s: Stack, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{s.http_port}/metrics", timeout=3).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _authz_checks(s: Stack) -> float:
    text = httpx.get(f"http://127.0.0.1:{s.http_port}/metrics", timeout=3).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("wardgate_authz_decisions_total{")
    )


def test_a_client_refused_too_often_is_banned_everywhere_for_a_while(
    private_stack: Stack,
) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate(
        extra_env={
            "WARDGATE_BAN_AFTER": "5",
            "WARDGATE_BAN_WINDOW": "1m",
            "WARDGATE_BAN_DURATION": "4s",
        }
    )
    s.apply(
        route(
            "ban-me", "/ban-me", "echo", rate_limits=[{"by": "ip", "requests": 1, "per": "hour"}]
        ),
        route("ban-other", "/ban-other", "echo", auth={"require": "session"}),
        route("ban-public", "/ban-public", "echo"),
    )
    with s.client() as http:
        eventually(lambda: http.get("/ban-public").status_code == 200, timeout=10)
        assert http.get("/ban-me").status_code == 200
        codes = [http.get("/ban-me").status_code for _ in range(5)]
        assert codes == [429] * 5
        banned = eventually(
            lambda: (r := http.get("/ban-public")).status_code == 403 and r, timeout=3
        )
        assert banned.json()["error"] == "forbidden"
        checks = _authz_checks(s)
        assert http.get("/ban-other").status_code == 403  # not 401: no callout at all
        assert http.post("/auth/login", json={"username": "x", "password": "y"}).status_code == 403
        assert _authz_checks(s) == checks
        assert _metric(s, "wardgate_bans_total") == 1
        listed = json.loads(s.cli("bans", "list", "-o", "json").stdout)
        assert [b["network"] for b in listed] == ["127.0.0.1/32"]
        # The ban ends by itself.
        eventually(lambda: http.get("/ban-public").status_code == 200, timeout=8)
        assert s.cli("bans", "list").stdout.strip() == "no bans"
    config = httpx.get(f"http://127.0.0.1:{s.admin_port}/config_dump", timeout=5).text
    assert "wardgate.bans" in config  # the RBAC configuration came over ECDS


def test_operators_ban_and_lift_by_hand(stack: Stack) -> None:
    stack.apply(route("ban-hand", "/ban-hand", "echo"))
    with stack.client() as http:
        eventually(lambda: http.get("/ban-hand").status_code == 200, timeout=5)
        added = stack.cli("bans", "add", "127.0.0.1", "--for", "5m")
        assert added.returncode == 0, added.stderr
        try:
            eventually(lambda: http.get("/ban-hand").status_code == 403, timeout=3)
        finally:
            removed = stack.cli("bans", "remove", "127.0.0.1")
        assert removed.returncode == 0, removed.stderr
        eventually(lambda: http.get("/ban-hand").status_code == 200, timeout=3)
    again = stack.cli("bans", "remove", "127.0.0.1")
    assert again.returncode == 1 and "not banned" in again.stderr
    bad = stack.cli("bans", "add", "not-an-address")
    assert bad.returncode == 1 and bad.stderr.startswith("error: ")
