"""transform, cache and compose in Route documents: what is accepted, what is refused (and
why), placeholders, JSON paths, and the policy that travels to the processor."""

from __future__ import annotations

from typing import Any

import pytest

from wardgate.cli import main
from wardgate.domain.documents import DocumentError, Route, parse_document
from wardgate.domain.extproc_policy import (
    MAX_POLICY_BYTES,
    PolicyError,
    decode_policy,
    encode_policy,
    phases_of,
)
from wardgate.domain.json_filter import JsonFilter
from wardgate.domain.templates import Facts, Placeholder, parse_template


def route(**extra: Any) -> Route:
    doc = {"kind": "Route", "name": "r", "match": {"prefix": "/r"}, "backend": "b", **extra}
    parsed = parse_document(doc)
    assert isinstance(parsed, Route)
    return parsed


def refused(**extra: Any) -> str:
    with pytest.raises(DocumentError) as info:
        route(**extra)
    return str(info.value)


# --- placeholders ---------------------------------------------------------------------------


def test_templates_fill_placeholders_and_keep_literal_braces() -> None:
    t = parse_template("{user}/{header:X-Tenant}-{{x}}")
    facts = Facts(route="r", user="ada", headers={"x-tenant": "t1"})
    assert t.render(facts.value) == "ada/t1-{x}"
    assert t.placeholders == (Placeholder("user"), Placeholder("header", "x-tenant"))
    assert parse_template("DENY").constant
    # A placeholder without a value: no value at all, never a half-filled one.
    assert t.render(Facts(route="r", headers={"x-tenant": "t"}).value) is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{nope}", "not a placeholder"),
        ("a{b", "lone"),
        ("}", "lone"),
        ("{header:cookie}", "credentials"),
        ("{header:Authorization}", "credentials"),
        ("{header:x-api-key}", "credentials"),
        ("{header:a b}", "not a header name"),
        ("x" * 2000, "at most"),
    ],
)
def test_bad_templates_are_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_template(text)


# --- JSON paths ------------------------------------------------------------------------------

DOC = {
    "id": 1,
    "name": "n",
    "password": "p",
    "profile": {"email": "e", "phone": "f"},
    "items": [{"id": 1, "secret": "s"}, {"id": 2, "secret": "t"}, 3],
    "internal": {"a": 1, "b": {"c": 2}},
}


def test_include_keeps_only_what_its_paths_reach() -> None:
    f = JsonFilter(include=["id", "profile.email", "items.id", "nothing.here"])
    assert f.apply(DOC) == {"id": 1, "profile": {"email": "e"}, "items": [{"id": 1}, {"id": 2}]}
    # A document that is an array: each element; a value of another shape: nothing.
    assert f.apply([DOC, 5]) == [
        {"id": 1, "profile": {"email": "e"}, "items": [{"id": 1}, {"id": 2}]}
    ]
    assert JsonFilter(include=["a.b"]).apply({"a": "not an object"}) == {}
    assert JsonFilter(include=["a"]).apply("scalar") == {}


def test_exclude_drops_what_its_paths_reach_wildcards_included() -> None:
    f = JsonFilter(exclude=["password", "internal.*", "items.secret", "*.phone"])
    assert f.apply(DOC) == {
        "id": 1,
        "name": "n",
        "profile": {"email": "e"},
        "items": [{"id": 1}, {"id": 2}, 3],
        "internal": {},
    }
    assert "password" not in f.apply({"password": 1, "other": 2})
    assert JsonFilter(exclude=["*"]).apply(DOC) == {}


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a.", "a\nb", "x" * 300, ".".join("a" * 17)])
def test_bad_json_paths_are_refused(path: str) -> None:
    assert "response_json" in refused(transform={"response_json": {"include": [path]}})


# --- documents -------------------------------------------------------------------------------


