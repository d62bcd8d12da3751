"""Local caches of sessions and API keys, invalidated at once by Redis pub/sub.

A revoked session or key is announced on a channel (``sessions:revoked``, ``apikeys:revoked``);
every worker evicts it on receipt. While a worker is not subscribed (start-up, a lost
connection) its cache is empty and bypassed, so a missed announcement can never keep a
revoked credential alive. Entries also expire after ``max_age`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Generic, Protocol, TypeVar

from redis.exceptions import RedisError

from wardgate.domain.ports import ApiKeyRecord, ApiKeyStore, SessionRecord, SessionStore
from wardgate.metrics import Metrics
from wardgate.store.keys import Keys
from wardgate.store.redis_client import AnyRedis

log = logging.getLogger("wardgate.cache")
V = TypeVar("V")


class _Lru(Generic[V]):
    def __init__(self, *, max_entries: int, max_age: float) -> None:
        self._data: OrderedDict[str, tuple[V, float]] = OrderedDict()
        self._max = max_entries
        self._age = max_age
        self.enabled = False  # only while subscribed to the invalidations
        # Bumped by every eviction: a value read from Redis before an eviction that came in
        # while the read was under way must not be put back (it may be the revoked one).
        self.epoch = 0

    def get(self, key: str) -> V | None:
        if not self.enabled:
            return None
        found = self._data.get(key)
        if found is None:
            return None
        value, at = found
        if time.monotonic() - at > self._age:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: str, value: V, *, read_at_epoch: int) -> None:
        if not self.enabled or read_at_epoch != self.epoch:
            return
        self._data[key] = (value, time.monotonic())
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def evict(self, key: str) -> None:
        self.epoch += 1
        self._data.pop(key, None)

    def clear(self) -> None:
        self.epoch += 1
        self._data.clear()


class CachedSessionStore:
    """A ``SessionStore`` that remembers sessions it has read (not their absence)."""

    def __init__(self, inner: SessionStore, *, max_entries: int = 100_000, max_age: float = 30.0):
        self._inner = inner
        self.cache: _Lru[SessionRecord] = _Lru(max_entries=max_entries, max_age=max_age)

    async def create_session(self, record: SessionRecord) -> None:
        await self._inner.create_session(record)

    async def get_session(self, id_hash: str) -> SessionRecord | None:
        found = self.cache.get(id_hash)
        if found is not None:
            return found
        epoch = self.cache.epoch
        record = await self._inner.get_session(id_hash)
        if record is not None:
            self.cache.put(id_hash, record, read_at_epoch=epoch)
        return record

    async def touch_session(self, id_hash: str, idle_expires_at: float) -> None:
        await self._inner.touch_session(id_hash, idle_expires_at)
        self.cache.evict(id_hash)  # re-read next time: the store decides if it still exists

    async def delete_session(self, id_hash: str) -> bool:
        self.cache.evict(id_hash)
        return await self._inner.delete_session(id_hash)

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        return await self._inner.list_sessions(user)

    async def delete_user_sessions(self, user: str) -> int:
        return await self._inner.delete_user_sessions(user)


class CachedApiKeyStore:
    """An ``ApiKeyStore`` that remembers keys it has found (never unknown keys)."""

    def __init__(self, inner: ApiKeyStore, *, max_entries: int = 100_000, max_age: float = 30.0):
        self._inner = inner
        self.cache: _Lru[ApiKeyRecord] = _Lru(max_entries=max_entries, max_age=max_age)

    async def get_key(self, key_hash: str) -> ApiKeyRecord | None:
        found = self.cache.get(key_hash)
        if found is not None:
            return found
        epoch = self.cache.epoch
        record = await self._inner.get_key(key_hash)
        if record is not None:
            self.cache.put(key_hash, record, read_at_epoch=epoch)
        return record

    async def put_key(self, key_hash: str, record: ApiKeyRecord) -> None:
        await self._inner.put_key(key_hash, record)

    async def list_keys(self) -> list[ApiKeyRecord]:
        return await self._inner.list_keys()

    async def delete_key(self, name: str) -> bool:
        return await self._inner.delete_key(name)


class Invalidated(Protocol):
    """A local cache that announcements invalidate (``_Lru``, the response cache's
    ``LocalEntries``): on only while subscribed."""

    enabled: bool

    def evict(self, key: str) -> None: ...

    def clear(self) -> None: ...


async def listen_for_revocations(
    *, redis: AnyRedis, keys: Keys, caches: dict[str, Invalidated], metrics: Metrics
) -> None:
    """Forever: keep the caches in step with the revocation channels (``caches`` maps a
    channel to the cache it invalidates). Caches are on only while subscribed."""
    while True:
        pubsub = None
        try:
            pubsub = redis.pubsub()
            await pubsub.subscribe(*caches)
            # On only once Redis has confirmed every subscription: before that, a revocation
            # could be published and never reach us.
            confirmed: set[str] = set()
            while confirmed != set(caches):
                msg = await pubsub.get_message(timeout=5.0)
                if msg is None:
                    raise OSError("no subscription confirmation from Redis")
                if msg["type"] == "subscribe":
                    confirmed.add(msg["channel"])
            for cache in caches.values():
                cache.clear()
                cache.enabled = True
            metrics.subscriptions.labels("revocations").set(1)
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    caches[msg["channel"]].evict(msg["data"])
        except (RedisError, OSError) as exc:
            log.warning("revocation channel lost (%s); caches off until it is back", exc)
        finally:
            metrics.subscriptions.labels("revocations").set(0)
            for cache in caches.values():
                cache.enabled = False
                cache.clear()
            if pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
        await asyncio.sleep(0.5)
