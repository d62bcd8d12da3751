"""What ``wardgate status`` shows, in Redis: documents refused, and per worker the Envoys
connected to it with what each ACKed or NACKed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from wardgate.store.errors import redis_errors
from wardgate.store.keys import Keys
from wardgate.store.redis_client import AnyRedis


@dataclasses.dataclass(frozen=True)
class StatusReport:
    revision: int
    workers: list[dict[str, Any]]  # each worker's last report: worker, time, nodes
    refused: dict[str, str]  # "Kind/name" -> reason


class RedisStatusStore:
    def __init__(self, *, redis: AnyRedis, keys: Keys) -> None:
        self._r = redis
        self._k = keys

    async def save_refused(self, refused: Mapping[str, str]) -> None:
        with redis_errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.delete(self._k.refused)
                if refused:
                    pipe.hset(self._k.refused, mapping=dict(refused))
                await pipe.execute()

    async def save_nodes(self, worker: str, report: Mapping[str, Any]) -> None:
        with redis_errors():
            await self._r.hset(self._k.nodes, worker, json.dumps(report))

    async def drop_nodes(self, worker: str) -> None:
        with redis_errors():
            await self._r.hdel(self._k.nodes, worker)

    async def read(self) -> StatusReport:
        with redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.get(self._k.revision)
                pipe.hgetall(self._k.nodes)
                pipe.hgetall(self._k.refused)
                revision, workers, refused = await pipe.execute()
        reports = []
        for text in workers.values():
            try:
                report = json.loads(text)
            except ValueError:
                continue
            if isinstance(report, dict):
                reports.append(report)
        return StatusReport(int(revision or 0), reports, dict(refused))
