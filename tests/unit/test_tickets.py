"""Session tickets without Envoy: the key schedule (published before use, kept for a ticket's
lifetime), what a ticket says, and the cookie."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import jwt
import pytest

from wardgate.domain.tickets import (
    SLACK,
    TICKET_AUDIENCE,
    TICKET_ISSUER,
    PublishedKey,
    TicketPolicy,
    TicketSigner,
    cookie_header,
    ticket_sid,
)
from wardgate.errors import StoreError

SESSION = "ab" * 32  # a session id's SHA-256, as the store keys it
POLICY = TicketPolicy(ttl=60, skew=5, rotation=600, lead=5)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Keys:
    """An in-memory ``TicketKeyStore`` that records when each key was published."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.keys: dict[str, PublishedKey] = {}
        self.published_at: dict[str, float] = {}
        self.failing = False

    async def publish(self, key: PublishedKey) -> None:
        if self.failing:
            raise StoreError("redis: down")
        self.keys[key.kid] = key
        self.published_at[key.kid] = self.clock.now

    async def keep_until(self, kid: str, until: float) -> None:
        key = self.keys[kid]
        self.keys[kid] = PublishedKey(kid, key.jwk, key.sign_from, min(key.keep_until, until))

    async def live(self, *, now: float) -> list[PublishedKey]:
        return [k for k in self.keys.values() if k.keep_until > now]

    async def version(self) -> int:
        return len(self.keys)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def signer(clock: Clock, store: Keys, policy: TicketPolicy = POLICY) -> TicketSigner:
    return TicketSigner(store=store, policy=policy, clock=clock)


def mint(s: TicketSigner, expires: float = 10**10, roles: tuple[str, ...] = ("user", "admin")):  # type: ignore[no-untyped-def]
    return s.mint(user="ada", roles=roles, session_hash=SESSION, session_expires=expires)


