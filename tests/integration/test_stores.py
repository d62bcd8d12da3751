"""Session, user and document stores against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
import redis as sync_redis

from tests.support import with_redis
from wardgate import devstack
from wardgate.domain.catalog import plan_apply, plan_delete
from wardgate.domain.documents import parse_document
from wardgate.domain.ports import SessionRecord, UserRecord
from wardgate.errors import DocumentError, StoreError
from wardgate.metrics import create_metrics
from wardgate.store.cache import CachedSessionStore, listen_for_revocations
from wardgate.store.documents import RedisDocumentStore
from wardgate.store.keys import Keys
from wardgate.store.redis_client import connect
from wardgate.store.redis_store import RedisSessionStore, RedisUserStore

pytestmark = pytest.mark.integration


run = with_redis


def test_sessions_expire_list_and_revoke_per_user(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        store = RedisSessionStore(redis=r, keys=keys)
        for i, user in enumerate(["ann", "ann", "bob"]):
            await store.create_session(
                SessionRecord(f"{i:064x}", user, ("user",), 1000.0, 1000.0 + 60)
            )
        got = await store.get_session(f"{0:064x}")
        assert got is not None and got.user == "ann" and got.roles == ("user",)
        assert 0 < await r.pttl(keys.session(f"{0:064x}")) <= 60_000
        assert [s.user for s in await store.list_sessions("ann")] == ["ann", "ann"]
        assert len(await store.list_sessions()) == 3
        assert await store.delete_user_sessions("ann") == 2
        assert await store.get_session(f"{0:064x}") is None
        assert await store.delete_session(f"{2:064x}") is True
        assert await store.delete_session(f"{2:064x}") is False
        assert await store.list_sessions() == []

    run(redis_url, body)


def test_users_round_trip(redis_url: str, prefix: str) -> None:
    async def body(r: Any) -> None:
        store = RedisUserStore(redis=r, keys=Keys(prefix))
        await store.put_user(UserRecord("dora", "scrypt$1$1$1$c2FsdA==$aGFzaA==", ("admin", "ops")))
        assert (await store.get_user("dora")) == UserRecord(
            "dora", "scrypt$1$1$1$c2FsdA==$aGFzaA==", ("admin", "ops")
        )
        assert [u.name for u in await store.list_users()] == ["dora"]
        assert await store.delete_user("dora") is True
        assert await store.get_user("dora") is None

    run(redis_url, body)


def test_unreachable_redis_raises_store_error_quickly() -> None:
    async def main() -> None:
        r = connect(f"redis://127.0.0.1:{devstack.free_port()}/0", timeout=0.2)
        try:
            with pytest.raises(StoreError):
                await RedisUserStore(redis=r, keys=Keys()).get_user("x")
        finally:
            await r.aclose()

    asyncio.run(main())


SVC = {"kind": "Service", "name": "s", "endpoints": [{"address": "127.0.0.1", "port": 1}]}
ROUTE = {"kind": "Route", "name": "r", "match": {"prefix": "/r"}, "backend": "s"}


def test_commit_is_all_or_nothing_and_recorded(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        store = RedisDocumentStore(redis=r, keys=keys)
        docs = [parse_document(SVC), parse_document(ROUTE)]
        revision, changes = await store.commit(lambda cur: plan_apply(cur, docs))
        assert revision == 1 and [c.action for c in changes] == ["created", "created"]
        bad = [
            parse_document({**ROUTE, "name": "r2", "backend": "missing"}),
            parse_document({**SVC, "name": "s2"}),
        ]
        with pytest.raises(DocumentError):
            await store.commit(lambda cur: plan_apply(cur, bad))
        assert set(await r.hkeys(keys.services)) == {"s"}
        assert await store.revision() == 1
        with pytest.raises(DocumentError, match="route r still uses it"):
            await store.commit(lambda cur: [plan_delete(cur, "Service", "s")])
        history = await store.history()
        assert history[0]["revision"] == 1 and history[0]["changes"][0]["before"] is None

    run(redis_url, body)


def test_commit_retries_when_a_concurrent_writer_interferes(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        store = RedisDocumentStore(redis=r, keys=keys)
        calls = {"n": 0}

        def plan(cur: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                # Someone else writes between our read and our write: WATCH must catch it.
                with sync_redis.Redis.from_url(redis_url) as intruder:
                    intruder.hset(
                        keys.services, "intruder", json.dumps({**SVC, "name": "intruder"})
                    )
            return plan_apply(cur, [parse_document(SVC)])

        await store.commit(plan)
        assert calls["n"] == 2
        assert set(await r.hkeys(keys.services)) == {"s", "intruder"}

    run(redis_url, body)


def test_refusal_log_counts_distinct_clients_per_minute(redis_url: str, prefix: str) -> None:
    from wardgate.store.redis_store import RedisRefusalLog

    async def body(r: Any) -> tuple[dict[str, int], dict[str, int]]:
        log = RedisRefusalLog(redis=r, keys=Keys(prefix))
        now = 6_000_000.0
        for client in ["a", "b", "a", "c", "b"]:
            await log.record("rule#0", f"ip={client}", now=now)
        await log.record("rule#1", "ip=a", now=now)
        this_minute = await log.count(["rule#0", "rule#1", "rule#2"], now=now + 1)
        next_minute = await log.count(["rule#0"], now=now + 60)
        return this_minute, next_minute

    this_minute, next_minute = run(redis_url, body)
    assert this_minute == {"rule#0": 3, "rule#1": 1, "rule#2": 0}
    assert next_minute == {"rule#0": 0}


def test_cached_sessions_are_evicted_by_the_revocation_channel(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)
    metrics = create_metrics()

    async def body(r: Any) -> None:
        inner = RedisSessionStore(redis=r, keys=keys)
        cached = CachedSessionStore(inner)
        record = SessionRecord("ab" * 32, "zoe", ("user",), 1.0, 4e9)
        await inner.create_session(record)
        assert await cached.get_session(record.id_hash) == record  # cache off: read through
        listener = asyncio.create_task(
            listen_for_revocations(
                redis=r, keys=keys, caches={keys.sessions_channel: cached.cache}, metrics=metrics
            )
        )
        try:
            for _ in range(100):
                if cached.cache.enabled:
                    break
                await asyncio.sleep(0.01)
            assert cached.cache.enabled
            assert (
                metrics.registry.get_sample_value("wardgate_subscriptions", {"name": "revocations"})
                == 1
            )
            await cached.get_session(record.id_hash)
            await r.delete(keys.session(record.id_hash))  # a raw delete is not announced...
            assert await cached.get_session(record.id_hash) == record  # ...so it is cached
            await r.publish(keys.sessions_channel, record.id_hash)  # an announced revocation
            for _ in range(100):
                if await cached.get_session(record.id_hash) is None:
                    break
                await asyncio.sleep(0.01)
            assert await cached.get_session(record.id_hash) is None
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        assert cached.cache.enabled is False  # not subscribed: not trusted

    run(redis_url, body)


def test_idle_expiry_round_trips_through_redis(redis_url: str, prefix: str) -> None:
    from wardgate.domain.passwords import hash_password
    from wardgate.domain.sessions import SessionService, hash_session_id
    from wardgate.store.redis_store import RedisUserStore

    clock = {"now": 1_000_000.0}

    async def body(r: Any) -> None:
        users = RedisUserStore(redis=r, keys=Keys(prefix))
        await users.put_user(UserRecord("ida", hash_password("pw-123456", n=2**10), ()))
        store = RedisSessionStore(redis=r, keys=Keys(prefix))
        svc = SessionService(
            users=users,
            sessions=store,
            ttl_seconds=3600,
            idle_seconds=60,
            clock=lambda: clock["now"],
        )
        result = await svc.login("ida", "pw-123456")
        assert result is not None
        stored = await store.get_session(hash_session_id(result.session_id))
        assert stored is not None and stored.idle_expires_at == 1_000_060.0
        clock["now"] += 50
        assert await svc.resolve(result.session_id) is not None  # used: the idle expiry slides
        clock["now"] += 50
        assert await svc.resolve(result.session_id) is not None
        clock["now"] += 61
        assert await svc.resolve(result.session_id) is None  # idle too long

    run(redis_url, body)
