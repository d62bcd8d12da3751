"""Hostile text in document fields (issue 10, item 4): every field whose value reaches a header,
a regex or any Envoy string refuses control characters, and header names must be HTTP tokens.
Each refusal is one line naming the field, with the value escaped."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from wardgate.domain.documents import parse_document
from wardgate.errors import DocumentError
from wardgate.xds.clusters import build_cluster
from wardgate.xds.routes import route_entry

ROUTE: dict[str, Any] = {"kind": "Route", "name": "r", "match": {"prefix": "/a"}, "backend": "s"}
SERVICE: dict[str, Any] = {
    "kind": "Service",
    "name": "s",
    "endpoints": [{"address": "10.0.0.1", "port": 80}],
}
ISSUER: dict[str, Any] = {
    "kind": "Issuer",
    "name": "i",
    "issuer": "https://idp.example",
    "audiences": ["api"],
    "hs256_secret_env": "IDP_SECRET",
}

Place = Callable[[str], dict[str, Any]]


def _with(base: dict[str, Any], change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    change(doc)
    return doc


def _cors(field: str, valid: str) -> Place:
    return lambda v: _with(
        ROUTE, lambda d: d.update(cors={"allow_origins": ["*"], field: [valid + v]})
    )


def _limit(**rule: Any) -> Place:
    def place(v: str) -> dict[str, Any]:
        base = {"by": "ip", "requests": 1, "per": "minute"}
        filled = {k: (x.replace("{}", v) if isinstance(x, str) else x) for k, x in rule.items()}
        if "tiers" in rule:
            filled = {"tiers": {f"gold{v}": 5}}
        return _with(ROUTE, lambda d: d.update(rate_limits=[{**base, **filled}]))

    return place


# Each field a value of the document can reach Envoy through, and where the reason points.
FIELDS: dict[str, tuple[Place, str]] = {
    "cors.allow_headers": (_cors("allow_headers", "x-a"), "cors.allow_headers.0"),
    "cors.expose_headers": (_cors("expose_headers", "x-a"), "cors.expose_headers.0"),
    "cors.allow_methods": (_cors("allow_methods", "GET"), "cors.allow_methods.0"),
    "cors.allow_origins": (
        lambda v: _with(ROUTE, lambda d: d.update(cors={"allow_origins": [f"https://a{v}"]})),
        "cors.allow_origins",
    ),
    "cors.max_age": (
        lambda v: _with(ROUTE, lambda d: d.update(cors={"allow_origins": ["*"], "max_age": v})),
        "cors.max_age",
    ),
    "match.headers name": (
        lambda v: _with(ROUTE, lambda d: d["match"].update(headers={f"x-a{v}": "1"})),
        "match.headers",
    ),
    "match.headers value": (
        lambda v: _with(ROUTE, lambda d: d["match"].update(headers={"x-a": f"v{v}"})),
        "match.headers.x-a",
    ),
    "match.methods": (
        lambda v: _with(ROUTE, lambda d: d["match"].update(methods=[f"GET{v}"])),
        "match.methods",
    ),
    "match.hosts": (
        lambda v: _with(ROUTE, lambda d: d["match"].update(hosts=[f"a.example{v}"])),
        "match.hosts",
    ),
    "match.prefix": (
        lambda v: _with(ROUTE, lambda d: d.update(match={"prefix": f"/a{v}"})),
        "match",
    ),
    "match.path": (lambda v: _with(ROUTE, lambda d: d.update(match={"path": f"/a{v}"})), "match"),
    "match.regex": (lambda v: _with(ROUTE, lambda d: d.update(match={"regex": f"/a{v}"})), "match"),
    "rewrite_prefix": (
        lambda v: _with(ROUTE, lambda d: d.update(rewrite_prefix=f"/b{v}")),
        "rewrite_prefix",
    ),
    "retries.on": (
        lambda v: _with(ROUTE, lambda d: d.update(retries={"attempts": 1, "on": [f"5xx{v}"]})),
        "retries.on",
    ),
    "rate_limits.by header": (_limit(by="header:x-tenant{}"), "rate_limits.0.by"),
    "rate_limits.key": (_limit(key="budget{}"), "rate_limits.0.key"),
    "rate_limits.tiers": (_limit(tiers=None), "rate_limits.0.tiers"),
    "rate_limits.per": (_limit(per="1m{}"), "rate_limits.0.per"),
    "auth.roles": (
        lambda v: _with(ROUTE, lambda d: d.update(auth={"require": "jwt", "roles": [f"admin{v}"]})),
        "auth.roles.0",
    ),
    "timeout": (lambda v: _with(ROUTE, lambda d: d.update(timeout=f"5s{v}")), "timeout"),
    "route name": (lambda v: _with(ROUTE, lambda d: d.update(name=f"r{v}")), "name"),
    "backend": (lambda v: _with(ROUTE, lambda d: d.update(backend=f"s{v}")), "backend"),
    "health_check.path": (
        lambda v: _with(SERVICE, lambda d: d.update(health_check={"path": f"/healthz{v}"})),
        "health_check.path",
    ),
    "endpoints.address": (
        lambda v: _with(SERVICE, lambda d: d["endpoints"][0].update(address=f"10.0.0.1{v}")),
        "endpoints.0.address",
    ),
    "issuer": (lambda v: _with(ISSUER, lambda d: d.update(issuer=f"https://idp{v}")), "issuer"),
    "audiences": (
        lambda v: _with(ISSUER, lambda d: d.update(audiences=[f"api{v}"])),
        "audiences.0",
    ),
    "jwks_file": (
        lambda v: _with(
            ISSUER, lambda d: (d.pop("hs256_secret_env"), d.update(jwks_file=f"/k{v}"))
        ),
        "jwks_file",
    ),
    "roles_claim": (
        lambda v: _with(ISSUER, lambda d: d.update(roles_claim=f"roles{v}")),
        "roles_claim",
    ),
    "user_claim": (lambda v: _with(ISSUER, lambda d: d.update(user_claim=f"sub{v}")), "user_claim"),
}
CONTROL = {
    "CR": "\r",
    "LF": "\n",
    "CRLF header": "\r\nSet-Cookie: x=1",
    "NUL": "\x00",
    "DEL": "\x7f",
    "tab": "\t",
    "C1 NEL": "\x85",
    "line separator": "\u2028",
    "lone surrogate": "\ud800",
}


def _refusal(doc: dict[str, Any]) -> str:
    with pytest.raises(DocumentError) as info:
        parse_document(doc)
    return str(info.value)


def _one_clean_line(reason: str) -> None:
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]", reason), reason


@pytest.mark.parametrize("bad", list(CONTROL.values()), ids=list(CONTROL))
@pytest.mark.parametrize("field", list(FIELDS))
def test_control_characters_are_refused_naming_the_field(field: str, bad: str) -> None:
    place, where = FIELDS[field]
    parse_document(place(""))  # the document is valid without the hostile part
    reason = _refusal(place(bad))
    assert f": {where}" in reason, reason
    _one_clean_line(reason)
    assert "Set-Cookie" not in reason or "\\r\\nSet-Cookie" in reason  # escaped, never raw


HEADER_NAMES = ["cors.allow_headers", "cors.expose_headers", "match.headers name"]


@pytest.mark.parametrize("bad", [" x", ":x", "x,y", "(x)", '"x"', "é", "x/y"])
@pytest.mark.parametrize("field", [*HEADER_NAMES, "cors.allow_methods", "rate_limits.by header"])
def test_header_names_and_methods_must_be_http_tokens(field: str, bad: str) -> None:
    place, where = FIELDS[field]
    reason = _refusal(place(bad))
    assert f": {where}" in reason, reason
    _one_clean_line(reason)


def test_the_attack_run_value_is_refused_with_a_reason_naming_the_field() -> None:
    doc = _with(
        ROUTE,
        lambda d: d.update(cors={"allow_origins": ["*"], "allow_headers": ["x\r\nSet-Cookie: a"]}),
    )
    assert _refusal(doc) == (
        "route/r: cors.allow_headers.0: 'x\\r\\nSet-Cookie: a' holds the control character '\\r'"
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("café", "non-ASCII character ('é')"),
        (" v2", "starts or ends with a space"),
        ("v2 ", "starts or ends with a space"),
    ],
)
def test_header_values_are_visible_ascii(value: str, reason: str) -> None:
    place, _ = FIELDS["match.headers value"]
    doc = place("")
    doc["match"]["headers"]["x-a"] = value
    assert reason in _refusal(doc)


@pytest.mark.parametrize("value", ["", "v2", "a b", 'x=1; y="2"', "!~"])
def test_header_values_in_visible_ascii_are_kept(value: str) -> None:
    doc = _with(ROUTE, lambda d: d["match"].update(headers={"X-Version": value}))
    route = parse_document(doc)
    assert route.match.headers == {"x-version": value}  # type: ignore[union-attr]


def test_cors_lists_accept_tokens_and_the_wildcard() -> None:
    cors = {
        "allow_origins": ["*"],
        "allow_methods": ["GET", "PROPFIND", "*"],
        "allow_headers": ["X-Custom-Header", "content-type", "*"],
        "expose_headers": ["x-request-id", "*"],
    }
    route = parse_document({**ROUTE, "cors": cors})
    policy = route_entry(route)["typed_per_filter_config"]["envoy.filters.http.cors"]  # type: ignore[arg-type]
    assert policy["allow_methods"] == "GET, PROPFIND, *"
    assert policy["allow_headers"] == "X-Custom-Header, content-type, *"
    assert policy["expose_headers"] == "x-request-id, *"


@pytest.mark.parametrize("path", ["/healthz", "/health?full=1&x=%20", "/a/b;v=1", "/"])
def test_health_check_paths_in_their_wire_form_are_kept(path: str) -> None:
    svc = parse_document({**SERVICE, "health_check": {"path": path}})
    cluster = build_cluster(svc)  # type: ignore[arg-type]
    assert cluster.health_checks[0].http_health_check.path == path


@pytest.mark.parametrize("path", ["healthz", "/health check", "/caf\u00e9", "/a#b", ""])
def test_health_check_paths_that_are_no_request_target_are_refused(path: str) -> None:
    reason = _refusal({**SERVICE, "health_check": {"path": path}})
    assert "health_check.path" in reason and "is not a request path" in reason


def test_non_ascii_text_that_reaches_no_header_is_kept() -> None:
    issuer = parse_document({**ISSUER, "issuer": "https://idp.example/tenant/café"})
    assert issuer.issuer == "https://idp.example/tenant/café"  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", [["Route"], {"a": 1}, 3, None])
def test_a_kind_that_is_not_a_string_is_a_document_error(kind: Any) -> None:
    assert "kind must be one of" in _refusal({"kind": kind, "name": "r"})


def test_a_refusal_never_shows_a_raw_control_character_of_the_name() -> None:
    reason = _refusal({**ROUTE, "name": "r\nfake: line"})
    assert reason.startswith("route/r\\nfake: line: name:")
    _one_clean_line(reason)
