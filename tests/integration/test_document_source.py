"""The control plane's Redis adapters against a real Redis: documents and revision in one
read, announcements of raw writes (keyspace events), the CLI's channel and registry
heartbeats, and the status store ``wardgate status`` reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import with_redis
from wardgate.domain.catalog import Catalog, Change, plan_apply
from wardgate.domain.documents import parse_document
from wardgate.domain.registry import Instance
from wardgate.store.document_source import RedisDocumentSource
from wardgate.store.documents import RedisDocumentStore
from wardgate.store.keys import Keys
from wardgate.store.registry import RedisRegistryStore
from wardgate.store.status import RedisStatusStore
from wardgate.xds.ports import Signal

pytestmark = pytest.mark.integration

SVC = json.dumps(
    {"kind": "Service", "name": "s", "endpoints": [{"address": "10.0.0.1", "port": 1}]}
)


async def _signal_after(notifications: Any, action: Any) -> Signal:
    await action
    signal = Signal.NONE
    for _ in range(20):  # a burst may arrive over a few waits
        signal |= await notifications.wait(0.1)
        if signal:
            break
    return signal


def test_load_reads_documents_and_revision(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        await r.hset(keys.services, "s", SVC)
        await r.set(keys.revision, 12)
        stored = await RedisDocumentSource(redis=r, keys=keys).load()
        assert stored.revision == 12
        assert stored.documents == {
            "Secret": {},
            "Issuer": {},
            "Descriptor": {},
            "Service": {"s": SVC},
            "Route": {},
        }

    with_redis(redis_url, body)


def test_the_compose_key_is_made_once_and_shared(redis_url: str, prefix: str) -> None:
    """Every replica and worker sends and serves the same key; one that Redis lost comes back
    as this process had it (the Envoys it configured keep working)."""
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        a, b = RedisDocumentSource(redis=r, keys=keys), RedisDocumentSource(redis=r, keys=keys)
        first = (await a.load()).compose_key
        assert len(first) >= 32 and (await b.load()).compose_key == first
        assert a.compose_key.value == b.compose_key.value == first
        await r.delete(keys.compose_key)
        assert (await a.load()).compose_key == first
        assert (await r.get(keys.compose_key)) in (first, first.encode())

    with_redis(redis_url, body)


def test_raw_writes_cli_changes_and_heartbeats_are_announced(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        source = RedisDocumentSource(redis=r, keys=keys)
        async with source.subscribe() as notifications:
            assert notifications.complete  # keyspace events on: raw writes are seen
            assert await notifications.wait(0.05) == Signal.NONE
            raw = await _signal_after(notifications, r.hset(keys.services, "s", SVC))
            assert raw == Signal.DOCUMENTS
            cli = await _signal_after(notifications, r.publish(keys.changes_channel, "3"))
            assert cli == Signal.DOCUMENTS
            registry = RedisRegistryStore(redis=r, keys=keys)
            beat = registry.heartbeat("s", Instance("10.0.0.2", 80, 1), ttl=5, now=1e9)
            assert await _signal_after(notifications, beat) == Signal.REGISTRY

    with_redis(redis_url, body)


def test_without_keyspace_management_only_announcements_are_seen(
    redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        before = (await r.config_get("notify-keyspace-events"))["notify-keyspace-events"]
        await r.config_set("notify-keyspace-events", "")
        try:
            source = RedisDocumentSource(redis=r, keys=keys, manage_keyspace_events=False)
            async with source.subscribe() as notifications:
                assert not notifications.complete
                await r.hset(keys.routes, "x", "{}")
                assert await notifications.wait(0.2) == Signal.NONE
        finally:
            await r.config_set("notify-keyspace-events", before)

    with_redis(redis_url, body)


def test_status_store_round_trip(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        status = RedisStatusStore(redis=r, keys=keys)
        await status.save_refused({"Route/a": "bad", "Route/b": "worse"})
        await status.save_refused({"Route/b": "worse"})
        await status.save_nodes("w1", {"worker": "w1", "time": 5.0, "nodes": []})
        await r.hset(keys.nodes, "junk", "{not json")  # a report we cannot read is skipped
        report = await status.read()
        assert report.refused == {"Route/b": "worse"}
        assert report.workers == [{"worker": "w1", "time": 5.0, "nodes": []}]
        await status.drop_nodes("w1")
        await status.save_refused({})
        report = await status.read()
        assert report.workers == [] and report.refused == {}

    with_redis(redis_url, body)


def test_a_value_that_is_not_utf8_is_refused_alone(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        await r.hset(keys.services, "s", SVC)
        await r.hset(keys.routes, "bad", b'{"kind": "Route"\xff}')
        await r.hset(keys.routes, b"bad\xfename", b"{}")
        stored = await RedisDocumentSource(redis=r, keys=keys).load()
        catalog = Catalog.from_raw(stored.documents)
        assert set(catalog.services) == {"s"}
        assert "not UTF-8 text (bad byte at offset 16)" in catalog.refused["Route/bad"]
        assert "Route/bad\\xfename" in catalog.refused
        # The CLI's store reads and writes around it, and the client stays usable.
        store = RedisDocumentStore(redis=r, keys=keys)
        assert (await store.load())["Route"].keys() == {"bad", "bad\\xfename"}
        route = parse_document(
            {"kind": "Route", "name": "ok", "match": {"prefix": "/ok"}, "backend": "s"}
        )
        revision, changes = await store.commit(lambda current: plan_apply(current, [route]))
        assert [str(c) for c in changes] == ["route/ok created"] and revision == 1
        assert await r.ping()

    with_redis(redis_url, body)


def _route_doc(name: str, prefix: str) -> Any:
    return parse_document(
        {"kind": "Route", "name": name, "match": {"prefix": prefix}, "backend": "s"}
    )


def test_the_clis_changes_are_read_by_name_from_the_history(redis_url: str, prefix: str) -> None:
    """After a load, ``load_changes`` returns the documents the CLI's commits named (as
    stored now, deletions as None), how many writes they made, and the new cursor; a gap
    in the revisions, or an entry that is not the CLI's, gives None (read everything)."""
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        store = RedisDocumentStore(redis=r, keys=keys)
        source = RedisDocumentSource(redis=r, keys=keys)
        await r.hset(keys.services, "s", SVC)
        stored = await source.load()
        assert stored.cursor is not None and stored.cursor.revision == 0
        await store.commit(lambda cur: plan_apply(cur, [_route_doc("a", "/a")]))
        await store.commit(
            lambda cur: plan_apply(cur, [_route_doc("a", "/a2"), _route_doc("b", "/b")])
        )
        changes = await source.load_changes(stored.cursor)
        assert changes is not None
        assert changes.writes == 3 and changes.cursor.revision == 2
        assert set(changes.documents) == {("Route", "a"), ("Route", "b")}
        assert json.loads(changes.documents[("Route", "a")] or "")["match"]["prefix"] == "/a2"
        assert changes.compose_key == stored.compose_key
        # Nothing after the newest cursor; a load's cursor is the history's newest entry.
        after = await source.load_changes(changes.cursor)
        assert after is not None and after.documents == {} and after.writes == 0
        assert (await source.load()).cursor == changes.cursor
        # A deletion, read as None.
        await store.commit(lambda cur: [Change("Route", "b", "deleted", None, cur["Route"]["b"])])
        gone = await source.load_changes(changes.cursor)
        assert gone is not None and gone.documents == {("Route", "b"): None}
        # The revision moved without an entry: a gap.
        await r.incr(keys.revision)
        await store.commit(lambda cur: plan_apply(cur, [_route_doc("c", "/c")]))
        assert await source.load_changes(gone.cursor) is None
        # An entry that is not the CLI's.
        latest = (await source.load()).cursor
        assert latest is not None
        await r.xadd(keys.history, {"revision": latest.revision + 1, "changes": "[{"})
        assert await source.load_changes(latest) is None

    with_redis(redis_url, body)


