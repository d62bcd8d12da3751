"""Automatic bans: a client refused too often is blocked for a while, by every Envoy.

A client address (an IPv6 client counts as its /64) that wardgate's exact rate-limit check
refuses ``refusals`` times within ``window`` seconds is banned for ``duration`` seconds. Every
Envoy then refuses that address before anything else runs (an RBAC filter whose
configuration wardgate pushes over ECDS, ``xds/bans.py``), so a banned client costs no
callout at all. Operators can list, add and lift bans (``wardgate bans``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("wardgate.bans")


@dataclasses.dataclass(frozen=True)
class BanPolicy:
    refusals: int = 300  # refusals within the window that earn a ban; 0: no automatic bans
    window: float = 60.0  # seconds
    duration: float = 600.0  # seconds a ban lasts

    @property
    def enabled(self) -> bool:
        return self.refusals > 0


class BanStore(Protocol):
    async def strike(self, network: str, policy: BanPolicy, *, now: float) -> bool:
        """Count one refusal of ``network``; True when this one started a ban."""
        ...

    async def ban(self, network: str, *, until: float) -> None: ...

    async def unban(self, network: str) -> bool: ...

    async def live(self, *, now: float) -> dict[str, float]:
        """The networks banned now, with when each ban ends (epoch seconds)."""
        ...


def network_of(address: str) -> str | None:
    """The network a ban covers for a client address or network: the address itself for
    IPv4 (``/32``), its /64 for IPv6; None for anything that is neither."""
    try:
        net = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen == 128:
        mapped = net.network_address.ipv4_mapped  # an IPv4 client of a dual-stack listener
        if mapped is not None:
            return f"{mapped}/32"
    if net.version == 6 and net.prefixlen > 64:
        net = net.supernet(new_prefix=64)
    return str(net)


def client_network(client: str) -> str | None:
    """The banned unit of a rate-limit client string (``remote_address=...&...``): its
    address's network, or None when the rule does not count per address."""
    for part in client.split("&"):
        key, _, value = part.partition("=")
        if key == "remote_address":
            return network_of(value)
    return None


class AbuseMonitor:
    """Turns refusals into strikes, and strikes into bans."""

    def __init__(
        self,
        *,
        store: BanStore,
        policy: BanPolicy,
        clock: Callable[[], float],
        on_ban: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock
        self._on_ban = on_ban

    @property
    def enabled(self) -> bool:
        return self._policy.enabled

    async def refused(self, client: str) -> None:
        """A rate-limit refusal of ``client``; raises ``StoreError`` when it cannot count."""
        network = client_network(client) if self._policy.enabled else None
        if network is None:
            return
        if await self._store.strike(network, self._policy, now=self._clock()):
            log.warning(
                "banned %s for %.0f s: refused %d times within %.0f s",
                network,
                self._policy.duration,
                self._policy.refusals,
                self._policy.window,
            )
            if self._on_ban is not None:
                self._on_ban(network)
