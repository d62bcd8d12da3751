"""Usage figures and rate-limited clients in Redis (the ``UsageStore`` of ``stats/usage.py``).

A batch is one Lua script (``USAGE_BATCH_LUA``): a marker per batch id makes a batch sent
twice (its answer lost, then retried) count once. Usage lives in one hash per dimension and
hour, kept for ``retention`` seconds after the hour; rate-limited clients in a sorted set
(the 1000 most refused) and a HyperLogLog per minute, kept ten minutes. Every key carries the
prefix, so under Redis Cluster (prefix with a hash tag) one batch is one slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from wardgate.stats.usage import Batch, Dimension, Totals
from wardgate.store.errors import redis_errors
from wardgate.store.keys import USAGE_BATCH_LUA, Keys
from wardgate.store.redis_client import AnyRedis

LIMITED_TTL = 600  # seconds a minute of rate-limited clients is kept
LIMITED_KEEP = 1000  # members a minute's sorted set keeps (the most refused)
MARKER_TTL = 86400  # a batch id is remembered this long
_FIELDS = (("r:", "requests"), ("i:", "bytes_in"), ("o:", "bytes_out"))


class RedisUsageStore:
    def __init__(self, *, redis: AnyRedis, keys: Keys, retention: float) -> None:
        self._r = redis
        self._k = keys
        self._retention = int(retention)
        self._sha: str | None = None

    def script_args(self, batch: Batch) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the script for ``batch``."""
        keys = [self._k.usage_batch(batch.id)]
        index: dict[str, int] = {}
        lifetimes: list[tuple[int, int]] = []

        def at(key: str, ttl: int, keep: int = 0) -> int:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
                lifetimes.append((ttl, keep))
            return index[key]

        hincr: list[Any] = []
        for uk, totals in batch.usage.items():
            ttl = self._retention + 3600  # the hour itself, then the retention
            k = at(self._k.usage(uk.by, uk.hour), ttl)
            for prefix, attr in _FIELDS:
                amount = getattr(totals, attr)
                if amount:
                    hincr += [k, prefix + uk.key, amount]
        zincr: list[Any] = []
        pfadd: list[Any] = []
        for (minute, client), n in batch.limited.items():
            zincr += [at(self._k.limited(minute), LIMITED_TTL, LIMITED_KEEP), client, n]
            pfadd += [at(self._k.limited_clients(minute), LIMITED_TTL), client]
        args: list[Any] = [MARKER_TTL]
        args += [len(hincr) // 3, *hincr, len(zincr) // 3, *zincr, len(pfadd) // 2, *pfadd]
        for ttl, keep in lifetimes:
            args += [ttl, keep]
        return keys, args

    async def add(self, batch: Batch) -> None:
        if not batch:
            return
        keys, args = self.script_args(batch)
        with redis_errors():
            if self._sha is None:
                self._sha = await self._r.script_load(USAGE_BATCH_LUA)
            try:
                await self._r.evalsha(self._sha, len(keys), *keys, *args)
            except NoScriptError:
                await self._r.eval(USAGE_BATCH_LUA, len(keys), *keys, *args)

    async def totals(
        self, by: Sequence[Dimension], hours: Sequence[int]
    ) -> dict[tuple[Dimension, str], Totals]:
        wanted = [(d, h) for d in by for h in hours]
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                for d, h in wanted:
                    pipe.hgetall(self._k.usage(d, h))
                replies = await pipe.execute()
        out: dict[tuple[Dimension, str], Totals] = {}
        for (d, _h), fields in zip(wanted, replies, strict=True):
            for field, value in (fields or {}).items():
                prefix, key = field[:2], field[2:]
                attr = dict(_FIELDS).get(prefix)
                if attr is None:
                    continue
                totals = out.setdefault((d, key), Totals())
                setattr(totals, attr, getattr(totals, attr) + int(value))
        return out

    async def limited(self, minutes: Sequence[int], top: int) -> tuple[int, list[tuple[str, int]]]:
        if not minutes:
            return 0, []
        sets = [self._k.limited(m) for m in minutes]
        logs = [self._k.limited_clients(m) for m in minutes]
        with redis_errors():
            distinct = int(await self._r.pfcount(*logs))
            merged = await self._r.zunion(sets, withscores=True) if top > 0 else []
        ranked = sorted(((str(c), int(s)) for c, s in merged), key=lambda cs: (-cs[1], cs[0]))
        return distinct, ranked[:top]
