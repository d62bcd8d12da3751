"""Rate-limit descriptors and the RateLimiter, against a reference fixed-window counter store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wardgate.domain.ports import LimitCheck, LimitOutcome
from wardgate.domain.ratelimit import (
    MAX_VALUE_LEN,
    OVERFLOW,
    RULE_KEY,
    ClientBudget,
    LimitDecision,
    LimitRequest,
    RateLimiter,
    encode_rule,
    parse_descriptor,
)

# --- descriptors --------------------------------------------------------------------------


def test_parse_descriptor_reads_encode_rule_output() -> None:
    value = encode_rule("users-api#0", 100, 60, "fixed_window", False)
    assert value == "users-api#0|100|60|fixed_window|0"
    req = parse_descriptor([(RULE_KEY, value), ("remote_address", "10.0.0.1")])
    assert req == LimitRequest(
        "users-api#0",
        100,
        60,
        "fixed_window",
        False,
        "remote_address=10.0.0.1",
        chosen=True,
        network="10.0.0.1/32",
    )


def test_parse_descriptor_joins_every_dimension() -> None:
    value = encode_rule("r#1", 5, 1, "token_bucket", True)
    req = parse_descriptor([(RULE_KEY, value), ("user", "alice"), ("header", "t1")])
    assert req is not None
    assert req.client == "user=alice&header=t1"
    assert req.shadow is True
    assert req.algorithm == "token_bucket"


def test_parse_descriptor_without_dimension_is_one_client() -> None:
    req = parse_descriptor([(RULE_KEY, encode_rule("r#0", 1, 60, "sliding_window", False))])
    assert req is not None
    assert req.client == "*"


def test_parse_descriptor_truncates_long_values() -> None:
    value = encode_rule("r#0", 1, 60, "fixed_window", False)
    req = parse_descriptor([(RULE_KEY, value), ("header", "x" * 10_000)])
    assert req is not None
    assert req.client == "header=" + "x" * MAX_VALUE_LEN


@pytest.mark.parametrize(
    "entries",
    [
        [],
        [("remote_address", "10.0.0.1")],
        [("generic_key", "r#0|1|60|fixed_window|0")],
        [(RULE_KEY, "")],
        [(RULE_KEY, "r#0|1|60|fixed_window")],
        [(RULE_KEY, "r#0|1|60|fixed_window|0|extra")],
        [(RULE_KEY, "r#0|many|60|fixed_window|0")],
        [(RULE_KEY, "r#0|1|1.5|fixed_window|0")],
        [(RULE_KEY, "r#0|0|60|fixed_window|0")],
        [(RULE_KEY, "r#0|-5|60|fixed_window|0")],
        [(RULE_KEY, "r#0|1|0|fixed_window|0")],
        [(RULE_KEY, "r#0|1|60|leaky_bucket|0")],
        [("remote_address", "10.0.0.1"), (RULE_KEY, "r#0|1|60|fixed_window|0")],
    ],
)
def test_parse_descriptor_refuses_malformed(entries: list[tuple[str, str]]) -> None:
    assert parse_descriptor(entries) is None


@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=60)), max_size=5))
def test_parse_descriptor_never_raises(entries: list[tuple[str, str]]) -> None:
    req = parse_descriptor(entries)
    if req is not None:
        assert req.requests >= 1 and req.period >= 1


@given(
    st.lists(st.text(alphabet="0123456789|x-_", max_size=12), min_size=1, max_size=7),
)
def test_parse_descriptor_never_raises_on_near_rules(fields: list[str]) -> None:
    req = parse_descriptor([(RULE_KEY, "|".join(fields))])
    if req is not None:
        assert req.requests >= 1 and req.period >= 1


@given(
    rule=st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,20}#[0-9]{1,2}\Z"),
    requests=st.integers(1, 10**9),
    period=st.integers(1, 10**7),
    algorithm=st.sampled_from(["fixed_window", "sliding_window", "token_bucket"]),
    shadow=st.booleans(),
)
def test_encode_then_parse_round_trips(
    rule: str, requests: int, period: int, algorithm: str, shadow: bool
) -> None:
    req = parse_descriptor([(RULE_KEY, encode_rule(rule, requests, period, algorithm, shadow))])
    assert req == LimitRequest(rule, requests, period, algorithm, shadow, "*")


# --- the limiter, against a reference model -----------------------------------------------


class FixedWindowCounters:
    """Reference model of the CounterStore contract, fixed window only.

    A count per key; a check allows while the count is below the limit; nothing is spent
    unless every non-shadow check allows, and then every check is spent.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.calls: list[list[LimitCheck]] = []

    async def check_and_commit(
        self, checks: Sequence[LimitCheck], *, now_ms: int
    ) -> list[LimitOutcome]:
        self.calls.append(list(checks))
        allowed = [self.counts.get(c.key, 0) < c.limit for c in checks]
        commit = all(ok or c.shadow for ok, c in zip(allowed, checks, strict=True))
        if commit:
            for c in checks:
                self.counts[c.key] = self.counts.get(c.key, 0) + 1
        out = []
        for ok, c in zip(allowed, checks, strict=True):
            assert c.algorithm == 1
            assert c.window_start_ms <= now_ms < c.window_start_ms + c.period_ms
            remaining = max(0, c.limit - self.counts.get(c.key, 0))
            out.append(LimitOutcome(ok, remaining, c.window_start_ms + c.period_ms - now_ms))
        return out


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key_for(rule: str, client: str, window: int) -> str:
    return f"{rule}/{client}/{window}"


