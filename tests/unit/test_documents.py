"""Route and Service documents, and the durations they are written with."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wardgate.domain.documents import (
    Route,
    Service,
    check_references,
    parse_document,
    to_json_dict,
)
from wardgate.domain.durations import format_duration, parse_duration, parse_period
from wardgate.errors import DocumentError, ReferenceError_

# The two documents of PRODUCT.md, field for field.
PRODUCT_SERVICE: dict[str, Any] = {
    "kind": "Service",
    "name": "users",
    "protocol": "http",
    "endpoints": [{"address": "127.0.0.1", "port": 8081}],
    "lb": "round_robin",
    "health_check": {"path": "/healthz", "interval": "5s"},
    "circuit_breaker": {
        "max_connections": 1024,
        "max_pending_requests": 256,
        "max_requests": 1024,
        "max_retries": 3,
    },
    "outlier_detection": {"consecutive_5xx": 5, "base_ejection_time": "30s"},
}
PRODUCT_ROUTE: dict[str, Any] = {
    "kind": "Route",
    "name": "users-api",
    "match": {
        "prefix": "/api/users",
        "methods": ["GET", "POST"],
        "headers": {"x-api-version": "v2"},
    },
    "backend": "users",
    "rewrite_prefix": "/users",
    "timeout": "5s",
    "retries": {"attempts": 2, "on": ["5xx", "reset"]},
    "auth": {"require": "session", "roles": ["admin"]},
    "rate_limits": [
        {"by": "ip", "requests": 100, "per": "minute"},
        {"by": "user", "requests": 1000, "per": "hour", "algorithm": "token_bucket"},
    ],
    "cors": {"allow_origins": ["https://app.example.com"], "allow_credentials": True},
    "ip_deny": ["203.0.113.0/24"],
    "max_body_bytes": 1048576,
}


def _route(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": "Route", "name": "r", "match": {"prefix": "/a"}, "backend": "s"}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def _service(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "Service",
        "name": "s",
        "endpoints": [{"address": "10.0.0.1", "port": 80}],
    }
    doc.update(changes)
    return doc


# --- the documents of PRODUCT.md ----------------------------------------------------------


def test_product_service_parses_with_every_field() -> None:
    svc = parse_document(PRODUCT_SERVICE)
    assert isinstance(svc, Service)
    assert svc.name == "users"
    assert svc.protocol == "http"
    assert [(e.address, e.port) for e in svc.endpoints or []] == [("127.0.0.1", 8081)]
    assert svc.lb == "round_robin"
    assert svc.health_check is not None
    assert (svc.health_check.path, svc.health_check.interval) == ("/healthz", "5s")
    assert svc.circuit_breaker is not None
    assert svc.circuit_breaker.max_pending_requests == 256
    assert svc.circuit_breaker.max_retries == 3
    assert svc.outlier_detection is not None
    assert svc.outlier_detection.consecutive_5xx == 5
    assert svc.outlier_detection.base_ejection_time == "30s"


def test_product_route_parses_with_every_field() -> None:
    route = parse_document(PRODUCT_ROUTE)
    assert isinstance(route, Route)
    assert route.match.prefix == "/api/users"
    assert route.match.methods == ["GET", "POST"]
    assert route.match.headers == {"x-api-version": "v2"}
    assert route.services() == ["users"]
    assert route.rewrite_prefix == "/users"
    assert route.timeout == "5s"
    assert route.retries is not None
    assert (route.retries.attempts, route.retries.on) == (2, ["5xx", "reset"])
    assert route.auth.require == "session"
    assert route.auth.roles == ["admin"]
    assert [(r.by, r.requests, r.period_seconds, r.algorithm) for r in route.rate_limits] == [
        ("ip", 100, 60, "fixed_window"),
        ("user", 1000, 3600, "token_bucket"),
    ]
    assert route.cors is not None
    assert route.cors.allow_origins == ["https://app.example.com"]
    assert route.cors.allow_credentials is True
    assert route.ip_deny == ["203.0.113.0/24"]
    assert route.max_body_bytes == 1048576


def test_weighted_backends_from_product_parse() -> None:
    doc = _route(
        backend=None,
        backends=[{"service": "users-v1", "weight": 90}, {"service": "users-v2", "weight": 10}],
    )
    route = parse_document(doc)
    assert isinstance(route, Route)
    assert route.services() == ["users-v1", "users-v2"]


def test_stored_form_keeps_what_was_set_and_nothing_defaulted() -> None:
    stored = to_json_dict(parse_document(PRODUCT_ROUTE))
    assert stored == PRODUCT_ROUTE
    assert "priority" not in stored
    assert "websocket" not in stored


def test_methods_are_upper_cased_and_header_names_lower_cased() -> None:
    route = parse_document(
        _route(match={"prefix": "/a", "methods": ["get"], "headers": {"X-A": "1"}})
    )
    assert isinstance(route, Route)
    assert route.match.methods == ["GET"]
    assert route.match.headers == {"x-a": "1"}


def test_a_registry_service_needs_no_endpoints() -> None:
    svc = parse_document({"kind": "Service", "name": "reg", "discovery": "registry"})
    assert isinstance(svc, Service)
    assert svc.endpoints is None


def test_a_static_service_needs_endpoints() -> None:
    with pytest.raises(DocumentError, match="at least one endpoint"):
        parse_document({"kind": "Service", "name": "s"})


@pytest.mark.parametrize("timeout", ["1ms", "1d", "86400s", "1440m"])
def test_timeouts_up_to_a_day_are_accepted(timeout: str) -> None:
    route = parse_document(_route(timeout=timeout))
    assert isinstance(route, Route)
    assert route.timeout == timeout


def test_expect_kind_fills_in_a_missing_kind() -> None:
    doc = {k: v for k, v in PRODUCT_SERVICE.items() if k != "kind"}
    assert isinstance(parse_document(doc, expect_kind="Service"), Service)


def test_expect_kind_refuses_the_other_kind() -> None:
    with pytest.raises(DocumentError, match="expected kind Service"):
        parse_document(PRODUCT_ROUTE, expect_kind="Service")


@pytest.mark.parametrize("raw", [[], "kind: Route", None, 3])
def test_a_document_must_be_a_mapping(raw: Any) -> None:
    with pytest.raises(DocumentError, match="mapping"):
        parse_document(raw)


def test_unknown_kind_is_refused_naming_kind() -> None:
    with pytest.raises(DocumentError, match="kind must be one of"):
        parse_document({"kind": "Gateway", "name": "g"})


# --- invalid documents: each names the field --------------------------------------------

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("prefix without slash", _route(match={"prefix": "api"}), "match.prefix"),
    ("prefix with query", _route(match={"prefix": "/a?b"}), "match.prefix"),
    ("path without slash", _route(match={"path": "x"}), "match.path"),
    ("two path matchers", _route(match={"prefix": "/a", "path": "/a"}), "prefix, path or regex"),
    ("upper-case name", _route(name="Users"), "name"),
    ("name with slash", _route(name="a/b"), "name"),
    ("name ending in dash", _route(name="users-"), "name"),
    ("empty name", _route(name=""), "name"),
    ("unknown field", _route(colour="red"), "colour: unknown field"),
    ("unknown nested field", _route(match={"prefix": "/a", "verb": "GET"}), "match.verb"),
    (
        "backend and backends",
        _route(backends=[{"service": "x", "weight": 1}]),
        "exactly one of backend, backends or compose",
    ),
    ("neither backend nor backends", _route(backend=None), "backend, backends or compose"),
    ("empty backends", _route(backend=None, backends=[]), "backends"),
    (
        "zero weights",
        _route(
            backend=None, backends=[{"service": "x", "weight": 0}, {"service": "y", "weight": 0}]
        ),
        "weights of backends",
    ),
    ("negative weight", _route(backend=None, backends=[{"service": "x", "weight": -1}]), "weight"),
    (
        "service twice in backends",
        _route(
            backend=None, backends=[{"service": "x", "weight": 1}, {"service": "x", "weight": 1}]
        ),
        "twice",
    ),
    ("bad timeout", _route(timeout="5 seconds"), "timeout"),
    ("numeric timeout", _route(timeout=5), "timeout"),
    (
        "bad per-try timeout",
        _route(retries={"attempts": 1, "per_try_timeout": "x"}),
        "per_try_timeout",
    ),
    ("bad retry condition", _route(retries={"attempts": 1, "on": ["sometimes"]}), "retries.on"),
    ("bad CIDR in ip_deny", _route(ip_deny=["10.0.0.300/8"]), "ip_deny"),
    ("host name in ip_allow", _route(ip_allow=["example.com"]), "ip_allow"),
    ("roles with require none", _route(auth={"require": "none", "roles": ["admin"]}), "auth"),
    ("roles without require", _route(auth={"roles": ["admin"]}), "auth.roles"),
    ("unknown require", _route(auth={"require": "magic"}), "auth.require"),
    ("bad method", _route(match={"prefix": "/a", "methods": ["FETCH"]}), "match.methods"),
    ("empty methods", _route(match={"prefix": "/a", "methods": []}), "match.methods"),
    ("bad regex", _route(match={"regex": "("}), "match.regex"),
    ("bad header name", _route(match={"prefix": "/a", "headers": {"x y": "1"}}), "match.headers"),
    ("bad host", _route(match={"prefix": "/a", "hosts": ["a b"]}), "match.hosts"),
    (
        "unknown algorithm",
        _route(rate_limits=[{"by": "ip", "requests": 1, "per": "minute", "algorithm": "leaky"}]),
        "rate_limits.0.algorithm",
    ),
    (
        "bad by",
        _route(rate_limits=[{"by": "cookie", "requests": 1, "per": "minute"}]),
        "rate_limits.0.by",
    ),
    (
        "header: without name",
        _route(rate_limits=[{"by": "header:", "requests": 1, "per": "minute"}]),
        "by",
    ),
    (
        "zero requests",
        _route(rate_limits=[{"by": "ip", "requests": 0, "per": "minute"}]),
        "requests",
    ),
    (
        "period 0s",
        _route(rate_limits=[{"by": "ip", "requests": 1, "per": "0s"}]),
        "rate_limits.0.per",
    ),
    (
        "period 1.5s",
        _route(rate_limits=[{"by": "ip", "requests": 1, "per": "1.5s"}]),
        "rate_limits.0.per",
    ),
    (
        "period 500ms",
        _route(rate_limits=[{"by": "ip", "requests": 1, "per": "500ms"}]),
        "rate_limits.0.per",
    ),
    ("period fortnight", _route(rate_limits=[{"by": "ip", "requests": 1, "per": "week"}]), "per"),
    ("bad CORS origin", _route(cors={"allow_origins": ["app.example.com"]}), "cors.allow_origins"),
    ("rewrite without prefix", _route(match={"path": "/a"}, rewrite_prefix="/b"), "rewrite_prefix"),
    ("rewrite without slash", _route(rewrite_prefix="b"), "rewrite_prefix"),
    ("priority too high", _route(priority=5000), "priority"),
    ("zero max_body_bytes", _route(max_body_bytes=0), "max_body_bytes"),
    ("service: bad protocol", _service(protocol="ftp"), "protocol"),
    ("service: bad lb", _service(lb="fastest"), "lb"),
    ("service: no endpoints", _service(endpoints=[]), "endpoint"),
    (
        "service: port 0",
        _service(endpoints=[{"address": "10.0.0.1", "port": 0}]),
        "endpoints.0.port",
    ),
    (
        "service: bad address",
        _service(endpoints=[{"address": "10.0.0.1/24", "port": 80}]),
        "endpoints.0.address",
    ),
    ("service: bad connect timeout", _service(connect_timeout="soon"), "connect_timeout"),
    ("service: bad interval", _service(health_check={"interval": "5"}), "health_check.interval"),
    ("service: unknown field", _service(replicas=3), "replicas: unknown field"),
    (
        "service: registry with endpoints",
        _service(discovery="registry"),
        "registry service takes its endpoints from heartbeats",
    ),
    ("reserved route name", _route(name="wardgate-login"), "reserved"),
    ("reserved service name", _service(name="wardgate_grpc"), "reserved"),
    ("zero timeout", _route(timeout="0s"), "timeout"),
    ("timeout over a day", _route(timeout="25h"), "timeout"),
    ("zero health-check interval", _service(health_check={"interval": "0s"}), "interval"),
]


@pytest.mark.parametrize(("doc", "names"), [pytest.param(d, n, id=i) for i, d, n in INVALID])
def test_invalid_document_is_refused_naming_the_field(doc: dict[str, Any], names: str) -> None:
    with pytest.raises(DocumentError) as info:
        parse_document(doc)
    assert names in str(info.value)
    # The one-line reason starts with the kind of document it is about.
    assert str(info.value).lower().startswith(doc["kind"].lower())
    assert "\n" not in str(info.value)


def test_many_errors_are_summarised_on_one_line() -> None:
    doc = _route(a=1, b=2, c=3, d=4, e=5)
    with pytest.raises(DocumentError) as info:
        parse_document(doc)
    assert "(and 2 more)" in str(info.value)
    assert "\n" not in str(info.value)


def test_overflowing_period_is_a_document_error() -> None:
    doc = _route(rate_limits=[{"by": "ip", "requests": 1, "per": "9" * 400 + "s"}])
    with pytest.raises(DocumentError, match="per"):
        parse_document(doc)


@pytest.mark.parametrize("regex", ["^/a(?=b)", r"^/(a)\1$", "^/(?<!x)y", "^/(?P<n>a)(?P=n)$"])
def test_regex_envoy_cannot_compile_is_refused(regex: str) -> None:
    # Python's re accepts these; Envoy's RE2 does not.
    with pytest.raises(DocumentError, match=r"match\.regex is not a regex Envoy accepts"):
        parse_document(_route(match={"regex": regex}))


def test_regex_too_complex_for_envoy_is_refused() -> None:
    with pytest.raises(DocumentError, match=r"match\.regex is too complex"):
        parse_document(_route(match={"regex": "^/(a|b|c){50}$"}))


def test_regex_envoy_accepts_is_kept() -> None:
    route = parse_document(_route(match={"regex": "^/api/v[0-9]+/users/[^/]+$"}))
    assert isinstance(route, Route)
    assert route.match.regex == "^/api/v[0-9]+/users/[^/]+$"


def test_too_many_hosts_for_one_envoy_regex_are_refused() -> None:
    hosts = [f"host{i}.example.com" for i in range(40)]
    with pytest.raises(DocumentError, match=r"match\.hosts"):
        parse_document(_route(match={"prefix": "/", "hosts": hosts}))


# --- references ---------------------------------------------------------------------------


def test_check_references_names_the_route_and_the_missing_service() -> None:
    route = parse_document(_route(name="orders", backend="orders-svc"))
    assert isinstance(route, Route)
    with pytest.raises(ReferenceError_) as info:
        check_references({"orders": route}, {})
    assert info.value.name == "orders"
    assert "orders-svc" in str(info.value)


def test_check_references_passes_when_every_service_exists() -> None:
    route = parse_document(_route(backend="s"))
    svc = parse_document(_service())
    assert isinstance(route, Route)
    assert isinstance(svc, Service)
    check_references({"r": route}, {"s": svc})


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        (" 5s ", 5.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "5", "s", "-5s", "5x", "5 sec", "1.s", ".5s", "5s5", "1e3s", "5S", "5ss"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [5, 5.0, None, b"5s"])
def test_parse_duration_refuses_non_strings(value: Any) -> None:
    with pytest.raises(ValueError, match="string"):
        parse_duration(value)


def test_parse_duration_refuses_an_infinite_duration() -> None:
    with pytest.raises(ValueError):
        parse_duration("9" * 400 + "s")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("second", 1), ("minute", 60), ("Hour", 3600), (" day ", 86400), ("30s", 30), ("2m", 120)],
)
def test_parse_period(text: str, seconds: int) -> None:
    assert parse_period(text) == seconds


@pytest.mark.parametrize("text", ["0s", "1.5s", "500ms", "week", ""])
def test_parse_period_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_period(text)


@pytest.mark.parametrize(("seconds", "text"), [(0.25, "0.25s"), (5.0, "5s"), (1.5, "1.5s")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.text())
def test_parse_duration_raises_only_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert seconds >= 0


@given(st.from_regex(r"\A\s?[0-9]{1,20}(\.[0-9]{1,6})?\s?(ms|s|m|h|d)?\s?\Z"))
def test_parse_duration_near_valid_text_raises_only_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert math.isfinite(seconds)
    assert seconds >= 0


@pytest.mark.parametrize(
    "header",
    [
        "x-user-id",
        "X-User-Roles",
        "x-auth-method",
        "cookie",
        "authorization",
        "x-api-key",
        "x-wardgate-scope",
    ],
)
def test_routes_cannot_match_on_headers_the_gateway_sets_or_strips(header: str) -> None:
    doc = {
        "kind": "Route",
        "name": "r",
        "match": {"prefix": "/", "headers": {header: "root"}},
        "backend": "s",
    }
    with pytest.raises(DocumentError, match="cannot be matched"):
        parse_document(doc)


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        ("/café", "write it percent-encoded (%C3%A9)"),
        ("/%61pi", "Envoy decodes it to 'a'"),
        ("/a%2Fb", "escaped slash"),
        ("/a%zz", "must start a percent-encoding"),
        ("/a<b", "percent-encoded (%3C)"),
    ],
)
def test_paths_that_could_never_match_are_refused_with_the_form_to_write(
    prefix: str, reason: str
) -> None:
    doc = {"kind": "Route", "name": "r", "match": {"prefix": prefix}, "backend": "s"}
    with pytest.raises(DocumentError, match=re.escape(reason)):
        parse_document(doc)


@pytest.mark.parametrize("prefix", ["/caf%C3%A9", "/a-b_c.d~e/!$&'()*+,;=:@", "/v1/x%25y"])
def test_paths_in_their_wire_form_are_accepted(prefix: str) -> None:
    doc = {"kind": "Route", "name": "r", "match": {"prefix": prefix}, "backend": "s"}
    assert parse_document(doc).match.prefix == prefix  # type: ignore[union-attr]
