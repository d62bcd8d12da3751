"""Rate limits through a real Envoy: 429 with the headers PRODUCT.md names."""

from __future__ import annotations

import pytest

from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = pytest.mark.e2e


def test_per_ip_limit_answers_429_with_headers_after_the_limit(stack: Stack) -> None:
    stack.apply(
        route("rl-ip", "/rl-ip", "echo", rate_limits=[{"by": "ip", "requests": 5, "per": "day"}])
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
    assert 0 < int(over.headers["x-ratelimit-reset"]) <= 86400
    assert over.headers["x-ratelimit-limit"].startswith("5")


def test_refused_requests_spend_nothing_and_other_routes_are_separate(stack: Stack) -> None:
    stack.apply(
        route("rl-a", "/rl-a", "echo", rate_limits=[{"by": "route", "requests": 3, "per": "day"}]),
        route("rl-b", "/rl-b", "echo", rate_limits=[{"by": "route", "requests": 3, "per": "day"}]),
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
            rate_limits=[{"by": "user", "requests": 2, "per": "day"}],
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


def test_a_shared_key_counts_across_routes(stack: Stack) -> None:
    limit = [{"by": "ip", "requests": 4, "per": "day", "key": "shared-budget"}]
    stack.apply(
        route("rl-s1", "/rl-s1", "echo", rate_limits=limit),
        route("rl-s2", "/rl-s2", "echo", rate_limits=limit),
    )
    with stack.client() as http:
        eventually(lambda: http.get("/rl-s2").status_code in (200, 429), timeout=3)
        codes = [http.get(p).status_code for p in ("/rl-s1", "/rl-s2") * 4]
    assert codes.count(200) == 3  # 4 per hour for both routes, one spent by the probe
    assert codes[-1] == 429


def test_several_dimensions_count_each_combination(stack: Stack) -> None:
    stack.apply(
        route(
            "rl-combo",
            "/rl-combo",
            "echo",
            rate_limits=[{"by": ["ip", "header:x-tenant"], "requests": 2, "per": "day"}],
        )
    )
    with stack.client() as http:
        eventually(
            lambda: http.get("/rl-combo", headers={"x-tenant": "probe"}).status_code == 200,
            timeout=3,
        )
        a = [http.get("/rl-combo", headers={"x-tenant": "a"}).status_code for _ in range(3)]
        b = [http.get("/rl-combo", headers={"x-tenant": "b"}).status_code for _ in range(3)]
        # without the header the descriptor is incomplete: that rule does not apply
        none = [http.get("/rl-combo").status_code for _ in range(4)]
    assert a == [200, 200, 429] and b == [200, 200, 429]
    assert none == [200] * 4


def test_api_key_tiers_get_their_own_limits(stack: Stack) -> None:
    gold = stack.cli("keys", "create", "--name", "rl-gold", "--tier", "gold").stdout.strip()
    plain = stack.cli("keys", "create", "--name", "rl-plain").stdout.strip()
    stack.apply(
        route(
            "rl-tier",
            "/rl-tier",
            "echo",
            auth={"require": "api_key"},
            rate_limits=[{"by": "api_key", "requests": 2, "per": "day", "tiers": {"gold": 5}}],
        )
    )
    with stack.client() as http:
        eventually(lambda: http.get("/rl-tier").status_code == 401, timeout=3)
        g = [http.get("/rl-tier", headers={"x-api-key": gold}).status_code for _ in range(6)]
        p = [http.get("/rl-tier", headers={"x-api-key": plain}).status_code for _ in range(3)]
    assert g == [200] * 5 + [429]
    assert p == [200, 200, 429]


def test_x_forwarded_for_is_ignored_without_trusted_proxies(stack: Stack) -> None:
    stack.apply(
        route("rl-xff", "/rl-xff", "echo", rate_limits=[{"by": "ip", "requests": 1, "per": "day"}])
    )
    with stack.client() as http:
        eventually(
            lambda: (
                http.get("/rl-xff", headers={"x-forwarded-for": "198.51.100.1"}).status_code == 429
            ),
            timeout=3,
        )
        # A spoofed address does not make a new client.
        assert http.get("/rl-xff", headers={"x-forwarded-for": "198.51.100.2"}).status_code == 429


def test_trusted_proxy_hops_count_the_forwarded_client(private_stack: Stack) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate(extra_env={"WARDGATE_TRUSTED_PROXY_HOPS": "1"})
    s.apply(
        route(
            "rl-hops", "/rl-hops", "echo", rate_limits=[{"by": "ip", "requests": 1, "per": "day"}]
        )
    )
    addresses = (f"198.51.100.{n}" for n in range(1, 250))

    def forwarded_client_is_counted() -> bool:
        # Fresh addresses on every try: each is one client with a limit of 1. Until Envoy
        # runs the new listener, all of them count as the proxy's address instead.
        a, b = next(addresses), next(addresses)
        with s.client() as http:
            return (
                http.get("/rl-hops", headers={"x-forwarded-for": a}).status_code == 200
                and http.get("/rl-hops", headers={"x-forwarded-for": a}).status_code == 429
                and http.get("/rl-hops", headers={"x-forwarded-for": b}).status_code == 200
            )

    eventually(forwarded_client_is_counted, timeout=10, interval=0.1)


def test_refused_clients_are_counted_once_each(stack: Stack) -> None:
    stack.apply(
        route(
            "rl-hll",
            "/rl-hll",
            "echo",
            rate_limits=[{"by": "header:x-client", "requests": 1, "per": "day"}],
        )
    )
    with stack.client() as http:
        eventually(
            lambda: http.get("/rl-hll", headers={"x-client": "probe"}).status_code == 200, timeout=3
        )
        for client in ("a", "b", "c"):
            for _ in range(4):  # one allowed, three refused: the client counts once
                http.get("/rl-hll", headers={"x-client": client})
    r = stack.redis()

    def counted() -> bool:
        keys = [k for k in r.keys("*rl:refused:{rl-hll#0}:*")]
        return bool(keys) and sum(r.pfcount(k) for k in keys) == 3

    eventually(counted, timeout=3)
