"""Redis as an attacker would use it (issue 10, item 6): a flood of distinct header values
once made a Redis with an evicting policy drop users, sessions, API keys and history, and
wardgate noticed nothing. Now: a Redis that may evict wardgate's data makes it not ready,
counters can live in a Redis of their own, and what one client-chosen dimension makes Redis
hold is bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import _start_stack
from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = pytest.mark.e2e


def _ready(s: Stack) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{s.http_port}/readyz", timeout=3)


def test_a_redis_that_may_evict_makes_wardgate_not_ready(private_stack: Stack) -> None:
    s = private_stack
    r = s.redis()
    assert _ready(s).status_code == 200
    r.config_set("maxmemory", str(256 << 20))
    r.config_set("maxmemory-policy", "allkeys-lru")
    devstack.stop(s.procs.pop("wardgate"))  # checked at start, then every 30 s
    s.start_wardgate()
    resp = eventually(lambda: (x := _ready(s)).status_code == 503 and x, timeout=10)
    assert "allkeys-lru" in resp.text and "noeviction" in resp.text
    metrics = httpx.get(f"http://127.0.0.1:{s.http_port}/metrics", timeout=3).text
    assert "wardgate_redis_may_evict 1.0" in metrics
    # An operator may accept it, knowingly.
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate(extra_env={"WARDGATE_REDIS_ALLOW_EVICTION": "true"})
    eventually(lambda: _ready(s).status_code == 200, timeout=10)


@pytest.fixture
def split_stack(tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    """A stack whose rate-limit counters live in a second Redis that may evict them."""
    data_port, counters_port = devstack.free_port(), devstack.free_port()
    data = devstack.start_redis(data_port, tmp_path / "data")
    counters = devstack.start_redis(counters_port, tmp_path / "counters")
    counters_url = f"redis://127.0.0.1:{counters_port}/0"
    stack = None
    try:
        stack = _start_stack(
            tmp_path,
            f"redis://127.0.0.1:{data_port}/0",
            "wardgate:",
            extra_env={"WARDGATE_RATELIMIT_REDIS_URL": counters_url},
        )
        yield stack, counters_url
    finally:
        if stack is not None:
            stack.stop_all()
        devstack.stop(counters)
        devstack.stop(data)


def test_counters_in_a_redis_of_their_own_may_be_evicted(
    split_stack: tuple[Stack, str],
) -> None:
    s, counters_url = split_stack
    counters = redis.Redis.from_url(counters_url, decode_responses=True)
    counters.config_set("maxmemory", str(64 << 20))
    counters.config_set("maxmemory-policy", "allkeys-lru")
    s.apply(
        route("split", "/split", "echo", rate_limits=[{"by": "ip", "requests": 2, "per": "hour"}])
    )
    with s.client() as http:
        eventually(lambda: http.get("/split").status_code in (200, 429), timeout=5)
        codes = [http.get("/split").status_code for _ in range(3)]
    assert codes[-1] == 429
    assert counters.keys("*rl:*"), "counters go to the counters' Redis"
    assert not s.redis().keys("*rl:*"), "and none to the data Redis"
    assert _ready(s).status_code == 200  # the counters' Redis may evict


def test_a_flood_of_invented_header_values_holds_a_bounded_number_of_counters(
    private_stack: Stack,
) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate(extra_env={"WARDGATE_RATELIMIT_MAX_CLIENTS": "20"})
    s.apply(
        route(
            "flood",
            "/flood",
            "echo",
            rate_limits=[{"by": "header:x-k", "requests": 5, "per": "hour"}],
        )
    )
    with s.client() as http:
        eventually(
            lambda: http.get("/flood", headers={"x-k": "warm"}).status_code == 200, timeout=10
        )
        codes = [http.get("/flood", headers={"x-k": f"v{i}"}).status_code for i in range(300)]
    keys = s.redis().keys("*rl:{flood#0|*")
    assert len(keys) <= 20 + 1  # the budget, and the shared overflow counter
    assert codes.count(429) >= 300 - 20 - 5  # the overflow counter runs out at once
    metrics = httpx.get(f"http://127.0.0.1:{s.http_port}/metrics", timeout=3).text
    assert 'wardgate_ratelimit_overflow_total{rule="flood#0"}' in metrics
