"""The authorization decision for one request on one route.

Input: the route's policy (carried by Envoy in ``context_extensions``) and the facts of the
request. Output: ``Allow`` (with the identity to pass upstream) or ``Deny`` (status, code,
message). Store failures propagate as ``StoreError``; the servicer applies the failure mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from urllib.parse import urlsplit

from wardgate.domain.sessions import Identity, SessionService, parse_cookies, strip_cookie

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUTH_METHODS = frozenset({"none", "session", "jwt", "api_key", "any"})


@dataclasses.dataclass(frozen=True)
class RoutePolicy:
    route: str
    require: str
    roles: frozenset[str]
    cors_origins: frozenset[str]

    @classmethod
    def from_context(cls, ext: Mapping[str, str]) -> RoutePolicy:
        require = ext.get("auth", "none")
        if require not in AUTH_METHODS:
            require = "session"  # unknown requirement: the strict reading
        return cls(
            route=ext.get("route", ""),
            require=require,
            roles=frozenset(r for r in ext.get("roles", "").split(",") if r),
            cors_origins=frozenset(o.lower() for o in ext.get("cors_origins", "").split(" ") if o),
        )


@dataclasses.dataclass(frozen=True)
class RequestFacts:
    method: str
    host: str
    path: str
    headers: Mapping[str, str]  # lower-case names


@dataclasses.dataclass(frozen=True)
class Allow:
    identity: Identity | None
    # New value of the Cookie header for the upstream ("" = remove it), None = untouched.
    cookie: str | None = None


@dataclasses.dataclass(frozen=True)
class Deny:
    status: int
    code: str
    message: str


Decision = Allow | Deny


def _origin_of(value: str) -> tuple[str, str]:
    """(``scheme://host[:port]``, ``host[:port]``) of an Origin or Referer value."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return "", ""
    netloc = parts.netloc.lower()
    return f"{parts.scheme.lower()}://{netloc}", netloc


class Authorizer:
    def __init__(self, *, sessions: SessionService, cookie_name: str) -> None:
        self._sessions = sessions
        self._cookie = cookie_name

    async def decide(self, policy: RoutePolicy, facts: RequestFacts) -> Decision:
        cookie_header = facts.headers.get("cookie")
        cookies = parse_cookies(cookie_header)
        session_id = cookies.get(self._cookie)
        rewritten = None
        if session_id is not None and cookie_header is not None:
            rewritten = strip_cookie(cookie_header, self._cookie)
        if policy.require == "none":
            return Allow(None, rewritten)
        identity: Identity | None = None
        if policy.require in ("session", "any") and session_id is not None:
            identity = await self._sessions.resolve(session_id)
        if identity is None:
            if policy.require in ("jwt", "api_key"):
                return Deny(401, "unauthenticated", f"this route requires {policy.require}")
            return Deny(401, "unauthenticated", "sign in first: no valid session")
        if policy.roles and not (policy.roles & set(identity.roles)):
            return Deny(403, "forbidden", "your roles do not allow this route")
        if identity.method == "session" and facts.method in UNSAFE_METHODS:
            source = facts.headers.get("origin") or facts.headers.get("referer")
            if source and source != "null":
                origin, netloc = _origin_of(source)
                allowed = (netloc and netloc == facts.host.lower()) or origin in policy.cors_origins
            else:
                allowed = source is None  # no Origin and no Referer: not a browser form post
            if not allowed:
                return Deny(403, "csrf", "cross-site request refused: Origin is not allowed")
        return Allow(identity, rewritten)
