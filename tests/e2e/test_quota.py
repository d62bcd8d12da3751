"""``enforce: quota`` through two real Envoys sharing one budget, and ``enforce: local`` behind
a trusted proxy (issue 14, part B).

The bounds these tests hold (docs/RATELIMITS-NATIVE.md derives them): over any stretch of
time T, all Envoys together admit at most ``requests + requests * T / period + U``, where U,
the requests admitted beyond a lease, is what wardgate counts in
``wardgate_quota_unleased_total``; and, whatever wardgate counts, no Envoy admits more than
its local bound L (``requests + 1`` for a token bucket, twice the requests for a fixed
window) plus its refill, so N Envoys admit at most N x L in a burst (``burst_bound``).
Both are computed from counts and the rule, never from timings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.conftest import _start_stack
from tests.e2e.test_local_limits import add_users
from tests.support import Stack, eventually, route
from wardgate import devstack
from wardgate.domain.doc_base import QUOTA_HEADERS
from wardgate.domain.quota import LEASE_TTL_S, burst_bound, local_bound
from wardgate.domain.ratelimit import encode_rule
from wardgate.xds.scope_key import SCOPE_HEADER, scope_key

pytestmark = pytest.mark.e2e


@dataclasses.dataclass
class TwoEnvoys:
    stack: Stack
    b_port: int  # the second Envoy's listener
    b_admin: int

    @property
    def bases(self) -> tuple[str, str]:
        return self.stack.base, f"http://127.0.0.1:{self.b_port}"

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.stack.http_port}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _two_envoys(workdir: Path) -> Iterator[TwoEnvoys]:
    port = devstack.free_port()
    redis_proc = devstack.start_redis(port, workdir / "redis")
    stack = None
    try:
        # One trusted proxy hop: a test sends the client address in X-Forwarded-For.
        stack = _start_stack(
            workdir,
            f"redis://127.0.0.1:{port}/0",
            "wardgate:",
            extra_env={"WARDGATE_TRUSTED_PROXY_HOPS": "1"},
        )
        b_port, b_admin = devstack.free_port(), devstack.free_port()
        stack.procs["envoy-b"] = devstack.start_envoy(
            workdir=workdir,
            node_id="envoy-b",
            listen_port=b_port,
            admin_port=b_admin,
            wardgate_port=stack.grpc_port,
        )
        stack.procs = {"redis-server": redis_proc, **stack.procs}
        yield TwoEnvoys(stack, b_port, b_admin)
    finally:
        if stack is not None:
            stack.stop_all()
        devstack.stop(redis_proc)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoEnvoys]:
    """Two Envoys, one wardgate, one Redis: shared by the tests that break nothing."""
    yield from _two_envoys(tmp_path_factory.mktemp("quota"))


@pytest.fixture
def two_to_break(tmp_path: Path) -> Iterator[TwoEnvoys]:
    yield from _two_envoys(tmp_path)


async def _burst(url: str, *, requests: int, connections: int, **kw: object) -> Counter[int]:
    statuses: Counter[int] = Counter()
    gate = asyncio.Semaphore(connections)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        **kw,  # type: ignore[arg-type]
    ) as session:

        async def one() -> None:
            async with gate, session.get(url) as resp:
                await resp.read()
                statuses[resp.status] += 1

        await asyncio.gather(*(one() for _ in range(requests)))
    return statuses


async def _both(urls: tuple[str, str], requests: int, connections: int) -> list[Counter[int]]:
    return list(
        await asyncio.gather(*(_burst(u, requests=requests, connections=connections) for u in urls))
    )


def _settled(two: TwoEnvoys, rule: str, admitted: int) -> None:
    """Wait until the Envoys' reports (every 5 s) account for every admitted request."""
    eventually(
        lambda: (
            two.metric("wardgate_quota_requests_total", rule=rule, decision="allowed") == admitted
        ),
        timeout=20,
        interval=0.5,
    )


