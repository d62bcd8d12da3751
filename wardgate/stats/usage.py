"""Usage metering and the rate-limited clients, aggregated in memory and handed to the store
in batches.

``UsageMeter.observe`` adds one request to the current batch: requests, bytes in and bytes out
per user, per API key and per route, in the request's hour; and, for a request a rate limit
refused, one refusal for its client (``records.client_of``) in its minute. ``take`` hands the
batch over and starts a new one. A batch carries an id: the store applies each id once, so a
flush whose answer was lost can be sent again without counting twice (``flusher.py``).

Memory is bounded: at most ``max_keys`` distinct (dimension, key, hour) entries and as many
limited clients per batch; past that, requests count under the key ``(other)`` (and
``on_overflow`` is called), so a flood of new names cannot grow a worker without bound.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from typing import Literal, Protocol

from wardgate.stats.records import Request, client_of

Dimension = Literal["user", "api_key", "route"]
DIMENSIONS: tuple[Dimension, ...] = ("user", "api_key", "route")
OVERFLOW_KEY = "(other)"
MAX_KEY_CHARS = 256  # a longer user or key name is cut (JWT subjects come from an IdP)


@dataclasses.dataclass(slots=True)
class Totals:
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out


@dataclasses.dataclass(frozen=True, slots=True)
class UsageKey:
    by: Dimension
    key: str
    hour: int  # unix time // 3600


@dataclasses.dataclass(frozen=True)
class Batch:
    """What a worker saw since its last flush."""

    id: str
    usage: Mapping[UsageKey, Totals]
    limited: Mapping[tuple[int, str], int]  # (unix minute, client) -> refusals

    def __bool__(self) -> bool:
        return bool(self.usage or self.limited)


class UsageStore(Protocol):
    """Where batches go and totals come from (``store/usage.py``)."""

    async def add(self, batch: Batch) -> None:
        """Apply ``batch`` once: a second call with the same id changes nothing."""

    async def totals(
        self, by: list[Dimension], hours: list[int]
    ) -> dict[tuple[Dimension, str], Totals]:
        """Totals per (dimension, key) over ``hours``."""

    async def limited(self, minutes: list[int], top: int) -> tuple[int, list[tuple[str, int]]]:
        """Distinct rate-limited clients over ``minutes``, and the ``top`` most refused."""


class UsageMeter:
    def __init__(self, *, max_keys: int, on_overflow: Callable[[], None] = lambda: None) -> None:
        self._max_keys = max_keys
        self._on_overflow = on_overflow
        self._usage: dict[UsageKey, Totals] = {}
        self._limited: dict[tuple[int, str], int] = {}

    def observe(self, req: Request) -> None:
        hour = int(req.start // 3600)
        usage = self._usage
        for by, key in (("route", req.route), ("user", req.user), ("api_key", req.api_key)):
            if not key:
                continue
            k = UsageKey(by, key[:MAX_KEY_CHARS], hour)  # type: ignore[arg-type]
            totals = usage.get(k)
            if totals is None:
                if len(usage) >= self._max_keys:
                    self._on_overflow()
                    k = UsageKey(k.by, OVERFLOW_KEY, hour)
                    totals = usage.get(k)
                if totals is None:
                    totals = usage[k] = Totals()
            totals.requests += 1
            totals.bytes_in += req.bytes_in
            totals.bytes_out += req.bytes_out
        if req.rate_limited:
            lk = (int(req.start // 60), client_of(req))
            if lk not in self._limited and len(self._limited) >= self._max_keys:
                self._on_overflow()
                lk = (lk[0], OVERFLOW_KEY)
            self._limited[lk] = self._limited.get(lk, 0) + 1

    def take(self) -> Batch:
        """The batch so far (maybe empty); the meter starts a new one."""
        batch = Batch(id=uuid.uuid4().hex, usage=self._usage, limited=self._limited)
        self._usage, self._limited = {}, {}
        return batch


def hours_since(now: float, span: float) -> list[int]:
    """The hourly buckets that overlap the ``span`` seconds before ``now``."""
    last = int(now // 3600)
    first = int((now - span) // 3600)
    return list(range(first, last + 1))
