"""Per-route Prometheus figures from access-log entries, a batch at a time.

Counters are added up per label set over the batch and incremented once per label set (with
``--workers N`` every increment is a write to the shared metrics files, so fewer is cheaper);
durations are observed one by one (a histogram cannot be added to in bulk).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from wardgate.metrics import StatsMetrics
from wardgate.stats.records import Request, RouteLabels, method_label, status_class


class RouteMetrics:
    def __init__(self, *, metrics: StatsMetrics, routes: RouteLabels) -> None:
        self._m = metrics
        self._routes = routes
        self._durations: dict[str, Any] = {}  # route label -> its histogram child

    def observe(self, batch: Iterable[Request]) -> None:
        requests: Tally[tuple[str, str, str]] = Tally()
        received: Tally[str] = Tally()
        sent: Tally[str] = Tally()
        overflow_before = self._routes.overflowed
        m = self._m
        n = 0
        for req in batch:
            n += 1
            route = self._routes.label(req.route)
            requests[(route, method_label(req.method), status_class(req.status))] += 1
            received[route] += req.bytes_in
            sent[route] += req.bytes_out
            histogram = self._durations.get(route)
            if histogram is None:
                histogram = self._durations[route] = m.route_duration.labels(route)
            histogram.observe(req.duration)
        for labels, count in requests.items():
            m.route_requests.labels(*labels).inc(count)
        for route, amount in received.items():
            if amount:
                m.route_received_bytes.labels(route).inc(amount)
        for route, amount in sent.items():
            if amount:
                m.route_sent_bytes.labels(route).inc(amount)
        if n:
            m.access_log_entries.inc(n)
        if self._routes.overflowed > overflow_before:
            m.label_overflow.labels("route").inc(self._routes.overflowed - overflow_before)
