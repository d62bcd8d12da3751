"""Session tickets in Redis: the published ticket keys and the revoked sessions
(``domain/tickets.py``). Revocations are written with the sessions they end
(``redis_store.RedisSessionStore``, ``record_revocations``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from wardgate.domain.tickets import MAX_HOLD, PublishedKey, ticket_sid
from wardgate.store.errors import redis_errors
from wardgate.store.keys import Keys
from wardgate.store.redis_client import AnyRedis

log = logging.getLogger("wardgate.tickets")


class RedisTicketKeyStore:
    def __init__(self, *, redis: AnyRedis, keys: Keys) -> None:
        self._r = redis
        self._k = keys

    async def publish(self, key: PublishedKey) -> None:
        doc = json.dumps(
            {"jwk": dict(key.jwk), "sign_from": key.sign_from, "keep_until": key.keep_until},
            sort_keys=True,
        )
        with redis_errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(self._k.ticket_keys, key.kid, doc)
                pipe.incr(self._k.ticket_keys_version)
                await pipe.execute()

    async def keep_until(self, kid: str, until: float) -> None:
        with redis_errors():
            raw = await self._r.hget(self._k.ticket_keys, kid)
            if raw is None:
                return
            doc = json.loads(raw)
            doc["keep_until"] = min(float(doc.get("keep_until", until)), until)
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(self._k.ticket_keys, kid, json.dumps(doc, sort_keys=True))
                pipe.incr(self._k.ticket_keys_version)
                await pipe.execute()

    async def live(self, *, now: float) -> list[PublishedKey]:
        with redis_errors():
            raw = await self._r.hgetall(self._k.ticket_keys)
        out, ended = [], []
        for kid, text in raw.items():
            key = _published(kid, text)
            if key is None or key.keep_until <= now:
                ended.append(kid)
            else:
                out.append(key)
        if ended:
            with redis_errors():
                await self._r.hdel(self._k.ticket_keys, *ended)
        return sorted(out, key=lambda k: (k.sign_from, k.kid))

    async def version(self) -> int:
        with redis_errors():
            return int(await self._r.get(self._k.ticket_keys_version) or 0)


def _published(kid: str, text: str) -> PublishedKey | None:
    """A stored key, or None (logged) when the entry is not one wardgate wrote."""
    try:
        doc: Any = json.loads(text)
        jwk = doc["jwk"]
        if not isinstance(jwk, dict) or jwk.get("kid") != kid:
            raise ValueError("the JWK does not carry its own kid")
        return PublishedKey(kid, jwk, float(doc["sign_from"]), float(doc["keep_until"]))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ticket key %r: not a key entry (%s); dropped", kid[:64], exc)
        return None


class RedisRevocationList:
    def __init__(self, *, redis: AnyRedis, keys: Keys) -> None:
        self._r = redis
        self._k = keys

    async def live(self, *, since: float) -> dict[str, float]:
        now_ms = int(time.time() * 1000)
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(
                    self._k.revoked_sessions, "-inf", now_ms - int(MAX_HOLD * 1000)
                )
                pipe.zrangebyscore(
                    self._k.revoked_sessions, int(since * 1000), "+inf", withscores=True
                )
                _, rows = await pipe.execute()
        return {str(sid): float(score) / 1000 for sid, score in rows}

    async def version(self) -> int:
        with redis_errors():
            return int(await self._r.get(self._k.revoked_sessions_version) or 0)


def record_revocations(pipe: Any, keys: Keys, session_hashes: Iterable[str], *, now: float) -> None:
    """Queue, on a pipeline that also ends the sessions, their revocation for Envoy: the
    tickets of these sessions are refused from now on."""
    members = {ticket_sid(h): int(now * 1000) for h in session_hashes}
    if members:
        pipe.zadd(keys.revoked_sessions, members)
        pipe.incr(keys.revoked_sessions_version)
