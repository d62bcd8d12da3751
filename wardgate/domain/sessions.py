"""Server-side sessions: login, lookup, logout, revocation.

The session id is 256 random bits (43 URL-safe characters) handed to the client once, in the
cookie; the store only ever sees its SHA-256. Every login makes a new id (no fixation).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import secrets
import time
from collections.abc import Callable

from wardgate.domain.passwords import verify_password
from wardgate.domain.ports import LoginGuard, SessionRecord, SessionStore, UserStore
from wardgate.errors import TooManyAttempts

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
MAX_USERNAME = 128
MAX_PASSWORD = 1024


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


# What upstreams learn of the caller, set by the gateway alone: every client value is removed.
IDENTITY_HEADERS = ("x-user-id", "x-user-roles", "x-auth-method")


@dataclasses.dataclass(frozen=True)
class Identity:
    user: str
    roles: tuple[str, ...]
    method: str  # session | jwt | api_key
    expires_at: float = 0.0
    tier: str = ""  # API keys: the key's tier (rate limits per tier)
    session: str = ""  # sessions: the SHA-256 of the session id (what a ticket names)


@dataclasses.dataclass(frozen=True)
class LoginResult:
    session_id: str
    identity: Identity


class SessionService:
    def __init__(
        self,
        *,
        users: UserStore,
        sessions: SessionStore,
        ttl_seconds: float,
        idle_seconds: float = 0.0,
        guard: LoginGuard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._guard = guard
        self._users = users
        self._sessions = sessions
        self._ttl = ttl_seconds
        self._idle = idle_seconds
        self._clock = clock

    async def login(self, username: str, password: str) -> LoginResult | None:
        """A new session for good credentials; ``None`` (after the same work) otherwise.
        ``TooManyAttempts`` when the user name has failed too often lately."""
        if not (0 < len(username) <= MAX_USERNAME) or len(password) > MAX_PASSWORD:
            await asyncio.to_thread(verify_password, None, password[:MAX_PASSWORD])
            return None
        if self._guard is not None:
            wait = await self._guard.attempt(username)  # counted before the check
            if wait:
                raise TooManyAttempts(wait)
        user = await self._users.get_user(username)
        stored = user.password_hash if user else None
        ok = await asyncio.to_thread(verify_password, stored, password)
        if not ok or user is None:
            return None
        if self._guard is not None:
            await self._guard.cleared(username)
        # The password was checked against what was read ~100 ms ago: if the user was changed
        # (new password, new roles: their sessions revoked) meanwhile, this login must not
        # outlive that change.
        if await self._users.get_user(username) != user:
            return None
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        record = SessionRecord(
            id_hash=hash_session_id(session_id),
            user=user.name,
            roles=user.roles,
            created_at=now,
            expires_at=now + self._ttl,
            idle_expires_at=now + self._idle if self._idle else 0.0,
        )
        await self._sessions.create_session(record)
        return LoginResult(
            session_id,
            Identity(user.name, user.roles, "session", record.expires_at, session=record.id_hash),
        )

    async def resolve(self, session_id: str | None) -> Identity | None:
        """The identity behind a cookie value; ``None`` if malformed, unknown or expired."""
        if not session_id or not SESSION_ID_RE.fullmatch(session_id):
            return None
        record = await self._sessions.get_session(hash_session_id(session_id))
        now = self._clock()
        if record is None or record.expires_at <= now:
            return None
        if record.idle_expires_at:
            if record.idle_expires_at <= now:
                return None
            # Slide the idle expiry, but write at most once per tenth of the idle window.
            if record.idle_expires_at - now < self._idle * 0.9:
                await self._sessions.touch_session(record.id_hash, now + self._idle)
        return Identity(
            record.user, record.roles, "session", record.expires_at, session=record.id_hash
        )

    async def logout(self, session_id: str | None) -> bool:
        if not session_id or not SESSION_ID_RE.fullmatch(session_id):
            return False
        return await self._sessions.delete_session(hash_session_id(session_id))
