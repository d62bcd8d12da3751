"""The quota ledger (``QUOTA_LUA``) against a real Redis, with Envoys simulated as Envoy 1.40
treats leases: a new lease is a full bucket, the same lease again keeps the bucket as it is,
a bucket without a lease lets requests through (docs/DECISIONS.md 51)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import with_redis
from wardgate.domain.quota import (
    HOLDER_EXPIRY_S,
    REPORT_INTERVAL_S,
    BucketUsage,
    Lease,
    LeaseKind,
    QuotaService,
)
from wardgate.store.keys import Keys
from wardgate.store.quota import RedisQuotaLedger

pytestmark = pytest.mark.integration
_ids = itertools.count()


@dataclasses.dataclass
class Envoy:
    """One Envoy's bucket for one rule and client, as Envoy 1.40 keeps it."""

    name: str
    tokens: int | None = None  # None: no lease (no bucket, or ALLOW_ALL until the first)
    shape: tuple[int, int, int] | None = None  # (kind, max_tokens, serial parity)
    exists: bool = False
    allowed: int = 0
    denied: int = 0
    admitted: int = 0

    def request(self) -> bool:
        self.exists = True
        if self.tokens is None:
            ok = True
        elif self.tokens > 0:
            self.tokens -= 1
            ok = True
        else:
            ok = False
        if ok:
            self.allowed += 1
            self.admitted += 1
        else:
            self.denied += 1
        return ok

    def report(self) -> tuple[int, int]:
        out = (self.allowed, self.denied)
        self.allowed = self.denied = 0
        return out

    def apply(self, lease: Lease) -> None:
        if lease.kind == LeaseKind.ABANDON:
            self.tokens, self.shape, self.exists = None, None, False
            return
        shape = (2, 0, 0) if lease.kind == LeaseKind.DENY else (1, lease.tokens, lease.serial % 2)
        if shape != self.shape:  # Envoy compares the assignment; a new one is a full bucket
            self.tokens = 0 if lease.kind == LeaseKind.DENY else lease.tokens
            self.shape = shape


class World:
    def __init__(self, service: QuotaService, rule: str, clock: list[float]) -> None:
        self.service = service
        self.entries = {"wg_rule": rule, "user": "alice"}
        self.clock = clock
        self.unleased = 0
        self.created = 0  # buckets an Envoy created (each one's first request has no lease)

    async def report(self, envoy: Envoy) -> Lease:
        allowed, denied = envoy.report()
        (settled,) = await self.service.settle(
            envoy.name, [BucketUsage(self.entries, allowed, denied)]
        )
        self.unleased += settled.lease.unleased
        envoy.apply(settled.lease)
        return settled.lease

    async def request(self, envoy: Envoy) -> bool:
        new = not envoy.exists
        ok = envoy.request()
        if new:  # Envoy reports a new bucket at once
            self.created += 1
            await self.report(envoy)
        return ok


def _world(r: Any, prefix: str, rule: str) -> tuple[World, list[float]]:
    clock = [1_000_000.0]
    service = QuotaService(
        ledger=RedisQuotaLedger(redis=r),
        key_for=Keys(f"{prefix}{next(_ids)}:").quota,
        clock=lambda: clock[0],
    )
    return World(service, rule, clock), clock


