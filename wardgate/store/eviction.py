"""Whether Redis may evict wardgate's data.

wardgate keeps users, sessions, API keys, documents, their history and the login lockout
counters in Redis, and none of it may silently disappear: an evicted lockout counter gives an
attacker fresh guesses, an evicted session logs a user out, an evicted document history
cannot be rolled back. A Redis with a memory limit (``maxmemory``) and any policy but
``noeviction`` drops keys when full; an anonymous flood of distinct rate-limit values once
made one evict everything. So the Redis of ``redis_url`` must not evict (counters may live in
a Redis of their own that may: ``ratelimit_redis_url``).

Read with ``INFO memory`` (allowed where ``CONFIG`` is not, as on managed Redis); under Redis
Cluster every node is asked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster

from wardgate.errors import StoreError
from wardgate.metrics import Metrics
from wardgate.store.errors import redis_errors
from wardgate.store.redis_client import AnyRedis

log = logging.getLogger("wardgate.redis")


@dataclasses.dataclass(frozen=True)
class EvictionPolicy:
    policy: str  # maxmemory-policy
    maxmemory: int  # bytes; 0: no limit

    @property
    def evicts(self) -> bool:
        return self.maxmemory > 0 and self.policy != "noeviction"

    def __str__(self) -> str:
        return f"maxmemory {self.maxmemory} bytes with maxmemory-policy {self.policy}"


async def eviction_policies(redis: AnyRedis) -> list[EvictionPolicy]:
    """The memory policy of the Redis (every node of a cluster)."""
    with redis_errors():
        if isinstance(redis, RedisCluster):
            infos: list[Any] = list(
                (await redis.info("memory", target_nodes=RedisCluster.ALL_NODES)).values()
            )
        else:
            infos = [await redis.info("memory")]
    return [
        EvictionPolicy(str(i.get("maxmemory_policy", "noeviction")), int(i.get("maxmemory", 0)))
        for i in infos
    ]


class EvictionWatch:
    """Checks the data Redis at start-up and every ``every`` seconds (a ``CONFIG SET`` can
    change the policy at any time). While it may evict, ``problem`` says why (readiness turns
    false, a metric is 1 and an error is logged at each check), unless ``allow`` accepts it."""

    def __init__(
        self, *, redis: AnyRedis, metrics: Metrics, allow: bool, every: float = 30.0
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._allow = allow
        self._every = every
        self.problem = ""

    async def check(self) -> None:
        try:
            policies = await eviction_policies(self._redis)
        except StoreError:
            return  # unreachable: readiness says so already; check again next time
        evicting = [p for p in policies if p.evicts]
        self._metrics.redis_may_evict.set(1 if evicting else 0)
        if not evicting:
            self.problem = ""
            return
        reason = (
            f"Redis may evict wardgate's data ({evicting[0]}): set maxmemory-policy "
            "noeviction, or move rate-limit counters to their own Redis (ratelimit_redis_url)"
        )
        if self._allow:
            log.warning("%s; accepted (redis_allow_eviction)", reason)
            self.problem = ""
        else:
            log.error("%s", reason)
            self.problem = reason

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._every)
