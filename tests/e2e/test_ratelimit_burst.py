"""One client's burst cannot buy its way past a limit with concurrency (issue 10, item 1).

With Envoy's production deadline for the rate-limit check (100 ms), a burst of 2,000
requests over 400 connections overloads wardgate: many checks are not answered in time and
the rate-limit filter fails open. Before the local guard, 1,381 of 2,000 got through a
"10 per hour" rule. The guard (xds/local_guard.py) caps what one Envoy admits per client at
what the exact check can allow at once: 2 x 10 for a fixed window, 10 + 1 otherwise.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.conftest import _start_stack
from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PRODUCTION_DEADLINES = {
    "WARDGATE_RATELIMIT_TIMEOUT": "100ms",
    "WARDGATE_RATELIMIT_REDIS_TIMEOUT": "50ms",
}
CAPACITY = {"fixed_window": 20, "sliding_window": 11, "token_bucket": 11}


@pytest.fixture
def burst_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A stack with Envoy's production deadlines and ``request.param`` wardgate workers."""
    port = devstack.free_port()
    redis_proc = devstack.start_redis(port, tmp_path / "redis")
    stack = None
    try:
        stack = _start_stack(tmp_path, f"redis://127.0.0.1:{port}/0", "wardgate:")
        devstack.stop(stack.procs.pop("wardgate"))
        workers = getattr(request, "param", 1)
        stack.start_wardgate("--workers", str(workers), extra_env=PRODUCTION_DEADLINES)
        yield stack
    finally:
        if stack is not None:
            stack.stop_all()
        devstack.stop(redis_proc)


async def _burst(url: str, *, requests: int, connections: int, method: str = "GET") -> Counter[int]:
    """``requests`` requests over ``connections`` connections at once; the status counts."""
    statuses: Counter[int] = Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> int:
            body = {"username": "nobody", "password": "x"} if method == "POST" else None
            for _ in range(3):  # Envoy closes the connection after refusing an unread body
                try:
                    async with session.request(method, url, json=body) as resp:
                        await resp.read()
                        return resp.status
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    continue
            return 0

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                statuses[await one()] += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


def _envoy_stat(stack: Stack, pattern: str) -> int:
    text = httpx.get(f"http://127.0.0.1:{stack.admin_port}/stats", timeout=5).text
    return sum(
        int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if re.search(pattern, line.split(":")[0])
    )


@pytest.mark.parametrize(
    ("burst_stack", "algorithm"),
    [
        (1, "fixed_window"),
        (1, "token_bucket"),
        (1, "sliding_window"),
        (2, "fixed_window"),
        (2, "token_bucket"),
    ],
    ids=["fixed", "token-bucket", "sliding", "fixed-2-workers", "token-bucket-2-workers"],
    indirect=["burst_stack"],
)
def test_a_burst_admits_at_most_the_guards_capacity(burst_stack: Stack, algorithm: str) -> None:
    s = burst_stack
    name = f"burst-{algorithm.replace('_', '-')}"
    rule = {"by": "ip", "requests": 10, "per": "hour", "algorithm": algorithm}
    s.apply(route(name, f"/{name}", "echo", rate_limits=[rule]))
    with s.client() as http:
        eventually(lambda: http.get(f"/{name}/warm").status_code in (200, 429), timeout=10)
    statuses = asyncio.run(_burst(f"{s.base}/{name}/x", requests=2_000, connections=400))
    admitted = statuses[200] + 1  # the warm-up request above spent one
    assert sum(statuses.values()) == 2_000
    assert set(statuses) <= {200, 429, 503}, statuses
    assert 10 <= admitted <= CAPACITY[algorithm], statuses
    # What the guard refused, Envoy counted.
    assert _envoy_stat(s, r"wardgate_guard\.http_local_rate_limit\.(rate_limited|ok)") > 0


@pytest.mark.parametrize("burst_stack", [1, 2], ids=["1-worker", "2-workers"], indirect=True)
def test_the_login_limit_holds_under_a_burst(burst_stack: Stack) -> None:
    """The login limit (30 per minute per address, a fixed window) failed open 386 times of
    400: now at most 60 logins reach wardgate (without the guard: 216 of 2,000 here)."""
    s = burst_stack
    statuses = asyncio.run(
        _burst(f"{s.base}/auth/login", requests=2_000, connections=400, method="POST")
    )
    assert sum(statuses.values()) == 2_000
    assert statuses[429] >= 2_000 - 60, statuses


async def _h2_burst(url: str, *, requests: int, streams: int) -> Counter[int]:
    """``requests`` requests as concurrent streams of one HTTP/2 connection (h2c)."""
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(http1=False, http2=True, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(streams)

        async def one() -> None:
            async with gate:
                statuses[(await client.get(url)).status_code] += 1

        await asyncio.gather(*(one() for _ in range(requests)))
    return statuses


def test_a_burst_of_http2_streams_admits_at_most_the_guards_capacity(
    burst_stack: Stack,
) -> None:
    """Over HTTP/2 a sliding-window limit of 10 once let 24 through."""
    s = burst_stack
    rule = {"by": "ip", "requests": 10, "per": "hour", "algorithm": "sliding_window"}
    s.apply(route("burst-h2", "/burst-h2", "echo", rate_limits=[rule]))
    with s.client() as http:
        eventually(lambda: http.get("/burst-h2/warm").status_code in (200, 429), timeout=10)
    statuses = asyncio.run(_h2_burst(f"{s.base}/burst-h2/x", requests=1_000, streams=200))
    assert sum(statuses.values()) == 1_000
    assert 10 <= statuses[200] + 1 <= CAPACITY["sliding_window"], statuses


def test_with_wardgate_gone_the_guard_still_caps_each_client(private_stack: Stack) -> None:
    """The exact check cannot answer at all (wardgate stopped): rules that fail open let
    requests through up to the guard's capacity, then 429 with retry-after; a rule that says
    ``failure_mode: closed`` refuses with 503."""
    s = private_stack
    s.apply(
        route(
            "gone-open",
            "/gone-open",
            "echo",
            rate_limits=[{"by": "ip", "requests": 3, "per": "hour"}],
        ),
        route(
            "gone-closed",
            "/gone-closed",
            "echo",
            rate_limits=[{"by": "ip", "requests": 3, "per": "hour", "failure_mode": "closed"}],
        ),
    )
    with s.client() as http:
        eventually(lambda: http.get("/gone-closed").status_code == 200, timeout=5)
        devstack.stop(s.procs.pop("wardgate"))
        closed = http.get("/gone-closed")
        assert closed.status_code == 503 and closed.json()["error"] == "unavailable"
        assert "rate limiting is unavailable" in closed.json()["message"]
        codes = [http.get("/gone-open").status_code for _ in range(10)]
        assert codes == [200] * 6 + [429] * 4  # capacity: twice 3 (a fixed window)
        refused = http.get("/gone-open")
    assert refused.json()["error"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert _envoy_stat(s, r"failure_mode_allowed") >= 6  # Envoy counted each fail-open
