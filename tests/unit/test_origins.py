"""The CSRF rule's origin check (domain/origins.py), used by ext_authz and /auth/logout."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wardgate.domain.origins import (
    WebOrigin,
    origin_header,
    referer_origin,
    request_scheme,
    source_allowed,
    web_origin,
)

GW = "gw.example.com"


def allowed(
    origin: str | None = None,
    *,
    referer: str | None = None,
    authority: str = GW,
    scheme: str = "https",
    cors: tuple[str, ...] = (),
) -> bool:
    return source_allowed(
        origin=origin, referer=referer, authority=authority, scheme=scheme, allowed=cors
    )


@pytest.mark.parametrize(
    ("origin", "authority", "scheme"),
    [
        (f"https://{GW}", GW, "https"),
        (f"http://{GW}", GW, "http"),
        (f"HTTPS://{GW.upper()}", GW, "https"),
        (f"https://{GW}", GW.upper(), "https"),
        (f"https://{GW}:443", GW, "https"),  # the default port, written or not
        (f"https://{GW}", f"{GW}:443", "https"),
        (f"http://{GW}:80", GW, "http"),
        (f"http://{GW}:10000", f"{GW}:10000", "http"),
        (f"https://{GW}.", GW, "https"),  # a trailing dot names the same host
        (f"https://{GW}", f"{GW}.", "https"),
        ("http://127.0.0.1:10000", "127.0.0.1:10000", "http"),
        ("http://[::1]:10000", "[::1]:10000", "http"),
        ("https://xn--bcher-kva.example", "xn--bcher-kva.example", "https"),  # IDN, as sent
        (f" https://{GW} ", GW, "https"),
    ],
)
def test_the_gateways_own_origin_is_allowed(origin: str, authority: str, scheme: str) -> None:
    assert allowed(origin, authority=authority, scheme=scheme)


@pytest.mark.parametrize(
    ("origin", "authority", "scheme"),
    [
        (f"http://{GW}", GW, "https"),  # http is not the gateway reached over https
        (f"https://{GW}", GW, "http"),
        (f"ftp://{GW}", GW, "https"),
        (f"ftp://{GW}", GW, "http"),
        (f"ws://{GW}", GW, "http"),
        (f"file://{GW}", GW, "http"),
        (f"chrome-extension://{GW}", GW, "https"),
        ("null", GW, "https"),
        ("NULL", GW, "https"),
        (GW, GW, "https"),  # no scheme
        (f"//{GW}", GW, "https"),
        (f"https://{GW}:8443", GW, "https"),  # another port of the same host
        (f"https://{GW}", f"{GW}:8443", "https"),
        (f"http://{GW}:443", GW, "https"),
        (f"https://{GW}.evil.example", GW, "https"),
        (f"https://evil.example/{GW}", GW, "https"),  # an Origin has no path
        (f"https://{GW}/", GW, "https"),
        (f"https://{GW}@evil.example", GW, "https"),
        (f"https://evil.example@{GW}", GW, "https"),  # no user info in an origin
        (f"https://{GW}:", GW, "https"),
        (f"https://{GW}:99999", f"{GW}:99999", "https"),
        (f"https://{GW}:0", f"{GW}:0", "https"),
        (f"https://{GW}:+443", GW, "https"),
        ("https://bücher.example", "bücher.example", "https"),  # browsers send punycode
        ("https://gw.\u212aexample.com", "gw.kexample.com", "https"),  # KELVIN SIGN lowers to k
        (f"https://{GW},https://evil.example", GW, "https"),  # two Origin headers, joined
        (f"https://evil.example,https://{GW}", GW, "https"),
        ("https://.", ".", "https"),
        ("https://", "", "https"),
        (f"https://{GW}%2e", GW, "https"),
    ],
)
def test_anything_else_is_foreign(origin: str, authority: str, scheme: str) -> None:
    assert not allowed(origin, authority=authority, scheme=scheme)


def test_a_route_may_allow_other_origins_exactly() -> None:
    cors = ("https://app.example.com", "http://localhost:3000")
    assert allowed("https://app.example.com", cors=cors)
    assert allowed("https://APP.example.com:443", cors=cors)
    assert allowed("http://localhost:3000", cors=cors)
    assert not allowed("http://app.example.com", cors=cors)
    assert not allowed("https://localhost:3000", cors=cors)
    assert not allowed("https://evil.example", cors=cors)
    assert not allowed("null", cors=(*cors, "null"))  # never an origin, even if listed
    assert not allowed("ftp://app.example.com", cors=("ftp://app.example.com",))


def test_referer_counts_only_without_origin() -> None:
    assert allowed(referer=f"https://{GW}/page?x=1")
    assert allowed(referer=f"https://{GW}")
    assert not allowed(referer="https://evil.example/page")
    assert not allowed(referer=f"http://{GW}/page")  # over https
    assert not allowed(referer=f"ftp://{GW}/page")
    assert not allowed(referer=f"https://user@{GW}/page")
    assert not allowed(referer="not a url")
    assert not allowed(referer="https://[::1/")  # urlsplit refuses it
    # Origin decides when both come.
    assert not allowed("https://evil.example", referer=f"https://{GW}/")
    assert allowed(f"https://{GW}", referer="https://evil.example/")


def test_no_origin_and_no_referer_is_allowed() -> None:
    assert allowed()
    assert allowed("", referer="")  # empty headers count as absent


@pytest.mark.parametrize(
    ("forwarded", "scheme", "expected"),
    [
        (None, "https", "https"),
        (None, "http", "http"),
        ("https", "http", "https"),
        ("HTTPS", "http", "https"),
        ("https, http", "http", "https"),  # the first proxy's
        ("http", "https", "http"),
        ("ftp", "https", "https"),  # not a web scheme: the request's own
        ("", "HTTP", "http"),
        (None, None, "http"),
        ("wss", "ws", "http"),
    ],
)
def test_request_scheme(forwarded: str | None, scheme: str | None, expected: str) -> None:
    assert request_scheme(forwarded, scheme) == expected


def test_parsed_origins() -> None:
    assert origin_header("https://GW.example.com.:0443") == WebOrigin("https", GW, 443)
    assert referer_origin(f"http://{GW}:8080/a?b#c") == WebOrigin("http", GW, 8080)
    assert web_origin("https", "[::1]") == WebOrigin("https", "[::1]", 443)
    assert web_origin("gopher", GW) is None


@given(st.text(max_size=60), st.text(max_size=30), st.sampled_from(["http", "https", "", "ftp"]))
def test_the_check_never_raises(origin: str, authority: str, scheme: str) -> None:
    assert allowed(origin, authority=authority, scheme=scheme) in (True, False)
    assert allowed(referer=origin, authority=authority, scheme=scheme) in (True, False)
