"""Redis implementations of the domain's storage ports."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from wardgate.domain.ports import (
    ApiKeyRecord,
    LimitCheck,
    LimitOutcome,
    SessionRecord,
    UserRecord,
)
from wardgate.store.errors import redis_errors
from wardgate.store.keys import RATE_LIMIT_LUA, TOUCH_SESSION_LUA, Keys
from wardgate.store.redis_client import AnyRedis
from wardgate.store.tickets import record_revocations


class RedisUserStore:
    def __init__(self, *, redis: AnyRedis, keys: Keys) -> None:
        self._r = redis
        self._k = keys

    async def get_user(self, name: str) -> UserRecord | None:
        with redis_errors():
            raw = await self._r.hget(self._k.users, name)
        return _user(name, raw) if raw else None

    async def put_user(self, user: UserRecord) -> None:
        doc = {"password_hash": user.password_hash, "roles": list(user.roles)}
        with redis_errors():
            await self._r.hset(self._k.users, user.name, json.dumps(doc))

    async def delete_user(self, name: str) -> bool:
        with redis_errors():
            return bool(await self._r.hdel(self._k.users, name))

    async def list_users(self) -> list[UserRecord]:
        with redis_errors():
            raw = await self._r.hgetall(self._k.users)
        return [_user(name, value) for name, value in sorted(raw.items())]


def _user(name: str, raw: str) -> UserRecord:
    doc = json.loads(raw)
    return UserRecord(name, doc["password_hash"], tuple(doc.get("roles", ())))


class RedisSessionStore:
    """One hash per session (keyed by the id's SHA-256) that expires by itself, plus a set per
    user for listing and revoking all of a user's sessions."""

    def __init__(self, *, redis: AnyRedis, keys: Keys) -> None:
        self._r = redis
        self._k = keys

    async def create_session(self, record: SessionRecord) -> None:
        key = self._k.session(record.id_hash)
        ttl_ms = max(1, int((record.expires_at - record.created_at) * 1000))
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.hset(
                    key,
                    mapping={
                        "user": record.user,
                        "roles": ",".join(record.roles),
                        "created_at": repr(record.created_at),
                        "expires_at": repr(record.expires_at),
                        "idle_expires_at": repr(record.idle_expires_at),
                    },
                )
                pipe.pexpire(key, ttl_ms)
                pipe.sadd(self._k.user_sessions(record.user), record.id_hash)
                pipe.pexpire(self._k.user_sessions(record.user), ttl_ms, gt=True)
                pipe.pexpire(self._k.user_sessions(record.user), ttl_ms, nx=True)
                await pipe.execute()

    async def get_session(self, id_hash: str) -> SessionRecord | None:
        with redis_errors():
            raw = await self._r.hgetall(self._k.session(id_hash))
        return _session(id_hash, raw) if raw else None

    async def delete_session(self, id_hash: str) -> bool:
        with redis_errors():
            user = await self._r.hget(self._k.session(id_hash), "user")
            if user is None:
                return False
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.delete(self._k.session(id_hash))
                pipe.srem(self._k.user_sessions(user), id_hash)
                pipe.publish(self._k.sessions_channel, id_hash)
                record_revocations(pipe, self._k, [id_hash], now=time.time())
                deleted, *_ = await pipe.execute()
            return bool(deleted)

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        with redis_errors():
            if user is not None:
                hashes = sorted(await self._r.smembers(self._k.user_sessions(user)))
            else:
                hashes = []
                async for key in self._r.scan_iter(match=self._k.session("*"), count=500):
                    hashes.append(key.rsplit(":", 1)[-1])
            out = []
            for id_hash in hashes:
                raw = await self._r.hgetall(self._k.session(id_hash))
                if raw:
                    out.append(_session(id_hash, raw))
            return sorted(out, key=lambda s: (s.user, s.created_at))

    async def touch_session(self, id_hash: str, idle_expires_at: float) -> None:
        with redis_errors():
            # Only an existing session: a revoked one must not come back as a stub.
            await self._r.eval(
                TOUCH_SESSION_LUA, 1, self._k.session(id_hash), repr(idle_expires_at)
            )

    async def delete_user_sessions(self, user: str) -> int:
        with redis_errors():
            hashes = await self._r.smembers(self._k.user_sessions(user))
            if hashes:  # Envoy refuses their tickets first, then the sessions go
                async with self._r.pipeline(transaction=False) as pipe:
                    record_revocations(pipe, self._k, hashes, now=time.time())
                    await pipe.execute()
            count = 0
            for id_hash in hashes:
                count += await self._r.delete(self._k.session(id_hash))
                await self._r.publish(self._k.sessions_channel, id_hash)
            if hashes:
                # Only those read: a session created meanwhile stays listed and revocable.
                await self._r.srem(self._k.user_sessions(user), *hashes)
            return int(count)


def _session(id_hash: str, raw: dict[str, str]) -> SessionRecord:
    return SessionRecord(
        id_hash=id_hash,
        user=raw.get("user", ""),
        roles=tuple(r for r in raw.get("roles", "").split(",") if r),
        created_at=float(raw.get("created_at", 0)),
        expires_at=float(raw.get("expires_at", 0)),
        idle_expires_at=float(raw.get("idle_expires_at", 0)),
    )


class RedisApiKeyStore:
    def __init__(self, *, redis: AnyRedis, keys: Keys) -> None:
        self._r = redis
        self._k = keys

    async def get_key(self, key_hash: str) -> ApiKeyRecord | None:
        with redis_errors():
            raw = await self._r.hget(self._k.api_keys, key_hash)
        return _api_key(raw) if raw else None

    async def put_key(self, key_hash: str, record: ApiKeyRecord) -> None:
        doc = json.dumps(
            {
                "name": record.name,
                "roles": list(record.roles),
                "tier": record.tier,
                "created_at": record.created_at,
                "expires_at": record.expires_at,
            }
        )
        with redis_errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(self._k.api_keys, key_hash, doc)
                pipe.hset(self._k.api_key_names, record.name, key_hash)
                await pipe.execute()

    async def list_keys(self) -> list[ApiKeyRecord]:
        with redis_errors():
            raw = await self._r.hgetall(self._k.api_keys)
        return sorted((_api_key(v) for v in raw.values()), key=lambda r: r.name)

    async def delete_key(self, name: str) -> bool:
        with redis_errors():
            key_hash = await self._r.hget(self._k.api_key_names, name)
            if key_hash is None:
                return False
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hdel(self._k.api_keys, key_hash)
                pipe.hdel(self._k.api_key_names, name)
                pipe.publish(self._k.api_keys_channel, key_hash)
                await pipe.execute()
            return True


def _api_key(raw: str) -> ApiKeyRecord:
    doc = json.loads(raw)
    return ApiKeyRecord(
        name=doc["name"],
        roles=tuple(doc.get("roles", ())),
        tier=doc.get("tier", ""),
        created_at=float(doc.get("created_at", 0)),
        expires_at=float(doc.get("expires_at", 0)),
    )


class RedisCounterStore:
    """All limits of one request in one EVALSHA (EVAL once after a script flush).

    Under Redis Cluster the counters of one request may live in several slots (each counter
    carries its own hash tag). Then every slot's limits are first checked without spending
    (one script per slot, concurrently), and spent only if all of them allow: a refused
    request still spends nothing. Between the two phases another request may take the last
    unit of a limit in one slot while others were spent; that slot then refuses on its own.
    """

    def __init__(self, *, redis: AnyRedis) -> None:
        self._r = redis
        self._sha: str | None = None
        self._cluster = isinstance(redis, RedisCluster)

    async def _eval(
        self, checks: Sequence[LimitCheck], now_ms: int, *, check_only: bool
    ) -> list[LimitOutcome]:
        keys: list[str] = []
        args: list[Any] = [now_ms]
        for c in checks:
            keys += [c.key, c.previous_key]
            args += [c.algorithm, c.limit, c.period_ms, c.window_start_ms, int(c.shadow)]
        if check_only:
            args.append("check")
        if self._sha is None:
            self._sha = hashlib.sha1(RATE_LIMIT_LUA.encode()).hexdigest()
        try:
            flat = await self._r.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:
            # This node has not seen the script (a restart, a flush, a cluster node): EVAL
            # sends it along, to the node the keys are on, which keeps it for next time.
            flat = await self._r.eval(RATE_LIMIT_LUA, len(keys), *keys, *args)
        return [
            LimitOutcome(bool(int(flat[i])), int(flat[i + 1]), int(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    async def check_and_commit(
        self, checks: Sequence[LimitCheck], *, now_ms: int
    ) -> list[LimitOutcome]:
        with redis_errors():
            slots: dict[int, list[int]] = {}
            for i, c in enumerate(checks):
                slot = key_slot(c.key.encode()) if self._cluster else 0
                slots.setdefault(slot, []).append(i)
            if len(slots) <= 1:
                return await self._eval(checks, now_ms, check_only=False)
            groups = list(slots.values())
            phases = [True, False]
            outcomes: list[LimitOutcome | None] = [None] * len(checks)
            for check_only in phases:
                results = await asyncio.gather(
                    *[
                        self._eval([checks[i] for i in g], now_ms, check_only=check_only)
                        for g in groups
                    ]
                )
                for g, result in zip(groups, results, strict=True):
                    for i, outcome in zip(g, result, strict=True):
                        outcomes[i] = outcome
                refused = any(
                    not o.allowed and not checks[i].shadow
                    for i, o in enumerate(outcomes)
                    if o is not None
                )
                if check_only and refused:
                    break  # refused in some slot: spend nothing anywhere
            return [o for o in outcomes if o is not None]


class RedisRefusalLog:
    """A HyperLogLog per rule and minute: distinct refused clients across every worker and
    replica, in 12 KiB per rule and minute at most, expiring by itself."""

    def __init__(self, *, redis: AnyRedis, keys: Keys) -> None:
        self._r = redis
        self._k = keys

    async def record(self, rule: str, client: str, *, now: float) -> None:
        key = self._k.refused_clients(rule, int(now // 60))
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.pfadd(key, client)
                pipe.expire(key, 180)
                await pipe.execute()

    async def count(self, rules: Sequence[str], *, now: float) -> dict[str, int]:
        minute = int(now // 60)
        names = sorted(rules)
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                for rule in names:
                    pipe.pfcount(self._k.refused_clients(rule, minute))
                counts = await pipe.execute()
        return {rule: int(n) for rule, n in zip(names, counts, strict=True)}


class RedisLoginGuard:
    """At most ``limit`` login attempts per user name per ``window`` seconds, a good login
    clearing the count. Counting and reading the count are one transaction."""

    def __init__(self, *, redis: AnyRedis, keys: Keys, limit: int, window: int = 900) -> None:
        self._r = redis
        self._k = keys
        self._limit = limit
        self._window = window

    async def attempt(self, user: str) -> int:
        if self._limit <= 0:
            return 0
        key = self._k.login_failures(user)
        with redis_errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, self._window, nx=True)
                pipe.ttl(key)
                count, _, ttl = await pipe.execute()
        return max(1, int(ttl)) if int(count) > self._limit else 0

    async def cleared(self, user: str) -> None:
        with redis_errors():
            await self._r.delete(self._k.login_failures(user))
