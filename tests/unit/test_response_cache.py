"""The response cache's rules (RFC 9111 as a shared cache), its keys, and single flight over
an in-memory store that behaves like the Redis scripts: one request per key goes upstream,
the others wait for its answer, a user never gets another user's."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from wardgate.domain.http_cache import (
    CacheKey,
    Entry,
    cache_key,
    decode_entry,
    request_rule,
    storable_ttl,
)
from wardgate.domain.response_cache import (
    Begin,
    Fetch,
    Hit,
    Lead,
    LocalEntries,
    Lookup,
    ResponseCache,
    Waiting,
)
from wardgate.errors import StoreError


class MemoryStore:
    """The Lua scripts of store/keys.py, in memory (no TTLs: tests say what expires)."""

    def __init__(self) -> None:
        self.entries: dict[CacheKey, bytes] = {}
        self.locks: dict[CacheKey, str] = {}
        self.epochs: dict[str, int] = {}
        self.down = False
        self.lookups = 0

    def _check(self) -> None:
        if self.down:
            raise StoreError("redis: down")

    async def lookup(self, key: CacheKey, *, lock_token: str | None, lock_ms: int) -> Lookup:
        self._check()
        self.lookups += 1
        entry = self.entries.get(key)
        epoch = str(self.epochs.get(key.route, 0))
        if not lock_token or entry is not None:
            return Lookup(entry, "none", epoch)
        if key not in self.locks:
            self.locks[key] = lock_token
            return Lookup(None, "taken", epoch)
        return Lookup(None, "pass" if self.locks[key] == "pass" else "held", epoch)

    async def store(
        self, key: CacheKey, value: bytes, *, ttl_ms: int, epoch: str, lock_token: str | None
    ) -> bool:
        self._check()
        stored = str(self.epochs.get(key.route, 0)) == epoch
        if stored:
            self.entries[key] = value
        if self.locks.get(key) in (lock_token, "pass"):
            del self.locks[key]
        return stored

    async def release(self, key: CacheKey, lock_token: str, *, pass_ms: int) -> None:
        self._check()
        if self.locks.get(key) == lock_token:
            if pass_ms:
                self.locks[key] = "pass"
            else:
                del self.locks[key]

    async def purge(self, route: str, path: str | None) -> int:
        self.epochs[route] = self.epochs.get(route, 0) + 1
        gone = [k for k in self.entries if k.route == route]
        for k in gone:
            del self.entries[k]
        return len(gone)


def key(user: str = "ada", path: str = "/p") -> CacheKey:
    return cache_key(
        route="r",
        fingerprint="f",
        method="GET",
        host="h",
        path=path,
        query="",
        vary={},
        accept_encoding="",
        partition=("user", "session", user, "", ""),
    )


async def begin(cache: ResponseCache, k: CacheKey) -> Begin:
    """What a request ends up doing, having waited if it had to."""
    begun = await cache.begin(k)
    return await begun.until() if isinstance(begun, Waiting) else begun


def entry(body: bytes) -> Entry:
    return Entry(200, (("content-type", "application/json"),), body, 1000.0)


# --- the rules --------------------------------------------------------------------------------


def rule(method: str = "GET", **headers: str) -> tuple[bool, bool, str]:
    r = request_rule(method, headers, authenticated=False, shared=False, has_identity=False)
    return r.lookup, r.store, r.reason


def test_which_requests_the_cache_answers_or_stores() -> None:
    assert rule() == (True, True, "")
    assert rule("HEAD") == (True, True, "")
    assert rule("POST") == (False, False, "method")
    assert rule(**{"cache-control": "no-store"}) == (False, False, "no_store")
    assert rule(**{"cache-control": "no-cache"}) == (False, True, "no_cache")
    assert rule(**{"cache-control": "max-age=0"}) == (False, True, "no_cache")
    assert rule(pragma="no-cache") == (False, True, "no_cache")
    # Credentials the gateway does not key by: not cached (RFC 9111 section 3.5).
    assert rule(authorization="Bearer x") == (False, False, "authorization")
    # An authenticated route without identity (ext_authz failing open): never cached.
    r = request_rule("GET", {}, authenticated=True, shared=True, has_identity=False)
    assert (r.lookup, r.store, r.reason) == (False, False, "no_identity")
    r = request_rule(
        "GET", {"authorization": "Bearer x"}, authenticated=True, shared=False, has_identity=True
    )
    assert r.lookup and r.store  # per user: the key holds who it is


@pytest.mark.parametrize(
    ("status", "headers", "ttl", "reason"),
    [
        (200, {}, 30.0, ""),
        (404, {}, 0.0, "status"),
        (206, {}, 0.0, "status"),
        (200, {"cache-control": "no-store"}, 0.0, "no-store"),
        (200, {"cache-control": "private, max-age=60"}, 0.0, "private"),
        (200, {"cache-control": "no-cache"}, 0.0, "no-cache"),
        (200, {"set-cookie": "a=1"}, 0.0, "set_cookie"),
        (200, {"vary": "*"}, 0.0, "vary"),
        (200, {"vary": "Cookie"}, 0.0, "vary"),
        (200, {"vary": "Accept-Encoding, accept-language"}, 30.0, ""),
        (200, {"cache-control": "max-age=10"}, 10.0, ""),
        (200, {"cache-control": "public, max-age=100"}, 30.0, ""),
        (200, {"cache-control": "max-age=100, s-maxage=5"}, 5.0, ""),
        (200, {"cache-control": "s-maxage=0, max-age=60"}, 0.0, "max_age"),
        (200, {"cache-control": "max-age=10", "age": "4"}, 6.0, ""),
        (200, {"cache-control": "max-age=10", "age": "10"}, 0.0, "max_age"),
        # Expires, without max-age: until then from Date; not a date (0) or past: stale.
        (200, {"expires": "0"}, 0.0, "expires"),
        (200, {"expires": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0, "expires"),
        (
            200,
            {"expires": "Sun, 06 Nov 1994 08:49:47 GMT", "date": "Sun, 06 Nov 1994 08:49:37 GMT"},
            10.0,
            "",
        ),
        (200, {"expires": "Sun, 06 Nov 1994 08:59:37 GMT"}, 30.0, ""),  # now: NOW below
        (200, {"expires": "0", "cache-control": "max-age=10"}, 10.0, ""),  # max-age wins
    ],
)
def test_which_answers_are_stored_and_for_how_long(
    status: int, headers: dict[str, str], ttl: float, reason: str
) -> None:
    assert storable_ttl(
        status,
        headers,
        ttl=30.0,
        keyed_headers={"accept-encoding", "accept-language"},
        now=784111777.0,  # Sun, 06 Nov 1994 08:49:37 GMT
    ) == (ttl, reason)


def test_keys_differ_by_every_part_and_cannot_be_forged_by_shifting_text() -> None:
    base: dict[str, Any] = {
        "route": "r",
        "fingerprint": "f",
        "method": "GET",
        "host": "h",
        "path": "/p",
        "query": "a=1",
        "vary": {"accept-language": "en"},
        "accept_encoding": "gzip",
        "partition": ("user", "session", "ada", "user", ""),
    }
    first = cache_key(**base)
    changes: list[dict[str, Any]] = [
        {"fingerprint": "g"},
        {"method": "HEAD"},
        {"host": "other"},
        {"path": "/q"},
        {"query": "a=2"},
        {"vary": {"accept-language": "de"}},
        {"vary": {"accept-language": None}},
        {"accept_encoding": "br"},
        {"partition": ("user", "session", "bob", "user", "")},
        {"partition": ("user", "api_key", "ada", "user", "")},  # a key named like a user
        {"partition": ("user", "session", "ada", "admin", "")},
        {"partition": ("shared",)},
        # The same characters split differently between parts.
        {"path": "/p?a=1", "query": ""},
        {"partition": ("user", "session", "ad", "auser", "")},
    ]
    seen = {first.variant}
    for change in changes:
        other = cache_key(**{**base, **change})
        assert other.variant not in seen, change
        seen.add(other.variant)
    assert cache_key(**{**base, "host": "H"}) == first  # host names are case-insensitive


def test_entries_round_trip_and_garbage_is_a_miss() -> None:
    e = Entry(200, (("a", "1"), ("b", "2")), b"\x00body", 1234.5, 3)
    assert decode_entry(e.encode()) == e
    assert e.age_at(1240.0) == 8
    for garbage in (b"", b"WGC1", b"WGC1\x00\x00\x00\x05{bad}", b"other"):
        assert decode_entry(garbage) is None


# --- single flight ---------------------------------------------------------------------------


def test_a_miss_leads_and_its_answer_is_served_after() -> None:
    async def run() -> None:
        store = MemoryStore()
        cache = ResponseCache(store=store, wait=1.0)
        first = await begin(cache, key())
        assert isinstance(first, Lead)
        assert await cache.finish(first, entry(b"1"), 30.0)
        second = await begin(cache, key())
        assert isinstance(second, Hit) and second.entry.body == b"1" and not second.waited
        assert not store.locks

    asyncio.run(run())


def test_concurrent_misses_send_one_request_upstream_per_key_and_user() -> None:
    """Fifty users, four requests each, all at once: fifty trips upstream, and every user gets
    the answer made for them."""

    async def run() -> None:
        store = MemoryStore()
        cache = ResponseCache(store=store, wait=5.0)
        upstream = itertools.count()

        async def request(user: str) -> bytes:
            begun = await begin(cache, key(user))
            if isinstance(begun, Hit):
                return begun.entry.body
            next(upstream)
            await asyncio.sleep(0.01)  # the upstream's time
            body = f"for {user}".encode()
            await cache.finish(begun, entry(body), 30.0)
            return body

        users = [f"user{i}" for i in range(50)]
        results = await asyncio.gather(*(request(u) for u in users for _ in range(4)))
        assert next(upstream) == 50
        assert results == [f"for {u}".encode() for u in users for _ in range(4)]

    asyncio.run(run())


def test_requests_of_other_processes_poll_until_the_leader_stores() -> None:
    async def run() -> None:
        store = MemoryStore()
        leader_side = ResponseCache(store=store, wait=2.0)
        other_side = ResponseCache(store=store, wait=2.0)  # another worker: no local flight
        lead = await begin(leader_side, key())
        assert isinstance(lead, Lead)
        waiting = asyncio.create_task(begin(other_side, key()))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await leader_side.finish(lead, entry(b"made once"), 30.0)
        got = await waiting
        assert isinstance(got, Hit) and got.waited and got.entry.body == b"made once"

    asyncio.run(run())


def test_waiting_is_bounded_and_an_unstorable_answer_lets_everyone_through() -> None:
    async def run() -> None:
        store = MemoryStore()
        a = ResponseCache(store=store, wait=0.1)
        b = ResponseCache(store=store, wait=0.1)
        lead = await begin(a, key())
        assert isinstance(lead, Lead)
        late = await begin(b, key())  # the leader never answers in time
        assert isinstance(late, Fetch) and late.reason == "wait_timeout"
        local = await begin(a, key())  # waits on the local flight, also bounded
        assert isinstance(local, Fetch) and local.reason == "wait_timeout"
        await a.finish(lead, None, 0.0)  # not storable: a pass mark
        passing = await begin(b, key())
        assert isinstance(passing, Fetch) and passing.reason == "pass"

    asyncio.run(run())


def test_a_purge_during_a_fetch_keeps_the_old_answer_out() -> None:
    async def run() -> None:
        store = MemoryStore()
        cache = ResponseCache(store=store, wait=1.0)
        lead = await begin(cache, key())
        assert isinstance(lead, Lead)
        assert await cache.purge("r") == 0
        assert not await cache.finish(lead, entry(b"stale"), 30.0)
        assert isinstance(await begin(cache, key()), Lead)

    asyncio.run(run())


def test_a_store_that_fails_is_bypassed_for_a_while() -> None:
    async def run() -> None:
        store = MemoryStore()
        now = [100.0]
        cache = ResponseCache(store=store, wait=1.0, down_for=1.0, monotonic=lambda: now[0])
        store.down = True
        first = await begin(cache, key())
        assert isinstance(first, Fetch) and first.reason == "store_error"
        store.down = False
        lookups = store.lookups
        second = await begin(cache, key())
        assert isinstance(second, Fetch) and second.reason == "store_down"
        assert store.lookups == lookups  # not asked while it is marked down
        now[0] += 1.5
        assert isinstance(await begin(cache, key()), Lead)

    asyncio.run(run())


def test_an_abandoned_leader_lets_go_without_a_pass_mark() -> None:
    async def run() -> None:
        store = MemoryStore()
        cache = ResponseCache(store=store, wait=1.0)
        lead = await begin(cache, key())
        assert isinstance(lead, Lead)
        await cache.abandon(lead)
        assert not store.locks
        assert isinstance(await begin(cache, key()), Lead)

    asyncio.run(run())


def test_entries_kept_in_memory_answer_without_the_store_until_a_purge() -> None:
    async def run() -> None:
        store = MemoryStore()
        memory = LocalEntries(max_bytes=1 << 20)
        memory.enabled = True  # subscribed to the purge announcements
        cache = ResponseCache(store=store, wait=1.0, memory=memory, clock=lambda: 1000.0)
        lead = await cache.begin(key())
        assert isinstance(lead, Lead)
        await cache.finish(lead, entry(b"kept"), 30.0)
        lookups = store.lookups
        hit = await cache.begin(key())
        assert isinstance(hit, Hit) and hit.entry.body == b"kept"
        assert store.lookups == lookups  # from memory
        memory.evict("r")  # a purge announced
        assert isinstance(await cache.begin(key()), Hit)  # from the store again ...
        assert store.lookups == lookups + 1
        await cache.purge("r")
        memory.evict("r")
        assert isinstance(await cache.begin(key()), Lead)  # ... until it is purged there too

    asyncio.run(run())


def test_memory_is_off_unless_subscribed_bounded_and_refuses_reads_older_than_a_purge() -> None:
    memory = LocalEntries(max_bytes=10_000)
    e = Entry(200, (), b"x" * 700, 1000.0, expires_at=1030.0)
    memory.put(key("/a"), e, read_at_epoch=0, now=1000.0)
    assert memory.get(key("/a"), 1000.0) is None  # not subscribed: off
    memory.enabled = True
    epoch = memory.epoch
    memory.evict("r")  # a purge came while the entry was being read from Redis
    memory.put(key("/a"), e, read_at_epoch=epoch, now=1000.0)
    assert memory.get(key("/a"), 1000.0) is None
    for i in range(20):
        memory.put(key(f"/{i}"), e, read_at_epoch=memory.epoch, now=1000.0)
    kept = [i for i in range(20) if memory.get(key(f"/{i}"), 1000.0) is not None]
    assert kept == list(range(10, 20))  # least recently used out past max_bytes
    assert memory.get(key("/19"), 1030.0) is None  # expired with its entry
    big = Entry(200, (), b"x" * 5000, 1000.0, expires_at=1030.0)
    memory.put(key("/big"), big, read_at_epoch=memory.epoch, now=1000.0)
    assert memory.get(key("/big"), 1000.0) is None  # one entry may not take the memory
