"""The scope key: which segments a route's path fixes, and how a request's path is keyed."""

from __future__ import annotations

import pytest

from wardgate.xds import scope_key as sk


@pytest.mark.parametrize(
    ("regex", "segments"),
    [
        ("/api/v[0-9]+/users", ("api",)),
        ("^/api/users/[0-9]+", ("api", "users")),
        ("/api/users?", ("api",)),  # the "s" is optional: "users" is not a whole segment
        ("/api/users/x*", ("api", "users")),
        ("/(api|x)/z", ()),
        ("/api/a|/b/c", ()),
        ("/api/(a|b)/c", ()),  # any '|' gives none: RE2's syntax is not parsed for it
        ("^/api/x[](]|/shop/y", ()),  # a ']' first in a class, then a top-level '|'
        ("^/api/x[[:alpha:](]|/shop/y", ()),
        ("^/api/x\\Q(\\E/shop/y", ("api",)),
        ("^/a#b/k1/.*", ()),  # '#' is no path character: never part of a segment
        ("^/caf%C3%A9/x/[0-9]+", ("caf%C3%A9", "x")),
        (".*\\.png", ()),
        ("/a.b/c", ()),
        ("(?i)/api/x", ()),
        ("/api/[/]x", ("api",)),
    ],
)
def test_regex_segments_are_only_what_every_match_starts_with(
    regex: str, segments: tuple[str, ...]
) -> None:
    assert sk.regex_segments(regex) == segments


def test_request_segments_drop_the_query_and_empty_segments() -> None:
    assert sk.request_segments("/api/users?next=/a/b") == ["api", "users"]
    assert sk.request_segments("/") == []
    assert sk.request_segments("/api/#frag") == ["api"]
    assert sk.bucket(["api"], 2) == sk.bucket(["api", ""], 2)
    assert sk.scope_key(2, ["api"]) == f"2:{sk.bucket(['api'], 2)}"
    # Only a segment's first bytes count: a long segment costs the script no more.
    long = "x" * sk.SEGMENT_HASH_BYTES
    assert sk.bucket([long + "a"], 1) == sk.bucket([long + "b"], 1)
