"""Session tickets in a real Redis: published keys end by time; every way a session ends
records its revocation for Envoy (logout, revoke one, revoke a user's)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support import with_redis
from wardgate.domain.ports import SessionRecord
from wardgate.domain.tickets import MAX_HOLD, PublishedKey, ticket_sid
from wardgate.store.keys import Keys
from wardgate.store.redis_store import RedisSessionStore
from wardgate.store.tickets import RedisRevocationList, RedisTicketKeyStore

pytestmark = pytest.mark.integration


def _key(kid: str, keep_until: float) -> PublishedKey:
    return PublishedKey(kid, {"kty": "EC", "kid": kid}, 10.0, keep_until)


def test_published_keys_are_listed_until_their_time_and_shortened_on_retire(
    redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        store = RedisTicketKeyStore(redis=r, keys=keys)
        v0 = await store.version()
        await store.publish(_key("k1", 100.0))
        await store.publish(_key("k2", 200.0))
        assert await store.version() == v0 + 2
        assert [k.kid for k in await store.live(now=50.0)] == ["k1", "k2"]
        await store.keep_until("k2", 120.0)
        await store.keep_until("k2", 500.0)  # never longer than it was
        assert [(k.kid, k.keep_until) for k in await store.live(now=50.0)] == [
            ("k1", 100.0),
            ("k2", 120.0),
        ]
        assert [k.kid for k in await store.live(now=110.0)] == ["k2"]
        assert await r.hexists(keys.ticket_keys, "k1") == 0  # ended keys are removed
        # A raw write that is not a key entry is dropped, not served.
        await r.hset(keys.ticket_keys, "bad", '{"jwk": {"kid": "other"}}')
        await r.hset(keys.ticket_keys, "worse", "not json")
        assert [k.kid for k in await store.live(now=110.0)] == ["k2"]
        assert await r.hexists(keys.ticket_keys, "bad") == 0

    with_redis(redis_url, body)


def _record(id_hash: str, user: str) -> SessionRecord:
    now = time.time()
    return SessionRecord(id_hash, user, ("user",), now, now + 3600)


def test_every_way_a_session_ends_is_recorded_for_envoy(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        sessions = RedisSessionStore(redis=r, keys=keys)
        revoked = RedisRevocationList(redis=r, keys=keys)
        hashes = [f"{i:064x}" for i in range(1, 5)]
        for h, user in zip(hashes, ["ann", "ann", "bob", "bob"], strict=True):
            await sessions.create_session(_record(h, user))
        before = time.time()
        v0 = await revoked.version()
        assert await sessions.delete_session(hashes[0]) is True  # logout or revoke one
        assert await sessions.delete_session(hashes[0]) is False  # already gone: no entry
        assert await sessions.delete_user_sessions("bob") == 2  # revoke a user's
        live = await revoked.live(since=before - 1)
        assert set(live) == {ticket_sid(hashes[0]), ticket_sid(hashes[2]), ticket_sid(hashes[3])}
        assert all(before - 1 <= t <= time.time() + 1 for t in live.values())
        assert await revoked.version() == v0 + 2
        assert await revoked.live(since=time.time() + 5) == {}
        # Entries older than any ticket's lifetime are deleted.
        await r.zadd(keys.revoked_sessions, {"f" * 32: int((time.time() - MAX_HOLD - 5) * 1000)})
        await revoked.live(since=0)
        assert await r.zscore(keys.revoked_sessions, "f" * 32) is None

    with_redis(redis_url, body)
