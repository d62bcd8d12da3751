"""Rate-limit decisions from the descriptors Envoy sends.

Each route rule travels in its descriptor, so the service needs no copy of the configuration
and can never disagree with what Envoy was told: the first entry is
``wg_rule = "<route>#<index>|<requests>|<period seconds>|<algorithm>|<shadow 0/1>"``, the
entries after it name the client (``remote_address``, ``user``, ``api_key``,
``header:NAME``). The client's values are percent-encoded into one string, so no value can
pass for another entry (a header holding ``&remote_address=...``).

Clients choose some of those values (any header; an IPv6 address within their network), and
each distinct value is a counter in Redis. So an IPv6 address counts as its /64 (one
customer's network, as a single IPv4 address is), and ``ClientBudget`` bounds how many
distinct chosen values one process counts apart per rule and window: past that, new values
share one overflow counter, which a flood of invented values then exhausts at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import time
import urllib.parse
from collections.abc import Callable, Sequence

from wardgate.domain.ports import CounterStore, LimitCheck, LimitOutcome

RULE_KEY = "wg_rule"
TIER_KEY = "wg_tier"
# Entries a client cannot choose freely: identities the gateway established.
_ESTABLISHED = frozenset({"user", "api_key", TIER_KEY})
OVERFLOW = "wg_overflow"  # the client of every value past the budget
ALGORITHMS = {"fixed_window": 1, "sliding_window": 2, "token_bucket": 3}
MAX_VALUE_LEN = 256


def encode_rule(
    rule_id: str,
    requests: int,
    period: int,
    algorithm: str,
    shadow: bool,
    tiers: dict[str, int] | None = None,
) -> str:
    value = f"{rule_id}|{requests}|{period}|{algorithm}|{int(shadow)}"
    if tiers:
        value += "|" + ",".join(f"{t}={n}" for t, n in sorted(tiers.items()))
    return value


@dataclasses.dataclass(frozen=True)
class LimitRequest:
    rule: str
    requests: int
    period: int
    algorithm: str
    shadow: bool
    client: str  # the dimension values, percent-encoded and joined: "remote_address=10.0.0.1"
    chosen: bool = False  # whether the client chose a value (a header, an address)
    # The client's address as Envoy gave it (an IPv6 one as its /64), when the rule counts
    # per address: what a ban would cover. Never read from the joined ``client``.
    network: str | None = None


def parse_descriptor(entries: Sequence[tuple[str, str]]) -> LimitRequest | None:
    """A ``LimitRequest``, or ``None`` if the descriptor is not one of wardgate's."""
    if not entries or entries[0][0] != RULE_KEY:
        return None
    try:
        rule, requests, period, algorithm, shadow, *rest = entries[0][1].split("|")
        req, per = int(requests), int(period)
        tiers = dict(t.split("=", 1) for t in rest[0].split(",")) if rest else {}
    except ValueError:
        return None
    if algorithm not in ALGORITHMS or req < 1 or per < 1 or len(rest) > 1:
        return None
    # The tier (an API key's, from ext_authz) chooses the limit and is not part of the count.
    tier = next((v for k, v in entries[1:] if k == TIER_KEY), "")
    if tier in tiers:
        try:
            req = int(tiers[tier])
        except ValueError:
            return None
    values = [(k, _grouped(k, v)) for k, v in entries[1:] if k != TIER_KEY]
    client = "&".join(f"{_q(k)}={_q(v[:MAX_VALUE_LEN])}" for k, v in values) or "*"
    chosen = any(k not in _ESTABLISHED for k, _ in values)
    network = next((_network(v) for k, v in entries[1:] if k == "remote_address"), None)
    return LimitRequest(rule, req, per, algorithm, shadow == "1", client, chosen, network)


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address; an IPv4 client of a dual-stack listener as its IPv4 address."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _network(value: str) -> str | None:
    """The network one client holds: an IPv4 address, an IPv6 address's /64."""
    address = _address(value)
    if address is None:
        return None
    prefix = 32 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _grouped(key: str, value: str) -> str:
    """An IPv6 client address as its /64: a client holds a whole /64, not one address."""
    if key == "remote_address":
        address = _address(value)
        if address is None:
            return value
        if address.version == 4:
            return str(address)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return value


