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
_ALLOW_ALL = {"@type": T_RBAC, "rules": {"action": "DENY"}}  # deny by no policy: nobody


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


def bans_config(networks: Iterable[str]) -> dict[str, Any]:
    """The RBAC filter configuration that refuses ``networks`` (CIDR strings)."""
    ranges = []
    for text in sorted(set(networks)):
        net = ipaddress.ip_network(text, strict=False)
        ranges.append({"address_prefix": str(net.network_address), "prefix_len": net.prefixlen})
    if not ranges:
        return dict(_ALLOW_ALL)
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
            "default_config": dict(_ALLOW_ALL),
            "apply_default_config_without_warming": True,
            "type_urls": [T_RBAC],
        },
    }


class BanPublisher:
    """Keeps the published ban list equal to the live bans in the store."""

    def __init__(
        self,
        *,
        store: BanStore,
        publish: Callable[[str, bytes], bool],
        metrics: Metrics,
        every: float = 0.5,
    ) -> None:
        self._store = store
        self._publish = publish
        self._metrics = metrics
        self._every = every
        self._published: frozenset[str] | None = None

    async def refresh(self) -> None:
        try:
            live = frozenset(await self._store.live(now=time.time()))
        except StoreError:
            self._metrics.store_errors.labels("bans").inc()
            return  # Envoy keeps the last list; bans end when the store is back
        if live == self._published:
            return
        self._publish(BANS_FILTER, bans_resource(live))
        self._published = live
        self._metrics.banned_clients.set(len(live))
        log.info("ban list: %d networks", len(live))

    async def run(self) -> None:
        self._publish(BANS_FILTER, bans_resource(()))  # the filter has a config from the start
        while True:
            await self.refresh()
            await asyncio.sleep(self._every)
