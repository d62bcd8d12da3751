"""The response cache's decisions over a ``CacheStore``: answer from it, or let one request
per key go upstream while the others with the same key wait for its answer (single flight),
and store what comes back.

- A miss takes the key's lock in the store (with the lookup, one round trip) and becomes the
  *leader*; requests for the same key in this process wait on the leader's future, those in
  other processes poll the store, all for at most ``wait`` seconds, then go upstream
  themselves (``Fetch``).
- A leader whose answer cannot be stored leaves a short *pass* mark instead of the entry:
  the waiting requests go upstream at once instead of queueing one after the other behind an
  answer that will never be cached.
- A store that fails (Redis down, slow) is bypassed, never an error: the request goes
  upstream, and the store is not asked again for ``down_for`` seconds.

Entries are found by ``CacheKey`` alone, and the key holds whose entry it is
(``http_cache.cache_key``): waiting on another request's flight means waiting on the same key,
so on the same partition (user or shared).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from wardgate.domain.http_cache import CacheKey, Entry, decode_entry
from wardgate.errors import StoreError

LockState = Literal["taken", "held", "pass", "none"]


@dataclasses.dataclass(frozen=True, slots=True)
class Lookup:
    entry: bytes | None
    lock: LockState  # taken by this lookup, held by another, a pass mark, or not asked
    epoch: str  # the route's purge epoch when read: a store after a purge is refused


class CacheStore(Protocol):
    """Where entries live (``store/response_cache.py``)."""

    async def lookup(self, key: CacheKey, *, lock_token: str | None, lock_ms: int) -> Lookup: ...

    async def store(
        self, key: CacheKey, value: bytes, *, ttl_ms: int, epoch: str, lock_token: str | None
    ) -> bool: ...

    async def release(self, key: CacheKey, lock_token: str, *, pass_ms: int) -> None: ...

    async def purge(self, route: str, path: str | None) -> int: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Hit:
    entry: Entry
    waited: bool  # found after waiting for another request's flight


@dataclasses.dataclass(frozen=True, slots=True)
class Lead:
    """This request goes upstream for the key; ``finish`` stores its answer or lets go."""

    key: CacheKey
    token: str
    epoch: str


@dataclasses.dataclass(frozen=True, slots=True)
class Fetch:
    """This request goes upstream without the lock (``reason``); it may still store its answer
    when ``epoch`` is known."""

    key: CacheKey
    epoch: str | None
    reason: str


Begin = Hit | Lead | Fetch


class ResponseCache:
    def __init__(
        self,
        *,
        store: CacheStore,
        wait: float,
        down_for: float = 1.0,
        pass_for: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._wait = wait
        self._lock_ms = max(1, int(wait * 1000))
        self._pass_ms = int(pass_for * 1000)
        self._down_for = down_for
        self._down_until = 0.0
        self._monotonic = monotonic
        self._sleep = sleep
        self._flights: dict[CacheKey, asyncio.Future[Entry | None]] = {}

    @property
    def wait(self) -> float:
        return self._wait

    @property
    def store_down(self) -> bool:
        return self._monotonic() < self._down_until

    def _trip(self) -> None:
        self._down_until = self._monotonic() + self._down_for

    async def begin(self, key: CacheKey, *, lookup: bool = True) -> Begin:
        """What this request does: answered from the cache (``Hit``), goes upstream for
        everyone (``Lead``), or goes upstream on its own (``Fetch``). ``lookup`` False (the
        client asked for a fresh answer): never a hit, but the answer may be stored."""
        if self.store_down:
            return Fetch(key, None, "store_down")
        if not lookup:
            try:
                found = await self._store.lookup(key, lock_token=None, lock_ms=0)
            except StoreError:
                self._trip()
                return Fetch(key, None, "store_error")
            return Fetch(key, found.epoch, "no_cache")
        deadline = self._monotonic() + self._wait
        backoff, waited = 0.005, False
        while True:
            flight = self._flights.get(key)
            if flight is not None:  # a leader in this process: wait for its answer
                remaining = deadline - self._monotonic()
                try:
                    entry = await asyncio.wait_for(asyncio.shield(flight), max(0.0, remaining))
                except TimeoutError:
                    return Fetch(key, None, "wait_timeout")
                if entry is None:  # its answer was not stored: nothing to wait for
                    return Fetch(key, None, "pass")
                return Hit(entry, waited=True)
            token = secrets.token_hex(12)
            try:
                found = await self._store.lookup(key, lock_token=token, lock_ms=self._lock_ms)
            except StoreError:
                self._trip()
                return Fetch(key, None, "store_error")
            if found.entry is not None:
                entry = decode_entry(found.entry)
                if entry is not None:
                    return Hit(entry, waited=waited)
            if found.lock == "taken":
                self._flights[key] = asyncio.get_running_loop().create_future()
                return Lead(key, token, found.epoch)
            if found.lock != "held" or found.entry is not None:  # a pass mark, a bad entry
                return Fetch(key, found.epoch, "pass")
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return Fetch(key, found.epoch, "wait_timeout")
            waited = True
            await self._sleep(min(backoff, remaining))
            backoff = min(backoff * 2, 0.05)

    async def finish(
        self, begun: Lead | Fetch, entry: Entry | None, ttl: float, *, pass_mark: bool = True
    ) -> bool:
        """Store ``entry`` for ``ttl`` seconds (None or a ttl under 1 s: nothing to store);
        a leader lets go of the key either way, leaving a pass mark when its answer could not
        be stored (``pass_mark``). Returns whether the entry was stored."""
        stored = False
        token = begun.token if isinstance(begun, Lead) else None
        try:
            if entry is not None and ttl >= 1 and begun.epoch is not None and not self.store_down:
                stored = await self._store.store(
                    begun.key,
                    entry.encode(),
                    ttl_ms=int(ttl * 1000),
                    epoch=begun.epoch,
                    lock_token=token,
                )
            elif token is not None and not self.store_down:
                pass_ms = self._pass_ms if pass_mark else 0
                await self._store.release(begun.key, token, pass_ms=pass_ms)
        except StoreError:
            self._trip()
        finally:
            if isinstance(begun, Lead):
                flight = self._flights.pop(begun.key, None)
                if flight is not None and not flight.done():
                    flight.set_result(entry if stored else None)
        return stored

    async def abandon(self, begun: Lead) -> None:
        """The leader's request ended without an answer (client gone, stream failed)."""
        await self.finish(begun, None, 0.0, pass_mark=False)

    async def purge(self, route: str, path: str | None = None) -> int:
        return await self._store.purge(route, path)
