"""What the control plane needs from the world, named by role.

The control plane has two halves that never meet directly (as in go-control-plane):

- the *watcher* side reads documents from a ``DocumentSource``, builds snapshots and hands
  them to a ``SnapshotPublisher``; it records what it refused in a ``StatusStore``;
- the *ADS* side reads snapshots only, through a ``ConfigWatcher``.

Implementations: ``store.document_source.RedisDocumentSource`` and
``store.status.RedisStatusStore`` (Redis); ``xds.memory.MemoryDocumentSource`` (in memory, for
tests and tools); ``xds.snapshot.SnapshotCache`` is both publisher and config watcher.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from wardgate.domain.catalog import RawDocuments
from wardgate.domain.registry import Instance
from wardgate.xds.snapshot import NodeGroup, Snapshot


@dataclasses.dataclass(frozen=True)
class Stored:
    """The documents as stored, the revision the CLI last wrote (for logs and status), and
    the deployment's compose key ("": none, the compose listener answers nothing)."""

    documents: RawDocuments
    revision: int = 0
    compose_key: str = ""
    # Where the history of the CLI's changes stood when these were read (the newest entry's
    # id and revision), for ``load_changes``; None: reads by name are not possible.
    cursor: Cursor | None = None


@dataclasses.dataclass(frozen=True)
class Cursor:
    """A position in the history of changes: an entry's id and its revision ("0-0", 0:
    before the first)."""

    entry: str
    revision: int


@dataclasses.dataclass(frozen=True)
class StoredChanges:
    """What the CLI's changes after a cursor changed, read by name."""

    documents: dict[tuple[str, str], str | None]  # (kind, name) -> the stored text; None: gone
    writes: int  # document writes they made: one keyspace event each
    cursor: Cursor  # where the history stands after them
    compose_key: str


class Signal(enum.Flag):
    """What a notification says changed (several coalesce into one)."""

    NONE = 0
    DOCUMENTS = enum.auto()  # a document hash was written (CLI or raw HSET/HDEL)
    REGISTRY = enum.auto()  # a registry instance appeared or left


class Notifications(Protocol):
    """A live subscription to change announcements."""

    @property
    def complete(self) -> bool:
        """Whether raw writes are announced too (keyspace events), not only the CLI's."""
        ...

    async def wait(self, timeout: float) -> Signal:
        """What was announced within ``timeout`` seconds (a burst coalesced into one), or
        ``Signal.NONE``. Raises ``StoreError`` when the subscription is lost."""
        ...

    def take_writes(self) -> int:
        """How many writes to the document hashes were seen (keyspace events, CLI's and raw
        alike) since the last call."""
        ...


class DocumentSource(Protocol):
    """Where documents, their last good versions and registry instances are kept."""

    async def load(self) -> Stored:
        """Every document; ``cursor`` no older than the documents (a change after it may
        already be in them)."""
        ...

    def scan(self) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Every document, a slice at a time: (kind, name -> text). A kind may come in
        several slices and, when written meanwhile, a name in more than one (in either
        version). For comparing without holding every document at once."""
        ...

    async def load_changes(self, cursor: Cursor) -> StoredChanges | None:
        """The documents the CLI's changes after ``cursor`` named, as stored now; None when
        that cannot be known (the history has a gap, too many changes): read everything."""
        ...

    async def load_last_good(self) -> RawDocuments: ...

    async def save_last_good(
        self, changed: Mapping[tuple[str, str], str], gone: Iterable[tuple[str, str]]
    ) -> None:
        """Record what is served now: ``changed`` (kind, name) -> text, ``gone`` no longer."""
        ...

    async def live_instances(
        self, services: Sequence[str], *, now: float
    ) -> dict[str, list[Instance]]: ...

    def subscribe(self) -> AbstractAsyncContextManager[Notifications]:
        """Subscribe to change announcements (raises ``StoreError`` if it cannot)."""
        ...


class StatusStore(Protocol):
    """Where ``wardgate status`` reads what this process saw."""

    async def save_refused(self, refused: Mapping[str, str]) -> None: ...

    async def save_nodes(self, worker: str, report: Mapping[str, Any]) -> None: ...

    async def drop_nodes(self, worker: str) -> None: ...


class SnapshotPublisher(Protocol):
    """Where built snapshots go."""

    @property
    def ready(self) -> bool: ...

    def set_base(self, snapshot: Snapshot) -> bool:
        """Publish; returns whether any resource changed."""
        ...


class ConfigWatcher(Protocol):
    """What the ADS servers see of the snapshots: the generation, a way to wait for the
    next one, and the snapshot for an Envoy's node group."""

    @property
    def generation(self) -> int: ...

    async def wait_changed(self, generation: int, timeout: float | None = None) -> None: ...

    def snapshot_for(self, group: NodeGroup) -> Snapshot | None: ...

    async def ensure_current(self, since: float) -> bool:
        """Make sure the snapshot holds what the store held at ``since`` (monotonic) or
        later, before a new stream's first answer: another replica may have served that
        Envoy something newer. False when that cannot be known (the store is unreachable)."""
        ...