def verify(token: str, store: Keys, at: float) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    public = jwt.algorithms.ECAlgorithm.from_jwk(dict(store.keys[kid].jwk))
    claims: dict[str, Any] = jwt.decode(
        token,
        public,  # type: ignore[arg-type]
        algorithms=["ES256"],
        audience=TICKET_AUDIENCE,
        issuer=TICKET_ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iat"] <= at < claims["exp"]
    return claims


def test_no_ticket_until_the_first_key_has_been_published_for_lead_seconds() -> None:
    clock = Clock()
    store = Keys(clock)
    s = signer(clock, store)
    assert mint(s) is None  # no key at all
    run(s.maintain())
    (key,) = store.keys.values()
    assert key.sign_from == clock.now + POLICY.lead
    assert mint(s) is None  # published, not yet signing: Envoys may not have it
    clock.now += POLICY.lead
    ticket = mint(s)
    assert ticket is not None and ticket.kid == key.kid


def test_a_ticket_says_who_and_which_session_and_lives_ttl_seconds() -> None:
    clock = Clock()
    store = Keys(clock)
    s = signer(clock, store)
    run(s.maintain())
    clock.now += POLICY.lead + 0.5
    ticket = mint(s)
    assert ticket is not None
    header = jwt.get_unverified_header(ticket.value)
    assert (header["alg"], header["kid"]) == ("ES256", ticket.kid)
    claims = verify(ticket.value, store, clock.now)
    assert claims == {
        "iss": TICKET_ISSUER,
        "aud": TICKET_AUDIENCE,
        "sub": "ada",
        "sid": SESSION[:32],
        "roles": ["user", "admin"],
        "rls": "user,admin",
        "am": "session",
        "iat": int(clock.now),
        "exp": int(clock.now) + 60,
    }
    assert ticket_sid(SESSION) == SESSION[:32] and SESSION not in ticket.value
    assert ticket.expires_at == claims["exp"]


def test_a_ticket_never_outlives_its_session() -> None:
    clock = Clock()
    store = Keys(clock)
    s = signer(clock, store)
    run(s.maintain())
    clock.now += POLICY.lead
    ticket = mint(s, expires=clock.now + 20.7)
    assert ticket is not None and ticket.expires_at == int(clock.now + 20.7)
    assert mint(s, expires=clock.now + 1.5) is None  # ends within a second: not worth it


def test_keys_rotate_each_published_lead_seconds_before_use_and_kept_a_tickets_lifetime() -> None:
    clock = Clock()
    store = Keys(clock)
    s = signer(clock, store)
    run(s.maintain())
    first = next(iter(store.keys.values()))
    kids_used: list[str] = []
    last_ticket_exp: dict[str, int] = {}
    end = clock.now + 3 * POLICY.rotation
    while clock.now < end:
        run(s.maintain())
        ticket = mint(s)
        if ticket is not None:
            if not kids_used or kids_used[-1] != ticket.kid:
                kids_used.append(ticket.kid)
            last_ticket_exp[ticket.kid] = ticket.expires_at
            # Every key signing now was published at least `lead` seconds ago ...
            assert clock.now - store.published_at[ticket.kid] >= POLICY.lead
        clock.now += 1.0
    assert len(kids_used) >= 3 and kids_used[0] == first.kid
    assert len(set(kids_used)) == len(kids_used)  # a key signs in one window only
    for kid, exp in last_ticket_exp.items():
        # ... and stays published until its last ticket has expired, Envoy's skew included.
        assert store.keys[kid].keep_until >= exp + POLICY.skew + SLACK - 1
    # Windows follow each other without a gap.
    ordered = sorted(store.keys.values(), key=lambda k: k.sign_from)
    for a, b in itertools.pairwise(ordered):
        assert b.sign_from == a.keep_until - POLICY.hold


def test_a_store_that_cannot_take_the_next_key_stops_minting_not_authorizing() -> None:
    clock = Clock()
    store = Keys(clock)
    s = signer(clock, store)
    run(s.maintain())
    clock.now += POLICY.lead
    assert mint(s) is not None
    store.failing = True
    clock.now += POLICY.rotation - 2 * POLICY.lead
    with pytest.raises(StoreError):
        run(s.maintain())
    clock.now += 2 * POLICY.lead  # the first key's window is over, no next one was published
    with pytest.raises(StoreError):
        run(s.maintain())
    assert mint(s) is None  # never a ticket signed by a key Envoy may not have
    store.failing = False
    run(s.maintain())
    assert mint(s) is None  # the new key is published now, signs lead seconds later
    clock.now += POLICY.lead
    assert mint(s) is not None


def test_retiring_keeps_keys_only_as_long_as_minted_tickets_need() -> None:
    clock = Clock()
    store = Keys(clock)
    s = signer(clock, store)
    run(s.maintain())
    clock.now += POLICY.rotation - POLICY.lead  # the next key is published, not yet signing
    run(s.maintain())
    current, upcoming = sorted(store.keys.values(), key=lambda k: k.sign_from)
    run(s.retire())
    assert store.keys[current.kid].keep_until == clock.now + POLICY.hold
    assert store.keys[upcoming.kid].keep_until == clock.now  # never signed: gone at once
    assert mint(s) is None


def test_the_ticket_cookie() -> None:
    assert cookie_header("wg_ticket", "T", max_age=42, secure=False) == (
        "wg_ticket=T; Max-Age=42; Path=/; HttpOnly; SameSite=Lax"
    )
    assert cookie_header("wg_ticket", "", max_age=-3, secure=True) == (
        "wg_ticket=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax; Secure"
    )


def test_hold_covers_lifetime_skew_and_slack() -> None:
    assert TicketPolicy(ttl=30, skew=2).hold == 30 + 2 + SLACK


# --- the renewal by ext_authz ------------------------------------------------------------------


def _check(ticket: dict[str, Any] | None) -> Any:
    """A CheckRequest, with the payload of the ticket Envoy verified on it, if any."""
    from envoy.service.auth.v3 import external_auth_pb2

    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.scheme = "http"
    if ticket is not None:
        jwt_ns = request.attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"]
        jwt_ns.update({"wg_ticket": ticket})
    return request


def _renewal(s: TicketSigner) -> Any:
    from wardgate.extproc.authz import TicketRenewal
    from wardgate.metrics import create_metrics

    return TicketRenewal(signer=s, metrics=create_metrics(), cookie_secure=False)


def _allow(session: str = SESSION) -> Any:
    from wardgate.domain.authz import Allow
    from wardgate.domain.sessions import Identity

    return Allow(Identity("bea", ("user",), "session", 10.0**10, session=session), None)


def test_ext_authz_clears_a_ticket_of_another_session_when_it_cannot_mint() -> None:
    """The session cookie is bea's, the ticket (left over from the browser's previous user)
    is another session's; no key signs yet: the stale ticket is cleared, not left to speak
    for bea's browser on every read until it expires."""
    clock = Clock()
    renewal = _renewal(signer(clock, Keys(clock)))  # no key published: mints nothing
    other = {"sid": "cd" * 16, "exp": clock.now + 50}
    (header,) = renewal.headers(_check(other), _allow())
    assert header.header.key == "set-cookie"
    assert header.header.value.startswith("wg_ticket=; Max-Age=0;")
    # Nothing to clear: no ticket, or the session's own.
    assert renewal.headers(_check(None), _allow()) == []
    own = {"sid": ticket_sid(SESSION), "exp": clock.now + 10}
    assert renewal.headers(_check(own), _allow()) == []


def test_ext_authz_renews_a_ticket_of_another_session_or_one_past_half_its_life() -> None:
    clock = Clock(time.time())  # the renewal reads the real clock for Max-Age
    store = Keys(clock)
    s = signer(clock, store)
    run(s.maintain())
    clock.now += POLICY.lead
    renewal = _renewal(s)
    fresh_own = {"sid": ticket_sid(SESSION), "exp": 10.0**10}
    assert renewal.headers(_check(fresh_own), _allow()) == []
    for current in (None, {"sid": "cd" * 16, "exp": 10.0**10}):
        (header,) = renewal.headers(_check(current), _allow())
        value = header.header.value
        assert value.startswith("wg_ticket=ey") and "; Max-Age=0;" not in value
