"""Bans in Redis: a sorted set of banned networks scored by when each ban ends, and a
counter of recent refusals per network (``domain/bans.py``)."""

from __future__ import annotations

from wardgate.domain.bans import BanPolicy
from wardgate.store.errors import redis_errors
from wardgate.store.keys import STRIKE_LUA, Keys
from wardgate.store.redis_client import AnyRedis


class RedisBanStore:
    def __init__(self, *, redis: AnyRedis, keys: Keys) -> None:
        self._r = redis
        self._k = keys

    async def strike(self, network: str, policy: BanPolicy, *, now: float) -> bool:
        until_ms = int((now + policy.duration) * 1000)
        with redis_errors():
            started = await self._r.eval(
                STRIKE_LUA,
                3,
                self._k.strikes(network),
                self._k.bans,
                self._k.bans_version,
                policy.refusals,
                int(policy.window * 1000),
                until_ms,
                network,
            )
        return bool(started)

    async def ban(self, network: str, *, until: float) -> None:
        with redis_errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.zadd(self._k.bans, {network: int(until * 1000)})
                pipe.incr(self._k.bans_version)
                await pipe.execute()

    async def unban(self, network: str) -> bool:
        with redis_errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.zrem(self._k.bans, network)
                pipe.incr(self._k.bans_version)
                removed, _ = await pipe.execute()
        return bool(removed)

    async def version(self) -> int:
        """A number that changes whenever a ban is added or lifted (not when one ends)."""
        with redis_errors():
            return int(await self._r.get(self._k.bans_version) or 0)

    async def live(self, *, now: float) -> dict[str, float]:
        """Networks banned now; bans that ended are removed on the way."""
        now_ms = int(now * 1000)
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(self._k.bans, "-inf", now_ms)
                pipe.zrangebyscore(self._k.bans, now_ms + 1, "+inf", withscores=True)
                _, rows = await pipe.execute()
        return {str(network): float(score) / 1000 for network, score in rows}
