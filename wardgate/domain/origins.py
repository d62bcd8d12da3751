"""The CSRF rule's question: does a request come from the gateway's own pages, or from an
origin the route allows? One answer for ext_authz (``domain/authz.py``) and for
``POST /auth/logout`` (``http/app.py``).

An origin is (scheme, host, port), compared exactly after normalizing: scheme and host in
lower case, the host without trailing dots, the default port (80, 443) filled in. Only
``http`` and ``https`` origins exist here; ``null``, other schemes, user info, an Origin
header with a path, a host that is not ASCII (browsers send IDNs as punycode) or not a plain
host name or IP literal, a bad port: all are foreign. The gateway's own origin is the scheme
the client used (``x-forwarded-proto``, which Envoy sets; else the request's own scheme) with
the request's authority, so a page on ``http://gw`` is foreign to the gateway reached over
``https://gw`` (a network attacker can write the ``http`` one).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from wardgate.domain.origin_patterns import DEFAULT_PORTS, is_wildcard, parse_wildcard

CSRF_CODE = "csrf"
CSRF_MESSAGE = "cross-site request refused: Origin is not allowed"

_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://([^/?#]*)\Z")
_AUTHORITY = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::([0-9]{1,5}))?\Z")


@dataclasses.dataclass(frozen=True)
class WebOrigin:
    scheme: str
    host: str
    port: int


def web_origin(scheme: str, authority: str) -> WebOrigin | None:
    """The origin of ``scheme`` and ``host[:port]``; ``None`` if either is not one."""
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS or not authority.isascii():
        return None
    match = _AUTHORITY.match(authority.lower())
    if match is None:
        return None
    host = match.group(1).rstrip(".")
    port = int(match.group(2)) if match.group(2) else DEFAULT_PORTS[scheme]
    if not host or not 0 < port < 65536:
        return None
    return WebOrigin(scheme, host, port)


def origin_header(value: str) -> WebOrigin | None:
    """An ``Origin`` header's origin: exactly ``scheme://host[:port]``."""
    if not value.isascii():
        return None
    match = _ORIGIN.match(value.strip().lower())
    return web_origin(match.group(1), match.group(2)) if match else None


def referer_origin(value: str) -> WebOrigin | None:
    """The origin of a ``Referer`` URL (its path and query do not matter)."""
    if not value.isascii():
        return None
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    return web_origin(parts.scheme, parts.netloc)


def request_scheme(forwarded_proto: str | None, scheme: str | None) -> str:
    """The scheme the client used: ``x-forwarded-proto`` (Envoy sets it to its downstream
    connection's, or keeps a trusted proxy's: ``trusted_proxy_hops``), else the request's."""
    for candidate in ((forwarded_proto or "").split(",")[0], scheme or ""):
        candidate = candidate.strip().lower()
        if candidate in DEFAULT_PORTS:
            return candidate
    return "http"


def source_allowed(
    *,
    origin: str | None,
    referer: str | None,
    authority: str,
    scheme: str,
    allowed: Iterable[str] = (),
) -> bool:
    """Whether a state-changing request may go on: its ``Origin`` (else its ``Referer``) is the
    gateway itself (``scheme`` and ``authority``) or one of the ``allowed`` origins. A request
    with neither header is no cross-site browser request, and may."""
    if origin:
        source = origin_header(origin)
    elif referer:
        source = referer_origin(referer)
    else:
        return True
    if source is None:
        return False
    if source == web_origin(scheme, authority):
        return True
    return any(_allows(a, source) for a in allowed)


def _allows(allowed: str, source: WebOrigin) -> bool:
    """Whether the allowed origin (exact or wildcard, ``origin_patterns.py``) is ``source``."""
    if is_wildcard(allowed):
        try:
            pattern = parse_wildcard(allowed)
        except ValueError:
            return False
        return pattern.allows(source.scheme, source.host, source.port)
    return source == origin_header(allowed)
