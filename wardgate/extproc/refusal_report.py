"""Every 10 s: how many distinct clients each rate-limit rule refused this minute, for the
rules that refused lately (``wardgate_ratelimit_refused_clients``). A rule quiet for two
minutes drops to 0 and out of the list."""

from __future__ import annotations

import asyncio
import time

from wardgate.domain.ports import RefusalLog
from wardgate.errors import StoreError
from wardgate.extproc.ratelimit import RateLimitService
from wardgate.metrics import Metrics

REPORT_EVERY = 10.0  # seconds
QUIET_AFTER = 120.0  # seconds without a refusal before a rule leaves the report


async def report_refused_clients(
    rls: RateLimitService, refusals: RefusalLog, metrics: Metrics
) -> None:
    while True:
        await asyncio.sleep(REPORT_EVERY)
        now = time.time()
        for rule, last in list(rls.refused_rules.items()):
            if now - last > QUIET_AFTER:
                del rls.refused_rules[rule]
                metrics.refused_clients.labels(rule).set(0)
        if not rls.refused_rules:
            continue
        try:
            counts = await refusals.count(list(rls.refused_rules), now=now)
        except StoreError:
            metrics.store_errors.labels("refusal_log").inc()
            continue
        for rule, n in counts.items():
            metrics.refused_clients.labels(rule).set(n)
