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

    async def version(self) -> int:
        """Changes whenever a ban is added or lifted (a ban ending does not change it)."""
        ...


MIN_PREFIX = {4: 8, 6: 32}  # an operator's ban covers at most a /8 or a /32


def network_of(address: str) -> str | None:
    """The network a ban covers for a client address or network: the address itself for
    IPv4 (``/32``), its /64 for IPv6; None for anything that is neither, or wider than
    ``MIN_PREFIX`` allows."""
    try:
        net = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return None
    if net.prefixlen < MIN_PREFIX[net.version]:
        return None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen == 128:
        mapped = net.network_address.ipv4_mapped  # an IPv4 client of a dual-stack listener
        if mapped is not None:
            return f"{mapped}/32"
    if net.version == 6 and net.prefixlen > 64:
        net = net.supernet(new_prefix=64)
    return str(net)


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

    async def refused(self, network: str) -> None:
        """A request of ``network`` (a client's address as Envoy gave it: an IPv4 address,
        an IPv6 /64) refused by a rate limit; raises ``StoreError`` when it cannot count."""
        if not self._policy.enabled:
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
