"""The local guard: Envoy's own token bucket per client behind every exact limit.

An exact (``enforce: global``) rule asks wardgate for every request, and Envoy lets the
request through when no answer comes in time (the rate-limit filter fails open). A client
that sends more than wardgate can answer would otherwise buy its way past any limit with
concurrency. So each rule also gets a bucket inside Envoy (``envoy.filters.http.local_ratelimit``,
right after the rate-limit filter, on the same descriptors the route's actions make): one
bucket per distinct client value, shared by the Envoy's workers, refilled at the rule's rate.

Running after the exact check, the guard sees only requests that check allowed or could not
answer. Its bucket holds what the exact check can allow in a burst: twice the requests for a
fixed window (a window's budget at its end and the next one's at its start), the requests
and one more for a sliding window or token bucket (one token of slack for the refill's timing);
times ``burst``. So in normal use it never refuses; when the exact check fails open, each Envoy
still admits at most that many per client, plus the refill (docs/DECISIONS.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

# Importing it registers the message type that "@type" below refers to.
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401

from wardgate.domain.documents import RateLimit
from wardgate.domain.ratelimit import RULE_KEY, TIER_KEY
from wardgate.xds.pbencode import shared
from wardgate.xds.typeurls import T_LOCAL_RATELIMIT

F_LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"
STAT_PREFIX = "wardgate_guard"
TICK_MS = 50  # Envoy refills buckets at multiples of the default bucket's interval (>= 50 ms)
MAX_TOKENS = 2**32 - 1  # Envoy's token counts are uint32
_ALL = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}


@dataclasses.dataclass(frozen=True)
class GuardOptions:
    burst: float = 1.0  # a client's bucket holds this times what the exact check can allow
    clients: int = 10_000  # buckets per route and Envoy (least recently used ones go first)

    @property
    def enabled(self) -> bool:
        return self.burst > 0


def descriptor_keys(rule: RateLimit) -> list[str]:
    """The descriptor entry keys the route's actions produce for ``rule``, after wg_rule."""
    keys = []
    for dim in rule.dimensions:
        if dim == "ip":
            keys.append("remote_address")
        elif dim != "route":  # a route-wide rule adds no entry: its rule entry is its key
            keys.append(dim)  # header:NAME; user, api_key from ext_authz's metadata
    if rule.tiers:
        keys.append(TIER_KEY)
    return keys


def token_bucket(requests: int, period_s: int) -> dict[str, Any]:
    """At least ``requests`` per ``period_s`` as Envoy's token bucket (capacity
    ``requests``): an interval that is a multiple of 50 ms, rounded down, and whole tokens
    per interval, rounded up, so the guard never refills slower than the rule allows."""
    per_token_ms = period_s * 1000 / requests
    interval = max(TICK_MS, math.floor(per_token_ms / TICK_MS) * TICK_MS)
    per_fill = max(1, math.ceil(interval / per_token_ms))
    return {
        "max_tokens": min(requests, MAX_TOKENS),
        "tokens_per_fill": min(per_fill, MAX_TOKENS),
        "fill_interval": f"{interval / 1000:.3f}s",
    }


def capacity(requests: int, algorithm: str, burst: float) -> int:
    """What the exact check can allow one client at once, times ``burst``."""
    allowed = 2 * requests if algorithm == "fixed_window" else requests + 1
    return min(MAX_TOKENS, max(1, math.ceil(allowed * burst)))


@dataclasses.dataclass(frozen=True)
class GuardBucket:
    """The guard for one rule: its descriptor and bucket in Envoy's JSON form, and the
    rule's own numbers (for the answer's headers)."""

    descriptor: dict[str, Any]
    requests: int
    period: int


def guard_bucket(rule_value: str, rule: RateLimit, burst: float) -> GuardBucket:
    """The guard's bucket for one rule: its descriptor (the rule exactly, then each client
    key as a wildcard: one bucket per distinct value) and the bucket. A rule with tiers gets
    the largest of its limits."""
    requests = max([rule.requests, *(rule.tiers or {}).values()])
    period = rule.period_seconds
    entries = [
        {"key": RULE_KEY, "value": rule_value},
        *_client_entries(tuple(descriptor_keys(rule))),
    ]
    bucket = _bucket(requests, period, capacity(requests, rule.algorithm, burst))
    return GuardBucket({"entries": entries, "token_bucket": bucket}, requests, period)


# What many routes' guards share, built once (``pbencode.shared``: written once per field).


@functools.lru_cache(maxsize=1024)
def _client_entries(keys: tuple[str, ...]) -> tuple[dict[str, str], ...]:
    return tuple(shared({"key": key, "value": ""}) for key in keys)


@functools.lru_cache(maxsize=1024)
def _bucket(requests: int, period: int, max_tokens: int) -> dict[str, Any]:
    bucket = token_bucket(requests, period)
    bucket["max_tokens"] = max_tokens
    return shared(bucket)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=1024)
def _guard_common(requests: int, period: int) -> dict[str, Any]:
    """The guard's configuration but for its stage, descriptors and clients."""
    wait = max(1, math.ceil(period / requests))
    headers = {
        "retry-after": str(wait),
        "x-ratelimit-limit": str(requests),
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(wait),
    }
    return shared(  # type: ignore[no-any-return]
        {
            # Required per route; never limits: only the descriptors' buckets do.
            "token_bucket": {
                "max_tokens": MAX_TOKENS,
                "tokens_per_fill": MAX_TOKENS,
                "fill_interval": f"{TICK_MS / 1000:.3f}s",
            },
            "filter_enabled": {**_ALL, "runtime_key": "wardgate.guard.enabled"},
            "filter_enforced": {**_ALL, "runtime_key": "wardgate.guard.enforced"},
            "response_headers_to_add": [
                {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                for k, v in headers.items()
            ],
        }
    )


def route_guard(
    buckets: list[GuardBucket], opts: GuardOptions, *, stage: int = 0
) -> dict[str, Any]:
    """The per-route configuration of the guard filter for these buckets.

    The exact check's answer carries the ``x-ratelimit-*`` headers; the guard, which refuses
    only when the exact check could not answer, adds fixed ones to its 429: the rule with the
    slowest refill, and when one of its tokens comes back."""
    tightest = max(buckets, key=lambda b: b.period / b.requests)
    common = _guard_common(tightest.requests, tightest.period)
    return {
        "@type": T_LOCAL_RATELIMIT,
        "stat_prefix": STAT_PREFIX,
        "stage": stage,  # the descriptors of the route's actions of this stage
        "token_bucket": common["token_bucket"],
        "filter_enabled": common["filter_enabled"],
        "filter_enforced": common["filter_enforced"],
        "descriptors": [b.descriptor for b in buckets],
        "always_consume_default_token_bucket": False,
        "max_dynamic_descriptors": opts.clients,
        "response_headers_to_add": common["response_headers_to_add"],
    }


def guard_filter() -> dict[str, Any]:
    """The listener's guard filter: off unless a route configures it."""
    return {
        "name": F_LOCAL_RATELIMIT,
        "typed_config": {"@type": T_LOCAL_RATELIMIT, "stat_prefix": STAT_PREFIX},
    }
