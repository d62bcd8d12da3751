"""In-memory implementations of the control plane's ports: a ``DocumentSource`` and a
``StatusStore`` that hold everything in dictionaries. For unit tests of the watcher and for
tools that build snapshots without Redis; ``fail`` makes every call raise ``StoreError``, as
a store that went away would."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from wardgate.domain.catalog import RawDocuments
from wardgate.domain.registry import Instance
from wardgate.errors import StoreError
from wardgate.xds.ports import Cursor, Signal, Stored, StoredChanges


class MemoryNotifications:
    def __init__(self, source: MemoryDocumentSource) -> None:
        self._source = source
        self.complete = True

    def take_writes(self) -> int:
        writes, self._source.writes = self._source.writes, 0
        return writes

    async def wait(self, timeout: float) -> Signal:
        self._source.check()
        try:
            await asyncio.wait_for(self._source.announced.wait(), timeout)
        except TimeoutError:
            return Signal.NONE
        self._source.check()
        signal, self._source.pending = self._source.pending, Signal.NONE
        self._source.announced.clear()
        return signal


class MemoryDocumentSource:
    def __init__(self, documents: RawDocuments | None = None) -> None:
        self.documents: RawDocuments = {"Issuer": {}, "Service": {}, "Route": {}}
        for kind, docs in (documents or {}).items():
            self.documents[kind] = dict(docs)
        self.revision = 0
        self.last_good: RawDocuments = {}
        self.instances: dict[str, list[Instance]] = {}
        self.fail = False
        self.announced = asyncio.Event()
        self.pending = Signal.NONE
        self.loads = 0  # how many times the documents were read (for tests)
        self.reads_by_name = 0  # how many times changes were read by name (for tests)
        self.scans = 0  # how many times every document was compared, a slice at a time
        self.writes = 0  # writes not yet taken by the notifications (keyspace events)
        # The CLI's changes: (revision, the (kind, name) each changed), oldest first.
        self.history: list[tuple[int, list[tuple[str, str]]]] = []

    def check(self) -> None:
        if self.fail:
            raise StoreError("memory store: failing on purpose")

    def put(self, kind: str, name: str, text: str | None, *, announce: bool = True) -> None:
        """Write (``text``) or delete (None) one document, as a raw write would."""
        self._write(kind, name, text)
        if announce:  # a keyspace event
            self.writes += 1
            self.announce(Signal.DOCUMENTS)

    def _write(self, kind: str, name: str, text: str | None) -> None:
        if text is None:
            self.documents[kind].pop(name, None)
        else:
            self.documents.setdefault(kind, {})[name] = text

    def commit(self, changes: Mapping[tuple[str, str], str | None]) -> None:
        """Write as the CLI does: the documents (a keyspace event each), a new revision and
        its history entry, then the announcement."""
        for (kind, name), text in changes.items():
            self._write(kind, name, text)
            self.writes += 1
        self.revision += 1
        self.history.append((self.revision, list(changes)))
        self.announce(Signal.DOCUMENTS)

    def announce(self, signal: Signal) -> None:
        self.pending |= signal
        self.announced.set()

    async def load(self) -> Stored:
        self.check()
        self.loads += 1
        cursor = Cursor(str(len(self.history)), self.history[-1][0] if self.history else 0)
        return Stored(copy.deepcopy(self.documents), self.revision, cursor=cursor)

    async def scan(self) -> AsyncIterator[tuple[str, dict[str, str]]]:
        self.check()
        self.scans += 1
        for kind, docs in list(self.documents.items()):
            yield kind, dict(docs)

    async def load_changes(self, cursor: Cursor) -> StoredChanges | None:
        self.check()
        self.reads_by_name += 1
        documents: dict[tuple[str, str], str | None] = {}
        position = cursor
        for index in range(int(cursor.entry), len(self.history)):
            revision, names = self.history[index]
            if revision != position.revision + 1:
                return None
            position = Cursor(str(index + 1), revision)
            for kind, name in names:
                documents[(kind, name)] = self.documents.get(kind, {}).get(name)
        writes = sum(len(n) for _, n in self.history[int(cursor.entry) :])
        return StoredChanges(documents, writes, position, "")

    async def load_last_good(self) -> RawDocuments:
        self.check()
        return copy.deepcopy(self.last_good)

    async def save_last_good(
        self, changed: Mapping[tuple[str, str], str], gone: Iterable[tuple[str, str]]
    ) -> None:
        self.check()
        for (kind, name), text in changed.items():
            self.last_good.setdefault(kind, {})[name] = text
        for kind, name in gone:
            self.last_good.get(kind, {}).pop(name, None)

    async def live_instances(
        self, services: Sequence[str], *, now: float
    ) -> dict[str, list[Instance]]:
        self.check()
        return {name: sorted(self.instances.get(name, [])) for name in sorted(services)}

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[MemoryNotifications]:
        self.check()
        yield MemoryNotifications(self)


class MemoryStatusStore:
    def __init__(self) -> None:
        self.refused: dict[str, str] = {}
        self.nodes: dict[str, Mapping[str, Any]] = {}
        self.fail = False

    def _check(self) -> None:
        if self.fail:
            raise StoreError("memory store: failing on purpose")

    async def save_refused(self, refused: Mapping[str, str]) -> None:
        self._check()
        self.refused = dict(refused)

    async def save_nodes(self, worker: str, report: Mapping[str, Any]) -> None:
        self._check()
        self.nodes[worker] = report

    async def drop_nodes(self, worker: str) -> None:
        self._check()
        self.nodes.pop(worker, None)