def limit(
    requests: int, period: int = 60, *, rule: str = "r#0", shadow: bool = False
) -> LimitRequest:
    return LimitRequest(rule, requests, period, "fixed_window", shadow, "remote_address=10.0.0.1")


START = 1_700_000_040.0  # a minute boundary: 1_700_000_040 % 60 == 0


@pytest.fixture
def clock() -> Clock:
    assert START % 60 == 0
    return Clock(START)


@pytest.fixture
def store() -> FixedWindowCounters:
    return FixedWindowCounters()


@pytest.fixture
def limiter(store: FixedWindowCounters, clock: Clock) -> RateLimiter:
    return RateLimiter(counters=store, key_for=key_for, clock=clock)


def decide(limiter: RateLimiter, *requests: LimitRequest) -> LimitDecision:
    return asyncio.run(limiter.decide(list(requests)))


def test_no_requests_is_allowed_without_the_store(
    limiter: RateLimiter, store: FixedWindowCounters
) -> None:
    assert decide(limiter) == LimitDecision(True, [])
    assert store.calls == []


@pytest.mark.parametrize("n", [1, 3, 10])
def test_exactly_n_per_window(
    limiter: RateLimiter, store: FixedWindowCounters, clock: Clock, n: int
) -> None:
    rule = limit(n)
    for i in range(n):
        clock.now = START + i  # spread over the window
        d = decide(limiter, rule)
        assert d.allowed, i
        assert d.verdicts[0].remaining == n - i - 1
    clock.now = START + 59.999
    d = decide(limiter, rule)
    assert not d.allowed
    assert d.verdicts[0].allowed is False
    assert d.retry_after == 1


def test_the_next_window_resets(limiter: RateLimiter, clock: Clock) -> None:
    rule = limit(2)
    assert [decide(limiter, rule).allowed for _ in range(3)] == [True, True, False]
    clock.now = START + 60
    assert [decide(limiter, rule).allowed for _ in range(3)] == [True, True, False]


def test_windows_are_per_rule_and_per_client(limiter: RateLimiter) -> None:
    a = limit(1)
    other_client = LimitRequest("r#0", 1, 60, "fixed_window", False, "remote_address=10.0.0.2")
    other_rule = limit(1, rule="r#1")
    assert decide(limiter, a).allowed
    assert not decide(limiter, a).allowed
    assert decide(limiter, other_client).allowed
    assert decide(limiter, other_rule).allowed


