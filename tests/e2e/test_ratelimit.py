"""Rate limits through a real Envoy: 429 with the headers PRODUCT.md names."""

from __future__ import annotations

import pytest

from tests.support import Stack, eventually, route

pytestmark = pytest.mark.e2e


def test_per_ip_limit_answers_429_with_headers_after_the_limit(stack: Stack) -> None:
    stack.apply(
        route("rl-ip", "/rl-ip", "echo", rate_limits=[{"by": "ip", "requests": 5, "per": "hour"}])
    )
    with stack.client() as http:
        eventually(lambda: http.get("/rl-ip").status_code in (200, 429), timeout=3)
        # the probe above may have spent some: count what is left from the headers
        first = http.get("/rl-ip")
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit"].startswith("5")
        remaining = int(first.headers["x-ratelimit-remaining"])
        for _ in range(remaining):
            assert http.get("/rl-ip").status_code == 200
        over = http.get("/rl-ip")
    assert over.status_code == 429
    assert over.json()["error"] == "rate_limited"
    assert over.headers["x-ratelimit-remaining"] == "0"
    assert int(over.headers["retry-after"]) >= 1
    assert 0 < int(over.headers["x-ratelimit-reset"]) <= 3600
    assert over.headers["x-ratelimit-limit"].startswith("5")


def test_refused_requests_spend_nothing_and_other_routes_are_separate(stack: Stack) -> None:
    stack.apply(
        route("rl-a", "/rl-a", "echo", rate_limits=[{"by": "route", "requests": 3, "per": "hour"}]),
        route("rl-b", "/rl-b", "echo", rate_limits=[{"by": "route", "requests": 3, "per": "hour"}]),
    )
    with stack.client() as http:
        eventually(lambda: http.get("/rl-b").status_code == 200, timeout=3)
        codes = [http.get("/rl-a").status_code for _ in range(6)]
        assert codes.count(200) == 3 and codes[3:] == [429, 429, 429]
        assert http.get("/rl-b").status_code == 200


def test_per_user_limit_counts_each_user_apart(stack: Stack) -> None:
    for name in ("rl-u1", "rl-u2"):
        assert (
            stack.cli("users", "add", name, "--password-stdin", stdin="password-123\n").returncode
            == 0
        )
    stack.apply(
        route(
            "rl-user",
            "/rl-user",
            "echo",
            auth={"require": "session"},
            rate_limits=[{"by": "user", "requests": 2, "per": "hour"}],
        )
    )
    clients = []
    for name in ("rl-u1", "rl-u2"):
        c = stack.client()
        assert (
            c.post("/auth/login", json={"username": name, "password": "password-123"}).status_code
            == 200
        )
        clients.append(c)
    u1, u2 = clients
    eventually(lambda: u1.get("/rl-user").status_code in (200, 429), timeout=3)
    while u1.get("/rl-user").status_code == 200:
        pass
    assert u1.get("/rl-user").status_code == 429
    assert u2.get("/rl-user").status_code == 200
    assert u2.get("/rl-user").status_code == 200
    assert u2.get("/rl-user").status_code == 429
    for c in clients:
        c.close()