steps = st.lists(
    st.one_of(
        st.tuples(st.just("burst"), st.integers(0, 2), st.integers(1, 30)),
        st.tuples(st.just("round"), st.just(0), st.integers(1, REPORT_INTERVAL_S * 1000)),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=steps, requests=st.integers(1, 60))
def test_envoys_within_their_leases_never_admit_more_than_the_budget(
    redis_url: str, prefix: str, plan: list[tuple[str, int, int]], requests: int
) -> None:
    """Three Envoys, bursts and report rounds in any order: what they admit within leases,
    all together, never exceeds the rule's requests plus its refill over the time that passed
    (the leases never oversubscribe the budget); beyond leases only each new bucket's first
    request passes (here the report answers at once: no request waits for it)."""
    period = 3600

    async def body(r: Any) -> tuple[int, float, int, int]:
        world, clock = _world(r, prefix, f"p#0|{requests}|{period}|token_bucket|0")
        envoys = [Envoy(n) for n in "ABC"]
        start = clock[0]
        for kind, who, n in plan:
            if kind == "burst":
                for _ in range(n):
                    await world.request(envoys[who])
            else:
                clock[0] += n / 1000
                for e in envoys:
                    if e.exists:
                        await world.report(e)
        refill = (clock[0] - start) * requests / period
        return sum(e.admitted for e in envoys), refill, world.unleased, world.created

    admitted, refill, unleased, created = with_redis(redis_url, body)
    assert unleased == created  # only a new bucket's first request has no lease
    assert admitted - unleased <= requests + refill + 1e-9  # leases never oversubscribe
    assert admitted <= requests + refill + unleased + 1e-9


def test_the_busy_envoy_gets_the_budget_and_the_idle_one_gives_its_share_back(
    redis_url: str, prefix: str
) -> None:
    async def body(r: Any) -> list[int | None]:
        world, clock = _world(r, prefix, "b#0|100|3600|token_bucket|0")
        a, b = Envoy("A"), Envoy("B")
        await world.request(a)  # A alone: it gets everything
        first_a = a.tokens
        await world.request(b)  # B: nothing left for now
        first_b = b.tokens
        admitted = []
        for _ in range(4):  # A busy, B idle: rounds every 5 s
            while a.request():
                pass
            clock[0] += REPORT_INTERVAL_S
            await world.report(b)
            await world.report(a)
            admitted.append(a.admitted)
        return [first_a, first_b, *admitted]

    first_a, first_b, *admitted = with_redis(redis_url, body)
    assert first_a == 99  # the budget less the first request
    assert first_b == 0  # DENY until A gives some back or uses its lease up
    assert admitted[0] == 100 and admitted[-1] <= 101  # the budget, plus the refill


def test_two_busy_envoys_share_by_demand(redis_url: str, prefix: str) -> None:
    async def body(r: Any) -> tuple[int, int]:
        world, clock = _world(r, prefix, "s#0|1000|60|token_bucket|0")
        a, b = Envoy("A"), Envoy("B")
        await world.request(a)
        await world.request(b)
        for _ in range(12):  # one minute: A sees three times B's traffic
            for _ in range(300):
                a.request()
            for _ in range(100):
                b.request()
            clock[0] += REPORT_INTERVAL_S
            await world.report(a)
            await world.report(b)
        return a.admitted, b.admitted

    a, b = with_redis(redis_url, body)
    assert a + b <= 1000 + 1000 + 2  # the budget and one minute of refill
    assert a > 2 * b  # the busier Envoy got more


def test_a_silent_envoys_lease_returns_after_the_expiry(redis_url: str, prefix: str) -> None:
    async def body(r: Any) -> tuple[int | None, int | None]:
        world, clock = _world(r, prefix, "x#0|10|3600|token_bucket|0")
        a, b = Envoy("A"), Envoy("B")
        await world.request(a)  # A holds 9; then its stream is gone
        await world.request(b)
        before = b.tokens
        clock[0] += HOLDER_EXPIRY_S + 1
        b.report()
        b.denied = 1
        await world.report(b)
        return before, b.tokens

    before, after = with_redis(redis_url, body)
    # A's 9 are back; B's own first request (before any lease) was taken from the budget.
    assert (before, after) == (0, 8)


def test_an_idle_bucket_is_abandoned_and_its_lease_returns(redis_url: str, prefix: str) -> None:
    async def body(r: Any) -> list[LeaseKind]:
        world, clock = _world(r, prefix, "i#0|10|60|token_bucket|0")
        a = Envoy("A")
        await world.request(a)
        kinds = []
        for _ in range(30):  # 150 s without a request: abandoned after 120 s
            clock[0] += REPORT_INTERVAL_S
            kinds.append((await world.report(a)).kind)
            if kinds[-1] == LeaseKind.ABANDON:
                break
        return kinds

    kinds = with_redis(redis_url, body)
    assert kinds[-1] == LeaseKind.ABANDON and len(kinds) == 24


def test_a_fixed_window_starts_each_period_with_the_whole_budget(
    redis_url: str, prefix: str
) -> None:
    async def body(r: Any) -> list[int]:
        world, clock = _world(r, prefix, "f#0|5|60|fixed_window|0")
        clock[0] = 60 * 100_000 + 1.0  # just after a window started
        a = Envoy("A")
        counts = []
        for _ in range(3):
            while await world.request(a):
                pass
            counts.append(a.admitted)
            clock[0] += 60
            await world.report(a)
        return counts

    assert with_redis(redis_url, body) == [5, 10, 15]


def test_concurrent_reports_of_one_bucket_never_oversubscribe(redis_url: str, prefix: str) -> None:
    """Twenty Envoys' first reports at once (atomic per bucket): the leases granted add up to
    at most the budget."""

    async def body(r: Any) -> int:
        world, _ = _world(r, prefix, "c#0|50|3600|token_bucket|0")
        usage = BucketUsage(world.entries, 0, 1)
        results = await asyncio.gather(*[world.service.settle(f"E{i}", [usage]) for i in range(20)])
        return sum(s[0].lease.tokens for s in results if s[0].lease.kind == LeaseKind.GRANT)

    assert with_redis(redis_url, body) <= 50


def test_what_an_envoy_reports_beyond_its_local_bound_is_not_taken_from_the_budget(
    redis_url: str, prefix: str
) -> None:
    """Before its first lease a bucket lets everything through the quota filter, and the
    local bound behind it refuses what is too much: the report counts those too."""

    async def body(r: Any) -> list[Lease]:
        world, clock = _world(r, prefix, "u#0|20|3600|token_bucket|0")
        usage = BucketUsage(world.entries, 500, 0)
        first = (await world.service.settle("A", [usage]))[0].lease
        clock[0] += REPORT_INTERVAL_S
        again = (await world.service.settle("A", [BucketUsage(world.entries, 0, 0)]))[0].lease
        return [first, again]

    first, again = with_redis(redis_url, body)
    assert first.unleased == 21  # the local bound of a token bucket: 20 and one
    assert first.kind == LeaseKind.DENY and again.kind == LeaseKind.DENY  # the budget is spent


def test_a_clock_behind_starts_no_window_again(redis_url: str, prefix: str) -> None:
    """Two wardgate replicas whose clocks differ by two seconds settle reports of one bucket
    around a window's start: the one behind must not start its (older) window again (each
    flip between the two clocks gave out a whole window's budget)."""
    window = 60 * 100_000.0

    async def body(r: Any) -> tuple[int, int]:
        key_for = Keys(f"{prefix}{next(_ids)}:").quota
        ledger, rule = RedisQuotaLedger(redis=r), "k#0|5|60|fixed_window|0"
        ahead, behind = [window + 1.0], [window - 1.0]

        def replica(clock: list[float]) -> World:
            service = QuotaService(ledger=ledger, key_for=key_for, clock=lambda: clock[0])
            return World(service, rule, clock)

        a_world, b_world = replica(ahead), replica(behind)
        a, b, c = Envoy("A"), Envoy("B"), Envoy("C")
        while await a_world.request(a):  # the new window's budget, through the replica ahead
            pass
        for _ in range(3):  # reports of B and C through the replica behind, then A's again
            await b_world.request(b)
            await b_world.request(c)
            behind[0] += 0.1
            for e in (b, c):
                await b_world.report(e)
            ahead[0] += 0.1
            await a_world.report(a)
            for e in (a, b, c):
                while e.request():
                    pass
        return a.admitted + b.admitted + c.admitted, a_world.unleased + b_world.unleased

    fixed, unleased = with_redis(redis_url, body)
    assert fixed <= 5 + unleased  # one window's budget, and the unleased first requests
