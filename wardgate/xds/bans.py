"""The ban list in Envoy: an RBAC filter, first after the scope key, whose configuration
comes over ECDS (``TypedExtensionConfig`` resource ``wardgate.bans``), so a ban reaches every
Envoy within a second without touching the listener (no drain) or the route tables.

The banned networks go into an IP matcher (a prefix trie: thousands cost one lookup, not a
scan of a principal list), keyed by the client address Envoy routes by (``SourceIPInput``:
the address taken from ``X-Forwarded-For`` when ``trusted_proxy_hops`` says so, the same one
``by: ip`` counts). Until the first configuration arrives, and whenever it cannot, the
filter's default lets everyone through: bans fail open.

``BanPublisher`` re-reads the live bans every half second (bans end by time) and publishes a
new configuration when the set changed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

# Importing these registers the message types that "@type" below refers to.
from envoy.config.core.v3 import extension_pb2
from envoy.config.rbac.v3 import rbac_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2  # noqa: F401
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2  # noqa: F401
from xds.type.matcher.v3 import ip_pb2  # noqa: F401

from wardgate.domain.bans import BanStore
from wardgate.errors import StoreError
from wardgate.metrics import Metrics
from wardgate.xds import canonical
from wardgate.xds.typeurls import T_RBAC, of

log = logging.getLogger("wardgate.bans")

BANS_FILTER = "wardgate.bans"
T_RBAC_ACTION = of("envoy.config.rbac.v3.Action")
# No ban: DENY rules without a policy refuse nobody.
_NOBODY_BANNED = {"@type": T_RBAC, "rules": {"action": "DENY"}}
MAX_BANS = 10_000  # networks on the list at once: the bans that end last are kept


def _action(name: str, action: str) -> dict[str, Any]:
    return {
        "action": {
            "name": name,
            "typed_config": {
                "@type": of("envoy.config.rbac.v3.Action"),
                "name": name,
                "action": action,
            },
        }
    }


def _ranges(
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> list[dict[str, Any]]:
    """CIDR ranges for the matcher; an IPv4 network also in its IPv4-mapped IPv6 form, the
    address a dual-stack listener (or X-Forwarded-For) may give the same client."""
    out: dict[tuple[str, int], None] = {}
    for net in networks:
        out[(str(net.network_address), net.prefixlen)] = None
        if net.version == 4:
            mapped = ipaddress.IPv6Address(f"::ffff:{net.network_address}")
            out[(str(mapped), 96 + net.prefixlen)] = None
    return [{"address_prefix": a, "prefix_len": n} for a, n in sorted(out)]


def bans_config(networks: Iterable[str]) -> dict[str, Any]:
    """The RBAC filter configuration that refuses ``networks`` (CIDR strings; any that is
    not one is left out)."""
    parsed = []
    for text in sorted(set(networks)):
        try:
            parsed.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            log.warning("ban list: %r is not a network; left out", text)
    ranges = _ranges(parsed)
    if not ranges:
        return dict(_NOBODY_BANNED)
    return {
        "@type": T_RBAC,
        "matcher": {
            "matcher_tree": {
                "input": {
                    "name": "client-address",
                    "typed_config": {
                        "@type": of(
                            "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput"
                        )
                    },
                },
                "custom_match": {
                    "name": "banned",
                    "typed_config": {
                        "@type": of("xds.type.matcher.v3.IPMatcher"),
                        "range_matchers": [{"ranges": ranges, "on_match": _action("ban", "DENY")}],
                    },
                },
            },
            "on_no_match": _action("allow", "ALLOW"),
        },
    }


def bans_resource(networks: Iterable[str]) -> bytes:
    """The ECDS resource for ``networks``, serialized deterministically."""
    resource = canonical.parse(
        {"name": BANS_FILTER, "typed_config": bans_config(networks)},
        extension_pb2.TypedExtensionConfig(),
    )
    data: bytes = resource.SerializeToString(deterministic=True)
    return data


def bans_filter() -> dict[str, Any]:
    """The listener's HTTP filter: its configuration discovered over ADS."""
    return {
        "name": BANS_FILTER,
        "config_discovery": {
            "config_source": {"ads": {}, "resource_api_version": "V3"},
            "default_config": dict(_NOBODY_BANNED),
            "apply_default_config_without_warming": True,
            "type_urls": [T_RBAC],
        },
    }


class BanPublisher:
    """Keeps the published ban list equal to the live bans in the store: it re-reads them
    when the store's version changes (a ban added or lifted) or the next ban ends."""

    def __init__(
        self,
        *,
        store: BanStore,
        publish: Callable[[str, bytes], bool],
        metrics: Metrics,
        every: float = 0.5,
        max_bans: int = MAX_BANS,
    ) -> None:
        self._store = store
        self._publish = publish
        self._metrics = metrics
        self._every = every
        self._max = max_bans
        self._published: frozenset[str] | None = None
        self._version: int | None = None
        self._next_end = 0.0

    async def refresh(self) -> None:
        now = time.time()
        try:
            version = await self._store.version()
            if version == self._version and now < self._next_end:
                return
            live = await self._store.live(now=now)
        except StoreError:
            self._metrics.store_errors.labels("bans").inc()
            return  # Envoy keeps the last list; bans end when the store is back
        self._version = version
        kept = sorted(live, key=live.__getitem__, reverse=True)[: self._max]
        if len(live) > self._max:
            log.warning(
                "ban list: %d networks, %d kept (those banned longest)", len(live), self._max
            )
        self._next_end = min((live[n] for n in kept), default=float("inf"))
        networks = frozenset(kept)
        if networks == self._published:
            return
        # A long list takes a while to build: not on the event loop.
        resource = await asyncio.to_thread(bans_resource, networks)
        self._publish(BANS_FILTER, resource)
        self._published = networks
        self._metrics.banned_clients.set(len(networks))
        log.info("ban list: %d networks", len(networks))

    async def run(self) -> None:
        self._publish(BANS_FILTER, bans_resource(()))  # the filter has a config from the start
        while True:
            await self.refresh()
            await asyncio.sleep(self._every)