def test_the_contract_example_is_accepted() -> None:
    r = route(
        transform={
            "request_headers": {"set": {"x-tenant": "{user}"}, "remove": ["x-debug"]},
            "response_headers": {
                "set": {"x-frame-options": "DENY"},
                "remove": ["server", "x-powered-by"],
            },
            "response_json": {"include": ["id", "name", "profile.email"]},
        },
        cache={"ttl": "30s", "vary": ["Accept-Language"]},
    )
    assert r.cache is not None and r.cache.vary == ["accept-language"]
    dashboard = parse_document(
        {
            "kind": "Route",
            "name": "dashboard",
            "match": {"path": "/bff/dashboard", "methods": ["GET"]},
            "auth": {"require": "session"},
            "compose": {
                "profile": {"backend": "users", "path": "/users/{user}"},
                "orders": {
                    "backend": "orders",
                    "path": "/orders?user={user}",
                    "timeout": "2s",
                    "optional": True,
                },
            },
        }
    )
    assert isinstance(dashboard, Route) and dashboard.services() == ["orders", "users"]


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        # The caller's identity, the gateway's headers and the session cookie: never.
        ({"transform": {"request_headers": {"set": {"X-User-Id": "root"}}}}, "reserved"),
        ({"transform": {"request_headers": {"set": {"x-user-roles": "admin"}}}}, "reserved"),
        ({"transform": {"request_headers": {"remove": ["x-auth-method"]}}}, "reserved"),
        ({"transform": {"request_headers": {"set": {"x-request-id": "1"}}}}, "reserved"),
        ({"transform": {"request_headers": {"set": {"x-wardgate-scope": "1:1"}}}}, "reserved"),
        ({"transform": {"request_headers": {"set": {"cookie": "wg_session=x"}}}}, "reserved"),
        ({"transform": {"response_headers": {"set": {"set-cookie": "wg_session=x"}}}}, "reserved"),
        ({"transform": {"response_headers": {"set": {"x-cache": "HIT"}}}}, "reserved"),
        ({"transform": {"request_headers": {"set": {"host": "evil"}}}}, "reserved"),
        ({"transform": {"request_headers": {"set": {"x-envoy-original-path": "/"}}}}, "reserved"),
        ({"transform": {"request_headers": {"set": {"content-length": "0"}}}}, "reserved"),
        ({"transform": {"request_headers": {"set": {"x-a": "{header:cookie}"}}}}, "credentials"),
        # Header text: control characters, non-ASCII, names that are not tokens.
        ({"transform": {"request_headers": {"set": {"x-a": "a\r\nSet-Cookie: b"}}}}, "control"),
        ({"transform": {"request_headers": {"set": {"x-a": "café"}}}}, "visible ASCII"),
        ({"transform": {"request_headers": {"set": {"x a": "1"}}}}, "header name"),
        ({"transform": {"request_headers": {"set": {"x-a": "1"}, "remove": ["X-A"]}}}, "both"),
        ({"transform": {"request_headers": {}}}, "at least one"),
        ({"transform": {}}, "needs request_headers"),
        ({"transform": {"response_json": {}}}, "exactly one"),
        ({"transform": {"response_json": {"include": ["a"], "exclude": ["b"]}}}, "exactly one"),
        ({"cache": {"ttl": "0.5s"}}, "at least 1s"),
        ({"cache": {"ttl": "2d"}}, "at most 1d"),
        ({"cache": {"ttl": "1m", "vary": ["a", "A"]}}, "twice"),
        ({"cache": {"ttl": "1m", "private": True}}, "unknown field"),
        ({"websocket": True, "cache": {"ttl": "1m"}}, "websocket"),
    ],
)
def test_refused_transforms_and_caches_name_the_reason(extra: dict[str, Any], why: str) -> None:
    assert why in refused(**extra)


