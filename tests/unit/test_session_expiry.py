"""Idle (sliding) and absolute session expiry, and the per-user login guard, with an
injected clock and in-memory stores."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from wardgate.domain.passwords import hash_password
from wardgate.domain.ports import SessionRecord, UserRecord
from wardgate.domain.sessions import SessionService
from wardgate.errors import TooManyAttempts


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Users:
    def __init__(self) -> None:
        self.users = {"ann": UserRecord("ann", hash_password("password-1", n=2**10), ("user",))}

    async def get_user(self, name: str) -> UserRecord | None:
        return self.users.get(name)


class Sessions:
    def __init__(self) -> None:
        self.records: dict[str, SessionRecord] = {}
        self.touches = 0

    async def create_session(self, record: SessionRecord) -> None:
        self.records[record.id_hash] = record

    async def get_session(self, id_hash: str) -> SessionRecord | None:
        return self.records.get(id_hash)

    async def touch_session(self, id_hash: str, idle_expires_at: float) -> None:
        self.touches += 1
        if id_hash in self.records:
            self.records[id_hash] = dataclasses.replace(
                self.records[id_hash], idle_expires_at=idle_expires_at
            )


class Guard:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures: dict[str, int] = {}

    async def attempt(self, user: str) -> int:
        self.failures[user] = self.failures.get(user, 0) + 1
        return 900 if self.failures[user] > self.limit else 0

    async def cleared(self, user: str) -> None:
        self.failures.pop(user, None)


def service(clock: Clock, sessions: Sessions, guard: Guard | None = None) -> SessionService:
    return SessionService(
        users=Users(),
        sessions=sessions,
        ttl_seconds=3600,
        idle_seconds=600,
        guard=guard,
        clock=clock,  # type: ignore[arg-type]
    )


def test_idle_sessions_end_and_used_ones_slide() -> None:
    clock, store = Clock(), Sessions()
    svc = service(clock, store)

    async def run() -> None:
        sid = (await svc.login("ann", "password-1")).session_id  # type: ignore[union-attr]
        for _ in range(5):  # used every 5 minutes: stays alive past the first 10 minutes
            clock.now += 300
            assert await svc.resolve(sid) is not None
        writes = store.touches
        assert 1 <= writes <= 5
        assert await svc.resolve(sid) is not None
        assert store.touches == writes  # no write when the idle expiry is fresh
        clock.now += 601  # unused for longer than the idle window
        assert await svc.resolve(sid) is None

    asyncio.run(run())


def test_absolute_expiry_wins_over_use() -> None:
    clock, store = Clock(), Sessions()
    svc = service(clock, store)

    async def run() -> None:
        sid = (await svc.login("ann", "password-1")).session_id  # type: ignore[union-attr]
        for _ in range(13):
            clock.now += 300
            await svc.resolve(sid)
        assert clock.now - 1_000_000.0 > 3600
        assert await svc.resolve(sid) is None

    asyncio.run(run())


def test_the_guard_blocks_a_user_name_after_failures_known_or_not() -> None:
    clock, store, guard = Clock(), Sessions(), Guard(limit=3)
    svc = service(clock, store, guard)

    async def run() -> None:
        for name in ("ann", "ghost"):
            for _ in range(3):
                assert await svc.login(name, "wrong-password") is None
            with pytest.raises(TooManyAttempts):
                await svc.login(name, "password-1")
        assert await service(clock, store).login("ann", "password-1") is not None  # no guard

    asyncio.run(run())


def test_a_good_login_clears_the_failures() -> None:
    clock, store, guard = Clock(), Sessions(), Guard(limit=3)
    svc = service(clock, store, guard)

    async def run() -> None:
        await svc.login("ann", "nope")
        await svc.login("ann", "nope")
        assert await svc.login("ann", "password-1") is not None
        assert guard.failures == {}

    asyncio.run(run())


def test_a_login_racing_a_password_change_is_refused() -> None:
    clock, store = Clock(), Sessions()
    users = Users()
    svc = SessionService(users=users, sessions=store, ttl_seconds=3600, clock=clock)  # type: ignore[arg-type]
    real_get = users.get_user
    calls = {"n": 0}

    async def get_user(name: str) -> UserRecord | None:
        calls["n"] += 1
        found = await real_get(name)
        if calls["n"] == 1:  # the admin changes the password right after the first read
            users.users["ann"] = UserRecord(
                "ann", hash_password("new-password", n=2**10), ("user",)
            )
        return found

    users.get_user = get_user  # type: ignore[method-assign]
    assert asyncio.run(svc.login("ann", "password-1")) is None
    assert store.records == {}
