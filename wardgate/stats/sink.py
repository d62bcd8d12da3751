"""Where access-log entries go: every part that makes something of them, a batch at a time."""

from __future__ import annotations

from collections.abc import Sequence

from wardgate.stats.decision_log import DecisionLog
from wardgate.stats.records import Request
from wardgate.stats.route_metrics import RouteMetrics
from wardgate.stats.usage import UsageMeter


class StatsSink:
    def __init__(
        self, *, routes: RouteMetrics, meter: UsageMeter, decisions: DecisionLog | None
    ) -> None:
        self._routes = routes
        self._meter = meter
        self._decisions = decisions

    def observe(self, batch: Sequence[Request]) -> None:
        """The requests of one access-log message."""
        self._routes.observe(batch)
        meter, decisions = self._meter, self._decisions
        for req in batch:
            meter.observe(req)
            if decisions is not None and req.status >= 400:
                decisions.observe(req)