def test_one_round_trip_per_decision(limiter: RateLimiter, store: FixedWindowCounters) -> None:
    decide(limiter, limit(5), limit(5, rule="r#1"), limit(5, rule="r#2"))
    assert len(store.calls) == 1
    assert [c.key for c in store.calls[0]] == [
        key_for(r, "remote_address=10.0.0.1", int(START // 60)) for r in ("r#0", "r#1", "r#2")
    ]


def test_a_refusal_spends_nothing_from_another_limit(
    limiter: RateLimiter, store: FixedWindowCounters, clock: Clock
) -> None:
    tight, loose = limit(1, rule="tight#0"), limit(5, rule="loose#0")
    loose_key = key_for("loose#0", loose.client, int(START // 60))
    assert decide(limiter, tight, loose).allowed
    assert store.counts[loose_key] == 1
    refused = decide(limiter, tight, loose)  # the store refuses: tight is over
    assert not refused.allowed
    assert [v.allowed for v in refused.verdicts] == [False, True]
    assert store.counts[loose_key] == 1
    again = decide(limiter, tight, loose)  # known to be over: refused without the store
    assert again.from_cache
    assert store.counts[loose_key] == 1
    # The loose limit still has its 4 left.
    clock.now += 1
    assert [decide(limiter, loose).allowed for _ in range(5)] == [True] * 4 + [False]


def test_a_key_known_to_be_over_is_refused_without_the_store_until_its_reset(
    limiter: RateLimiter, store: FixedWindowCounters, clock: Clock
) -> None:
    rule = limit(1)
    clock.now = START + 10
    assert decide(limiter, rule).allowed
    assert not decide(limiter, rule).allowed
    calls = len(store.calls)
    assert calls == 2
    # retry-after counts down to the end of the window, rounded up, at least 1.
    for offset, retry_after in ((10, 50), (30, 30), (59.5, 1)):
        clock.now = START + offset
        d = decide(limiter, rule)
        assert not d.allowed
        assert d.from_cache
        assert d.verdicts[0].remaining == 0
        assert d.retry_after == retry_after
    assert len(store.calls) == calls
    clock.now = START + 60
    d = decide(limiter, rule)
    assert d.allowed
    assert not d.from_cache
    assert len(store.calls) == calls + 1


def test_a_cached_refusal_does_not_hide_other_clients(
    limiter: RateLimiter, store: FixedWindowCounters
) -> None:
    rule = limit(1)
    other = LimitRequest("r#0", 1, 60, "fixed_window", False, "remote_address=10.0.0.9")
    decide(limiter, rule)
    decide(limiter, rule)
    assert decide(limiter, rule).from_cache
    d = decide(limiter, other)
    assert d.allowed and not d.from_cache


def test_shadow_limits_never_refuse(
    limiter: RateLimiter, store: FixedWindowCounters, clock: Clock
) -> None:
    shadow = limit(2, shadow=True)
    decisions = [decide(limiter, shadow) for _ in range(6)]
    assert all(d.allowed for d in decisions)
    assert [d.verdicts[0].allowed for d in decisions] == [True, True, False, False, False, False]
    assert all(d.retry_after == 0 for d in decisions)
    # Never cached as over: every request is counted by the store.
    assert len(store.calls) == 6
    assert not any(d.from_cache for d in decisions)


def test_shadow_over_does_not_block_an_enforced_limit(
    limiter: RateLimiter, store: FixedWindowCounters
) -> None:
    shadow, enforced = limit(1, rule="s#0", shadow=True), limit(3, rule="e#0")
    results = [decide(limiter, shadow, enforced).allowed for _ in range(4)]
    assert results == [True, True, True, False]


def test_check_shapes_for_each_algorithm() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.checks: list[LimitCheck] = []

        async def check_and_commit(
            self, checks: Sequence[LimitCheck], *, now_ms: int
        ) -> list[LimitOutcome]:
            self.checks = list(checks)
            return [LimitOutcome(True, 1, 1000) for _ in checks]

    rec = Recorder()
    lim = RateLimiter(counters=rec, key_for=key_for, clock=Clock(START + 45))
    client = "user=alice"
    reqs = [
        LimitRequest("f#0", 10, 60, "fixed_window", False, client),
        LimitRequest("s#0", 10, 30, "sliding_window", True, client),
        LimitRequest("t#0", 10, 60, "token_bucket", False, client),
    ]
    asyncio.run(lim.decide(reqs))
    fixed, sliding, bucket = rec.checks
    now_ms = int((START + 45) * 1000)
    assert (fixed.algorithm, fixed.limit, fixed.period_ms) == (1, 10, 60_000)
    assert fixed.window_start_ms == now_ms - now_ms % 60_000
    assert fixed.key == key_for("f#0", client, now_ms // 60_000)
    assert fixed.previous_key == key_for("f#0", client, now_ms // 60_000 - 1)
    assert (sliding.algorithm, sliding.period_ms, sliding.shadow) == (2, 30_000, True)
    assert sliding.window_start_ms == now_ms - now_ms % 30_000
    assert sliding.previous_key == key_for("s#0", client, now_ms // 30_000 - 1)
    assert (bucket.algorithm, bucket.period_ms) == (3, 60_000)
    assert bucket.key == bucket.previous_key == key_for("t#0", client, -1)


def test_the_known_over_cache_is_bounded(store: FixedWindowCounters, clock: Clock) -> None:
    lim = RateLimiter(counters=store, key_for=key_for, clock=clock, max_known_over=1)
    a = LimitRequest("r#0", 1, 60, "fixed_window", False, "ip=a")
    b = LimitRequest("r#0", 1, 60, "fixed_window", False, "ip=b")
    for req in (a, b):
        decide(lim, req)
        decide(lim, req)  # over: a is remembered; for b the full memory starts over
    calls = len(store.calls)
    assert decide(lim, b).from_cache  # the newest refusal is remembered...
    d = decide(lim, a)  # ...the older one was let go: asked again, still refused
    assert not d.allowed and not d.from_cache
    assert len(store.calls) == calls + 1
    assert len(lim._over) <= 1


def test_the_known_over_memory_forgets_what_has_reset(
    store: FixedWindowCounters, clock: Clock
) -> None:
    lim = RateLimiter(counters=store, key_for=key_for, clock=clock, max_known_over=2)
    for client in ("a", "b"):
        req = LimitRequest("r#0", 1, 60, "fixed_window", False, f"ip={client}")
        decide(lim, req)
        decide(lim, req)
    clock.now += 120  # both windows are over
    c = LimitRequest("r#0", 1, 60, "fixed_window", False, "ip=c")
    decide(lim, c)
    decide(lim, c)
    assert list(lim._over) == [key_for("r#0", "ip=c", int(clock.now * 1000) // 60_000)]


def test_tiers_choose_the_limit_and_are_not_counted_apart() -> None:
    from wardgate.domain.ratelimit import TIER_KEY, encode_rule, parse_descriptor

    value = encode_rule("api#0", 10, 60, "fixed_window", False, {"gold": 1000, "silver": 100})
    gold = parse_descriptor([("wg_rule", value), ("api_key", "k1"), (TIER_KEY, "gold")])
    plain = parse_descriptor([("wg_rule", value), ("api_key", "k2"), (TIER_KEY, "default")])
    assert gold is not None and gold.requests == 1000 and gold.client == "api_key=k1"
    assert plain is not None and plain.requests == 10


def test_several_dimensions_count_together() -> None:
    from wardgate.domain.documents import parse_document

    doc = {
        "kind": "Route",
        "name": "r",
        "match": {"prefix": "/"},
        "backend": "s",
        "rate_limits": [{"by": ["user", "header:x-tenant"], "requests": 5, "per": "minute"}],
    }
    assert parse_document(doc).rate_limits[0].dimensions == ["user", "header:x-tenant"]  # type: ignore[union-attr]
    doc["rate_limits"] = [{"by": ["user", "user"], "requests": 5, "per": "minute"}]
    with pytest.raises(Exception, match="twice"):
        parse_document(doc)


# --- client-chosen values -------------------------------------------------------------------


def test_an_ipv6_client_counts_as_its_64() -> None:
    value = encode_rule("r#0", 5, 60, "fixed_window", False)
    a = parse_descriptor([(RULE_KEY, value), ("remote_address", "2001:db8:1:2::1")])
    b = parse_descriptor([(RULE_KEY, value), ("remote_address", "2001:db8:1:2:ffff::9")])
    c = parse_descriptor([(RULE_KEY, value), ("remote_address", "2001:db8:1:3::1")])
    v4 = parse_descriptor([(RULE_KEY, value), ("remote_address", "10.0.0.1")])
    mapped = parse_descriptor([(RULE_KEY, value), ("remote_address", "::ffff:10.0.0.1")])
    assert mapped is not None and mapped.client == "remote_address=10.0.0.1"
    assert a is not None and b is not None and c is not None and v4 is not None
    assert a.client == b.client == "remote_address=2001%3Adb8%3A1%3A2%3A%3A%2F64"
    assert a.network == b.network == "2001:db8:1:2::/64"
    assert c.client != a.client
    assert v4.client == "remote_address=10.0.0.1"


def test_which_values_a_client_chooses() -> None:
    value = encode_rule("r#0", 5, 60, "fixed_window", False, {"gold": 9})
    chosen = [("remote_address", "10.0.0.1"), ("x-tenant", "t")]
    established = [("user", "ann"), ("api_key", "k"), ("wg_tier", "gold")]
    for entries, expected in ((chosen, True), (established, False), ([], False)):
        req = parse_descriptor([(RULE_KEY, value), *entries])
        assert req is not None and req.chosen is expected


def _header_request(value: str, rule: str = "r#0") -> LimitRequest:
    return LimitRequest(rule, 2, 60, "fixed_window", False, f"x-k={value}", chosen=True)


def test_past_the_budget_new_values_share_the_overflow_counter(
    store: FixedWindowCounters, clock: Clock
) -> None:
    overflowed: list[str] = []
    budget = ClientBudget(limit=3, on_overflow=overflowed.append)
    limiter = RateLimiter(counters=store, key_for=key_for, clock=clock, budget=budget)
    for v in ("a", "b", "c"):
        assert decide(limiter, _header_request(v)).allowed
    # A flood of new values: all on one counter, which is over at once.
    flood = [decide(limiter, _header_request(f"new{i}")).allowed for i in range(5)]
    assert flood == [True, True, False, False, False]
    assert overflowed == ["r#0"] * 5
    assert {c.key.split("/")[1] for call in store.calls for c in call} == {
        "x-k=a",
        "x-k=b",
        "x-k=c",
        OVERFLOW,
    }
    assert decide(limiter, _header_request("a")).allowed  # known values keep their counter
    assert decide(limiter, _header_request("b", rule="r#1")).allowed  # per rule
    clock.now += 60  # a new window: a new budget
    assert {c.key.split("/")[1] for c in store.calls[-1]} == {"x-k=b"}
    assert decide(limiter, _header_request("new9")).allowed
    assert store.calls[-1][0].key.split("/")[1] == "x-k=new9"


def test_values_the_client_did_not_choose_are_never_bounded() -> None:
    budget = ClientBudget(limit=1)
    for user in ("ann", "bob", "cy"):
        req = LimitRequest("r#0", 2, 60, "fixed_window", False, f"user={user}")
        assert budget.client(req, 0) == f"user={user}"


def test_no_value_can_pass_for_another_entry() -> None:
    """Issue 10 review: the client string joined values unescaped, so a header holding
    ``&remote_address=...`` read as another entry (and as the address to ban)."""
    value = encode_rule("r#0", 5, 60, "fixed_window", False)
    forged = parse_descriptor([(RULE_KEY, value), ("header:x-k", "a&remote_address=1.2.3.4")])
    honest = parse_descriptor(
        [(RULE_KEY, value), ("header:x-k", "a"), ("remote_address", "1.2.3.4")]
    )
    assert forged is not None and honest is not None
    assert forged.client != honest.client
    assert forged.network is None and honest.network == "1.2.3.4/32"