def test_a_burst_on_two_envoys_stays_within_the_budget(two: TwoEnvoys) -> None:
    """Warm buckets on both Envoys, then 600 requests on each at once, to one budget of 20."""
    requests, period = 20, 3600
    rule = {
        "by": "route",
        "requests": requests,
        "per": "hour",
        "enforce": "quota",
        "algorithm": "token_bucket",
    }
    two.stack.apply(route("q-burst", "/q-burst", "echo", rate_limits=[rule]))
    started = time.monotonic()
    for base in two.bases:  # each Envoy's bucket is created by one request: no lease yet
        eventually(lambda b=base: httpx.get(f"{b}/q-burst/warm").status_code == 200, timeout=10)
    eventually(lambda: two.metric("wardgate_quota_leases_total", rule="q-burst#0") >= 2, timeout=10)
    a, b = asyncio.run(_both(tuple(f"{u}/q-burst/x" for u in two.bases), 600, 100))  # type: ignore[arg-type]
    assert set(a) | set(b) <= {200, 429}
    admitted = a[200] + b[200] + 2
    _settled(two, "q-burst#0", admitted)  # every admitted request was reported, exactly
    unleased = two.metric("wardgate_quota_unleased_total", rule="q-burst#0")
    refill = requests * (time.monotonic() - started) / period
    print(
        f"\nwarm burst (token_bucket, {requests}/hour, 2 Envoys): admitted {admitted} of 1,202 "
        f"(A {a[200]}, B {b[200]}), overshoot {admitted - requests}, unleased {unleased}"
    )
    assert requests <= admitted <= requests + math.ceil(refill) + unleased
    # Only the warm-up requests beat a first lease back (one per Envoy, as a rule; at most
    # each Envoy's local bound): the burst itself ran within leases.
    assert unleased <= burst_bound(2, requests, "token_bucket")


