"""Reads the documents from Redis, validates and translates them, publishes snapshots.

Woken by the CLI's change channel and by keyspace notifications on the document hashes (so a
raw ``HSET``/``HDEL`` is picked up at once), and re-reads every ``resync_interval`` as a
safety net. Redis being down leaves the last snapshot in place; the loop retries by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from wardgate.domain.catalog import KIND_ORDER, Catalog, ParseMemo
from wardgate.domain.registry import Instance
from wardgate.domain.tokens import IssuerHolder, JwtVerifier, trusted_issuer
from wardgate.errors import StoreError
from wardgate.metrics import Metrics
from wardgate.store.documents import RawDocuments, RedisDocumentStore
from wardgate.store.keys import Keys
from wardgate.store.redis_client import AnyRedis
from wardgate.store.registry import RedisRegistryStore
from wardgate.xds.assemble import SETTLE_AFTER, Base, Translator, build_base
from wardgate.xds.snapshot import Resources, Snapshot, SnapshotCache, resources_from_bytes
from wardgate.xds.translate import TranslateOptions
from wardgate.xds.typeurls import TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_ROUTE, TYPE_SCOPED_ROUTE

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
        issuers: IssuerHolder | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._store = RedisDocumentStore(redis=redis, keys=keys)
        self._cache = cache
        self._options = options
        self._metrics = metrics
        self._resync = resync_interval
        self._manage_events = manage_keyspace_events
        self._registry = RedisRegistryStore(redis=redis, keys=keys)
        self._translator = Translator(options)
        self._memo = ParseMemo()
        self._issuers = issuers
        self._issuer_docs: dict[str, Any] = {}
        self._catalog: Catalog | None = None
        self._last_raw: RawDocuments | None = None
        self._last_good: RawDocuments | None = None
        self._base: Base | None = None
        self._revision = 0
        self._registry_services: list[str] = []
        self._live: dict[str, list[Instance]] = {}
        self._wake = asyncio.Event()
        self._builds = 0
        self._last_build = 0.0
        self._thawed_at = time.monotonic()
        self._resources: dict[str, Resources] = {}
        self.refused: dict[str, str] = {}
        self._refused_saved = False  # whether Redis holds ``refused`` as it is now
        self.last_error: str = ""

    async def sync(self) -> bool:
        """Read, validate, translate, publish. Returns whether the snapshot changed."""
        started = time.perf_counter()
        raw = await self._store.load()
        revision = await self._store.revision()
        if raw == self._last_raw and self._cache.ready:
            settled = self._translator.settle(self._base) if self._base is not None else None
            if settled is not None:
                self._base = settled  # routes that moved between scopes: the second step
                self._metrics.snapshot_builds.labels(
                    "changed" if self._publish() else "unchanged"
                ).inc()
                await self.refresh_instances()
                return True
            self._metrics.snapshot_builds.labels("unchanged").inc()
            self._thaw_gc()
            if self._catalog is not None and any(
                i.jwks_file for i in self._catalog.issuers.values()
            ):
                # Key files change without their documents (key rotation): re-read them.
                refused = dict(self._catalog.refused)
                self._load_issuers(self._catalog, force=True)
                if self._catalog.refused != refused:
                    await self._publish_refused(self._catalog.refused)
            return await self.refresh_instances()
        # Re-read once per connection (another replica may have moved it), then kept here.
        reread = self._last_good is None
        if self._last_good is None:
            self._last_good = await self._store.load_last_good()
        catalog = None
        if self._catalog is not None and self._last_raw is not None and not reread:
            catalog = Catalog.updated(
                self._catalog, self._last_raw, raw, self._last_good, memo=self._memo
            )
        if catalog is None:
            catalog = Catalog.from_raw(raw, self._last_good, memo=self._memo)
        await self._save_last_good(catalog)
        self._catalog = catalog
        self._load_issuers(catalog)
        self._registry_services = sorted(
            name for name, svc in catalog.services.items() if svc.discovery == "registry"
        )
        self._live = await self._registry.live(self._registry_services, now=time.time())
        self._base = build_base(
            catalog, self._options, self._endpoints_of(self._live), translator=self._translator
        )
        self._last_raw = raw
        self._revision = revision
        changed = self._publish()
        if self._translator.moving:  # finish the move once every Envoy had time to take it
            asyncio.get_running_loop().call_later(SETTLE_AFTER + 0.1, self.wake)
        self._settle_gc()
        log.debug("sync took %.1f ms", (time.perf_counter() - started) * 1000)
        self._metrics.snapshot_seconds.observe(time.perf_counter() - started)
        self._metrics.snapshot_builds.labels("changed" if changed else "unchanged").inc()
        self._metrics.documents.labels("Route").set(len(catalog.routes))
        self._metrics.documents.labels("Service").set(len(catalog.services))
        self._metrics.documents.labels("Issuer").set(len(catalog.issuers))
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

    async def _save_last_good(self, catalog: Catalog) -> None:
        """Record in Redis, and here, what is served now: only what differs. A patched
        catalog says which documents may differ; otherwise every one is compared."""
        last_good = self._last_good if self._last_good is not None else {}
        if catalog.changed is not None:
            keys: Iterable[tuple[str, str]] = catalog.changed
        else:
            keys = set(catalog.served) | {(k, n) for k, names in last_good.items() for n in names}
        changed: dict[tuple[str, str], str] = {}
        gone: list[tuple[str, str]] = []
        for kind, name in keys:
            text = catalog.served.get((kind, name))
            before = last_good.get(kind, {}).get(name)
            if text is None and before is not None:
                gone.append((kind, name))
            elif text is not None and text != before:
                changed[(kind, name)] = text
        await self._store.save_last_good(changed, gone)
        for (kind, name), text in changed.items():
            last_good.setdefault(kind, {})[name] = text
        for kind, name in gone:
            del last_good[kind][name]
        self._last_good = last_good

    def _settle_gc(self) -> None:
        """Keep the documents out of the cyclic collector's full passes: with ten thousand
        routes in memory a full pass took ~100 ms, paid by whichever change or check was
        running then. What a build keeps is frozen (documents are freed by reference counts:
        they hold no cycles). Freezing covers the whole process, so cyclic garbage among
        frozen objects waits for a thaw: ``_thaw_gc`` when nothing changes, and at the latest
        every 500 builds or 10 minutes even under a steady stream of changes."""
        self._builds += 1
        self._last_build = time.monotonic()
        if self._builds >= 500 or self._last_build - self._thawed_at > 600:
            self._thaw()
        gc.freeze()

    def _thaw_gc(self) -> None:
        """After many builds, at a resync that found no change for a while: one full
        collection (~100 ms with ten thousand routes), not in the middle of a burst."""
        if self._builds >= 50 and time.monotonic() - self._last_build > 30:
            self._thaw()
            gc.freeze()

    def _thaw(self) -> None:
        self._builds = 0
        self._thawed_at = time.monotonic()
        gc.unfreeze()
        gc.collect()

    def _load_issuers(self, catalog: Catalog, *, force: bool = False) -> None:
        """Give the authorizer a verifier for the current Issuer documents. An issuer whose
        keys cannot be loaded (a missing file or env var), or that repeats another's ``iss``,
        is refused like a bad document."""
        if self._issuers is None:
            return
        if (
            not force
            and catalog.issuers == self._issuer_docs
            and not any(k.startswith("Issuer/") for k in self.refused)
        ):
            return
        trusted = []
        by_iss: dict[str, str] = {}
        for name, doc in sorted(catalog.issuers.items()):
            catalog.refused.pop(f"Issuer/{name}", None)
            if doc.issuer in by_iss:
                catalog.refused[f"Issuer/{name}"] = (
                    f"iss {doc.issuer} is already trusted through issuer {by_iss[doc.issuer]}"
                )
                continue
            try:
                trusted.append(
                    trusted_issuer(doc, environ=os.environ, read_text=lambda p: Path(p).read_text())
                )
                by_iss[doc.issuer] = name
            except ValueError as exc:
                catalog.refused[f"Issuer/{name}"] = str(exc)
        self._issuers.verifier = JwtVerifier(trusted)
        self._issuer_docs = dict(catalog.issuers)

    @staticmethod
    def _endpoints_of(live: dict[str, list[Instance]]) -> dict[str, list[tuple[str, int, int]]]:
        return {name: [(i.address, i.port, i.weight) for i in ins] for name, ins in live.items()}

    async def refresh_instances(self) -> bool:
        """Re-read only the registry: heartbeats that expired or appeared. Cheap."""
        if self._base is None or not self._registry_services:
            return False
        live = await self._registry.live(self._registry_services, now=time.time())
        if live == self._live:
            return False
        self._live = live
        endpoints = self._endpoints_of(live)
        registry = set(self._registry_services)
        self._base = dataclasses.replace(
            self._base,
            endpoint_bytes=[
                (name, self._translator.endpoints(name, endpoints.get(name, [])))
                if name in registry
                else (name, data)
                for name, data in self._base.endpoint_bytes
            ],
        )
        log.info("registry: %s", {n: len(i) for n, i in live.items()})
        return self._publish()

    def _publish(self) -> bool:
        assert self._base is not None
        base = self._base
        before = self._resources
        self._resources = {
            t: resources_from_bytes(t, items, before.get(t))
            for t, items in (
                (TYPE_CLUSTER, base.cluster_bytes),
                (TYPE_ENDPOINT, base.endpoint_bytes),
                (TYPE_SCOPED_ROUTE, base.scope_bytes),
                (TYPE_ROUTE, base.route_bytes),
            )
        }
        snapshot = Snapshot(
            dict(self._resources), revision=self._revision, route_clusters=base.route_clusters
        )
        return self._cache.set_base(snapshot)

    async def _publish_refused(self, refused: dict[str, str]) -> None:
        """Log newly refused documents and record the set in Redis (when it changed)."""
        if refused == self.refused and self._refused_saved:
            return
        for key in sorted(set(refused) - set(self.refused)):
            log.error("refused %s: %s", key, refused[key])
        self.refused = dict(refused)
        self._refused_saved = False
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._keys.refused)
                if refused:
                    pipe.hset(self._keys.refused, mapping=refused)
                await pipe.execute()
            self._refused_saved = True
        except RedisError as exc:
            log.warning("could not record refused documents: %s", exc)

    async def _enable_keyspace_events(self) -> bool:
        if not self._manage_events:
            return False
        try:
            # Under Redis Cluster: the node holding the documents is the one to configure.
            target: dict[str, Any] = {}
            if isinstance(self._redis, RedisCluster):
                target = {"target_nodes": self._redis.get_node_from_key(self._keys.routes)}
            current = (await self._redis.config_get("notify-keyspace-events", **target)).get(
                "notify-keyspace-events", ""
            )
            flags = set(current)
            if not {"K", "h"} <= flags and not {"K", "A"} <= flags:
                await self._redis.config_set(
                    "notify-keyspace-events", "".join(sorted(flags | {"K", "h", "g"})), **target
                )
            return True
        except RedisError as exc:
            log.warning(
                "keyspace notifications unavailable (%s); raw writes are seen by the %.1fs re-read",
                exc,
                self._resync,
            )
            return False

    def _pubsub(self) -> Any:
        """Under Redis Cluster, keyspace events stay on the node that holds the key:
        listen there (published changes reach every node)."""
        if isinstance(self._redis, RedisCluster):
            return self._redis.pubsub(node=self._redis.get_node_from_key(self._keys.routes))
        return self._redis.pubsub()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Forever: subscribe; a full sync on every document notification and every resync
        interval; a registry refresh on registry notifications and every second."""
        backoff = 0.2
        while True:
            pubsub = None
            try:
                keyspace = await self._enable_keyspace_events()
                pubsub = self._pubsub()
                await pubsub.subscribe(self._keys.changes_channel, self._keys.registry_channel)
                if keyspace:
                    await pubsub.psubscribe(
                        *[f"__keyspace@*__:{self._keys.documents(k)}" for k in KIND_ORDER]
                    )
                await self.sync()
                self.last_error = ""
                backoff = 0.2
                await self._listen(pubsub)
            except (RedisError, StoreError, OSError) as exc:
                self._last_good = None  # re-read what was served, another replica may have moved
                self._refused_saved = False
                self.last_error = str(exc)
                self._metrics.snapshot_builds.labels("failed").inc()
                self._metrics.store_errors.labels("watcher").inc()
                log.warning("document watcher: %s; keeping the last snapshot, retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:  # a translation bug must not stop every later update
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._metrics.snapshot_builds.labels("failed").inc()
                log.exception("document watcher failed; keeping the last snapshot, retrying")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()

    async def _listen(self, pubsub: Any) -> None:
        resync_at = time.monotonic() + self._resync
        registry_at = time.monotonic() + 1.0
        while True:
            now = time.monotonic()
            wait = max(0.0, min(resync_at, registry_at) - now, 0.0)
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(wait, 0.5))
            full = self._wake.is_set() or time.monotonic() >= resync_at
            registry = time.monotonic() >= registry_at
            while msg is not None:  # coalesce a burst of notifications
                if msg.get("channel") == self._keys.registry_channel:
                    registry = True
                else:
                    full = True
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.005)
            if full:
                self._wake.clear()
                await self.sync()  # also refreshes the registry
                resync_at = time.monotonic() + self._resync
                registry_at = time.monotonic() + 1.0
            elif registry:
                await self.refresh_instances()
                registry_at = time.monotonic() + 1.0
