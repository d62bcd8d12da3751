"""One request as the access log tells it, in plain values, and the bounded labels made of it.

Every label that reaches Prometheus comes from a bounded set: methods are the nine of HTTP
(anything else is ``OTHER``), statuses are classes (``2xx``, ``none`` when no response went
out), route names are the documents' names (which Envoy got from wardgate) up to a cap per
process, past which they count as ``(other)``. Client names (users, API keys, addresses) are
never labels of the per-route metrics; where a few of them are shown (the top rate-limited
clients) they are cut to ``MAX_CLIENT_CHARS`` and only the top few are exported.
"""

from __future__ import annotations

import dataclasses
import re

METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
NO_ROUTE = "(unmatched)"  # no route matched (404s); not a valid document name
OTHER_ROUTE = "(other)"  # past the cap of distinct route names, or not a route name at all
# A route document's name (domain/doc_base.py NAME_RE) or one of wardgate's own routes.
_ROUTE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MAX_CLIENT_CHARS = 96
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """What one access-log entry says about one request."""

    route: str  # the route's name; "" when no route matched
    method: str  # one of METHODS, or OTHER
    status: int  # the status sent to the client; 0 when none was
    bytes_in: int  # request headers and body, as received
    bytes_out: int  # response headers and body, as sent
    duration: float  # seconds, first byte received to last byte sent
    start: float  # unix time the request began
    user: str = ""  # the user, or the API key's name, as authenticated (als.identity_of)
    api_key: str = ""  # the API key's name when an API key authenticated the request
    address: str = ""  # the client's address as Envoy decided it (trusted hops applied)
    rate_limited: bool = False  # refused by a rate limit (exact or local)
    request_id: str = ""
    details: str = ""  # Envoy's response code details (why Envoy answered as it did)
    flags: tuple[str, ...] = ()  # Envoy's response flags that were set, by field name


def status_class(status: int) -> str:
    if 100 <= status <= 599:
        return f"{status // 100}xx"
    return "none"


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


def client_of(req: Request) -> str:
    """Who a request came from, most specific first: ``api_key:NAME``, ``user:NAME`` or
    ``ip:ADDRESS``; cut to ``MAX_CLIENT_CHARS`` with anything but visible ASCII as ``?``."""
    if req.api_key:
        text = f"api_key:{req.api_key}"
    elif req.user:
        text = f"user:{req.user}"
    else:
        text = f"ip:{req.address or 'unknown'}"
    return _UNPRINTABLE.sub("?", text[:MAX_CLIENT_CHARS])


class RouteLabels:
    """Route names as metric labels: at most ``limit`` distinct names per process (the
    first seen keep their own label), ``(unmatched)`` for no route, ``(other)`` past that
    or for a name no document could have."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._known: dict[str, str] = {"": NO_ROUTE}
        self.overflowed = 0  # requests counted as (other) for lack of room

    def label(self, route: str) -> str:
        found = self._known.get(route)
        if found is not None:
            return found
        if not _ROUTE_NAME.fullmatch(route):
            return OTHER_ROUTE
        if len(self._known) > self._limit:
            self.overflowed += 1
            return OTHER_ROUTE
        self._known[route] = route
        return route
