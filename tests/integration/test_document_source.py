"""The control plane's Redis adapters against a real Redis: documents and revision in one
read, announcements of raw writes (keyspace events), the CLI's channel and registry
heartbeats, and the status store ``wardgate status`` reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import with_redis
from wardgate.domain.catalog import Catalog, plan_apply
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
