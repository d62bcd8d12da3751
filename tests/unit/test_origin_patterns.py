"""Wildcard CORS origins: what a pattern accepts, what it refuses, and the same answer from
Envoy's regex (RE2, as Envoy runs it) and from the CSRF check in Python."""

from __future__ import annotations

import pytest
import re2

from wardgate.domain.documents import parse_document
from wardgate.domain.origin_patterns import check_origin, parse_wildcard
from wardgate.domain.origins import source_allowed
from wardgate.errors import DocumentError
from wardgate.xds.routes import _origin_matcher

PATTERN = "https://*.example.com"
ALLOWED = ["https://app.example.com", "https://a.b.example.com", "https://APP.Example.com"]
REFUSED = [
    "https://example.com",  # the domain itself is not a subdomain
    "https://evilexample.com",
    "https://app.example.com.evil.net",
    "https://app.example.com:8443",
    "http://app.example.com",  # another scheme
    "https://app.example.comx",
    "https://.example.com",
    "https://a_b.example.com",
    "https://app.example.com/",
    "https://app.example.com\r\nset-cookie: x=1",
    "https://app%2eexample.com",
    "null",
]


def _envoy_allows(pattern: str, origin: str) -> bool:
    regex = _origin_matcher(pattern)["safe_regex"]["regex"]
    return re2.fullmatch(regex, origin) is not None


def _csrf_allows(pattern: str, origin: str) -> bool:
    return source_allowed(
        origin=origin, referer=None, authority="gw.test", scheme="https", allowed=[pattern]
    )


@pytest.mark.parametrize("origin", ALLOWED)
def test_wildcard_allows_subdomains_in_envoy_and_in_the_csrf_check(origin: str) -> None:
    assert _envoy_allows(PATTERN, origin)
    assert _csrf_allows(PATTERN, origin)


def test_a_trailing_newline_never_matches_in_envoy() -> None:
    # (Envoy trims header values; the CSRF check, which only sees what Envoy passes, too.)
    assert not _envoy_allows(PATTERN, "https://app.example.com\n")


@pytest.mark.parametrize("origin", REFUSED)
def test_wildcard_refuses_lookalikes_in_envoy_and_in_the_csrf_check(origin: str) -> None:
    assert not _envoy_allows(PATTERN, origin)
    assert not _csrf_allows(PATTERN, origin)


def test_a_port_written_is_the_only_port_allowed() -> None:
    pattern = "https://*.example.com:8443"
    assert _envoy_allows(pattern, "https://a.example.com:8443")
    assert _csrf_allows(pattern, "https://a.example.com:8443")
    for origin in (
        "https://a.example.com",
        "https://a.example.com:443",
        "https://a.example.com:84",
    ):
        assert not _envoy_allows(pattern, origin)
        assert not _csrf_allows(pattern, origin)


@pytest.mark.parametrize(
    "pattern",
    [
        "https://*",
        "https://*.com",  # the whole of a top-level domain
        "https://*example.com",
        "https://app-*.example.com",
        "https://a.*.example.com",
        "https://*.*.example.com",
        "*.example.com",
        "ftp://*.example.com",
        "https://*.example.com/",
        "https://*.example.com\r\nx: y",
        "https://*.exa mple.com",
        "https://*.example.com:99999",
        "https://*.example.com:0",
        "https://*.exam(ple).com",
        "https://*." + "a" * 64 + ".com",
        "https://*." + "a" * 60 + "." + "b" * 20 + ".com",  # a regex too large for Envoy
    ],
)
def test_bad_wildcards_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        check_origin(pattern)
    doc = {
        "kind": "Route",
        "name": "r",
        "match": {"prefix": "/r"},
        "backend": "b",
        "cors": {"allow_origins": [pattern]},
    }
    with pytest.raises(DocumentError, match=r"wildcard|origin"):
        parse_document(doc)


def test_a_route_with_a_wildcard_origin_is_accepted() -> None:
    doc = parse_document(
        {
            "kind": "Route",
            "name": "r",
            "match": {"prefix": "/r"},
            "backend": "b",
            "cors": {"allow_origins": [PATTERN, "https://one.test"]},
        }
    )
    assert doc.cors is not None  # type: ignore[union-attr]
    assert parse_wildcard(PATTERN).domain == "example.com"
