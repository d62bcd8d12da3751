"""Automatic bans: which network a client is, when strikes become a ban, the RBAC sent."""

from __future__ import annotations

import asyncio
import time

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from xds.type.matcher.v3 import ip_pb2

from wardgate.domain.bans import AbuseMonitor, BanPolicy, network_of
from wardgate.domain.ratelimit import RULE_KEY, encode_rule, parse_descriptor
from wardgate.metrics import create_metrics
from wardgate.xds.bans import BANS_FILTER, BanPublisher, bans_resource


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("203.0.113.7", "203.0.113.7/32"),
        ("2001:db8:1:2::7", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::/64", "2001:db8:1:2::/64"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("::ffff:10.0.0.1", "10.0.0.1/32"),  # IPv4 on a dual-stack listener
        ("nonsense", None),
        ("", None),
        ("0.0.0.0/0", None),  # wider than a /8: never
        ("::/0", None),
        ("10.0.0.0/7", None),
    ],
)
def test_network_of(address: str, network: str | None) -> None:
    assert network_of(address) == network


def _network(*entries: tuple[str, str]) -> str | None:
    rule = encode_rule("r#0", 1, 60, "fixed_window", False)
    req = parse_descriptor([(RULE_KEY, rule), *entries])
    assert req is not None
    return req.network


def test_the_network_struck_is_the_one_envoy_gave() -> None:
    assert _network(("remote_address", "10.0.0.1"), ("header:x-k", "a")) == "10.0.0.1/32"
    assert _network(("remote_address", "2001:db8:1:2::9")) == "2001:db8:1:2::/64"
    assert _network(("remote_address", "::ffff:10.0.0.1")) == "10.0.0.1/32"
    assert _network(("user", "ann")) is None
    # Issue 10 review: a header value cannot pass for the address.
    assert _network(("header:x-k", "z&remote_address=0.0.0.0/0")) is None
    assert _network(("header:x-k", "z"), ("remote_address", "10.0.0.2")) == "10.0.0.2/32"


class Strikes:
    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.counts: dict[str, int] = {}

    async def strike(self, network: str, policy: BanPolicy, *, now: float) -> bool:
        self.counts[network] = self.counts.get(network, 0) + 1
        return self.counts[network] == self.threshold

    async def ban(self, network: str, *, until: float) -> None: ...

    async def unban(self, network: str) -> bool:
        return False

    async def live(self, *, now: float) -> dict[str, float]:
        return {}


def test_strikes_become_a_ban_once() -> None:
    store = Strikes(3)
    banned: list[str] = []
    monitor = AbuseMonitor(
        store=store, policy=BanPolicy(3, 60, 600), clock=lambda: 0.0, on_ban=banned.append
    )

    async def run() -> None:
        for _ in range(5):
            await monitor.refused("10.0.0.9/32")

    asyncio.run(run())
    assert banned == ["10.0.0.9/32"]
    assert store.counts == {"10.0.0.9/32": 5}


def test_no_strikes_when_bans_are_off() -> None:
    store = Strikes(1)
    monitor = AbuseMonitor(store=store, policy=BanPolicy(0), clock=lambda: 0.0)
    asyncio.run(monitor.refused("10.0.0.9/32"))
    assert store.counts == {}


def _rbac(networks: list[str]) -> rbac_pb2.RBAC:
    resource = extension_pb2.TypedExtensionConfig.FromString(bans_resource(networks))
    assert resource.name == BANS_FILTER
    config = rbac_pb2.RBAC()
    assert resource.typed_config.Unpack(config)
    return config


def test_no_bans_lets_everyone_through() -> None:
    config = _rbac([])
    assert not config.HasField("matcher")
    assert config.rules.action == config.rules.DENY and not config.rules.policies


