"""The authorization decision for one request on one route.

Input: the route's policy (carried by Envoy in ``context_extensions``) and the facts of the
request. Output: ``Allow`` (with the identity to pass upstream) or ``Deny`` (status, code,
message). Store failures propagate as ``StoreError``; the servicer applies the failure mode.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from wardgate.domain.cookies import read_cookie, strip_cookie
from wardgate.domain.origins import CSRF_CODE, CSRF_MESSAGE, request_scheme, source_allowed
from wardgate.domain.ports import ApiKeyStore
from wardgate.domain.sessions import Identity, SessionService
from wardgate.domain.tokens import JwtVerifier, TokenError, hash_api_key, well_formed_api_key

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUTH_METHODS = frozenset({"none", "session", "jwt", "api_key", "any"})
ACCEPTS = {
    "session": frozenset({"session"}),
    "jwt": frozenset({"jwt"}),
    "api_key": frozenset({"api_key"}),
    "any": frozenset({"session", "jwt", "api_key"}),
}


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
    scheme: str = ""  # the request's :scheme; x-forwarded-proto, when set, says more


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


AccessDecision = Allow | Deny  # what the authorizer answers for one request on one route


class VerifierSource(Protocol):
    """Where the current JWT verifier comes from (the watcher replaces it as issuers change)."""

    @property
    def verifier(self) -> JwtVerifier: ...


class _NoIssuers:
    verifier = JwtVerifier([])


class Authorizer:
    """Credentials, in this order when a route accepts several: ``x-api-key``, then
    ``authorization: Bearer``, then the session cookie. A credential that is present but
    bad is refused even if a later one would do: a client gets told what is wrong."""

    def __init__(
        self,
        *,
        sessions: SessionService,
        cookie_name: str,
        api_keys: ApiKeyStore | None = None,
        issuers: VerifierSource | None = None,
        clock: Callable[[], float] = time.time,
        ticket_cookie: str | None = None,
    ) -> None:
        self._sessions = sessions
        self._cookie = cookie_name
        # Cookies for the gateway only, removed from what the upstream gets.
        self._own_cookies = (cookie_name, *((ticket_cookie,) if ticket_cookie else ()))
        self._api_keys = api_keys
        self._issuers = issuers or _NoIssuers()
        self._clock = clock

    async def _identify(
        self, accepts: frozenset[str], facts: RequestFacts, session_id: str | None
    ) -> Identity | Deny:
        api_key = facts.headers.get("x-api-key")
        if "api_key" in accepts and api_key is not None:
            return await self._api_key(api_key)
        bearer = facts.headers.get("authorization", "")
        if "jwt" in accepts and bearer[:7].lower() == "bearer ":
            try:
                return self._issuers.verifier.verify(bearer[7:].strip())
            except TokenError as exc:
                return Deny(401, "invalid_token", str(exc))
        if "session" in accepts and session_id is not None:
            identity = await self._sessions.resolve(session_id)
            if identity is not None:
                return identity
            return Deny(401, "unauthenticated", "your session is not valid (any more); sign in")
        wanted = {"session": "a session", "jwt": "a bearer token", "api_key": "an API key"}
        return Deny(
            401,
            "unauthenticated",
            "this route requires " + " or ".join(wanted[m] for m in sorted(accepts)),
        )

    async def _api_key(self, key: str) -> Identity | Deny:
        if self._api_keys is None or not well_formed_api_key(key):
            return Deny(401, "invalid_api_key", "the API key is not valid")
        record = await self._api_keys.get_key(hash_api_key(key))
        if record is None:
            return Deny(401, "invalid_api_key", "the API key is not valid")
        if record.expires_at and record.expires_at <= self._clock():
            return Deny(401, "invalid_api_key", "the API key has expired")
        return Identity(record.name, record.roles, "api_key", record.expires_at, tier=record.tier)

    async def decide(self, policy: RoutePolicy, facts: RequestFacts) -> AccessDecision:
        cookie_header = facts.headers.get("cookie")  # several headers arrive joined with ","
        session_id = read_cookie(cookie_header, self._cookie)
        rewritten = None
        if cookie_header is not None:
            stripped = strip_cookie(cookie_header, *self._own_cookies)
            rewritten = stripped if stripped != cookie_header else None
        if policy.require == "none":
            return Allow(None, rewritten)
        accepts = ACCEPTS[policy.require]
        found = await self._identify(accepts, facts, session_id)
        if isinstance(found, Deny):
            return found
        identity = found
        if policy.roles and not (policy.roles & set(identity.roles)):
            return Deny(403, "forbidden", "your roles do not allow this route")
        if (
            identity.method == "session"
            and facts.method in UNSAFE_METHODS
            and not source_allowed(
                origin=facts.headers.get("origin"),
                referer=facts.headers.get("referer"),
                authority=facts.host,
                scheme=request_scheme(facts.headers.get("x-forwarded-proto"), facts.scheme),
                allowed=policy.cors_origins,
            )
        ):
            return Deny(403, CSRF_CODE, CSRF_MESSAGE)
        return Allow(identity, rewritten)
