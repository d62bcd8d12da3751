"""The response cache in Redis (``domain/response_cache.py`` ``CacheStore``): entries, the
lock one request holds while it fetches, the per-route purge epoch, and purging.

Each operation is one round trip (a Lua script: ``store/keys.py``). The client is a binary
one (bodies are bytes) with a short deadline of its own: a slow Redis costs a request at most
that, then the cache is bypassed.
"""

from __future__ import annotations

import hashlib
from typing import Any

from redis.exceptions import NoScriptError

from wardgate.domain.http_cache import CacheKey, path_hash
from wardgate.domain.response_cache import LockState, Lookup
from wardgate.store.errors import redis_errors
from wardgate.store.keys import (
    CACHE_LOOKUP_LUA,
    CACHE_RELEASE_LUA,
    CACHE_STORE_LUA,
    Keys,
)
from wardgate.store.redis_client import AnyRedis

_STATES: dict[bytes, LockState] = {
    b"taken": "taken",
    b"held": "held",
    b"pass": "pass",
    b"none": "none",
}


class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, redis: AnyRedis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a node that has not seen it yet: EVAL sends it along
            return await redis.eval(self.source, len(keys), *keys, *args)


_LOOKUP = _Script(CACHE_LOOKUP_LUA)
_STORE = _Script(CACHE_STORE_LUA)
_RELEASE = _Script(CACHE_RELEASE_LUA)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisCacheStore:
    """``redis`` must be a client made with ``decode=False``."""

    def __init__(self, *, redis: AnyRedis, keys: Keys, scan_count: int = 1000) -> None:
        self._r = redis
        self._k = keys
        self._scan_count = scan_count

    def _keys(self, key: CacheKey) -> list[str]:
        return [
            self._k.cache_entry(key.route, key.path_hash, key.variant),
            self._k.cache_lock(key.route, key.variant),
            self._k.cache_epoch(key.route),
        ]

    async def lookup(self, key: CacheKey, *, lock_token: str | None, lock_ms: int) -> Lookup:
        with redis_errors():
            entry, state, epoch = await _LOOKUP(
                self._r, self._keys(key), [lock_token or "", max(1, lock_ms)]
            )
        state_bytes = state if isinstance(state, bytes) else str(state).encode()
        return Lookup(entry, _STATES.get(state_bytes, "none"), _text(epoch))

    async def store(
        self, key: CacheKey, value: bytes, *, ttl_ms: int, epoch: str, lock_token: str | None
    ) -> bool:
        with redis_errors():
            stored = await _STORE(
                self._r, self._keys(key), [value, max(1, ttl_ms), epoch, lock_token or ""]
            )
        return bool(int(stored))

    async def release(self, key: CacheKey, lock_token: str, *, pass_ms: int) -> None:
        with redis_errors():
            await _RELEASE(
                self._r, [self._k.cache_lock(key.route, key.variant)], [lock_token, pass_ms]
            )

    async def purge(self, route: str, path: str | None) -> int:
        """Raise the route's epoch (fetches in flight will not store), then delete its
        entries (of one path). Returns how many were deleted."""
        pattern = self._k.cache_entries_pattern(route, path_hash(path) if path else None)
        deleted = 0
        with redis_errors():
            await self._r.incr(self._k.cache_epoch(route))
            batch: list[Any] = []
            async for name in self._r.scan_iter(match=pattern, count=self._scan_count):
                batch.append(name)
                if len(batch) >= 500:
                    deleted += await self._r.unlink(*batch)
                    batch = []
            if batch:
                deleted += await self._r.unlink(*batch)
        return deleted