def test_bans_are_an_ip_matcher_that_denies() -> None:
    config = _rbac(["10.0.0.9/32", "2001:db8::/64", "10.0.0.9/32"])
    tree = config.matcher.matcher_tree
    assert tree.input.typed_config.type_url.endswith("SourceIPInput")
    matcher = ip_pb2.IPMatcher()
    assert tree.custom_match.typed_config.Unpack(matcher)
    (ranges,) = matcher.range_matchers
    assert sorted((r.address_prefix, r.prefix_len.value) for r in ranges.ranges) == [
        ("10.0.0.9", 32),
        ("2001:db8::", 64),
        ("::ffff:a00:9", 128),  # the same client as an IPv4-mapped address
    ]
    assert bans_resource(["2001:db8::/64", "10.0.0.9/32"]) == bans_resource(
        ["10.0.0.9/32", "2001:db8::/64"]
    )  # the same set, the same bytes


class FakeBans:
    def __init__(self) -> None:
        self.bans: dict[str, float] = {}
        self.changes = 0
        self.reads = 0

    async def strike(self, network: str, policy: BanPolicy, *, now: float) -> bool:
        return False

    async def ban(self, network: str, *, until: float) -> None:
        self.bans[network] = until
        self.changes += 1

    async def unban(self, network: str) -> bool:
        self.changes += 1
        return self.bans.pop(network, None) is not None

    async def live(self, *, now: float) -> dict[str, float]:
        self.reads += 1
        return {n: u for n, u in self.bans.items() if u > now}

    async def version(self) -> int:
        return self.changes


def _published(data: bytes) -> set[str]:
    config = _rbac_of(data)
    if not config.HasField("matcher"):
        return set()
    matcher = ip_pb2.IPMatcher()
    config.matcher.matcher_tree.custom_match.typed_config.Unpack(matcher)
    return {
        f"{r.address_prefix}/{r.prefix_len.value}"
        for m in matcher.range_matchers
        for r in m.ranges
        if not r.address_prefix.startswith("::ffff:")
    }


def _rbac_of(data: bytes) -> rbac_pb2.RBAC:
    resource = extension_pb2.TypedExtensionConfig.FromString(data)
    config = rbac_pb2.RBAC()
    resource.typed_config.Unpack(config)
    return config


def test_the_publisher_reads_again_only_on_change_or_expiry_and_skips_bad_entries() -> None:
    """Issue 10 review: one bad member stopped publishing for good; the whole set was read
    every half second."""
    store = FakeBans()
    sent: list[bytes] = []
    publisher = BanPublisher(
        store=store, publish=lambda _n, d: sent.append(d) or True, metrics=create_metrics()
    )

    async def run() -> None:
        now = time.time()
        await store.ban("10.0.0.1/32", until=now + 60)
        store.bans["not-a-network"] = now + 60  # a raw ZADD of garbage
        await publisher.refresh()
        assert _published(sent[-1]) == {"10.0.0.1/32"}
        reads = store.reads
        await publisher.refresh()
        assert store.reads == reads  # nothing changed, nothing ends yet: no read
        await store.unban("10.0.0.1/32")
        await publisher.refresh()
        assert _published(sent[-1]) == set()
        await store.ban("10.0.0.2/32", until=time.time() + 0.05)
        await publisher.refresh()
        assert _published(sent[-1]) == {"10.0.0.2/32"}
        await asyncio.sleep(0.1)
        await publisher.refresh()  # the ban ended: read again although nothing changed
        assert _published(sent[-1]) == set()

    asyncio.run(run())


def test_the_list_is_capped_keeping_the_longest_bans() -> None:
    store = FakeBans()
    sent: list[bytes] = []
    publisher = BanPublisher(
        store=store,
        publish=lambda _n, d: sent.append(d) or True,
        metrics=create_metrics(),
        max_bans=2,
    )

    async def run() -> None:
        now = time.time()
        for i, ttl in enumerate((10, 30, 20)):
            await store.ban(f"10.0.0.{i}/32", until=now + ttl)
        await publisher.refresh()

    asyncio.run(run())
    assert _published(sent[-1]) == {"10.0.0.1/32", "10.0.0.2/32"}