def _windows(period: int, since: float) -> int:
    """How many fixed windows of ``period`` a stretch from ``since`` to now touched."""
    return int(time.time() // period) - int(since // period) + 1


@pytest.mark.parametrize("algorithm", ["token_bucket", "fixed_window"])
def test_a_fresh_burst_on_two_envoys_stays_within_the_design_bound(
    two: TwoEnvoys, algorithm: str
) -> None:
    """No warm-up: 600 requests on each Envoy at once, on a bucket neither has seen. What
    passes before each Envoy's first lease comes back (one round trip) is unleased; the
    design bounds the total twice over (docs/RATELIMITS-NATIVE.md): by the Envoys' local
    bounds, N x L (``burst_bound``), whatever wardgate counts, and by the budget plus what
    wardgate counted unleased."""
    requests, period = 20, 3600
    name = f"q-fresh-{algorithm.replace('_', '-')}"
    rule = {
        "by": "route",
        "requests": requests,
        "per": "hour",
        "enforce": "quota",
        "algorithm": algorithm,
    }
    two.stack.apply(
        route(name, f"/{name}", "echo", rate_limits=[rule]),
        route(f"{name}-probe", f"/{name}-probe", "echo"),
    )
    for base in two.bases:
        eventually(lambda b=base: httpx.get(f"{b}/{name}-probe").status_code == 200, timeout=10)
    started, clock = time.monotonic(), time.time()
    a, b = asyncio.run(_both(tuple(f"{u}/{name}/x" for u in two.bases), 600, 100))  # type: ignore[arg-type]
    admitted = a[200] + b[200]
    # Before a lease the quota filter lets everything through, and reports it so; the local
    # bound behind it refused the rest. Wait for one more report of each Envoy.
    rule_id = f"{name}#0"
    rounds = two.metric("wardgate_quota_leases_total", rule=rule_id)
    eventually(
        lambda: two.metric("wardgate_quota_leases_total", rule=rule_id) >= rounds + 2,
        timeout=20,
        interval=0.5,
    )
    reported = two.metric("wardgate_quota_requests_total", rule=rule_id, decision="allowed")
    assert reported >= admitted
    unleased = two.metric("wardgate_quota_unleased_total", rule=rule_id)
    # The budget over the time the burst took: a token bucket's refill, or one more window
    # for each window edge the test crossed; and at most twice that per Envoy's local bound.
    elapsed = time.monotonic() - started
    if algorithm == "token_bucket":
        budget = requests + math.ceil(requests * elapsed / period)
    else:
        budget = requests * _windows(period, clock)
    bound = burst_bound(2, requests, algorithm) + 2 * (budget - requests)
    print(
        f"\nfresh burst ({algorithm}, {requests}/hour, 2 Envoys): admitted {admitted} of 1,200 "
        f"(A {a[200]}, B {b[200]}), overshoot {admitted - requests}, unleased {unleased}, "
        f"design bound {bound} (overshoot at most {bound - requests})"
    )
    assert requests <= admitted <= budget + unleased  # the ledger's account
    assert admitted <= bound  # the design's bound, whatever wardgate counted
    per_envoy = local_bound(requests, algorithm) + budget - requests
    assert a[200] <= per_envoy and b[200] <= per_envoy  # the local bound per Envoy
    assert unleased <= bound  # and no more is taken from the budget


def test_per_user_quotas_share_one_budget_across_envoys(two: TwoEnvoys) -> None:
    s = two.stack
    add_users(s, "q-alice", "q-bob")
    rule = {"by": "user", "requests": 5, "per": "hour", "enforce": "quota"}
    s.apply(route("q-user", "/q-user", "echo", auth={"require": "session"}, rate_limits=[rule]))
    a_base, b_base = two.bases
    with httpx.Client(base_url=a_base, timeout=5) as login:
        cookies = {}
        for name in ("q-alice", "q-bob"):
            resp = login.post("/auth/login", json={"username": name, "password": "password-123"})
            cookies[name] = resp.cookies["wg_session"]
    alice_a = httpx.Client(base_url=a_base, cookies={"wg_session": cookies["q-alice"]}, timeout=5)
    alice_b = httpx.Client(base_url=b_base, cookies={"wg_session": cookies["q-alice"]}, timeout=5)
    bob_b = httpx.Client(base_url=b_base, cookies={"wg_session": cookies["q-bob"]}, timeout=5)
    try:
        eventually(lambda: alice_a.get("/q-user").status_code == 200, timeout=10)
        codes = [200] + [alice_a.get("/q-user").status_code for _ in range(11)]
        # Five, and more only for requests that beat the bucket's first lease back (unleased,
        # counted: checked below).
        assert codes.count(200) >= 5 and codes[-2:] == [429, 429]
        over = alice_a.get("/q-user")
        assert over.status_code == 429 and over.json()["error"] == "rate_limited"
        assert over.headers["x-ratelimit-limit"] == "5"
        assert over.headers["x-ratelimit-remaining"] == "0"
        assert int(over.headers["retry-after"]) >= 5
        # Alice on the other Envoy: its bucket is new there, so what passes before its first
        # lease (nothing is left for it) is unleased, and counted.
        via_b = [alice_b.get("/q-user").status_code for _ in range(8)]
        # Bob claims to be Alice: counted as Bob, who has his own budget.
        bob = [
            bob_b.get("/q-user", headers={"x-user-id": "q-alice"}).status_code for _ in range(12)
        ]
        assert bob.count(200) >= 5 and bob[-2:] == [429, 429]
        admitted = codes.count(200) + via_b.count(200) + bob.count(200)
        _settled(two, "q-user#0", admitted)  # every admitted request reported, exactly
        unleased = two.metric("wardgate_quota_unleased_total", rule="q-user#0")
        assert admitted <= 2 * 5 + unleased  # two budgets, and what beat first leases back
        assert via_b[-2:] == [429, 429]
    finally:
        for c in (alice_a, alice_b, bob_b):
            c.close()


def test_forged_quota_headers_and_scope_keys_spend_no_budget(two: TwoEnvoys) -> None:
    """A client that names a quota rule (or the scope holding it) on another route spends
    nothing from that rule's budget, and cannot move its own route's count elsewhere."""
    rule = {"by": "route", "requests": 5, "per": "hour", "enforce": "quota"}
    two.stack.apply(
        route("q-victim", "/q-victim", "echo", rate_limits=[rule]),
        route("q-other", "/q-other", "echo", rate_limits=[{**rule, "requests": 1000}]),
        route("q-free", "/q-free", "echo"),
    )
    victim = encode_rule("q-victim#0", 5, 3600, "fixed_window", False)
    other = encode_rule("q-other#0", 1000, 3600, "fixed_window", False)
    forged = {
        QUOTA_HEADERS[0]: victim,
        QUOTA_HEADERS[1]: victim,
        SCOPE_HEADER: scope_key(1, ["q-victim"]),
    }
    a_base, _ = two.bases
    with httpx.Client(base_url=a_base, timeout=5) as http:
        eventually(lambda: http.get("/q-free").status_code == 200, timeout=10)
        eventually(lambda: http.get("/q-other").status_code == 200, timeout=10)
        for _ in range(30):
            resp = http.get("/q-free", headers=forged)
            assert resp.status_code == 200
            sent = resp.json()["headers"]
            assert not set(QUOTA_HEADERS) & set(sent)  # and none reaches the upstream
        # On a quota route, a forged rule header is replaced by the route's own.
        for _ in range(10):
            assert http.get("/q-other", headers={QUOTA_HEADERS[0]: victim}).status_code == 200
        codes = [
            http.get("/q-victim", headers={QUOTA_HEADERS[0]: other}).status_code for _ in range(12)
        ]
    admitted = codes.count(200)
    _settled(two, "q-victim#0", admitted)  # the forged requests were never counted there
    unleased = two.metric("wardgate_quota_unleased_total", rule="q-victim#0")
    assert 5 <= admitted <= 5 + unleased  # the whole budget was left for the route itself
    assert codes[-2:] == [429, 429]
    assert two.metric("wardgate_quota_requests_total", rule="q-other#0", decision="allowed") == 11


def test_without_redis_or_wardgate_leases_hold_then_each_envoy_enforces_its_local_bound(
    two_to_break: TwoEnvoys,
) -> None:
    two = two_to_break
    s = two.stack
    rules = {
        name: {
            "by": "route",
            "requests": 5,
            "per": "hour",
            "enforce": "quota",
            "algorithm": "token_bucket",
        }
        for name in ("w-spent", "w-leased", "w-new")
    }
    s.apply(*(route(n, f"/{n}", "echo", rate_limits=[r]) for n, r in rules.items()))
    a_base, _ = two.bases
    with httpx.Client(base_url=a_base, timeout=5) as http:
        eventually(lambda: http.get("/w-spent").status_code == 200, timeout=10)
        spent = 1
        while http.get("/w-spent").status_code == 200:
            spent += 1  # 5, or 6 if a request beat the first lease back
        assert http.get("/w-leased").status_code == 200  # a lease of 4 comes back
        eventually(
            lambda: two.metric("wardgate_quota_leases_total", rule="w-leased#0") >= 1, timeout=5
        )

        devstack.stop(s.procs.pop("redis-server"))
        # A new bucket: its report cannot be settled (counted); it passes until the local
        # bound (5 + 1) refuses.
        new = Counter(http.get("/w-new").status_code for _ in range(12))
        assert new == Counter({200: 6, 429: 6})
        eventually(lambda: two.metric("wardgate_quota_failures_total") >= 1, timeout=5)
        assert two.metric("wardgate_store_errors_total", component="quota") >= 1
        # The last assignments hold: the spent rule refuses, the lease admits its 4.
        assert http.get("/w-spent").status_code == 429
        leased = [http.get("/w-leased").status_code for _ in range(6)]
        assert leased == [200] * 4 + [429] * 2

        devstack.stop(s.procs.pop("wardgate"))
        assert http.get("/w-spent").status_code == 429  # still the last assignment
        # Once the assignment expires, the Envoy's local bound decides alone: it holds 6, and
        # what was admitted spent its share of them.
        time.sleep(LEASE_TTL_S + 1)
        after = [http.get("/w-spent").status_code for _ in range(4)]
        assert after.count(200) == 6 - spent and after[-1] == 429


def test_local_addresses_and_header_values_count_apart_ipv6_per_network(two: TwoEnvoys) -> None:
    """enforce: local behind a trusted proxy hop (the client address is X-Forwarded-For's)."""
    s = two.stack
    s.apply(
        route(
            "loc-many",
            "/loc-many",
            "echo",
            rate_limits=[
                {"by": "ip", "requests": 2, "per": "hour", "enforce": "local"},
                {"by": "header:x-tenant", "requests": 3, "per": "hour", "enforce": "local"},
            ],
        )
    )

    def get(address: str, tenant: str) -> int:
        headers = {"x-forwarded-for": address, "x-tenant": tenant}
        return http.get("/loc-many", headers=headers).status_code

    with s.client() as http:
        eventually(lambda: get("192.0.2.200", "warm") == 200, timeout=5)
        # One IPv6 client holds a /64: its addresses share one bucket.
        v6 = [get(f"2001:db8:1:2::{i:x}", f"t6-{i}") for i in range(1, 5)]
        assert v6 == [200, 200, 429, 429]
        assert get("2001:db8:1:3::1", "t6-other") == 200  # another /64
        # A tenant's bucket, reached from many addresses.
        tenant = [get(f"198.51.100.{i}", "acme") for i in range(1, 6)]
        assert tenant == [200, 200, 200, 429, 429]
        # A flood of invented values: each a bucket of its own (at most ratelimit_guard_clients
        # per route and Envoy, least recently used first out) ...
        flood = Counter(get(f"203.0.113.{i % 250}", f"invented-{i}") for i in range(600))
        assert flood[200] == 500  # each of the 250 addresses twice, whatever the tenant
        # ... and the tenant already refused is still refused.
        assert get("198.51.100.77", "acme") == 429
