"""Route configurations assembled on the protobuf wire.

A scope's ``RouteConfiguration`` is its name and one virtual host: the head every route
inherits, then the routes. Each route is serialized once, already framed as a
``VirtualHost.routes`` field, and a configuration is those bytes concatenated: copying ten
thousand messages into new ones cost more than everything else together. A message's fields
may come in any order, so the result parses as the message built field by field would.
"""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_components_pb2

from wardgate.xds import pbencode

# Field numbers: RouteConfiguration.name, .virtual_hosts; VirtualHost.routes.
_CONFIG_NAME, _CONFIG_VHOSTS, _VHOST_ROUTES = 1, 2, 3
_ROUTE = route_components_pb2.Route.DESCRIPTOR


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes and messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def route_field(entry: dict[str, Any]) -> bytes:
    """A route in Envoy's JSON form, serialized as a ``VirtualHost.routes`` field."""
    return _field(_VHOST_ROUTES, pbencode.encode(entry, _ROUTE))


def route_configuration(name: str, vhost_head: bytes, routes: list[bytes]) -> bytes:
    """A serialized ``RouteConfiguration`` named ``name`` with one virtual host: its head
    (a serialized ``VirtualHost`` without routes), then ``routes`` (from ``route_field``)."""
    vhost = _field(_CONFIG_VHOSTS, vhost_head + b"".join(routes))
    return _field(_CONFIG_NAME, name.encode()) + vhost


def with_route_extra(field: bytes, extra: bytes) -> bytes:
    """A ``route_field`` with ``extra`` (serialized ``Route`` fields) added to its route: the
    fields of two serializations of one message merge."""
    pos = len(_varint(_VHOST_ROUTES << 3 | 2))
    length, shift = 0, 0
    while True:
        byte = field[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return _field(_VHOST_ROUTES, field[pos : pos + length] + extra)
