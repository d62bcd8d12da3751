"""Instances of ``discovery: registry`` services, as heartbeats report them."""

from __future__ import annotations

import dataclasses
import ipaddress


@dataclasses.dataclass(frozen=True, order=True)
class Instance:
    address: str
    port: int
    weight: int = 1

    def member(self) -> str:
        return f"{self.address}|{self.port}|{self.weight}"

    @classmethod
    def from_member(cls, member: str) -> Instance | None:
        try:
            address, port, weight = member.split("|")
            return cls(address, int(port), int(weight))
        except ValueError:
            return None


def validate_instance(address: str, port: int, weight: int, ttl: float) -> Instance:
    """An ``Instance``, or ``ValueError`` with a one-line reason."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"address {address!r} must be an IP address") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} must be 1-65535")
    if not 1 <= weight <= 128:
        raise ValueError(f"weight {weight} must be 1-128")
    if not 1 <= ttl <= 3600:
        raise ValueError(f"ttl {ttl} must be 1s to 1h")
    return Instance(address, port, weight)
