"""Property-based tests of what parses client input: tokens, API keys, policies, headers."""

from __future__ import annotations

import asyncio
import re
import time

import jwt
from hypothesis import given, settings
from hypothesis import strategies as st

from wardgate.domain.authz import Authorizer, Deny, RequestFacts, RoutePolicy
from wardgate.domain.sessions import SessionService
from wardgate.domain.tokens import JwtVerifier, TokenError, TrustedIssuer, well_formed_api_key

SECRET = b"k" * 40
VERIFIER = JwtVerifier([TrustedIssuer("t", "https://t", ("api",), secret=SECRET)])
printable = st.text(st.characters(min_codepoint=1, max_codepoint=0x10FFFF), max_size=300)


@settings(max_examples=300, deadline=None)
@given(printable)
def test_verify_refuses_any_text_with_a_token_error(text: str) -> None:
    try:
        VERIFIER.verify(text)
    except TokenError:
        return
    raise AssertionError("arbitrary text was accepted as a token")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("abcXYZ019-_=.")), min_size=0, max_size=200).map("".join))
def test_verify_refuses_token_shaped_garbage(text: str) -> None:
    try:
        VERIFIER.verify(text)
    except TokenError:
        return
    raise AssertionError("garbage was accepted")


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 200), st.integers(0, 3))
def test_any_change_to_a_signed_token_is_refused(position: int, flip: int) -> None:
    good = jwt.encode(
        {"iss": "https://t", "aud": "api", "sub": "u", "exp": int(time.time()) + 60},
        SECRET,
        algorithm="HS256",
    )
    assert VERIFIER.verify(good).user == "u"
    i = position % len(good)
    replacement = "ABCD"[flip] if good[i] != "ABCD"[flip] else "E"
    tampered = good[:i] + replacement + good[i + 1 :]
    try:
        identity = VERIFIER.verify(tampered)
    except TokenError:
        return
    # base64url's last character may carry unused bits: a change there can decode the same.
    assert identity.user == "u"


@given(printable)
def test_api_key_shape_check_never_raises(text: str) -> None:
    assert well_formed_api_key(text) in (True, False)


def test_an_api_key_with_a_trailing_newline_is_not_well_formed() -> None:
    assert well_formed_api_key("wg_" + "a" * 43)
    assert not well_formed_api_key("wg_" + "a" * 43 + "\n")


def _signed(**claims: object) -> str:
    base = {"iss": "https://t", "aud": "api", "sub": "u", "exp": int(time.time()) + 60}
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


def test_a_role_with_a_trailing_newline_never_reaches_x_user_roles() -> None:
    """Python's ``$`` matches before a final newline: 'admin\\n' passed the role check and
    went into the comma-joined x-user-roles header."""
    identity = VERIFIER.verify(_signed(roles=["reader", "admin\n", "ops\r\n"]))
    assert identity.roles == ("reader",)


# Role-shaped text with a hostile end, and anything at all.
roles_text = st.one_of(
    st.tuples(
        st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
        st.sampled_from(["", "\n", "\r\n", ",admin", " x", "\x00", "\u2028"]),
    ).map("".join),
    st.text(st.characters(codec="utf-8"), max_size=70),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(roles_text, max_size=8))
def test_the_roles_of_any_token_are_safe_in_a_header(roles: list[str]) -> None:
    identity = VERIFIER.verify(_signed(roles=roles))
    joined = ",".join(identity.roles)
    assert re.fullmatch(r"[A-Za-z0-9._:,-]*", joined), joined
    assert all(r in roles for r in identity.roles)


@given(st.dictionaries(st.sampled_from(["route", "auth", "roles", "cors_origins", "x"]), printable))
def test_route_policy_from_any_context_is_well_defined(ext: dict[str, str]) -> None:
    policy = RoutePolicy.from_context(ext)
    assert policy.require in {"none", "session", "jwt", "api_key", "any"}
    if ext.get("auth") not in {None, "none", "session", "jwt", "api_key", "any"}:
        assert policy.require == "session"  # unknown requirement: the strict reading


class _NoSessions:
    async def get_session(self, id_hash: str) -> None:
        return None


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["cookie", "authorization", "x-api-key", "origin", "referer"]), printable
    ),
    st.sampled_from(["session", "jwt", "api_key", "any"]),
)
def test_any_headers_on_a_protected_route_are_refused_cleanly(
    headers: dict[str, str], require: str
) -> None:
    sessions = SessionService(users=None, sessions=_NoSessions(), ttl_seconds=60)  # type: ignore[arg-type]
    authz = Authorizer(sessions=sessions, cookie_name="wg_session", api_keys=None)
    policy = RoutePolicy.from_context({"route": "r", "auth": require})
    decision = asyncio.run(authz.decide(policy, RequestFacts("POST", "h", "/", headers)))
    assert isinstance(decision, Deny) and decision.status == 401
