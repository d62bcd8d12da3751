"""Property-based tests of what parses client input: tokens, API keys, policies, headers."""

from __future__ import annotations

import asyncio
import re
import time

import jwt
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from wardgate.domain.authz import (
    AccessDecision,
    Allow,
    Authorizer,
    Deny,
    RequestFacts,
    RoutePolicy,
)
from wardgate.domain.cookies import MAX_COOKIE_HEADER, read_cookie, strip_cookie
from wardgate.domain.ports import SessionRecord
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


@settings(max_examples=100, deadline=None)
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


# --- the request path: Cookie, Origin and Referer as a client may send them ----------------

# Any code point (lone surrogates too), or a header around the size where parsing stops.
any_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=300),
    st.tuples(
        st.integers(MAX_COOKIE_HEADER - 10, MAX_COOKIE_HEADER + 10), st.sampled_from(";= \r\n")
    ).map(lambda n_sep: ("a=1" + n_sep[1]) * (n_sep[0] // 4)),
)
cookie_names = st.one_of(
    st.just("wg_session"), st.text(st.characters(exclude_categories=()), max_size=12)
)


@settings(max_examples=300, deadline=None)
@given(any_text, cookie_names)
def test_cookie_parsing_and_stripping_never_raise_and_strip_the_named_cookie(
    header: str, name: str
) -> None:
    value = read_cookie(header, name)
    assert value is None or isinstance(value, str)
    stripped = strip_cookie(header, name)
    assert isinstance(stripped, str)
    assert read_cookie(stripped, name) is None


class _AnySession:
    """Every well-formed session id names a live session: the CSRF check is reached."""

    async def get_session(self, id_hash: str) -> SessionRecord:
        return SessionRecord(id_hash, "ada", ("admin",), 0.0, time.time() + 60)


SESSION_COOKIE = {"cookie": "wg_session=" + "s" * 43}


def _decide(headers: dict[str, str], host: str, cors_origins: str = "") -> AccessDecision:
    sessions = SessionService(users=None, sessions=_AnySession(), ttl_seconds=60)  # type: ignore[arg-type]
    authz = Authorizer(sessions=sessions, cookie_name="wg_session", api_keys=None)
    policy = RoutePolicy.from_context(
        {"route": "r", "auth": "session", "cors_origins": cors_origins}
    )
    facts = RequestFacts("POST", host, "/", {**SESSION_COOKIE, **headers})
    return asyncio.run(authz.decide(policy, facts))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["origin", "referer"]), any_text),
    st.one_of(st.just("app.example.com"), any_text),
    st.one_of(st.just("https://app.example.com"), any_text),
)
def test_any_origin_or_referer_on_a_session_post_is_allowed_or_refused_as_csrf(
    headers: dict[str, str], host: str, cors_origins: str
) -> None:
    decision = _decide(headers, host, cors_origins)
    if isinstance(decision, Deny):
        assert (decision.status, decision.code) == (403, "csrf")
    else:
        assert decision.identity is not None and decision.identity.user == "ada"
        assert decision.cookie == ""  # the session cookie never reaches the upstream


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["origin", "referer"]),
    st.sampled_from(["https", "http", "HTTPS"]),
    st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}(:[1-9][0-9]{0,3})?", fullmatch=True),
    st.sampled_from(["", "/", "/path?q=1", "/#frag"]),
)
def test_an_origin_of_another_host_is_refused_and_of_the_same_host_allowed(
    header: str, scheme: str, netloc: str, tail: str
) -> None:
    source = f"{scheme}://{netloc}{tail if header == 'referer' else ''}"
    assume(netloc != "app.example.com")
    # The gateway's own origin: the scheme the client used (x-forwarded-proto) and the host.
    own = {header: source, "x-forwarded-proto": scheme.lower()}
    assert isinstance(_decide(own, netloc.upper()), Allow)
    other = "http" if scheme.lower() == "https" else "https"
    other_scheme = _decide({header: source, "x-forwarded-proto": other}, netloc.upper())
    assert isinstance(other_scheme, Deny) and other_scheme.code == "csrf"
    foreign = _decide({header: source}, "app.example.com")
    assert isinstance(foreign, Deny) and foreign.code == "csrf"
    cors = _decide({header: source}, "app.example.com", f"{scheme.lower()}://{netloc}")
    assert isinstance(cors, Allow)


def test_a_token_that_is_not_ascii_is_malformed() -> None:
    """A lone surrogate (or any non-ASCII character) is refused as malformed, not left to
    raise UnicodeEncodeError from inside the JWT library (hypothesis found '..\\ud800')."""
    for text in ("..\ud800", "a.b.\u00e9", "\u2028.x.y"):
        try:
            VERIFIER.verify(text)
        except TokenError as exc:
            assert "malformed" in str(exc)
        else:
            raise AssertionError(f"{text!r} was accepted")