def compose_route(**extra: Any) -> dict[str, Any]:
    return {
        "kind": "Route",
        "name": "c",
        "match": {"path": "/c", "methods": ["GET"]},
        "compose": {"a": {"backend": "b", "path": "/a"}},
        **extra,
    }


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"backend": "b"}, "exactly one of backend, backends or compose"),
        ({"match": {"path": "/c"}}, "GET and HEAD"),
        ({"match": {"path": "/c", "methods": ["POST"]}}, "GET and HEAD"),
        ({"compose": {}}, "1 to 16"),
        ({"compose": {f"p{i}": {"backend": "b", "path": "/"} for i in range(17)}}, "1 to 16"),
        ({"compose": {"a b": {"backend": "b", "path": "/"}}}, "should match"),
        ({"compose": {"a": {"backend": "b", "path": "http://evil/"}}}, "starts with '/'"),
        ({"compose": {"a": {"backend": "b", "path": "/a/../admin"}}}, "'..'"),
        ({"compose": {"a": {"backend": "b", "path": "/a#frag"}}}, "URL characters"),
        ({"compose": {"a": {"backend": "b", "path": "/a b"}}}, "URL characters"),
        ({"compose": {"a": {"backend": "b", "path": "/{nope}"}}}, "not a placeholder"),
        ({"compose": {"a": {"backend": "b", "path": "/", "timeout": "2m"}}}, "at most 60s"),
        ({"transcode": {"descriptor": "d", "services": ["a.B"]}}, "without transcode"),
        ({"websocket": True}, "without transcode"),
    ],
)
def test_refused_compositions_name_the_reason(change: dict[str, Any], why: str) -> None:
    with pytest.raises(DocumentError) as info:
        parse_document(compose_route(**change))
    assert why in str(info.value)


# --- the policy that travels -----------------------------------------------------------------


def test_the_policy_round_trips_and_says_which_phases_a_route_needs() -> None:
    def phases(**extra: Any) -> tuple[bool, bool, bool]:
        r = route(**extra)
        text = encode_policy(
            route=r.name,
            authenticated=False,
            transform=r.transform,
            cache=r.cache,
            compose=r.compose,
            timeout=r.timeout,
        )
        p = phases_of(decode_policy(text))
        return (p.request_headers, p.response_headers, p.response_body)

    # Constant values and removals are Envoy's own: no callout at all.
    constant = {"set": {"x-frame-options": "DENY"}, "remove": ["server"]}
    assert phases(transform={"request_headers": constant, "response_headers": constant}) == (
        False,
        False,
        False,
    )
    assert phases(transform={"request_headers": {"set": {"x-t": "{user}"}}}) == (True, False, False)
    assert phases(transform={"response_headers": {"set": {"x-t": "{user}"}}}) == (True, True, False)
    assert phases(transform={"response_json": {"exclude": ["a"]}}) == (False, True, True)
    assert phases(cache={"ttl": "1m"}) == (True, True, True)


def test_a_policy_too_large_to_travel_is_refused() -> None:
    paths = [f"{'k' * 120}{i}" for i in range(60)]
    reason = refused(transform={"response_json": {"exclude": paths}})
    assert f"at most {MAX_POLICY_BYTES}" in reason


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{}",
        '{"v":2,"r":"x"}',
        '{"v":1}',
        '{"v":1,"r":"x","q":{"s":[["x-user-id","{user}"]]}}',  # never, whoever wrote it
        '{"v":1,"r":"x","q":{"d":["cookie"]}}',
        '{"v":1,"r":"x","p":{"s":[["Set-Cookie","a"]]}}',
        '{"v":1,"r":"x","q":{"s":[["x-a","{header:cookie}"]]}}',
        '{"v":1,"r":"x","c":[0,[],0]}',
        '{"v":1,"r":"x","j":{"i":["a"],"e":["b"]}}',
        '{"v":1,"r":"x","x":[["a","b","/",-1,0]]}',
    ],
)
def test_a_policy_wardgate_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        decode_policy(text)


# --- wardgate cache purge: bad input is refused before Redis is asked ----------------------


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["Bad Name"], "is not a route name"),
        (["r", "--path", "no-slash"], "starts with '/'"),
        (["r", "--path", "/a?b=1"], "no query"),
        (["r", "--path", "/a\nb"], "visible ASCII"),
    ],
)
def test_cache_purge_refuses_bad_input(
    args: list[str], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["cache", "purge", *args])
    assert exited.value.code == 1
    assert why in capsys.readouterr().err
