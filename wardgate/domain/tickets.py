"""Session tickets: a short-lived, signed copy of a session that Envoy checks by itself.

A signed-in browser holds the session cookie (``wg_session``, checked by wardgate against
Redis) and, beside it, a ticket (``wg_ticket``): a JWT of at most ``ticket_ttl`` seconds
(60 at most) naming the session (``sid``, a prefix of the SHA-256 of its id), the user and
their roles. Envoy verifies tickets itself (``jwt_authn``, keys over ECDS) and lets a
ticketed request through without calling wardgate; a request without a valid ticket goes to
ext_authz, which checks the session and sets a fresh ticket (docs/DECISIONS.md, 45-49).

Signing keys (ES256, P-256) never leave the process that made them: each wardgate process
makes its own key pair, publishes the public half (``TicketKeyStore``) ``lead`` seconds
before it signs with it, signs with it for ``rotation`` seconds, and leaves it published for
a ticket's lifetime after that, so that a ticket stays verifiable until it expires. Reading
Redis therefore never lets anyone mint tickets.

Revocation: every revoked session (logout, ``sessions revoke``, a user replaced or deleted)
is recorded with the time (``RevocationList``); every Envoy refuses tickets of those sessions
until a ticket minted before the revocation could have expired.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from wardgate.errors import StoreError

log = logging.getLogger("wardgate.tickets")

TICKET_ISSUER = "urn:wardgate:ticket"  # refused as an Issuer document's iss (doc_issuer.py)
TICKET_AUDIENCE = "wardgate"
ALGORITHM = "ES256"
MAX_TTL = 60.0  # PRODUCT.md: a ticket lives at most 60 s
MAX_SKEW = 30.0
# What a revocation or a retired key is kept for beyond ticket_ttl + clock skew: the time a
# ticket minted while a revocation was under way may still be signed (a worker that read the
# session just before it was deleted), and the publishers' polling.
SLACK = 10.0
# Revocations older than this are deleted from the store whatever the settings say.
MAX_HOLD = MAX_TTL + MAX_SKEW + SLACK
# The header Envoy copies a verified ticket's sid to, for the revocation list's hash map
# (removed from every request first, and before the upstream).
TICKET_SID_HEADER = "x-wardgate-ticket-sid"
SID_LENGTH = 32  # hex digits of the session id's SHA-256 a ticket carries
MAX_PUBLISHED_KEYS = 64  # keys Envoy is given at once, newest first


@dataclasses.dataclass(frozen=True, kw_only=True)
class TicketPolicy:
    ttl: float = 60.0  # a ticket's lifetime (at most MAX_TTL)
    skew: float = 5.0  # clock skew Envoy allows (jwt_authn clock_skew_seconds)
    rotation: float = 3600.0  # how long one key signs
    lead: float = 5.0  # a key is published this long before it signs
    cookie: str = "wg_ticket"

    @property
    def hold(self) -> float:
        """How long a revocation, or a key that stopped signing, must be kept: until every
        ticket it concerns has expired (Envoy's clock may lag by ``skew``)."""
        return self.ttl + self.skew + SLACK


def ticket_sid(session_hash: str) -> str:
    """The session id a ticket carries: a prefix of the SHA-256 of the session's id (the
    store's key; never the id itself, which is the credential)."""
    return session_hash[:SID_LENGTH]


@dataclasses.dataclass(frozen=True)
class Ticket:
    value: str  # the JWT
    expires_at: int  # epoch seconds
    kid: str


@dataclasses.dataclass(frozen=True)
class PublishedKey:
    """A public key as the store keeps it: what Envoy is given."""

    kid: str
    jwk: Mapping[str, Any]
    sign_from: float
    keep_until: float


class TicketKeyStore(Protocol):
    """Where every process publishes the public half of its signing keys."""

    async def publish(self, key: PublishedKey) -> None: ...

    async def keep_until(self, kid: str, until: float) -> None:
        """Shorten how long ``kid`` stays published (a process stopping)."""
        ...

    async def live(self, *, now: float) -> list[PublishedKey]:
        """The keys published now (those past ``keep_until`` are dropped on the way)."""
        ...

    async def version(self) -> int:
        """Changes whenever a key is published or shortened (not when one ends)."""
        ...


class RevocationList(Protocol):
    """Revoked sessions, by ticket sid, with when each was revoked."""

    async def live(self, *, since: float) -> dict[str, float]:
        """The sids revoked at or after ``since`` (epoch seconds), with the time of each."""
        ...

    async def version(self) -> int:
        """Changes whenever a session is revoked."""
        ...


@dataclasses.dataclass
class SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey
    jwk: dict[str, Any]
    sign_from: float
    sign_until: float


def new_signing_key(*, sign_from: float, sign_until: float) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    kid = "wg-" + secrets.token_urlsafe(12)
    jwk: dict[str, Any] = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update(kid=kid, alg=ALGORITHM, use="sig")
    return SigningKey(kid, private, jwk, sign_from, sign_until)


def ticket_claims(
    *, user: str, roles: tuple[str, ...], sid: str, now: int, expires_at: int
) -> dict[str, Any]:
    """What a ticket says. ``rls`` and ``am`` are the identity headers as Envoy copies them
    (``claim_to_headers`` copies strings only); ``roles`` is the list RBAC matches."""
    return {
        "iss": TICKET_ISSUER,
        "aud": TICKET_AUDIENCE,
        "sub": user,
        "sid": sid,
        "roles": list(roles),
        "rls": ",".join(roles),
        "am": "session",
        "iat": now,
        "exp": expires_at,
    }


class TicketSigner:
    """One process's signing keys and the tickets it mints.

    ``maintain`` (every second, ``run``) publishes the next key ``lead`` seconds before the
    current one stops signing; ``mint`` signs with the key whose turn it is, and mints nothing
    while there is none (just started, or the store could not take the next key): the
    request is still decided, only without a ticket."""

    def __init__(
        self,
        *,
        store: TicketKeyStore,
        policy: TicketPolicy,
        clock: Callable[[], float] = time.time,
        on_store_error: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock
        self._on_store_error = on_store_error
        self._keys: list[SigningKey] = []  # published, oldest first

    @property
    def policy(self) -> TicketPolicy:
        return self._policy

    def key_at(self, now: float) -> SigningKey | None:
        for key in reversed(self._keys):
            if key.sign_from <= now < key.sign_until:
                return key
        return None

    def mint(
        self, *, user: str, roles: tuple[str, ...], session_hash: str, session_expires: float
    ) -> Ticket | None:
        """A ticket for this session; ``None`` when no key signs now or the session ends
        within a second."""
        now = self._clock()
        key = self.key_at(now)
        expires = min(int(now + self._policy.ttl), int(session_expires))
        if key is None or expires <= int(now) + 1:
            return None
        claims = ticket_claims(
            user=user, roles=roles, sid=ticket_sid(session_hash), now=int(now), expires_at=expires
        )
        value = jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})
        return Ticket(value, expires, key.kid)

    async def maintain(self) -> None:
        """One step: publish a first key, or the next one when the current one's end is
        ``2 * lead`` away; forget keys that stopped signing. Raises ``StoreError``."""
        now = self._clock()
        lead, rotation = self._policy.lead, self._policy.rotation
        self._keys = [k for k in self._keys if k.sign_until > now]
        newest = self._keys[-1] if self._keys else None
        if newest is not None and now < newest.sign_until - 2 * lead:
            return
        start = now + lead if newest is None else max(now + lead, newest.sign_until)
        key = new_signing_key(sign_from=start, sign_until=start + rotation)
        await self._store.publish(
            PublishedKey(key.kid, key.jwk, key.sign_from, key.sign_until + self._policy.hold)
        )
        self._keys.append(key)
        log.info("ticket key %s published; signs from %.0f s from now", key.kid, start - now)

    async def retire(self) -> None:
        """Stop signing, and have the keys published only as long as tickets already minted
        need them (a process stopping)."""
        now = self._clock()
        keys, self._keys = self._keys, []
        for key in keys:
            # A key that never signed has nothing to keep it for.
            signed = key.sign_from <= now
            until = min(key.sign_until, now) + self._policy.hold if signed else now
            try:
                await self._store.keep_until(key.kid, until)
            except StoreError:
                return  # the keys end at their own time

    async def run(self, *, every: float = 1.0) -> None:
        while True:
            try:
                await self.maintain()
            except StoreError as exc:
                if self._on_store_error is not None:
                    self._on_store_error()
                log.warning("ticket keys: %s; retrying", exc)
            await asyncio.sleep(every)


def cookie_header(name: str, value: str, *, max_age: int, secure: bool) -> str:
    """The Set-Cookie value for a ticket (or, with ``max_age`` 0 and no value, its removal)."""
    parts = [f"{name}={value}", f"Max-Age={max(0, max_age)}", "Path=/", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
