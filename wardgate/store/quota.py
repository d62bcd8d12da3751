"""The quota ledger on Redis: one hash per bucket, settled by ``QUOTA_LUA`` (store/keys.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from redis.exceptions import NoScriptError

from wardgate.domain.quota import HOLDER_EXPIRY_S, Lease, LeaseKind, QuotaCheck
from wardgate.store.errors import redis_errors
from wardgate.store.keys import QUOTA_LUA
from wardgate.store.redis_client import AnyRedis

_SHA = hashlib.sha1(QUOTA_LUA.encode()).hexdigest()
_CHUNK = 500  # buckets per pipeline round trip


class RedisQuotaLedger:
    """Each bucket of a report is one script call; a report's calls go in pipelines (one
    round trip per ``_CHUNK`` buckets). Each call is atomic on its own: two Envoys reporting
    the same bucket at once are settled one after the other."""

    def __init__(self, *, redis: AnyRedis) -> None:
        self._r = redis

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
        pipe = self._r.pipeline(transaction=False)
        for c in checks:
            pipe.evalsha(
                _SHA,
                1,
                c.key,
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
        results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, NoScriptError):
                raise result
            if isinstance(result, Exception):
                raise result
        return [list(r) for r in results]