class ClientBudget:
    """How many distinct client-chosen values one process counts apart, per rule and window.

    Values already counted in a window keep their counters; once ``limit`` of them are, a new
    value gets the rule's overflow counter instead. Remembered as 8-byte digests, about 80
    bytes each; a window's set is dropped when the next window starts."""

    def __init__(self, *, limit: int, on_overflow: Callable[[str], None] | None = None) -> None:
        self._limit = limit
        self._seen: dict[str, _Window] = {}  # per rule: its current window's values
        self._on_overflow = on_overflow  # called with the rule, for each request sent there

    def client(self, req: LimitRequest, window: int) -> str:
        if not req.chosen or self._limit <= 0:
            return req.client
        current = self._seen.get(req.rule)
        if current is None or current.window != window:
            current = self._seen[req.rule] = _Window(window, set())
        seen = current.values
        digest = hashlib.blake2b(req.client.encode(), digest_size=8).digest()
        if digest in seen:
            return req.client
        if len(seen) >= self._limit:
            if self._on_overflow is not None:
                self._on_overflow(req.rule)
            return OVERFLOW
        seen.add(digest)
        return req.client


@dataclasses.dataclass(frozen=True, slots=True)
class _Window:
    window: int
    values: set[bytes]


@dataclasses.dataclass(frozen=True)
class Verdict:
    request: LimitRequest
    allowed: bool
    remaining: int
    reset_seconds: int
    overflow: bool = False  # counted on the rule's shared overflow counter, not its own


@dataclasses.dataclass(frozen=True)
class LimitDecision:
    """The limiter's verdict on one request: refused when a rule that is not in shadow mode is
    over its limit."""

    allowed: bool
    verdicts: list[Verdict]  # one per descriptor wardgate understood, in order
    from_cache: bool = False

    @property
    def retry_after(self) -> int:
        refused = [v.reset_seconds for v in self.verdicts if not v.allowed and not v.request.shadow]
        return max(refused, default=0)


class RateLimiter:
    """Decides with one ``CounterStore`` round trip, or none when a key is known to be over."""

    def __init__(
        self,
        *,
        counters: CounterStore,
        key_for: Callable[[str, str, int], str],
        clock: Callable[[], float] = time.time,
        max_known_over: int = 100_000,
        budget: ClientBudget | None = None,
    ) -> None:
        self._counters = counters
        self._key_for = key_for
        self._clock = clock
        self.budget = budget or ClientBudget(limit=0)
        self._over: dict[str, int] = {}  # counter key -> ms when it resets
        self._max_over = max_known_over

    def _client(self, req: LimitRequest, now_ms: int) -> str:
        return self.budget.client(req, now_ms // (req.period * 1000))

    def _check(self, req: LimitRequest, client: str, now_ms: int) -> LimitCheck:
        period_ms = req.period * 1000
        window = now_ms // period_ms
        if req.algorithm == "token_bucket":
            key = self._key_for(req.rule, client, -1)
            return LimitCheck(3, req.requests, period_ms, 0, key, key, req.shadow)
        return LimitCheck(
            ALGORITHMS[req.algorithm],
            req.requests,
            period_ms,
            window * period_ms,
            self._key_for(req.rule, client, window),
            self._key_for(req.rule, client, window - 1),
            req.shadow,
        )

    def _prune(self, now_ms: int) -> None:
        """Drop what has reset (old windows' keys are never looked up again); if the
        memory is still full of live refusals, start over rather than stop remembering."""
        self._over = {k: until for k, until in self._over.items() if until > now_ms}
        if len(self._over) >= self._max_over:
            self._over.clear()

    async def decide(self, requests: Sequence[LimitRequest]) -> LimitDecision:
        if not requests:
            return LimitDecision(True, [])
        now_ms = int(self._clock() * 1000)
        clients = [self._client(r, now_ms) for r in requests]
        checks = [self._check(r, c, now_ms) for r, c in zip(requests, clients, strict=True)]
        overflow = [c == OVERFLOW for c in clients]
        # A key known to be over its limit until a later time is refused without Redis.
        for req, check in zip(requests, checks, strict=True):
            until = self._over.get(check.key)
            if until is not None and not req.shadow:
                if until > now_ms:
                    wait = max(1, -(-(until - now_ms) // 1000))
                    return LimitDecision(
                        False,
                        [
                            Verdict(r, r is not req, 0, wait, o)
                            for r, o in zip(requests, overflow, strict=True)
                        ],
                        from_cache=True,
                    )
                del self._over[check.key]
        outcomes: list[LimitOutcome] = await self._counters.check_and_commit(checks, now_ms=now_ms)
        verdicts = []
        allowed = True
        for req, check, out, over in zip(requests, checks, outcomes, overflow, strict=True):
            reset_s = max(1, -(-out.reset_ms // 1000)) if out.reset_ms > 0 else 0
            verdicts.append(Verdict(req, out.allowed, out.remaining, reset_s, over))
            if not out.allowed and not req.shadow:
                allowed = False
                # A sliding window's estimate falls as time passes within the window: its
                # refusal says nothing about the next request. Fixed windows and GCRA do.
                if req.algorithm != "sliding_window":
                    if len(self._over) >= self._max_over:
                        self._prune(now_ms)
                    self._over[check.key] = now_ms + out.reset_ms
        return LimitDecision(allowed, verdicts)
