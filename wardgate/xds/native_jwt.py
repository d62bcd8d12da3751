"""What Envoy's jwt_authn verifies, sent over ECDS (``TypedExtensionConfig`` ``wardgate.jwt``):
a changed key set (a ticket key published or retired, an Issuer's JWKS changed) reaches every
Envoy within a second without touching the listener (no drain) or the route tables.

Providers:

- ``ticket``: session tickets (``domain/tickets.py``), read from the ticket cookie only, signed
  by one of the keys the wardgate processes published; the payload goes to dynamic metadata
  (``wg_ticket``) and the user, roles, method and session id to request headers;
- ``issuer:<name>``: each Issuer document with keys (a JWKS, inline or from its file), read
  from ``authorization: Bearer`` only, with the Issuer's audiences and clock skew, the keys
  pinned to the algorithm wardgate accepts for them. Issuers with an HS256 secret stay with
  ext_authz: the secret is not copied into every Envoy's configuration.

Requirements (a route names one, ``native_auth.route_filters``): ``session`` (the ticket),
``jwt`` (the Issuers), ``any`` (both); each also lets requests without a valid token through,
for ext_authz to decide (``allow_missing_or_failed``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from envoy.config.core.v3 import extension_pb2

from wardgate.domain.tickets import (
    MAX_PUBLISHED_KEYS,
    TICKET_AUDIENCE,
    TICKET_ISSUER,
    PublishedKey,
    TicketKeyStore,
    TicketPolicy,
)
from wardgate.domain.tokens import JwtVerifier, TrustedIssuer
from wardgate.errors import StoreError
from wardgate.metrics import Metrics
from wardgate.xds import canonical
from wardgate.xds.native_auth import (
    F_JWT,
    REQUIREMENTS,
    T_JWT,
    TICKET_PAYLOAD,
    issuer_payload_key,
    ticket_headers,
)

log = logging.getLogger("wardgate.tickets")

TICKET_PROVIDER = "ticket"
JWT_CACHE_SIZE = 10_000  # verified tokens each Envoy worker remembers (LRU)
KEYS_REREAD = 5.0  # seconds between full reads of the key set (keys also end by time)


def _jwks(keys: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"local_jwks": {"inline_string": json.dumps({"keys": list(keys)}, sort_keys=True)}}


def ticket_provider(keys: Sequence[PublishedKey], policy: TicketPolicy) -> dict[str, Any]:
    return {
        "issuer": TICKET_ISSUER,
        "audiences": [TICKET_AUDIENCE],
        "from_cookies": [policy.cookie],
        "forward": True,  # the session-cookie filter strips it (it is never in a header)
        "payload_in_metadata": TICKET_PAYLOAD,
        "claim_to_headers": ticket_headers(),
        # Envoy's default is 60 s, and 0 means that default: a 60 s ticket would live 120.
        "clock_skew_seconds": max(1, int(policy.skew)),
        "require_expiration": True,
        "max_lifetime": f"{int(policy.ttl)}s",
        "jwt_cache_config": {"jwt_cache_size": JWT_CACHE_SIZE},
        **_jwks(dict(k.jwk) for k in keys),
    }


def _issuer_jwk(kid: str | None, alg: str, key: Any) -> dict[str, Any] | None:
    if isinstance(key, rsa.RSAPublicKey):
        jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        return None
    jwk.update(alg=alg, use="sig")  # pinned: an RSA key verifies RS256 only, as in wardgate
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def issuer_provider(issuer: TrustedIssuer) -> dict[str, Any] | None:
    """The provider for an Issuer with a JWKS; None for one with an HS256 secret."""
    if issuer.secret is not None or not issuer.keys:
        return None
    keys = [j for j in (_issuer_jwk(*k) for k in issuer.keys) if j is not None]
    if not keys:
        return None
    return {
        "issuer": issuer.issuer,
        "audiences": list(issuer.audiences),
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        "forward": True,  # upstreams see the Authorization header, as before
        "payload_in_metadata": issuer_payload_key(
            issuer.user_claim, issuer.roles_claim, issuer.skew
        ),
        "clock_skew_seconds": max(1, int(issuer.skew)),
        "require_expiration": True,
        "jwt_cache_config": {"jwt_cache_size": JWT_CACHE_SIZE},
        **_jwks(keys),
    }


def _any_of(providers: list[str]) -> dict[str, Any]:
    """A requirement met by any of ``providers``, or by none of them (ext_authz decides)."""
    if not providers:
        return {"allow_missing_or_failed": {}}
    return {
        "requires_any": {
            "requirements": [
                *({"provider_name": p} for p in providers),
                {"allow_missing_or_failed": {}},
            ]
        }
    }


def jwt_config(
    ticket_keys: Sequence[PublishedKey],
    issuers: Iterable[TrustedIssuer],
    policy: TicketPolicy,
) -> dict[str, Any]:
    """The jwt_authn configuration: tickets signed by ``ticket_keys`` (none: no ticket
    provider), tokens of ``issuers`` that have keys."""
    providers: dict[str, Any] = {}
    if ticket_keys:
        providers[TICKET_PROVIDER] = ticket_provider(ticket_keys, policy)
    for issuer in issuers:
        provider = issuer_provider(issuer)
        if provider is not None:
            providers[f"issuer:{issuer.name}"] = provider
    tickets = [TICKET_PROVIDER] if ticket_keys else []
    jwts = sorted(p for p in providers if p != TICKET_PROVIDER)
    wanted = {"session": tickets, "jwt": jwts, "any": tickets + jwts}
    assert set(wanted) == set(REQUIREMENTS)
    return {
        "@type": T_JWT,
        "providers": providers,
        "requirement_map": {name: _any_of(names) for name, names in wanted.items()},
    }


def jwt_resource(
    ticket_keys: Sequence[PublishedKey], issuers: Iterable[TrustedIssuer], policy: TicketPolicy
) -> bytes:
    resource = canonical.parse(
        {"name": F_JWT, "typed_config": jwt_config(ticket_keys, issuers, policy)},
        extension_pb2.TypedExtensionConfig(),
    )
    data: bytes = resource.SerializeToString(deterministic=True)
    return data


class VerifierSource(Protocol):
    @property
    def verifier(self) -> JwtVerifier: ...


class JwtConfigPublisher:
    """Keeps the published jwt_authn configuration in step with the ticket keys in the store
    (re-read when their version changes, and every few seconds: keys end by time) and the
    Issuers the watcher loaded (``verifier``, replaced whenever they change)."""

    def __init__(
        self,
        *,
        keys: TicketKeyStore | None,
        issuers: VerifierSource | None,
        publish: Callable[[str, bytes], bool],
        metrics: Metrics,
        policy: TicketPolicy,
        every: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = keys  # None: tickets are off
        self._issuers = issuers  # None: Issuer JWTs are left to ext_authz
        self._publish = publish
        self._metrics = metrics
        self._policy = policy
        self._every = every
        self._clock = clock
        self._keys: list[PublishedKey] = []
        self._version: int | None = None
        self._read_at = 0.0
        self._built_from: tuple[tuple[str, ...], JwtVerifier | None] | None = None
        self._published: bytes | None = None

    async def _read_keys(self) -> None:
        if self._store is None:
            return
        now = self._clock()
        try:
            version = await self._store.version()
            due = min((k.keep_until for k in self._keys), default=now + KEYS_REREAD)
            if version == self._version and now < min(self._read_at + KEYS_REREAD, due):
                return
            live = await self._store.live(now=now)
        except StoreError:
            self._metrics.store_errors.labels("ticket_keys").inc()
            return  # Envoy keeps the keys it has
        self._version, self._read_at = version, now
        self._keys = live[-MAX_PUBLISHED_KEYS:]  # newest last

    async def refresh(self) -> bool:
        """Publish a new configuration if its inputs changed; returns whether it did."""
        await self._read_keys()
        verifier = self._issuers.verifier if self._issuers is not None else None
        inputs = (tuple(k.kid for k in self._keys), verifier)
        if inputs == self._built_from:
            return False
        self._built_from = inputs
        issuers = verifier.issuers if verifier is not None else ()
        data = jwt_resource(self._keys, issuers, self._policy)
        self._metrics.ticket_keys.set(len(self._keys))
        if data == self._published:
            return False
        self._publish(F_JWT, data)
        self._published = data
        log.info(
            "jwt_authn: %d ticket keys, %d issuers verified by Envoy",
            len(self._keys),
            sum(1 for i in issuers if issuer_provider(i) is not None),
        )
        return True

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._every)
