"""``enforce: local`` through a real Envoy: each Envoy enforces the rule on its own, with no
callout, and the answer is the contract's 429 (issue 14, part B)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import httpx
import pytest

from tests.support import Stack, echo, eventually, route, with_redis
from wardgate.domain.passwords import hash_password
from wardgate.domain.ports import UserRecord
from wardgate.store.keys import Keys
from wardgate.store.redis_store import RedisUserStore
from wardgate.xds.scope_key import BUCKETS, SCOPE_HEADER, scope_key

pytestmark = pytest.mark.e2e


def add_users(stack: Stack, *names: str, password: str = "password-123") -> None:
    """Users straight into the store (the CLI costs seconds per call on a loaded machine)."""

    async def put(r: Any) -> None:
        users = RedisUserStore(redis=r, keys=Keys(stack.prefix))
        for name in names:
            await users.put_user(UserRecord(name, hash_password(password), ("user",)))

    with_redis(stack.redis_url, put)


def _envoy_stat(stack: Stack, name: str) -> int:
    for line in stack.admin("/stats").splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def _decisions(stack: Stack, rule: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.http_port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("wardgate_ratelimit_decisions_total") and f'rule="{rule}' in line
    )


async def _burst(
    url: str, *, requests: int, connections: int, headers: dict[str, str]
) -> Counter[int]:
    statuses: Counter[int] = Counter()
    gate = asyncio.Semaphore(connections)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one() -> None:
            async with gate, session.get(url) as resp:
                await resp.read()
                statuses[resp.status] += 1

        await asyncio.gather(*(one() for _ in range(requests)))
    return statuses


def test_a_local_limit_answers_the_contracts_429_without_asking_wardgate(stack: Stack) -> None:
    rule = {"by": "ip", "requests": 4, "per": "hour", "enforce": "local"}
    stack.apply(route("loc-ip", "/loc-ip", "echo", rate_limits=[rule]))
    refused_before = _envoy_stat(stack, "wardgate_local.http_local_rate_limit.rate_limited")
    with stack.client() as http:
        first = eventually(lambda: (r := http.get("/loc-ip")).status_code == 200 and r, timeout=5)
        assert first.headers["x-ratelimit-limit"] == "4"
        left = int(first.headers["x-ratelimit-remaining"])
        codes = [http.get("/loc-ip").status_code for _ in range(left)]
        over = http.get("/loc-ip")
    assert codes == [200] * left
    assert over.status_code == 429
    assert over.json()["error"] == "rate_limited" and over.json()["request_id"]
    assert over.headers["retry-after"] == "3600"  # a fixed window refills once per period
    assert over.headers["x-ratelimit-remaining"] == "0"
    assert int(over.headers["x-ratelimit-reset"]) > 0
    # Envoy decided and counted it; wardgate's rate-limit service never saw the route.
    assert _envoy_stat(stack, "wardgate_local.http_local_rate_limit.rate_limited") > refused_before
    assert _decisions(stack, "loc-ip#") == 0


def test_a_burst_admits_exactly_the_local_limit(stack: Stack) -> None:
    """No callout to time out: 600 requests over 100 connections admit the bucket's 10."""
    rule = {
        "by": "ip",
        "requests": 10,
        "per": "hour",
        "enforce": "local",
        "algorithm": "token_bucket",
    }
    stack.apply(route("loc-burst", "/loc-burst", "echo", rate_limits=[rule]))
    with stack.client() as http:
        eventually(lambda: http.get("/loc-burst/warm").status_code == 200, timeout=5)
    statuses = asyncio.run(
        _burst(f"{stack.base}/loc-burst/x", requests=600, connections=100, headers={})
    )
    assert set(statuses) == {200, 429}
    assert statuses[200] == 9  # the warm-up request spent one


def test_per_user_local_limits_count_the_identity_ext_authz_set(stack: Stack) -> None:
    add_users(stack, "loc-u1", "loc-u2")
    rule = {"by": "user", "requests": 2, "per": "day", "enforce": "local"}
    stack.apply(
        route("loc-user", "/loc-user", "echo", auth={"require": "session"}, rate_limits=[rule])
    )
    clients = []
    for name in ("loc-u1", "loc-u2"):
        c = stack.client()
        assert (
            c.post("/auth/login", json={"username": name, "password": "password-123"}).status_code
            == 200
        )
        clients.append(c)
    u1, u2 = clients
    try:
        eventually(lambda: u1.get("/loc-user").status_code in (200, 429), timeout=5)
        while u1.get("/loc-user").status_code == 200:
            pass
        assert u1.get("/loc-user").status_code == 429
        # u2 claims to be u1 (and u1 to be u2): the identity headers are the gateway's.
        assert u2.get("/loc-user", headers={"x-user-id": "loc-u1"}).status_code == 200
        assert u1.get("/loc-user", headers={"x-user-id": "loc-u2"}).status_code == 429
        assert u2.get("/loc-user").status_code == 200
        assert u2.get("/loc-user").status_code == 429
    finally:
        for c in clients:
            c.close()


def test_a_forged_scope_key_reaches_neither_another_routes_limit_nor_escapes_its_own(
    stack: Stack,
) -> None:
    """Envoy picks the route again after the scope filter has set the key; the local filter's
    configuration is the real route's, whatever scope key the client sends."""
    rule = {"by": "ip", "requests": 3, "per": "hour", "enforce": "local"}
    stack.apply(
        route("loc-forged", "/loc-forged", "echo", rate_limits=[rule]),
        route("loc-free", "/loc-free", "echo"),
    )
    locked = scope_key(1, ["loc-forged"])
    keys = [locked, scope_key(1, ["loc-free"]), "1:0", f"1:{BUCKETS - 1}", "3:5", "garbage"]
    with stack.client() as http:
        eventually(lambda: http.get("/loc-free").status_code == 200, timeout=5)
        # The free route, with the limited route's scope key: never limited.
        for _ in range(10):
            resp = http.get("/loc-free", headers={SCOPE_HEADER: locked})
            assert resp.status_code == 200
            assert SCOPE_HEADER not in echo(resp)["headers"]
        # The limited route: the same three whatever key comes with the request.
        codes = [http.get("/loc-forged", headers={SCOPE_HEADER: k}).status_code for k in keys]
    assert codes == [200, 200, 200, 429, 429, 429]
