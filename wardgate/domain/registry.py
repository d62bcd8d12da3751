"""Instances of ``discovery: registry`` services, as heartbeats report them.

A heartbeat names an address Envoy will send traffic to, so it is checked strictly: the
fields have their exact JSON types (``"port": true`` is not port 1), and an address that is
unspecified (``0.0.0.0``, ``::``), link-local (``169.254.169.254``, the cloud metadata
service), multicast or reserved is refused, as is any of the gateway's own endpoints (its
Redis, its own gRPC and HTTP ports): a registered instance must never turn the gateway into
a proxy to its own insides.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK = "loopback"  # stands for every loopback address in ``Reserved.endpoints``


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


# Cloud metadata and host agent services outside link-local space: AWS's IPv6 instance
# metadata, Alibaba's metadata, Azure's wire server.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)


@dataclasses.dataclass(frozen=True)
class Reserved:
    """The gateway's own endpoints: (address or ``LOOPBACK``, port), and ports it owns on
    every address (where it listens on all of them)."""

    endpoints: frozenset[tuple[str, int]] = frozenset()
    ports_everywhere: frozenset[int] = frozenset()

    @classmethod
    def of(
        cls, endpoints: Iterable[tuple[str, int]], ports_everywhere: Iterable[int] = ()
    ) -> Reserved:
        out: set[tuple[str, int]] = set()
        for host, port in endpoints:
            if host == "localhost":
                out.add((LOOPBACK, port))
                continue
            try:
                ip = _plain(ipaddress.ip_address(host))
            except ValueError:
                continue  # a host name: resolved by nobody here, and not an instance address
            out.add((LOOPBACK if ip.is_loopback else str(ip), port))
        return cls(frozenset(out), frozenset(ports_everywhere))

    def holds(self, ip: IPAddress, port: int) -> bool:
        key = LOOPBACK if ip.is_loopback else str(ip)
        return (key, port) in self.endpoints or port in self.ports_everywhere


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    service: str
    instance: Instance
    ttl: float


def _plain(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def check_address(address: str, port: int, reserved: Reserved) -> str:
    """The address in its canonical form, or ``ValueError`` saying why it may not be used."""
    try:
        ip = _plain(ipaddress.ip_address(address))
    except ValueError:
        raise ValueError(f"address {address!r} must be an IP address") from None
    kind = (
        None
        if ip.is_loopback  # IPv6's ::1 is inside the reserved ::/8
        else "unspecified"
        if ip.is_unspecified
        else "link-local"
        if ip.is_link_local
        else "multicast"
        if ip.is_multicast
        else "reserved"
        if ip.is_reserved or str(ip) == "255.255.255.255"
        else "a cloud metadata service"
        if ip in METADATA_ADDRESSES
        else None
    )
    if kind is not None:
        raise ValueError(f"address {address} is {kind}: not an instance address")
    if reserved.holds(ip, port):
        raise ValueError(f"{address}:{port} is one of the gateway's own endpoints")
    return str(ip)


def validate_instance(
    address: str, port: int, weight: int, ttl: float, *, reserved: Reserved | None = None
) -> Instance:
    """An ``Instance``, or ``ValueError`` with a one-line reason."""
    if not 0 < port < 65536:
        raise ValueError(f"port {port} must be 1-65535")
    canonical = check_address(address, port, reserved or Reserved())
    if not 1 <= weight <= 128:
        raise ValueError(f"weight {weight} must be 1-128")
    if not 1 <= ttl <= 3600:
        raise ValueError(f"ttl {ttl} must be 1s to 1h")
    return Instance(canonical, port, weight)


_JSON_TYPES = {str: "a string", int: "an integer", float: "a number"}


def _field(
    body: Mapping[str, object], name: str, kinds: tuple[type, ...], default: object
) -> object:
    """``body[name]`` if it has one of ``kinds`` (a JSON true is not the integer 1)."""
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name} must be {_JSON_TYPES[kinds[-1]]}")
    return value


def parse_heartbeat(body: object, *, reserved: Reserved) -> Heartbeat:
    """A heartbeat from its JSON body ``{"service", "address", "port", "weight"?, "ttl"?}``;
    ``ValueError`` with a one-line reason."""
    if not isinstance(body, dict):
        raise ValueError('send JSON {"service", "address", "port"}')
    unknown = sorted(set(body) - {"service", "address", "port", "weight", "ttl"})
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    service = _field(body, "service", (str,), None)
    address = _field(body, "address", (str,), None)
    port = _field(body, "port", (int,), None)
    weight = _field(body, "weight", (int,), 1)
    ttl = _field(body, "ttl", (int, float), 10)
    assert isinstance(service, str) and isinstance(address, str)
    assert isinstance(port, int) and isinstance(weight, int) and isinstance(ttl, int | float)
    instance = validate_instance(address, port, weight, float(ttl), reserved=reserved)
    return Heartbeat(service, instance, float(ttl))
