"""Usage batches in a real Redis: applied once whatever the retries, read back per key over
the hours asked, kept as long as the retention says; rate-limited clients ranked and counted;
names with Redis's or the format's own characters stay whole."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import with_redis
from wardgate.stats.usage import Batch, Totals, UsageKey
from wardgate.store.keys import Keys
from wardgate.store.usage import LIMITED_KEEP, RedisUsageStore

pytestmark = pytest.mark.integration


def test_a_batch_counts_once_and_reads_back(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)
    odd = "r:i:o:\n{wardgate}:*"  # the field prefixes, a newline, a hash tag, a glob
    batch = Batch(
        id="b1",
        usage={
            UsageKey("user", "alice", 10): Totals(2, 200, 2000),
            UsageKey("user", "alice", 11): Totals(1, 100, 0),
            UsageKey("user", odd, 11): Totals(5, 1, 1),
            UsageKey("route", "r", 11): Totals(3, 3, 3),
        },
        limited={(600, "ip:10.0.0.1"): 4, (601, "ip:10.0.0.1"): 1, (601, "user:bob"): 2},
    )

    async def body(r: Any) -> None:
        store = RedisUsageStore(redis=r, keys=keys, retention=7 * 86400)
        await store.add(batch)
        await store.add(batch)  # a retry whose first answer was lost: counted once
        totals = await store.totals(["user", "route"], [10, 11])
        assert totals == {
            ("user", "alice"): Totals(3, 300, 2000),
            ("user", odd): Totals(5, 1, 1),
            ("route", "r"): Totals(3, 3, 3),
        }
        assert await store.totals(["user"], [11]) == {
            ("user", "alice"): Totals(1, 100, 0),
            ("user", odd): Totals(5, 1, 1),
        }
        assert await store.totals(["api_key"], [10, 11]) == {}
        ttl = await r.ttl(keys.usage("user", 10))
        assert 7 * 86400 < ttl <= 7 * 86400 + 3600
        assert 0 < await r.ttl(keys.usage_batch("b1")) <= 86400
        distinct, top = await store.limited([600, 601], top=1)
        assert (distinct, top) == (2, [("ip:10.0.0.1", 5)])
        assert await store.limited([599], top=5) == (0, [])
        assert 0 < await r.ttl(keys.limited(600)) <= 600

    with_redis(redis_url, body)


def test_a_minute_keeps_only_the_most_refused_clients(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)
    many = {(5, f"ip:10.0.{i // 250}.{i % 250}"): 1 + (i % 7) for i in range(LIMITED_KEEP + 200)}

    async def body(r: Any) -> None:
        store = RedisUsageStore(redis=r, keys=keys, retention=3600)
        await store.add(Batch(id="many", usage={}, limited=many))
        assert await r.zcard(keys.limited(5)) == LIMITED_KEEP
        distinct, top = await store.limited([5], top=3)
        assert distinct == pytest.approx(LIMITED_KEEP + 200, rel=0.02)  # HyperLogLog
        assert [n for _c, n in top] == [7, 7, 7]

    with_redis(redis_url, body)
