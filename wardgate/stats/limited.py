"""The rate-limited clients, read back from Redis after every usage flush: how many
distinct clients rate limits refused over the last ``WINDOW_MINUTES`` minutes (every worker
and every Envoy together) and the ``top`` most refused, shown on ``/metrics`` by a collector.

Every worker reads the same Redis, so whichever answers ``/metrics`` shows the same figures,
and a client that falls out of the top stops being exported at once: at most ``top`` client
names are ever labels (``records.client_of`` cuts and cleans them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from wardgate.errors import StoreError
from wardgate.stats.usage import UsageStore

log = logging.getLogger("wardgate.usage")
WINDOW_MINUTES = 5


class LimitedClients:
    """The last report, and the collector that exports it."""

    def __init__(self, *, store: UsageStore, top: int, clock: Callable[[], float] = time.time):
        self._store = store
        self._top = top
        self._clock = clock
        self.distinct = 0
        self.ranked: list[tuple[str, int]] = []

    async def refresh(self) -> None:
        minute = int(self._clock() // 60)
        minutes = list(range(minute - WINDOW_MINUTES + 1, minute + 1))
        self.distinct, self.ranked = await self._store.limited(minutes, self._top)

    async def run(self, interval: float, on_error: Callable[[], None]) -> None:
        while True:
            try:
                await self.refresh()
            except StoreError as exc:
                on_error()
                log.warning("rate-limited clients: store unavailable: %s", exc)
            await asyncio.sleep(interval)

    def describe(self) -> list[Any]:
        return []  # no samples at registration: collect() reads the last report

    def collect(self) -> Iterator[GaugeMetricFamily]:
        distinct = GaugeMetricFamily(
            "wardgate_ratelimited_clients",
            f"Distinct clients refused by a rate limit in the last {WINDOW_MINUTES} minutes "
            "(every Envoy and worker; HyperLogLog).",
        )
        distinct.add_metric([], self.distinct)
        yield distinct
        top = GaugeMetricFamily(
            "wardgate_ratelimited_client_requests",
            f"Requests of the most rate-limited clients refused in the last {WINDOW_MINUTES} "
            "minutes (client: api_key:NAME, user:NAME or ip:ADDRESS).",
            labels=["client"],
        )
        for client, n in self.ranked:
            top.add_metric([client], n)
        yield top
