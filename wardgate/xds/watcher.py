"""Reads the documents from Redis, validates and translates them, publishes snapshots.

Woken by the CLI's change channel and by keyspace notifications on the document hashes (so a
raw ``HSET``/``HDEL`` is picked up at once), and re-reads every ``resync_interval`` as a
safety net. Redis being down leaves the last snapshot in place; the loop retries by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from wardgate.domain.catalog import KIND_ORDER, Catalog
from wardgate.errors import StoreError
from wardgate.metrics import Metrics
from wardgate.store.documents import RawDocuments, RedisDocumentStore
from wardgate.store.keys import Keys
from wardgate.store.redis_client import AnyRedis
from wardgate.xds.snapshot import (
    TYPE_CLUSTER,
    TYPE_ROUTE,
    Resources,
    Snapshot,
    SnapshotCache,
)
from wardgate.xds.translate import TranslateOptions, build_base

log = logging.getLogger("wardgate.watcher")


class DocumentWatcher:
    def __init__(
        self,
        *,
        redis: AnyRedis,
        keys: Keys,
        cache: SnapshotCache,
        options: TranslateOptions,
        metrics: Metrics,
        resync_interval: float,
        manage_keyspace_events: bool = True,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._store = RedisDocumentStore(redis=redis, keys=keys)
        self._cache = cache
        self._options = options
        self._metrics = metrics
        self._resync = resync_interval
        self._manage_events = manage_keyspace_events
        self._last_raw: RawDocuments | None = None
        self._wake = asyncio.Event()
        self.refused: dict[str, str] = {}
        self.last_error: str = ""

    async def sync(self) -> bool:
        """Read, validate, translate, publish. Returns whether the snapshot changed."""
        started = time.perf_counter()
        raw = await self._store.load()
        revision = await self._store.revision()
        if raw == self._last_raw and self._cache.ready:
            self._metrics.snapshot_builds.labels("unchanged").inc()
            return False
        catalog = Catalog.from_raw(raw)
        clusters, route_config = build_base(catalog, self._options)
        snapshot = Snapshot(
            {
                TYPE_CLUSTER: Resources.of(clusters, lambda m: m.name),
                TYPE_ROUTE: Resources.of([route_config], lambda m: m.name),
            },
            revision=revision,
        )
        changed = self._cache.set_base(snapshot)
        self._last_raw = raw
        self._metrics.snapshot_seconds.observe(time.perf_counter() - started)
        self._metrics.snapshot_builds.labels("changed" if changed else "unchanged").inc()
        self._metrics.documents.labels("Route").set(len(catalog.routes))
        self._metrics.documents.labels("Service").set(len(catalog.services))
        self._metrics.documents_refused.set(len(catalog.refused))
        await self._publish_refused(catalog.refused)
        if changed:
            log.info(
                "snapshot: revision %d, %d routes, %d services, %d refused",
                revision,
                len(catalog.routes),
                len(catalog.services),
                len(catalog.refused),
            )
        return changed

    async def _publish_refused(self, refused: dict[str, str]) -> None:
        for key in sorted(set(refused) - set(self.refused)):
            log.error("refused %s: %s", key, refused[key])
        self.refused = refused
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._keys.refused)
                if refused:
                    pipe.hset(self._keys.refused, mapping=refused)
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not record refused documents: %s", exc)

    async def _enable_keyspace_events(self) -> bool:
        if not self._manage_events:
            return False
        try:
            current = (await self._redis.config_get("notify-keyspace-events")).get(
                "notify-keyspace-events", ""
            )
            flags = set(current)
            if not {"K", "h"} <= flags and not {"K", "A"} <= flags:
                await self._redis.config_set(
                    "notify-keyspace-events", "".join(sorted(flags | {"K", "h", "g"}))
                )
            return True
        except RedisError as exc:
            log.warning(
                "keyspace notifications unavailable (%s); raw writes are seen by the %.1fs re-read",
                exc,
                self._resync,
            )
            return False

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Forever: subscribe, sync on every notification and every resync interval."""
        backoff = 0.2
        while True:
            pubsub = None
            try:
                keyspace = await self._enable_keyspace_events()
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(self._keys.changes_channel)
                if keyspace:
                    await pubsub.psubscribe(
                        *[f"__keyspace@*__:{self._keys.documents(k)}" for k in KIND_ORDER]
                    )
                await self.sync()
                self.last_error = ""
                backoff = 0.2
                deadline = time.monotonic() + self._resync
                while True:
                    timeout = max(0.0, deadline - time.monotonic())
                    msg = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=min(timeout, 0.5)
                    )
                    if msg is None and not self._wake.is_set() and time.monotonic() < deadline:
                        continue
                    self._wake.clear()
                    # Coalesce a burst of notifications into one sync.
                    while await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.005):
                        pass
                    await self.sync()
                    deadline = time.monotonic() + self._resync
            except (RedisError, StoreError, OSError) as exc:
                self.last_error = str(exc)
                self._metrics.snapshot_builds.labels("failed").inc()
                self._metrics.store_errors.labels("watcher").inc()
                log.warning("document watcher: %s; keeping the last snapshot, retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()


def status_document(watcher: DocumentWatcher) -> dict[str, Any]:
    return {"refused": watcher.refused, "error": watcher.last_error}


_ = json
