"""Heartbeats of ``discovery: registry`` instances in Redis sorted sets."""

from __future__ import annotations

import json
from collections.abc import Iterable

from wardgate.domain.registry import Instance
from wardgate.store.errors import redis_errors
from wardgate.store.keys import Keys
from wardgate.store.redis_client import AnyRedis


class RedisRegistryStore:
    def __init__(self, *, redis: AnyRedis, keys: Keys) -> None:
        self._r = redis
        self._k = keys

    async def heartbeat(self, service: str, instance: Instance, *, ttl: float, now: float) -> bool:
        """Record a heartbeat; returns whether the instance is new (and announces it)."""
        key = self._k.registry(service)
        with redis_errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.zadd(key, {instance.member(): int((now + ttl) * 1000)})
                pipe.zremrangebyscore(key, 0, int(now * 1000))
                pipe.pexpire(key, int(ttl * 1000) + 60_000)
                added, *_ = await pipe.execute()
            if added:
                await self._r.publish(self._k.registry_channel, service)
            return bool(added)

    async def deregister(self, service: str, instance: Instance) -> bool:
        with redis_errors():
            removed = await self._r.zrem(self._k.registry(service), instance.member())
            if removed:
                await self._r.publish(self._k.registry_channel, service)
            return bool(removed)

    async def live(self, services: Iterable[str], *, now: float) -> dict[str, list[Instance]]:
        """The instances whose last heartbeat has not expired, per service."""
        names = sorted(services)
        if not names:
            return {}
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zrangebyscore(self._k.registry(name), int(now * 1000), "+inf")
                results = await pipe.execute()
        out: dict[str, list[Instance]] = {}
        for name, members in zip(names, results, strict=True):
            instances = [i for i in (Instance.from_member(m) for m in members) if i is not None]
            out[name] = sorted(instances)
        return out

    async def is_registry_service(self, name: str) -> bool:
        """Whether the stored service ``name`` takes its endpoints from heartbeats."""
        with redis_errors():
            raw = await self._r.hget(self._k.services, name)
        try:
            return bool(raw) and json.loads(raw).get("discovery") == "registry"
        except (ValueError, AttributeError):
            return False
