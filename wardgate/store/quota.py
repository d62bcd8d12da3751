"""The quota ledger on Redis: one hash per bucket, settled by ``QUOTA_LUA`` (store/keys.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from wardgate.domain.quota import HOLDER_EXPIRY_S, Lease, LeaseKind, QuotaCheck
from wardgate.store.errors import redis_errors
from wardgate.store.keys import QUOTA_LUA
from wardgate.store.redis_client import AnyRedis

_SHA = hashlib.sha1(QUOTA_LUA.encode()).hexdigest()
_CHUNK = 500  # buckets per pipeline round trip
# On a cluster, scripts cannot be pipelined (redis-py refuses): one call per bucket, this many
# at once (each node's pool is bounded, and an exhausted one fails instead of waiting).
_CLUSTER_CONCURRENCY = 16


class RedisQuotaLedger:
    """Each bucket of a report is one script call; a report's calls go in pipelines (one
    round trip per ``_CHUNK`` buckets; on a Redis Cluster, which takes no pipelined scripts,
    concurrent calls, each to the node holding its bucket). Each call is atomic on its own: two
    Envoys reporting the same bucket at once are settled one after the other."""

    def __init__(self, *, redis: AnyRedis) -> None:
        self._r = redis
        self._cluster = isinstance(redis, RedisCluster)

    async def settle(self, checks: Sequence[QuotaCheck], *, now_ms: int) -> list[Lease]:
        out: list[Lease] = []
        with redis_errors():
            for start in range(0, len(checks), _CHUNK):
                chunk = checks[start : start + _CHUNK]
                try:
                    raw = await self._run(chunk, now_ms)
                except NoScriptError:
                    await self._r.script_load(QUOTA_LUA)  # a restart or a flush lost it
                    raw = await self._run(chunk, now_ms)
                out += [Lease(LeaseKind(int(k)), int(n), int(s), int(u)) for k, n, s, u in raw]
        return out

    async def _run(self, checks: Sequence[QuotaCheck], now_ms: int) -> list[list[int]]:
        if self._cluster:
            return await self._run_on_cluster(checks, now_ms)
        pipe = self._r.pipeline(transaction=False)
        for c in checks:
            pipe.evalsha(_SHA, 1, c.key, *_args(c, now_ms))
        results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, NoScriptError):
                raise result
            if isinstance(result, Exception):
                raise result
        return [list(r) for r in results]

    async def _run_on_cluster(self, checks: Sequence[QuotaCheck], now_ms: int) -> list[list[int]]:
        gate = asyncio.Semaphore(_CLUSTER_CONCURRENCY)

        async def one(c: QuotaCheck) -> list[int]:
            args = _args(c, now_ms)
            async with gate:
                try:
                    return list(await self._r.evalsha(_SHA, 1, c.key, *args))
                except NoScriptError:
                    # That node has not seen the script: EVAL sends it, and it keeps it.
                    return list(await self._r.eval(QUOTA_LUA, 1, c.key, *args))

        return list(await asyncio.gather(*(one(c) for c in checks)))


def _args(c: QuotaCheck, now_ms: int) -> tuple[int | str, ...]:
    """QUOTA_LUA's ARGV for one bucket."""
    return (
        now_ms,
        c.holder,
        c.allowed,
        c.denied,
        c.requests,
        c.period_ms,
        c.algorithm,
        HOLDER_EXPIRY_S * 1000,
        c.abandon_after_ms,
        c.local_bound,
    )
