"""Automatic bans: which network a client is, when strikes become a ban, the RBAC sent."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from xds.type.matcher.v3 import ip_pb2

from wardgate.domain.bans import AbuseMonitor, BanPolicy, client_network, network_of
from wardgate.xds.bans import BANS_FILTER, bans_resource


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
    ],
)
def test_network_of(address: str, network: str | None) -> None:
    assert network_of(address) == network


def test_only_rules_counted_per_address_strike() -> None:
    assert client_network("remote_address=10.0.0.1&x-k=a") == "10.0.0.1/32"
    assert client_network("remote_address=2001:db8:1:2::/64") == "2001:db8:1:2::/64"
    assert client_network("user=ann") is None
    assert client_network("*") is None


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
            await monitor.refused("remote_address=10.0.0.9")
        await monitor.refused("user=ann")  # no address: no strike

    asyncio.run(run())
    assert banned == ["10.0.0.9/32"]
    assert store.counts == {"10.0.0.9/32": 5}


def test_no_strikes_when_bans_are_off() -> None:
    store = Strikes(1)
    monitor = AbuseMonitor(store=store, policy=BanPolicy(0), clock=lambda: 0.0)
    asyncio.run(monitor.refused("remote_address=10.0.0.9"))
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
    ]
    assert bans_resource(["2001:db8::/64", "10.0.0.9/32"]) == bans_resource(
        ["10.0.0.9/32", "2001:db8::/64"]
    )  # the same set, the same bytes
