"""The storage the domain needs, named by role. Implementations live in ``wardgate.store``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class UserRecord:
    name: str
    password_hash: str
    roles: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SessionRecord:
    id_hash: str
    user: str
    roles: tuple[str, ...]
    created_at: float
    expires_at: float  # absolute
    idle_expires_at: float = 0.0  # slides forward with use; 0: no idle expiry


class UserStore(Protocol):
    async def get_user(self, name: str) -> UserRecord | None: ...
    async def put_user(self, user: UserRecord) -> None: ...
    async def delete_user(self, name: str) -> bool: ...
    async def list_users(self) -> list[UserRecord]: ...


class LoginGuard(Protocol):
    """Login attempts per user name (known or not: the answer must not tell them apart).

    An attempt is counted *before* its password is checked, in one atomic step that also
    says whether it is over the limit: parallel guesses cannot all slip in while the first
    ones are being verified. A good login clears the count."""

    async def attempt(self, user: str) -> int: ...  # seconds to wait; 0: go on and verify
    async def cleared(self, user: str) -> None: ...


class SessionStore(Protocol):
    async def create_session(self, record: SessionRecord) -> None: ...
    async def get_session(self, id_hash: str) -> SessionRecord | None: ...
    async def delete_session(self, id_hash: str) -> bool: ...
    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]: ...
    async def delete_user_sessions(self, user: str) -> int: ...
    async def touch_session(self, id_hash: str, idle_expires_at: float) -> None: ...


@dataclasses.dataclass(frozen=True)
class ApiKeyRecord:
    name: str
    roles: tuple[str, ...]
    tier: str
    created_at: float
    expires_at: float  # 0: never


class ApiKeyStore(Protocol):
    async def get_key(self, key_hash: str) -> ApiKeyRecord | None: ...
    async def put_key(self, key_hash: str, record: ApiKeyRecord) -> None: ...
    async def list_keys(self) -> list[ApiKeyRecord]: ...
    async def delete_key(self, name: str) -> bool: ...


@dataclasses.dataclass(frozen=True)
class LimitCheck:
    """One limit to check for one client, as the counter store sees it."""

    algorithm: int  # 1 fixed window, 2 sliding window, 3 token bucket (GCRA)
    limit: int
    period_ms: int
    window_start_ms: int
    key: str
    previous_key: str
    shadow: bool = False  # counted, never refuses (and never blocks the others)


@dataclasses.dataclass(frozen=True)
class LimitOutcome:
    allowed: bool
    remaining: int
    reset_ms: int


class CounterStore(Protocol):
    async def check_and_commit(
        self, checks: Sequence[LimitCheck], *, now_ms: int
    ) -> list[LimitOutcome]:
        """Check every limit; spend from all of them only if all allow. One round trip."""
        ...


class RefusalLog(Protocol):
    """Distinct clients refused per rule and minute (approximate counting is fine)."""

    async def record(self, rule: str, client: str, *, now: float) -> None: ...
    async def count(self, rules: Sequence[str], *, now: float) -> dict[str, int]: ...
