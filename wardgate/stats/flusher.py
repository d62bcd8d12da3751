"""Every ``interval`` seconds, the meter's batch goes to the store; a batch the store could not
take is kept and sent again (same id: applied at most once) before newer ones.

At most ``max_pending`` batches wait; past that the oldest is dropped and counted
(``wardgate_usage_dropped_batches_total``): a Redis down for a long time costs the oldest
figures, never the worker's memory. ``close`` sends what is left, once, when the worker stops
cleanly; an unclean stop (SIGKILL, a crash) loses the batches not yet sent: at most
``interval`` seconds of figures when Redis is up.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from wardgate.errors import StoreError
from wardgate.stats.usage import Batch, UsageMeter, UsageStore

log = logging.getLogger("wardgate.usage")


class UsageFlusher:
    def __init__(
        self,
        *,
        meter: UsageMeter,
        store: UsageStore,
        interval: float,
        max_pending: int = 720,
        on_flush: Callable[[str], None] = lambda _result: None,
    ) -> None:
        self._meter = meter
        self._store = store
        self._interval = interval
        self._pending: collections.deque[Batch] = collections.deque()
        self._max_pending = max_pending
        self._on_flush = on_flush  # "ok", "error" or "dropped", for the metrics
        self._lock = asyncio.Lock()

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> bool:
        """Send the current batch and any left over; True when nothing is left waiting."""
        async with self._lock:
            batch = self._meter.take()
            if batch:
                self._pending.append(batch)
            while len(self._pending) > self._max_pending:
                self._pending.popleft()
                self._on_flush("dropped")
            while self._pending:
                try:
                    await self._store.add(self._pending[0])
                except StoreError as exc:
                    self._on_flush("error")
                    log.warning(
                        "usage: store unavailable (%s); %d batches kept for the next flush",
                        exc,
                        len(self._pending),
                        extra={"event": "store_error", "component": "usage"},
                    )
                    return False
                self._pending.popleft()
                self._on_flush("ok")
            return True

    async def close(self) -> None:
        """The last flush, when the worker stops cleanly."""
        if not await self.flush():
            log.error(
                "usage: %d batches could not be written before stopping; they are lost",
                len(self._pending),
                extra={"event": "store_error", "component": "usage"},
            )
