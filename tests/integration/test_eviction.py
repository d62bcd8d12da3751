"""wardgate notices a Redis that may evict its data (issue 10, item 6)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import with_redis
from wardgate.metrics import create_metrics
from wardgate.store.eviction import EvictionWatch, eviction_policies

pytestmark = pytest.mark.integration


def test_a_memory_limit_with_an_evicting_policy_is_a_problem(redis_url: str) -> None:
    async def body(r: Any) -> None:
        before = await r.config_get("maxmemory", "maxmemory-policy")
        metrics = create_metrics()
        watch = EvictionWatch(redis=r, metrics=metrics, allow=False)
        accepting = EvictionWatch(redis=r, metrics=create_metrics(), allow=True)
        try:
            await r.config_set("maxmemory", "0")
            await r.config_set("maxmemory-policy", "allkeys-lru")
            await watch.check()
            assert watch.problem == ""  # no limit: nothing is ever evicted
            await r.config_set("maxmemory", str(512 << 20))
            for policy in ("allkeys-lru", "volatile-ttl", "allkeys-random"):
                await r.config_set("maxmemory-policy", policy)
                await watch.check()
                assert policy in watch.problem and "ratelimit_redis_url" in watch.problem
                assert metrics.registry.get_sample_value("wardgate_redis_may_evict") == 1
            await accepting.check()
            assert accepting.problem == ""
            await r.config_set("maxmemory-policy", "noeviction")
            await watch.check()
            assert watch.problem == ""
            assert metrics.registry.get_sample_value("wardgate_redis_may_evict") == 0
            (policy,) = await eviction_policies(r)
            assert (policy.policy, policy.evicts) == ("noeviction", False)
        finally:
            await r.config_set("maxmemory", before["maxmemory"])
            await r.config_set("maxmemory-policy", before["maxmemory-policy"])

    with_redis(redis_url, body)
