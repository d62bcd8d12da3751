"""Route/Service documents in Redis hashes, written atomically with a revision and history."""

from __future__ import annotations

import contextlib
import getpass
import json
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from redis.client import NEVER_DECODE
from redis.exceptions import WatchError

from wardgate.domain.catalog import KIND_ORDER, Change, RawDocuments
from wardgate.errors import ConflictError, DocumentError, StoreError
from wardgate.store.errors import redis_errors
from wardgate.store.keys import Keys
from wardgate.store.redis_client import AnyRedis


def _who() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (OSError, KeyError):
        return "unknown"


def queue_documents_read(pipe: Any, key: str) -> Any:
    """HGETALL of a document hash, its bytes left undecoded (``decode_documents``): one value
    that is not UTF-8 must not make the whole hash unreadable."""
    return pipe.execute_command("HGETALL", key, **{NEVER_DECODE: True})


def decode_documents(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    """A document hash as text. A value that is not UTF-8 keeps its bytes as surrogate
    escapes, so that parsing refuses that document alone and says why; a name that is not
    UTF-8 shows its bad bytes as ``\\x`` escapes (such a name is refused too)."""
    return {
        name.decode("utf-8", "backslashreplace"): value.decode("utf-8", "surrogateescape")
        for name, value in raw.items()
    }


class RedisDocumentStore:
    def __init__(self, *, redis: AnyRedis, keys: Keys) -> None:
        self._r = redis
        self._k = keys

    async def _hashes(self, key_of: Callable[[str], str]) -> RawDocuments:
        """One hash per kind, read in one round trip."""
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                for kind in KIND_ORDER:
                    queue_documents_read(pipe, key_of(kind))
                results = await pipe.execute()
        return {kind: decode_documents(r) for kind, r in zip(KIND_ORDER, results, strict=True)}

    async def load(self) -> RawDocuments:
        return await self._hashes(self._k.documents)

    async def load_last_good(self) -> RawDocuments:
        return await self._hashes(self._k.last_good)

    async def save_last_good(
        self, changed: Mapping[tuple[str, str], str], gone: Iterable[tuple[str, str]]
    ) -> None:
        """Record what is served now: ``changed`` (kind, name) -> text, ``gone`` no longer."""
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                for kind in KIND_ORDER:
                    now = {n: v for (k, n), v in changed.items() if k == kind}
                    removed = [n for k, n in gone if k == kind]
                    if now:
                        pipe.hset(self._k.last_good(kind), mapping=now)
                    if removed:
                        pipe.hdel(self._k.last_good(kind), *removed)
                await pipe.execute()

    async def revision(self) -> int:
        with redis_errors():
            return int(await self._r.get(self._k.revision) or 0)

    async def commit(
        self, plan: Callable[[RawDocuments], Sequence[Change]], *, attempts: int = 5
    ) -> tuple[int, list[Change]]:
        """Read, plan, write all changes or none (WATCH/MULTI), and announce them.

        ``plan`` sees the current documents and returns the changes (raising to refuse).
        Returns the new revision (the old one if nothing changed) and the changes.
        """
        for _ in range(attempts):
            with redis_errors():
                outcome = await self._try_commit(plan)
            if outcome is not None:
                revision, changes, written = outcome
                break
        else:
            raise ConflictError("the documents kept changing under us; try again")
        if not written:
            return revision, changes
        # Applied; should the announcement fail, watchers still see keyspace events and re-read.
        with contextlib.suppress(StoreError), redis_errors():
            await self._r.publish(self._k.changes_channel, str(revision))
        return revision, changes

    async def _try_commit(
        self, plan: Callable[[RawDocuments], Sequence[Change]]
    ) -> tuple[int, list[Change], bool] | None:
        """One optimistic attempt: (revision, changes, whether anything was written), or
        None when a concurrent writer touched the documents between our read and write."""
        watched = [self._k.documents(kind) for kind in KIND_ORDER]
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                await pipe.watch(*watched, self._k.revision)
                current = {}
                for kind, key in zip(KIND_ORDER, watched, strict=True):
                    current[kind] = decode_documents(await queue_documents_read(pipe, key))
                revision = int(await pipe.get(self._k.revision) or 0)
                changes = list(plan(current))
                effective = [c for c in changes if c.action != "unchanged"]
                if not effective:
                    await pipe.unwatch()
                    return revision, changes, False
                revision += 1
                # Documents, revision and history entry in one transaction: a change is
                # never in Redis without its history (rollback can always reach it).
                pipe.multi()
                for c in effective:
                    if c.value is None:
                        pipe.hdel(self._k.documents(c.kind), c.name)
                    else:
                        pipe.hset(self._k.documents(c.kind), c.name, c.value)
                pipe.set(self._k.revision, revision)
                pipe.xadd(
                    self._k.history,
                    self._entry(revision, effective, current),
                    maxlen=10_000,
                    approximate=True,
                )
                await pipe.execute()
                return revision, changes, True
        except WatchError:
            return None

    @staticmethod
    def _entry(revision: int, changes: list[Change], before: RawDocuments) -> dict[str, Any]:
        return {
            "revision": revision,
            "time": f"{time.time():.3f}",
            "who": _who(),
            "changes": json.dumps(
                [
                    {
                        "kind": c.kind,
                        "name": c.name,
                        "action": c.action,
                        "before": before.get(c.kind, {}).get(c.name),
                    }
                    for c in changes
                ]
            ),
        }

    async def targets_at(self, revision: int) -> dict[tuple[str, str], str | None]:
        """What every document changed after ``revision`` looked like at ``revision``."""
        with redis_errors():
            rows = await self._r.xrevrange(self._k.history)
        known = {int(fields["revision"]) for _id, fields in rows}
        if revision != 0 and revision not in known:
            raise DocumentError(f"revision {revision} is not in the history")
        targets: dict[tuple[str, str], str | None] = {}
        for _id, fields in rows:  # newest first: the oldest 'before' after revision wins
            if int(fields["revision"]) <= revision:
                continue
            for change in json.loads(fields.get("changes", "[]")):
                targets[(change["kind"], change["name"])] = change.get("before")
        return targets

    async def history(self, count: int = 50) -> list[dict[str, Any]]:
        with redis_errors():
            rows = await self._r.xrevrange(self._k.history, count=count)
        out = []
        for _id, fields in rows:
            out.append(
                {
                    "revision": int(fields["revision"]),
                    "time": float(fields["time"]),
                    "who": fields.get("who", ""),
                    "changes": json.loads(fields.get("changes", "[]")),
                }
            )
        return out
