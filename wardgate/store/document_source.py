"""The control plane's ``DocumentSource`` on Redis: documents, last good versions, registry
instances, and the announcements of changes to them.

Announcements come from the CLI's change channel, the registry channel and, so that a raw
``HSET``/``HDEL`` is seen at once, keyspace notifications on the document hashes (turned on
with ``CONFIG SET`` unless that is not allowed; then raw writes wait for the watcher's
periodic re-read). Under Redis Cluster, keyspace events stay on the node that holds the key,
so that node is configured and listened to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.client import NEVER_DECODE
from redis.exceptions import ResponseError

from wardgate.domain.catalog import KIND_ORDER, RawDocuments
from wardgate.domain.compose import ComposeKey
from wardgate.domain.registry import Instance
from wardgate.errors import StoreError
from wardgate.store.documents import (
    RedisDocumentStore,
    decode_documents,
    queue_documents_read,
)
from wardgate.store.errors import redis_errors
from wardgate.store.keys import Keys
from wardgate.store.redis_client import AnyRedis
from wardgate.store.registry import RedisRegistryStore
from wardgate.xds.ports import Cursor, Signal, Stored, StoredChanges

log = logging.getLogger("wardgate.watcher")


MAX_CHANGES = 100  # history entries read by name at most; more: everything is read again
SCAN_COUNT = 1000  # route fields per HSCAN slice of a full read
_HASHES_READ_WHOLE = tuple(k for k in KIND_ORDER if k != "Route")  # with one HGETALL each
COALESCE = 0.001  # seconds of quiet that end a burst of messages


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _cursor(entry: Any, fields: Mapping[Any, Any]) -> Cursor:
    """The cursor at a history entry; revision -1 when the entry holds none."""
    revision = fields.get(b"revision", fields.get("revision"))
    try:
        return Cursor(_text(entry), int(_text(revision)))
    except (TypeError, ValueError):
        return Cursor(_text(entry), -1)


class RedisNotifications:
    """One pub/sub subscription; ``wait`` coalesces a burst of messages into one signal,
    and counts the keyspace events (``take_writes``)."""

    def __init__(self, pubsub: Any, *, registry_channel: str, complete: bool) -> None:
        self._pubsub = pubsub
        self._registry_channel = registry_channel
        self.complete = complete
        self._writes = 0

    async def wait(self, timeout: float) -> Signal:
        signal = Signal.NONE
        with redis_errors():
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            while msg is not None:
                if msg.get("channel") == self._registry_channel:
                    signal |= Signal.REGISTRY
                else:
                    signal |= Signal.DOCUMENTS
                    if msg.get("type") == "pmessage":  # a keyspace event: one write
                        self._writes += 1
                msg = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=COALESCE
                )
        return signal

    def take_writes(self) -> int:
        writes, self._writes = self._writes, 0
        return writes


class RedisDocumentSource:
    def __init__(
        self,
        *,
        redis: AnyRedis,
        keys: Keys,
        manage_keyspace_events: bool = True,
        compose_key: ComposeKey | None = None,
    ):
        self._r = redis
        self._k = keys
        self.compose_key = compose_key or ComposeKey()
        self._documents = RedisDocumentStore(redis=redis, keys=keys)
        self._registry = RedisRegistryStore(redis=redis, keys=keys)
        self._manage_events = manage_keyspace_events

    async def load(self) -> Stored:
        """Every document hash, the revision and the compose key: the history's newest entry
        first (the documents are no older than it), then every kind but routes in one round
        trip, then the routes in slices (``_scan``). One more round trip the first time: the
        first reader creates the compose key, every other reads it."""
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.xrevrange(self._k.history, count=1)
                for kind in _HASHES_READ_WHOLE:
                    queue_documents_read(pipe, self._k.documents(kind))
                pipe.get(self._k.revision)
                pipe.get(self._k.compose_key)
                newest, *hashes, revision, key = await pipe.execute()
            routes = await self._scan(self._k.documents("Route"))
            if not key:
                # This process's key again if it had one (Redis lost it): the Envoys it
                # configured keep theirs; else a new one. Whoever sets it first wins.
                mine = self.compose_key.value or secrets.token_urlsafe(32)
                await self._r.set(self._k.compose_key, mine, nx=True)
                key = await self._r.get(self._k.compose_key)
        key = key.decode() if isinstance(key, bytes) else str(key or "")
        self.compose_key.value = key
        documents = {
            kind: decode_documents(h) for kind, h in zip(_HASHES_READ_WHOLE, hashes, strict=True)
        }
        documents["Route"] = routes
        cursor = Cursor("0-0", 0)
        if newest:
            entry, fields = newest[0]
            cursor = _cursor(entry, fields)
        return Stored(documents, int(revision or 0), key, cursor if cursor.revision >= 0 else None)

    async def scan(self) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Every kind but routes whole (one round trip), then the routes a slice at a time."""
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                for kind in _HASHES_READ_WHOLE:
                    queue_documents_read(pipe, self._k.documents(kind))
                hashes = await pipe.execute()
        for kind, found in zip(_HASHES_READ_WHOLE, hashes, strict=True):
            yield kind, decode_documents(found)
        async for part in self._slices(self._k.documents("Route")):
            yield "Route", part

    async def _slices(self, key: str) -> AsyncIterator[dict[str, str]]:
        """A document hash, ``SCAN_COUNT`` fields at a time (HSCAN)."""
        position: Any = 0
        while True:
            with redis_errors():
                position, chunk = await self._r.execute_command(
                    "HSCAN", key, position, "COUNT", SCAN_COUNT, **{NEVER_DECODE: True}
                )
            yield decode_documents(chunk)
            if int(position) == 0:
                return

    async def _scan(self, key: str) -> dict[str, str]:
        """A document hash read ``SCAN_COUNT`` fields at a time (HSCAN), the event loop free
        between slices: one HGETALL of 100,000 routes held it (and the ext_authz checks
        waiting on it) ~0.2 s. A field written meanwhile may come in either version; that
        write's keyspace event or history entry brings the newer one at the next sync."""
        out: dict[str, str] = {}
        async for part in self._slices(key):
            out.update(part)
        return out

    async def load_changes(self, cursor: Cursor) -> StoredChanges | None:
        """The documents named by the history's entries after ``cursor``, read with HMGET:
        what a change costs no longer grows with the number of stored documents. None when
        the entries' revisions do not follow on from the cursor's (the stream was trimmed
        past it, or something wrote the revision without an entry), when there are more
        than ``MAX_CHANGES`` entries, or when the compose key is gone."""
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.xrange(self._k.history, min=f"({cursor.entry}", count=MAX_CHANGES + 1)
                pipe.get(self._k.compose_key)
                entries, key = await pipe.execute()
        if len(entries) > MAX_CHANGES or not key:
            return None
        names: dict[str, list[str]] = {}
        writes, position = 0, cursor
        for entry, fields in entries:
            following = _cursor(entry, fields)
            if following.revision != position.revision + 1:
                return None
            position = following
            try:
                changes = json.loads(_text(fields.get(b"changes", fields.get("changes", "[]"))))
                for change in changes:
                    kind, name = change["kind"], change["name"]
                    if kind not in KIND_ORDER or not isinstance(name, str):
                        return None
                    names.setdefault(kind, []).append(name)
                    writes += 1
            except (ValueError, TypeError, KeyError):
                return None  # not an entry the CLI wrote: read everything
        documents: dict[tuple[str, str], str | None] = {}
        if names:
            with redis_errors():
                async with self._r.pipeline(transaction=False) as pipe:
                    for kind, listed in names.items():
                        pipe.execute_command(
                            "HMGET", self._k.documents(kind), *listed, **{NEVER_DECODE: True}
                        )
                    values = await pipe.execute()
            for (kind, listed), found in zip(names.items(), values, strict=True):
                for name, value in zip(listed, found, strict=True):
                    text = None if value is None else decode_documents({b"": value})[""]
                    documents[(kind, name)] = text
        return StoredChanges(documents, writes, position, _text(key))

    async def load_last_good(self) -> RawDocuments:
        return await self._documents.load_last_good()

    async def save_last_good(
        self, changed: Mapping[tuple[str, str], str], gone: Iterable[tuple[str, str]]
    ) -> None:
        await self._documents.save_last_good(changed, gone)

    async def live_instances(
        self, services: Sequence[str], *, now: float
    ) -> dict[str, list[Instance]]:
        return await self._registry.live(services, now=now)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[RedisNotifications]:
        keyspace = await self._enable_keyspace_events()
        pubsub = self._pubsub()
        try:
            with redis_errors():
                await pubsub.subscribe(self._k.changes_channel, self._k.registry_channel)
                if keyspace:
                    await pubsub.psubscribe(
                        *[f"__keyspace@*__:{self._k.documents(k)}" for k in KIND_ORDER]
                    )
            yield RedisNotifications(
                pubsub, registry_channel=self._k.registry_channel, complete=keyspace
            )
        finally:
            with contextlib.suppress(StoreError), redis_errors():
                await pubsub.aclose()

    def _target(self) -> dict[str, Any]:
        """Under Redis Cluster: the node holding the documents is the one to talk to."""
        if isinstance(self._r, RedisCluster):
            return {"target_nodes": self._r.get_node_from_key(self._k.routes)}
        return {}

    def _pubsub(self) -> Any:
        if isinstance(self._r, RedisCluster):
            return self._r.pubsub(node=self._r.get_node_from_key(self._k.routes))
        return self._r.pubsub()

    async def _enable_keyspace_events(self) -> bool:
        """Turn on keyspace events for hashes and generic commands (keeping any flags
        already set). False when that is not ours to do, or Redis refuses the command (a
        managed Redis without CONFIG); a Redis that does not answer raises ``StoreError``,
        so that the whole subscription is tried again rather than left without keyspace
        events for good."""
        if not self._manage_events:
            return False
        try:
            with redis_errors():
                target = self._target()
                current = (await self._r.config_get("notify-keyspace-events", **target)).get(
                    "notify-keyspace-events", ""
                )
                flags = set(current)
                # 'g' too: a DEL of a whole document hash is a generic event, not a hash one.
                if not {"K", "h", "g"} <= flags and not {"K", "A"} <= flags:
                    await self._r.config_set(
                        "notify-keyspace-events", "".join(sorted(flags | {"K", "h", "g"})), **target
                    )
            return True
        except StoreError as exc:
            if not isinstance(exc.__cause__, ResponseError):
                raise
            log.warning("keyspace events unavailable (%s); raw writes wait for the re-read", exc)
            return False
