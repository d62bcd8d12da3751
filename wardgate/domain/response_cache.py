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
from collections import OrderedDict
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
class Waiting:
    """Another request is fetching the same answer: ``until()`` waits for it (bounded)."""

    until: Callable[[], Awaitable[Hit | Lead | Fetch]]


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
        memory: LocalEntries | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        # Entries this process read or stored, answered without Redis (off by default: only
        # while purges reach it, ``store/cache.py`` listen_for_revocations).
        self.memory = memory or LocalEntries(max_bytes=0)
        self._clock = clock
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

    async def begin(self, key: CacheKey, *, lookup: bool = True) -> Begin | Waiting:
        """What this request does: answered from the cache (``Hit``), goes upstream for
        everyone (``Lead``), or goes upstream on its own (``Fetch``); or, when another request
        is fetching the same answer, ``Waiting`` (call it to wait, at most ``wait`` seconds).
        ``lookup`` False (the client asked for a fresh answer): never a hit, but the answer
        may be stored."""
        if lookup and (kept := self.memory.get(key, self._clock())) is not None:
            return Hit(kept, waited=False)
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
        if key in self._flights:
            return Waiting(lambda: self._wait_for(key, deadline))
        outcome = await self._try(key, waited=False)
        if outcome is None:
            return Waiting(lambda: self._wait_for(key, deadline))
        return outcome

    async def _try(self, key: CacheKey, *, waited: bool) -> Begin | None:
        """One lookup that takes the lock if the entry is missing; None while another
        process holds it."""
        token = secrets.token_hex(12)
        epoch = self.memory.epoch
        try:
            found = await self._store.lookup(key, lock_token=token, lock_ms=self._lock_ms)
        except StoreError:
            self._trip()
            return Fetch(key, None, "store_error")
        if found.entry is not None:
            entry = decode_entry(found.entry)
            if entry is not None:
                self.memory.put(key, entry, read_at_epoch=epoch, now=self._clock())
                return Hit(entry, waited=waited)
        if found.lock == "taken":
            self._flights[key] = asyncio.get_running_loop().create_future()
            return Lead(key, token, found.epoch)
        if found.lock != "held" or found.entry is not None:  # a pass mark, a bad entry
            return Fetch(key, found.epoch, "pass")
        return None

    async def _wait_for(self, key: CacheKey, deadline: float) -> Begin:
        """Wait for the request fetching ``key``: this process's (its future) or another's
        (polling the store), until ``deadline``."""
        backoff = 0.005
        while True:
            flight = self._flights.get(key)
            if flight is not None:
                remaining = deadline - self._monotonic()
                try:
                    entry = await asyncio.wait_for(asyncio.shield(flight), max(0.0, remaining))
                except TimeoutError:
                    return Fetch(key, None, "wait_timeout")
                if entry is None:  # its answer was not stored: nothing to wait for
                    return Fetch(key, None, "pass")
                return Hit(entry, waited=True)
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return Fetch(key, None, "wait_timeout")
            await self._sleep(min(backoff, remaining))
            backoff = min(backoff * 2, 0.05)
            outcome = await self._try(key, waited=True)
            if outcome is not None:
                return outcome

    async def finish(
        self, begun: Lead | Fetch, entry: Entry | None, ttl: float, *, pass_mark: bool = True
    ) -> bool:
        """Store ``entry`` for ``ttl`` seconds (None or a ttl under 1 s: nothing to store);
        a leader lets go of the key either way, leaving a pass mark when its answer could not
        be stored (``pass_mark``). Returns whether the entry was stored."""
        stored = False
        token = begun.token if isinstance(begun, Lead) else None
        epoch = self.memory.epoch
        try:
            if entry is not None and ttl >= 1 and begun.epoch is not None and not self.store_down:
                entry = dataclasses.replace(entry, expires_at=entry.stored_at + ttl)
                stored = await self._store.store(
                    begun.key,
                    entry.encode(),
                    ttl_ms=int(ttl * 1000),
                    epoch=begun.epoch,
                    lock_token=token,
                )
                if stored:
                    self.memory.put(begun.key, entry, read_at_epoch=epoch, now=self._clock())
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


class LocalEntries:
    """Entries one process keeps in memory, least recently used out past ``max_bytes`` of
    bodies, each until it expires. Only while ``enabled`` (subscribed to the purge
    announcements; a purge clears it all, and bumps ``epoch`` so that a read from Redis under
    way when it came is not put back)."""

    def __init__(self, *, max_bytes: int) -> None:
        self._data: OrderedDict[CacheKey, Entry] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes
        self.enabled = False
        self.epoch = 0

    def get(self, key: CacheKey, now: float) -> Entry | None:
        if not self.enabled:
            return None
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return entry

    def put(self, key: CacheKey, entry: Entry, *, read_at_epoch: int, now: float) -> None:
        size = len(entry.body) + 256
        if (
            not self.enabled
            or read_at_epoch != self.epoch
            or entry.expires_at <= now
            or size > self._max // 8
        ):
            return
        self._drop(key)
        self._data[key] = entry
        self._bytes += size
        while self._bytes > self._max and self._data:
            self._drop(next(iter(self._data)))

    def _drop(self, key: CacheKey) -> None:
        entry = self._data.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body) + 256

    def evict(self, _route: object) -> None:
        """A purge was announced: everything goes (purges are rare; entries come back from
        Redis)."""
        self.clear()

    def clear(self) -> None:
        self.epoch += 1
        self._data.clear()
        self._bytes = 0
