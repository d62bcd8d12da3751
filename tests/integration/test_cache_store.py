"""The response cache's Redis scripts against a real redis-server: lookup takes the lock,
a pass mark lets waiting requests through, a store after a purge is refused, purges by route
and by path, entries expire."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wardgate.domain.http_cache import cache_key
from wardgate.store.keys import Keys
from wardgate.store.redis_client import connect
from wardgate.store.response_cache import RedisCacheStore

pytestmark = pytest.mark.integration


def key(path: str, user: str = "ada", route: str = "r") -> Any:
    return cache_key(
        route=route,
        fingerprint="f",
        method="GET",
        host="h",
        path=path,
        query="",
        vary={},
        accept_encoding="",
        partition=("user", "session", user, "", ""),
    )


def with_store(redis_url: str, prefix: str, body: Any) -> Any:
    async def main() -> Any:
        redis = connect(redis_url, timeout=2.0, decode=False)
        try:
            return await body(RedisCacheStore(redis=redis, keys=Keys(prefix)), redis)
        finally:
            await redis.aclose()

    return asyncio.run(main())


def test_lookup_lock_store_and_pass(redis_url: str, prefix: str) -> None:
    async def body(store: RedisCacheStore, redis: Any) -> None:
        k = key("/a")
        first = await store.lookup(k, lock_token="t1", lock_ms=5000)
        assert (first.entry, first.lock, first.epoch) == (None, "taken", "0")
        other = await store.lookup(k, lock_token="t2", lock_ms=5000)
        assert other.lock == "held"
        await store.release(k, "t2", pass_ms=1000)  # not its lock: nothing happens
        assert (await store.lookup(k, lock_token="t3", lock_ms=5000)).lock == "held"
        await store.release(k, "t1", pass_ms=1000)  # the leader's answer was not storable
        assert (await store.lookup(k, lock_token="t3", lock_ms=5000)).lock == "pass"
        # A storable answer later replaces the pass mark.
        assert await store.store(k, b"\x00\xffbody", ttl_ms=60_000, epoch="0", lock_token=None)
        found = await store.lookup(k, lock_token="t4", lock_ms=5000)
        assert (found.entry, found.lock) == (b"\x00\xffbody", "none")
        assert await redis.pttl(Keys(prefix).cache_entry(k.route, k.path_hash, k.variant)) > 0

    with_store(redis_url, prefix, body)


def test_purge_by_route_and_path_and_no_store_after_a_purge(redis_url: str, prefix: str) -> None:
    async def body(store: RedisCacheStore, redis: Any) -> None:
        for path, user in [("/a", "ada"), ("/a", "bob"), ("/b", "ada")]:
            assert await store.store(
                key(path, user), b"x", ttl_ms=60_000, epoch="0", lock_token=None
            )
        assert await store.store(
            key("/a", route="other"), b"x", ttl_ms=60_000, epoch="0", lock_token=None
        )
        in_flight = await store.lookup(key("/c"), lock_token="t", lock_ms=5000)
        assert await store.purge("r", "/a") == 2  # every user's answer for that path
        assert (await store.lookup(key("/b"), lock_token=None, lock_ms=0)).entry == b"x"
        # A fetch that began before the purge does not store after it.
        assert not await store.store(
            key("/c"), b"stale", ttl_ms=60_000, epoch=in_flight.epoch, lock_token="t"
        )
        assert await store.purge("r", None) == 1
        assert (await store.lookup(key("/a", route="other"), lock_token=None, lock_ms=0)).entry
        epoch = (await store.lookup(key("/c"), lock_token=None, lock_ms=0)).epoch
        assert epoch == "2"

    with_store(redis_url, prefix, body)


def test_entries_and_locks_expire(redis_url: str, prefix: str) -> None:
    async def body(store: RedisCacheStore, redis: Any) -> None:
        k = key("/t")
        assert (await store.lookup(k, lock_token="t", lock_ms=50)).lock == "taken"
        await store.store(k, b"x", ttl_ms=50, epoch="0", lock_token="t")
        await asyncio.sleep(0.2)
        assert (await store.lookup(k, lock_token="u", lock_ms=50)).lock == "taken"

    with_store(redis_url, prefix, body)