def test_keyspace_events_are_counted_as_writes(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        source = RedisDocumentSource(redis=r, keys=keys)
        store = RedisDocumentStore(redis=r, keys=keys)
        await r.hset(keys.services, "s", SVC)
        async with source.subscribe() as notifications:
            notifications.take_writes()
            await store.commit(
                lambda cur: plan_apply(cur, [_route_doc("a", "/a"), _route_doc("b", "/b")])
            )
            await _signal_after(notifications, r.hset(keys.routes, "raw", "{}"))
            for _ in range(10):  # the events may come over several waits
                await notifications.wait(0.05)
            assert notifications.take_writes() == 3  # two by the CLI, one raw
            assert notifications.take_writes() == 0

    with_redis(redis_url, body)


def test_a_large_route_hash_is_read_whole_in_slices(redis_url: str, prefix: str) -> None:
    """Routes are read with HSCAN, a slice at a time: every field comes back, decoded as
    HGETALL's were (a value that is not UTF-8 is kept for the parse to refuse alone)."""
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        routes = {f"r{i}": json.dumps({"kind": "Route", "name": f"r{i}"}) for i in range(2_600)}
        await r.hset(keys.routes, mapping=routes)
        await r.hset(keys.routes, "bad", b'{"kind": "Route"\xff}')
        await r.hset(keys.services, "s", SVC)
        stored = await RedisDocumentSource(redis=r, keys=keys).load()
        assert stored.documents["Route"].keys() == {*routes, "bad"}
        assert stored.documents["Route"]["r2599"] == routes["r2599"]
        assert stored.documents["Service"] == {"s": SVC}
        assert "not UTF-8" in Catalog.from_raw(stored.documents).refused["Route/bad"]

    with_redis(redis_url, body)


def test_a_hash_deleted_whole_is_announced_whatever_event_classes_were_on(
    redis_url: str, prefix: str
) -> None:
    """Hash events alone ('Kh', set by someone else) announce HSET and HDEL, not a DEL of
    the whole hash (a generic event, class 'g'): the watcher turns on what it misses, or
    such a DEL waits for the periodic full read."""
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        before = (await r.config_get("notify-keyspace-events"))["notify-keyspace-events"]
        await r.config_set("notify-keyspace-events", "Kh")
        try:
            await r.hset(keys.routes, "x", "{}")
            source = RedisDocumentSource(redis=r, keys=keys)
            async with source.subscribe() as notifications:
                assert notifications.complete
                notifications.take_writes()
                assert await _signal_after(notifications, r.delete(keys.routes)) == (
                    Signal.DOCUMENTS
                )
                assert notifications.take_writes() == 1
        finally:
            await r.config_set("notify-keyspace-events", before)

    with_redis(redis_url, body)


def test_scan_gives_every_document_a_slice_at_a_time(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        routes = {f"r{i}": json.dumps({"kind": "Route", "name": f"r{i}"}) for i in range(2_500)}
        await r.hset(keys.routes, mapping=routes)
        await r.hset(keys.services, "s", SVC)
        seen: dict[str, dict[str, str]] = {}
        slices = 0
        async for kind, part in RedisDocumentSource(redis=r, keys=keys).scan():
            seen.setdefault(kind, {}).update(part)
            slices += kind == "Route"
        assert seen["Route"] == routes and seen["Service"] == {"s": SVC}
        assert slices >= 2  # more than one slice of routes

    with_redis(redis_url, body)
