"""``wardgate top``'s screen: two scrapes of wardgate's ``/metrics`` a few seconds apart become
requests per second per route, the status mix, p50 and p99 (from the duration histogram, as
Prometheus's ``histogram_quantile`` reads it) and the most rate-limited clients."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.table import Table
from rich.text import Text

CLASSES = ("2xx", "3xx", "4xx", "5xx")


@dataclasses.dataclass
class Scrape:
    """The figures ``top`` reads from one scrape."""

    at: float
    requests: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = dataclasses.field(default_factory=dict)
    limited: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    limited_clients: float = 0.0

    @classmethod
    def parse(cls, text: str, at: float) -> Scrape:
        scrape = cls(at=at)
        requests: dict[tuple[str, str], float] = defaultdict(float)
        buckets: dict[str, dict[float, float]] = defaultdict(dict)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "wardgate_route_requests_total":
                    requests[(s.labels["route"], s.labels["status_class"])] += s.value
                elif s.name == "wardgate_route_request_duration_seconds_bucket":
                    le = float(s.labels["le"])
                    route = buckets[s.labels["route"]]
                    route[le] = route.get(le, 0.0) + s.value
                elif s.name == "wardgate_ratelimited_client_requests":
                    scrape.limited.append((s.labels["client"], s.value))
                elif s.name == "wardgate_ratelimited_clients":
                    scrape.limited_clients = s.value
        scrape.requests = dict(requests)
        scrape.buckets = dict(buckets)
        scrape.limited.sort(key=lambda cv: (-cv[1], cv[0]))
        return scrape


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (upper bound -> count), interpolated
    linearly inside the bucket as Prometheus does; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # the highest finite bound, as histogram_quantile answers
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 0)
        lower, below = upper, count
    return lower


@dataclasses.dataclass(frozen=True)
class RouteRow:
    route: str
    rate: float
    mix: dict[str, float]  # status class -> share of the requests
    p50: float | None
    p99: float | None


def rows(prev: Scrape, cur: Scrape) -> list[RouteRow]:
    """Per route, what happened between two scrapes, busiest first."""
    dt = max(cur.at - prev.at, 1e-6)
    per_route: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for (route, klass), value in cur.requests.items():
        delta = value - prev.requests.get((route, klass), 0.0)
        if delta < 0:  # a worker restarted: its counters began again
            delta = value
        per_route[route][klass] += delta
    out = []
    for route, by_class in per_route.items():
        total = sum(by_class.values())
        if total <= 0:
            continue
        before = prev.buckets.get(route, {})
        window = {le: c - before.get(le, 0.0) for le, c in cur.buckets.get(route, {}).items()}
        out.append(
            RouteRow(
                route=route,
                rate=total / dt,
                mix={k: v / total for k, v in by_class.items() if v > 0},
                p50=quantile(0.5, window),
                p99=quantile(0.99, window),
            )
        )
    out.sort(key=lambda r: (-r.rate, r.route))
    return out


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def render(prev: Scrape, cur: Scrape, *, source: str, limit: int = 20) -> Group:
    table = Table(title=f"wardgate top — {source}", expand=True)
    table.add_column("route")
    table.add_column("req/s", justify="right")
    for klass in CLASSES:
        table.add_column(klass, justify="right")
    table.add_column("p50", justify="right")
    table.add_column("p99", justify="right")
    found = rows(prev, cur)
    for row in found[:limit]:
        table.add_row(
            row.route,
            f"{row.rate:.1f}",
            *(f"{row.mix.get(k, 0.0) * 100:.0f}%" for k in CLASSES),
            _ms(row.p50),
            _ms(row.p99),
        )
    if not found:
        table.add_row("(no requests)", "0.0", *("-" for _ in CLASSES), "-", "-")
    limited = Table(
        title=f"most rate-limited clients, last 5 min ({cur.limited_clients:.0f} distinct)",
        expand=True,
    )
    limited.add_column("client")
    limited.add_column("refused", justify="right")
    for client, n in cur.limited[:10]:
        limited.add_row(Text(client), f"{n:.0f}")
    if not cur.limited:
        limited.add_row("(none)", "0")
    return Group(table, limited)
