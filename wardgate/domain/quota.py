"""Quota rules (``enforce: quota``): a rule's budget kept in one place, leased out to the
Envoys that enforce it (docs/DECISIONS.md 51-53).

Each Envoy reports, per bucket (a rule and a client), how many requests it allowed and denied
since its last report: when the bucket first appears and then every 5 s. Each report is
answered with that Envoy's *lease* for the bucket: a number of requests it may admit on its
own, no callout per request. The budget of a bucket is a token bucket of the rule's requests,
refilled at its rate (``token_bucket``) or all at once at each clock-aligned period
(``fixed_window``). A lease is taken out of the budget when it is granted, so the leases all
Envoys hold plus what the budget has left never exceed the rule's requests.

A lease is replaced only when it is used up (the Envoy reported as many requests as it
holds, or refused one) or when its holder has far more than its fair share of what is in play;
the share follows demand (the requests the holder saw in its last report, plus one), so an
Envoy without traffic keeps little and the busy one gets the budget. Requests an Envoy
admitted beyond its lease (before its first lease, between a report and the lease that
answered it, or while wardgate was out of reach) are taken from the budget when reported
(it may go below zero: later leases repay it) and counted as *unleased*: the overshoot.

The decision for one bucket runs atomically where the budget lives (``QuotaLedger``: a Lua
script in Redis), so every wardgate worker and replica agrees on it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from wardgate.domain.ratelimit import RULE_KEY, LimitRequest, parse_descriptor

REPORT_INTERVAL_S = 5  # Envoy 1.40 reports every 5 s whatever it is told (envoy#46033)
LEASE_TTL_S = 15  # a lease outlives two missed reports; then the Envoy's local bound decides
# A holder silent this long has lost its leases in its Envoy: what they held is back.
HOLDER_EXPIRY_S = LEASE_TTL_S + REPORT_INTERVAL_S
MAX_BUCKETS_PER_REPORT = 20_000  # beyond this, a report's buckets are left unanswered
_ALGORITHMS = {"fixed_window": 1, "token_bucket": 3}


class LeaseKind(enum.IntEnum):
    KEEP = 0  # the lease the Envoy holds stays (the same assignment again)
    GRANT = 1  # a new lease of ``tokens`` replaces it
    DENY = 2  # nothing left for this Envoy: refuse until the next report
    ABANDON = 3  # the bucket saw no request for long: the Envoy drops it


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    kind: LeaseKind
    tokens: int  # what the lease holds (GRANT, KEEP)
    serial: int  # raised by every GRANT: tells the Envoy the lease is new
    unleased: int  # requests this report counted beyond the holder's lease


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaCheck:
    """One bucket of one report, as the ledger needs it."""

    key: str
    requests: int
    period_ms: int
    algorithm: int  # 1 fixed window, 3 token bucket
    holder: str  # the Envoy's stream to wardgate
    allowed: int
    denied: int
    abandon_after_ms: int
    local_bound: int  # what the Envoy's local bound admits at once (xds/local_limits.py)


class QuotaLedger(Protocol):
    """Where budgets live: settles one report's buckets and returns each one's lease."""

    async def settle(self, checks: Sequence[QuotaCheck], *, now_ms: int) -> list[Lease]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class BucketUsage:
    """One bucket of an Envoy's report: its id's entries and the requests since the last."""

    entries: Mapping[str, str]
    allowed: int
    denied: int


@dataclasses.dataclass(frozen=True, slots=True)
class Settled:
    """A bucket the service understood, and its lease."""

    request: LimitRequest
    usage: BucketUsage
    lease: Lease


def parse_bucket(entries: Mapping[str, str]) -> LimitRequest | None:
    """The rule and client of a bucket id, or None if it is not a quota rule of wardgate's
    (the same codec as the exact check's descriptors)."""
    rule = entries.get(RULE_KEY)
    if rule is None:
        return None
    ordered = [(RULE_KEY, rule), *sorted((k, v) for k, v in entries.items() if k != RULE_KEY)]
    req = parse_descriptor(ordered)
    if req is None or req.shadow or req.algorithm not in _ALGORITHMS:
        return None
    return req


def abandon_after_s(period: int) -> int:
    """How long a bucket may see no request before its Envoy drops it: two periods, within
    2 minutes and an hour (a returning client's first requests are unleased again)."""
    return min(3600, max(120, 2 * period))


def local_bound(requests: int, algorithm: str) -> int:
    """What each Envoy admits at once for a quota rule without a lease (its local bound):
    what the rule can allow one client at once, twice the requests for a fixed window (a
    window's end and the next one's start), the requests and one for a token bucket."""
    return 2 * requests if algorithm == "fixed_window" else requests + 1


def burst_bound(envoys: int, requests: int, algorithm: str) -> int:
    """The most ``envoys`` Envoys admit together for one bucket in a burst shorter than one
    refill: each Envoy's local bound sees every request its quota filter lets through, leased
    or not, so none admits more than that bound (docs/RATELIMITS-NATIVE.md derives it)."""
    return envoys * local_bound(requests, algorithm)


def retry_after(requests: int, period: int) -> int:
    """What a refused client is told to wait: a new lease comes with the next report at the
    earliest, and the budget regains one request every period/requests."""
    return max(REPORT_INTERVAL_S, math.ceil(period / requests))


class QuotaService:
    """Answers Envoys' reports with leases."""

    def __init__(
        self,
        *,
        ledger: QuotaLedger,
        key_for: Callable[[str, str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._key_for = key_for
        self._clock = clock

    async def settle(self, holder: str, usages: Sequence[BucketUsage]) -> list[Settled]:
        """The leases for one report of ``holder``; buckets that are not wardgate's quota
        rules are left out (Envoy keeps treating them as it does)."""
        mine: list[tuple[LimitRequest, BucketUsage]] = []
        for usage in usages[:MAX_BUCKETS_PER_REPORT]:
            req = parse_bucket(usage.entries)
            if req is not None:
                mine.append((req, usage))
        if not mine:
            return []
        checks = [
            QuotaCheck(
                key=self._key_for(self._rule_value(req), req.client),
                requests=req.requests,
                period_ms=req.period * 1000,
                algorithm=_ALGORITHMS[req.algorithm],
                holder=holder,
                allowed=max(0, usage.allowed),
                denied=max(0, usage.denied),
                abandon_after_ms=abandon_after_s(req.period) * 1000,
                local_bound=local_bound(req.requests, req.algorithm),
            )
            for req, usage in mine
        ]
        leases = await self._ledger.settle(checks, now_ms=int(self._clock() * 1000))
        return [
            Settled(req, usage, lease) for (req, usage), lease in zip(mine, leases, strict=True)
        ]

    @staticmethod
    def _rule_value(req: LimitRequest) -> str:
        # The budget is the rule's with its numbers: a rule changed in place starts afresh
        # (its buckets in Envoy have new ids too).
        return f"{req.rule}|{req.requests}|{req.period}|{req.algorithm}"
