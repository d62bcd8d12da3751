"""The per-worker credential caches: an eviction during a read wins over the read."""

from __future__ import annotations

import asyncio

from wardgate.domain.ports import SessionRecord
from wardgate.store.cache import CachedSessionStore

RECORD = SessionRecord("ab" * 32, "zoe", ("user",), 1.0, 4e9)


class SlowStore:
    def __init__(self) -> None:
        self.reads = 0
        self.gate = asyncio.Event()

    async def get_session(self, id_hash: str) -> SessionRecord | None:
        self.reads += 1
        await self.gate.wait()
        return RECORD


def test_a_revocation_during_a_read_is_not_undone_by_it() -> None:
    async def run() -> None:
        inner = SlowStore()
        cached = CachedSessionStore(inner)  # type: ignore[arg-type]
        cached.cache.enabled = True
        read = asyncio.create_task(cached.get_session(RECORD.id_hash))
        await asyncio.sleep(0)
        cached.cache.evict(RECORD.id_hash)  # the revocation arrives while Redis is read
        inner.gate.set()
        assert await read == RECORD
        await cached.get_session(RECORD.id_hash)
        assert inner.reads == 2  # not cached from the read that raced the revocation
        await cached.get_session(RECORD.id_hash)
        assert inner.reads == 2  # a read with no revocation meanwhile is cached

    asyncio.run(run())


def test_an_unsubscribed_cache_reads_through() -> None:
    async def run() -> None:
        inner = SlowStore()
        inner.gate.set()
        cached = CachedSessionStore(inner)  # type: ignore[arg-type]
        for _ in range(3):
            await cached.get_session(RECORD.id_hash)
        assert inner.reads == 3

    asyncio.run(run())
