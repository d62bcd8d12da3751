"""Keeps the published snapshot in step with the stored documents.

The watcher's one job is the loop: it waits for a change announcement (the CLI's channel,
keyspace events for raw ``HSET``/``HDEL``, registry heartbeats), re-reads every
``resync_interval`` as a safety net, and on each turn has the pieces do their part:

    source (DocumentSource)   read documents, last good versions, registry instances
    builder (SnapshotBuilder) parse, translate, pack: documents in, a snapshot out
    publisher                 hand the snapshot to the ADS servers (the snapshot cache)
    issuers (IssuerLoader)    give the authorizer the current JWT issuers
    refused (RefusedReport)   log refusals, record them for ``wardgate status``
    gc (GcPolicy)             keep the garbage collector off the builds' objects

The store being down leaves the last snapshot in place; the loop retries by itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from wardgate.domain.catalog import Catalog
from wardgate.domain.doc_descriptor import check_stored_ahead
from wardgate.errors import StoreError
from wardgate.metrics import Metrics
from wardgate.xds.assemble import SETTLE_AFTER
from wardgate.xds.build import LastGood, Parsed, SnapshotBuilder
from wardgate.xds.gc_policy import GcPolicy
from wardgate.xds.issuers import IssuerLoader
from wardgate.xds.ports import (
    Cursor,
    DocumentSource,
    Notifications,
    Signal,
    SnapshotPublisher,
    StoredChanges,
)
from wardgate.xds.refused import RefusedReport
from wardgate.xds.snapshot import Snapshot

log = logging.getLogger("wardgate.watcher")


@dataclasses.dataclass(frozen=True)
class _Read:
    """Documents read and parsed, ready to build, and where the history stood."""

    parsed: Parsed
    revision: int
    compose_key: str
    cursor: Cursor | None


REGISTRY_EVERY = 1.0  # seconds between registry re-reads (heartbeats expire by time)
FULL_READ_SHARE = 100  # periodic full reads take at most 1/100 of the time


class DocumentWatcher:
    def __init__(
        self,
        *,
        source: DocumentSource,
        builder: SnapshotBuilder,
        publisher: SnapshotPublisher,
        refused: RefusedReport,
        metrics: Metrics,
        resync_interval: float,
        issuers: IssuerLoader | None = None,
        gc: GcPolicy | None = None,
    ) -> None:
        self._source = source
        self._builder = builder
        self._publisher = publisher
        self._refused = refused
        self._issuers = issuers
        self._gc = gc or GcPolicy()
        self._metrics = metrics
        self._resync = resync_interval
        self._last_good: LastGood | None = None  # None: read it from the store next time
        self._wake = asyncio.Event()
        self._descriptors_checked: set[str] = set()  # stored texts checked ahead
        self.last_error = ""
        # One sync at a time (the loop's, or a new ADS stream's check); ``_read_at``: when
        # the store was read by the last sync that finished (monotonic).
        self._lock = asyncio.Lock()
        self._read_at = float("-inf")
        # The history's position when the documents last built from (or found current) were
        # read: where reads by name start. And the writes seen that no CLI change has
        # accounted for yet (above zero: a raw write), and whether raw writes are seen at all.
        self._cursor: Cursor | None = None
        self._unaccounted = 0
        self._complete = False
        # When the background check of every document is next due (monotonic), the check
        # running now, and whether the last one found the store differs from the build.
        self._full_at = time.monotonic() + resync_interval
        self._checking: asyncio.Task[None] | None = None
        self._stale = False

    def wake(self) -> None:
        """Sync at the next turn of the loop."""
        self._wake.set()

    async def sync(self, *, writes: int | None = None) -> bool:
        """Read, validate, translate, publish. Returns whether the snapshot changed.

        ``writes``: the writes to the document hashes seen since the last sync (keyspace
        events). With it, the documents the CLI's changes name are read by name, when those
        changes account for every write seen; otherwise (and without it) every document is
        read."""
        async with self._lock:
            read_at = time.monotonic()
            changed, everything = await self._sync(writes)
            if everything:  # raw writes not yet announced may be missing from a read by name
                self._read_at = read_at
            return changed

    async def ensure_current(self, since: float) -> bool:
        """Before a new ADS stream's first answer: unless a sync that read the store at
        ``since`` or later has finished, sync now (concurrent streams share one). Another
        replica may have served this Envoy documents that announcements have not brought
        here yet; it must never get older ones from us (envoyproxy/gateway#6618). False
        when the store cannot be read. Counted in wardgate_xds_stream_checks_total."""
        checks = self._metrics.xds_stream_checks
        if self._read_at >= since:
            checks.labels("current").inc()
            return True
        try:
            async with self._lock:
                if self._read_at >= since:  # a sync that read after ``since`` just ended
                    checks.labels("current").inc()
                    return True
                read_at = time.monotonic()
                changed, _ = await self._sync(None)
                self._read_at = read_at
        except StoreError as exc:
            self._last_good = None  # as after the loop's failures: read it again next time
            self._refused.forget_saved()
            log.warning("new ADS stream: cannot check the snapshot is current: %s", exc)
            checks.labels("unavailable").inc()
            return False
        checks.labels("synced" if changed else "current").inc()
        if changed:
            log.info("new ADS stream: this replica was behind the store; caught up first")
        return True

    async def _changes(self, writes: int | None) -> StoredChanges | None:
        """The CLI's changes since the last build, read by name, when ``writes`` is given and
        they account for every write seen; None: read everything. A write they do not
        account for is a raw one, which only reading everything finds."""
        if (
            writes is None
            or self._cursor is None
            or self._last_good is None
            or not self._builder.can_take_changes
        ):
            return None
        changes = await self._source.load_changes(self._cursor)
        if changes is None:
            return None
        # Events and history entries arrive independently: an entry read before its events
        # came leaves the balance below zero until they do.
        self._unaccounted += writes - changes.writes
        if self._unaccounted > 0 and self._complete:
            return None
        return changes

    async def _sync(self, writes: int | None) -> tuple[bool, bool]:
        """One sync; returns whether the snapshot changed, and whether every document was
        read."""
        started = time.perf_counter()
        changes = await self._changes(writes)
        if changes is None:
            with self._gc.paused():  # a whole parse and build, maybe
                return await self._build(await self._read_all(), None, started)
        return await self._build(await self._read_changes(changes), changes, started)

    async def _build(
        self, read: _Read | None, changes: StoredChanges | None, started: float
    ) -> tuple[bool, bool]:
        """Build and publish what was read (None: nothing new)."""
        if read is None:  # the documents are as last built
            return await self._unchanged(), changes is None
        parsed, revision, compose_key = read.parsed, read.revision, read.compose_key
        live = await self._source.live_instances(parsed.registry_services, now=time.time())
        snapshot = self._builder.build(parsed, live, revision=revision, compose_key=compose_key)
        self._cursor = read.cursor  # where the next read by name starts
        catalog = self._builder.catalog  # what the build serves: maybe less than parsed
        assert catalog is not None
        refused = dict(catalog.refused)
        if self._issuers is not None:  # before Envoy routes to them (no wait if unchanged)
            refused.update(await self._issuers.load(catalog.issuers))
        changed = self._publish(snapshot)
        # What is served now, recorded after it went out: a round trip to Redis less
        # between a change and Envoy.
        await self._save_last_good(catalog)
        if self._builder.moving:  # finish the move once every Envoy had time to take it
            asyncio.get_running_loop().call_later(SETTLE_AFTER + 0.1, self.wake)
        self._gc.after_build()
        self._metrics.snapshot_seconds.observe(time.perf_counter() - started)
        self._metrics.snapshot_reads.labels("by_name" if changes is not None else "all").inc()
        self._count_documents(catalog)
        await self._refused.report(refused)
        if changed:
            log.info(
                "snapshot: revision %d, %d routes, %d services, %d refused",
                revision,
                len(catalog.routes),
                len(catalog.services),
                len(refused),
            )
        return changed, changes is None

    async def _read_changes(self, changes: StoredChanges) -> _Read | None:
        """The CLI's changes, parsed into the last build; None if it has them already."""
        if self._builder.is_current_with(changes.documents, changes.compose_key) and (
            self._publisher.ready
        ):
            self._cursor = changes.cursor
            return None
        assert self._last_good is not None
        await self._check_descriptors_ahead(
            {t for (k, _), t in changes.documents.items() if k == "Descriptor" and t}
        )
        parsed = self._builder.parse_changes(changes.documents, self._last_good.documents)
        return _Read(parsed, changes.cursor.revision, changes.compose_key, changes.cursor)

    async def _read_all(self) -> _Read | None:
        """Every document, parsed; None if they are the last build's. The next periodic
        full read is due after ``resync_interval``, or later if this one took long: full
        reads take at most 1/``FULL_READ_SHARE`` of the time (at 100,000 routes one holds
        the event loop ~0.3 s)."""
        self._unaccounted = 0
        started = time.monotonic()
        stored = await self._source.load()
        current = self._builder.is_current(stored.documents, stored.compose_key)
        took = time.monotonic() - started
        self._full_at = time.monotonic() + max(self._resync, FULL_READ_SHARE * took)
        if current and self._publisher.ready:
            self._cursor = stored.cursor
            return None
        # What was served is read once per subscription (another replica may have moved
        # it), then kept here; a catalog is patched only from one built on it.
        fresh = self._last_good is None
        if self._last_good is None:
            self._last_good = LastGood(await self._source.load_last_good())
        descriptors = (stored.documents, self._last_good.documents)
        await self._check_descriptors_ahead(
            {t for docs in descriptors for t in docs.get("Descriptor", {}).values()}, every=True
        )
        parsed = self._builder.parse(
            stored.documents, self._last_good.documents, incremental=not fresh
        )
        return _Read(parsed, stored.revision, stored.compose_key, stored.cursor)

    async def _check_descriptors_ahead(self, texts: set[str], *, every: bool = False) -> None:
        """A descriptor's check runs protoc (hundreds of ms for a large one): new stored
        versions are checked from a thread first, so that the parse, on the event loop that
        also answers ext_authz, finds the result remembered. ``every``: ``texts`` are all
        the stored ones (those remembered as checked are then only these)."""
        new = texts - self._descriptors_checked
        if new:
            await asyncio.to_thread(check_stored_ahead, new)
        self._descriptors_checked = texts if every else self._descriptors_checked | new

    async def _save_last_good(self, catalog: Catalog) -> None:
        assert self._last_good is not None
        diff = self._last_good.diff(catalog)
        if diff:
            await self._source.save_last_good(diff.changed, diff.gone)
        self._last_good.apply(diff)

    async def _unchanged(self) -> bool:
        """The documents are as last built: finish route moves that are due, re-load
        issuers' key files (rotation), refresh registry instances."""
        settled = self._builder.settle()
        if settled is not None:  # routes that moved between scopes: the second step
            self._publish(settled)
            await self.refresh_instances()
            return True
        self._metrics.snapshot_builds.labels("unchanged").inc()
        self._gc.idle()
        catalog = self._builder.catalog
        if self._issuers is not None and self._issuers.has_key_files and catalog is not None:
            before = dict(self._issuers.refused)
            after = await self._issuers.load(catalog.issuers, force=True)
            if after != before:
                await self._refused.report({**catalog.refused, **after})
        return await self.refresh_instances()

    async def refresh_instances(self) -> bool:
        """Re-read only the registry: heartbeats that expired or appeared. Cheap."""
        services = self._builder.registry_services
        if not services:
            return False
        live = await self._source.live_instances(services, now=time.time())
        snapshot = self._builder.with_instances(live)
        if snapshot is None:
            return False
        log.info("registry: %s", {n: len(i) for n, i in live.items()})
        return self._publisher.set_base(snapshot)

    def _publish(self, snapshot: Snapshot) -> bool:
        changed = self._publisher.set_base(snapshot)
        self._metrics.snapshot_builds.labels("changed" if changed else "unchanged").inc()
        return changed

    def _count_documents(self, catalog: Catalog) -> None:
        self._metrics.documents.labels("Route").set(len(catalog.routes))
        self._metrics.documents.labels("Service").set(len(catalog.services))
        self._metrics.documents.labels("Issuer").set(len(catalog.issuers))
        self._metrics.documents.labels("Descriptor").set(len(catalog.descriptors))

    async def run(self) -> None:
        """Forever: subscribe, sync, then follow the announcements; after a failure of the
        store, keep the last snapshot and start again (backing off up to 5 s)."""
        backoff = 0.2
        while True:
            try:
                async with self._source.subscribe() as notifications:
                    self._subscribed(True, complete=notifications.complete)
                    notifications.take_writes()  # this sync reads everything
                    await self.sync()
                    self.last_error = ""
                    backoff = 0.2
                    await self._follow(notifications)
            except StoreError as exc:
                self._subscribed(False, complete=False)
                self._last_good = None  # re-read what was served, another replica may have moved
                self._refused.forget_saved()
                self._failed(str(exc), "watcher")
                log.warning("document watcher: %s; keeping the last snapshot, retrying", exc)
            except Exception as exc:  # a translation bug must not stop every later update
                self._failed(f"{type(exc).__name__}: {exc}", None)
                log.exception("document watcher failed; keeping the last snapshot, retrying")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _subscribed(self, up: bool, *, complete: bool) -> None:
        self._complete = complete
        self._metrics.subscriptions.labels("changes").set(int(up))
        self._metrics.subscriptions.labels("keyspace").set(int(up and complete))

    def _failed(self, reason: str, store: str | None) -> None:
        self.last_error = reason
        self._metrics.snapshot_builds.labels("failed").inc()
        if store is not None:
            self._metrics.store_errors.labels(store).inc()

    async def _follow(self, notifications: Notifications) -> None:
        """A sync on every document announcement, wake-up and resync interval, reading by
        name what the CLI changed; every document is read when a check in the background
        (``_check_whole``, due by time whatever else happens) found the store differs from
        the last build. A registry refresh on registry announcements and every second."""
        now = time.monotonic()
        resync_at, registry_at = now + self._resync, now + REGISTRY_EVERY
        try:
            while True:
                wait = max(0.0, min(resync_at, registry_at, self._full_at) - time.monotonic())
                signal = await notifications.wait(min(wait, 0.5))
                now = time.monotonic()
                if now >= self._full_at and self._checking is None:
                    self._checking = asyncio.create_task(self._check_whole())
                tick = now >= resync_at
                if tick or self._wake.is_set() or Signal.DOCUMENTS in signal:
                    self._wake.clear()
                    writes = notifications.take_writes()
                    full, self._stale = self._stale, False
                    await self.sync(writes=None if full else writes)  # refreshes the registry
                    resync_at = time.monotonic() + self._resync
                    registry_at = time.monotonic() + REGISTRY_EVERY
                elif now >= registry_at or Signal.REGISTRY in signal:
                    await self.refresh_instances()
                    registry_at = time.monotonic() + REGISTRY_EVERY
        finally:
            if self._checking is not None:
                self._checking.cancel()
                self._checking = None

    async def _check_whole(self) -> None:
        """Read every document, outside the sync's lock, and compare them with the last
        build: a difference (a raw write no keyspace event announced: events off, a class
        of them missing, a forged history entry) makes the next sync read everything.
        Changes by name go on meanwhile; one that lands during the check may show as a
        difference, which costs a whole read, never a missed write. Due again after
        ``resync_interval``, or ``FULL_READ_SHARE`` times as long as this read took."""
        started = time.monotonic()
        try:
            if await self._store_differs():
                self._stale = True
                self.wake()
            took = time.monotonic() - started
            self._full_at = time.monotonic() + max(self._resync, FULL_READ_SHARE * took)
        except StoreError as exc:  # the syncs meet the store's failures and recover
            log.debug("background check of the documents: %s", exc)
            self._full_at = time.monotonic() + self._resync
        except Exception:  # a bug here must not end the checks: read everything instead
            log.exception("background check of the documents failed")
            self._stale = True
            self._full_at = time.monotonic() + self._resync
        finally:
            self._checking = None

    async def _store_differs(self) -> bool:
        """Whether the stored documents differ from those last parsed, compared a slice at
        a time (never every document held twice). Those last parsed are read afresh for
        each slice: a change by name meanwhile writes into them."""
        seen: dict[str, set[str]] = {}
        async for kind, part in self._source.scan():
            built = self._builder.documents
            if built is None:
                return True
            mine = built.get(kind, {})
            names = seen.setdefault(kind, set())
            for name, text in part.items():
                if mine.get(name) != text:
                    return True
                names.add(name)
        built = self._builder.documents
        if built is None:
            return True
        kinds = {k for k, docs in built.items() if docs} | {k for k, n in seen.items() if n}
        return any(seen.get(kind, set()) != built.get(kind, {}).keys() for kind in kinds)
