"""A property-based fuzz of documents (issue 10, item 4): valid-shaped Route, Service and Issuer
documents with hostile text in every string field. For each one, ``parse_document`` either
refuses it with a ``DocumentError`` of one clean line (never another exception), or it
translates into Envoy messages where no string holds a control character, every header name is
an HTTP token and every header value visible ASCII. The same documents written raw into the
hashes go through ``Catalog`` and ``SnapshotBuilder`` without a build ever failing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import json_format
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from wardgate.domain.catalog import Catalog
from wardgate.domain.documents import Issuer, Route, Service, parse_document, printable
from wardgate.errors import DocumentError
from wardgate.xds import canonical
from wardgate.xds.build import SnapshotBuilder
from wardgate.xds.clusters import build_cluster
from wardgate.xds.routes import route_entry
from wardgate.xds.translate import TranslateOptions
from wardgate.xds.typeurls import TYPE_CLUSTER, TYPE_ROUTE

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- hostile text ---------------------------------------------------------------------------

HOSTILE = [
    "",
    " ",
    "\r",
    "\n",
    "\r\n",
    "\r\nSet-Cookie: x=1",
    "\nx-user-id: root",
    "\x00",
    "\t",
    "\x7f",
    "\x85",
    "\u2028",
    "\ud800",
    "\udfff",
    "%",
    "%0d%0a",
    "%00",
    "'",
    '"',
    "\\",
    "*",
    ":",
    ",",
    ";",
    "=",
    "|",
    "é",
    "\u202e",
    "\ufeff",
    "${x}",
    "../",
]
WRONG_TYPES: list[Any] = [None, 0, -1, 1.5, True, [], {}, ["x"], {"a": "b"}]
_hostile = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(st.characters(exclude_categories=()), max_size=24),  # any code point, surrogates too
    st.integers(300, 5000).map(lambda n: "x" * n),  # very long
)


# How hostile one document is: the share of its text fields given a hostile value. Shared by
# every field of one example, so many documents are valid (and their translation checked)
# while holding edge-case values that are allowed.
_hostility = st.shared(st.sampled_from([0, 0, 5, 20, 50, 100]), key="hostility")


@st.composite
def text(draw: st.DrawFn, *valid: str) -> Any:
    """A valid value or, as often as the document's hostility says: a hostile one, a valid
    one with hostile text before or after it, or a value of the wrong type. (Composite: its
    repr stays short.)"""
    good = draw(st.sampled_from(valid))
    if draw(st.integers(0, 99)) >= draw(_hostility):
        return good
    shape = draw(st.sampled_from(["hostile", "before", "after", "after", "type"]))
    if shape == "type":
        return draw(st.sampled_from(WRONG_TYPES))
    bad = draw(_hostile)
    return {"hostile": bad, "before": bad + good, "after": good + bad}[shape]


def key(*valid: str) -> st.SearchStrategy[Any]:
    """A mapping's key: as ``text``, but hashable."""
    return text(*valid).filter(lambda v: not isinstance(v, list | dict))


def some(strategy: st.SearchStrategy[Any], *, min_size: int = 0) -> st.SearchStrategy[Any]:
    return st.lists(strategy, min_size=min_size, max_size=3)


# --- documents ------------------------------------------------------------------------------

path = text("/a", "/", "/caf%C3%A9", "/v1/", "/a-b_c.d~e/!$&'()*+,;=:@", "/x%25y")
match = st.builds(
    lambda base, extra: {**base, **extra},
    st.one_of(
        st.fixed_dictionaries({"prefix": path}),
        st.fixed_dictionaries({"path": path}),
        st.fixed_dictionaries({"regex": text("/a/[0-9]+", "^/x$", "/(a|b)/.*")}),
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "methods": some(text("GET", "post", "OPTIONS"), min_size=1),
            "headers": st.dictionaries(
                key("x-api-version", "X-Tenant", "!#$%&'*+.^_`|~"),
                text("v2", "a b", "", 'x=1; y="2"', "~!"),
            ),
            "hosts": some(text("a.example.com", "*.example.com", "A.Example.COM"), min_size=1),
        },
    ),
)
rate_limit = st.fixed_dictionaries(
    {
        "by": st.one_of(text("ip", "user", "header:x-tenant"), some(text("user", "header:x-t"))),
        "requests": st.integers(1, 100),
        "per": text("minute", "30s"),
    },
    optional={
        "key": text("budget"),
        "tiers": st.dictionaries(key("gold", "silver"), st.integers(1, 100), max_size=2),
        "algorithm": st.sampled_from(["fixed_window", "sliding_window", "token_bucket"]),
    },
)
cors = st.fixed_dictionaries(
    {"allow_origins": some(text("*", "https://app.example.com", "http://a.b:8080"), min_size=1)},
    optional={
        "allow_methods": some(text("GET", "*", "PROPFIND", "M-SEARCH")),
        "allow_headers": some(text("x-a", "Content-Type", "*", "!#$%&'*+.^_`|~")),
        "expose_headers": some(text("x-request-id", "*")),
        "allow_credentials": st.booleans(),
        "max_age": text("10m", "1h"),
    },
)
routes = st.fixed_dictionaries(
    {
        "kind": st.just("Route"),
        "name": text("r", "users-api"),
        "match": match,
        "backend": text("s"),
    },
    optional={
        "rewrite_prefix": text("/b", "/"),
        "timeout": text("5s", "250ms"),
        "retries": st.fixed_dictionaries(
            {"attempts": st.integers(0, 3)},
            optional={"on": some(text("5xx", "reset")), "per_try_timeout": text("1s")},
        ),
        "auth": st.fixed_dictionaries(
            {"require": st.sampled_from(["session", "jwt", "api_key", "any"])},
            optional={"roles": some(text("admin", "ops:read"))},
        ),
        "rate_limits": some(rate_limit),
        "cors": cors,
        "ip_deny": some(text("10.0.0.0/8", "::1")),
        "websocket": st.booleans(),
    },
)
services = st.fixed_dictionaries(
    {
        "kind": st.just("Service"),
        "name": text("s"),
        "endpoints": some(
            st.fixed_dictionaries(
                {"address": text("10.0.0.1", "backend.internal", "::1"), "port": st.just(80)}
            ),
            min_size=1,
        ),
    },
    optional={
        "protocol": st.sampled_from(["http", "http2", "grpc"]),
        "health_check": st.fixed_dictionaries(
            {},
            optional={"path": text("/healthz", "/h?full=1&x=%20", "/a;b"), "interval": text("5s")},
        ),
        "connect_timeout": text("1s"),
    },
)
issuers = st.fixed_dictionaries(
    {
        "kind": st.just("Issuer"),
        "name": text("i"),
        "issuer": text("https://idp.example", "https://idp.example/tenant/café", "urn:x:y"),
        "audiences": some(text("api", "https://api.example/ü"), min_size=1),
        "hs256_secret_env": text("IDP_SECRET"),
    },
    optional={"roles_claim": text("roles"), "user_claim": text("sub"), "clock_skew": text("30s")},
)

# --- what Envoy may be given ----------------------------------------------------------------

UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE = re.compile(r"([!-~]([ -~]*[!-~])?)?")
HEADER_LISTS = {"allow_headers", "expose_headers", "allow_methods"}


def strings(value: Any, where: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every string in a message's dict form, keys too, with where it is."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*where, key), key
            yield from strings(item, (*where, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings(item, (*where, i))


def assert_clean(message: Any) -> None:
    """No string holds a control character; header names are tokens (pseudo-headers ':x'),
    header values and what travels with a request visible ASCII, CORS lists joined tokens."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for where, value in strings(data):
        assert not UNPRINTABLE.search(value), (where, value)
        last = where[-1] if where else None
        if last in HEADER_LISTS:
            assert all(TOKEN.fullmatch(v) for v in value.split(", ")), (where, value)
        if last == "header_name" or where[-3:-2] + where[-1:] == ("headers", "name"):
            assert TOKEN.fullmatch(value.removeprefix(":")), (where, value)
        if last == "descriptor_key":  # a header's is "header:NAME"
            assert TOKEN.fullmatch(value.removeprefix("header:")), (where, value)
        visible = {"exact", "path", "prefix", "prefix_rewrite", "max_age", "descriptor_value"}
        if last in visible or "context_extensions" in where:
            assert HEADER_VALUE.fullmatch(value), (where, value)


def assert_one_clean_line(exc: DocumentError) -> None:
    assert not UNPRINTABLE.search(str(exc)), str(exc)


def translate(doc: Route | Service | Issuer, hashing: bool) -> None:
    if isinstance(doc, Route):
        assert_clean(
            canonical.parse(route_entry(doc, hashing=hashing), route_components_pb2.Route())
        )
    elif isinstance(doc, Service):
        assert_clean(build_cluster(doc))
    else:  # an Issuer reaches the authorizer, messages and logs; never Envoy
        assert not any(UNPRINTABLE.search(s) for s in (doc.issuer, *doc.audiences))


@FUZZ
@given(st.one_of(routes, services, issuers), st.booleans())
def test_a_document_is_refused_in_one_line_or_translates_to_clean_envoy_config(
    raw: dict[str, Any], hashing: bool
) -> None:
    try:
        doc = parse_document(raw)
    except DocumentError as exc:
        assert_one_clean_line(exc)
        event(f"{raw['kind']} refused")
        return
    event(f"{raw['kind']} translated")
    translate(doc, hashing)


# One builder for the whole run: each example is one more raw write, built incrementally.
BUILDER = SnapshotBuilder(TranslateOptions())
SERVICE = {"kind": "Service", "name": "s", "endpoints": [{"address": "10.0.0.1", "port": 80}]}
_seen: dict[str, dict[str, str]] = {TYPE_ROUTE: {}, TYPE_CLUSTER: {}}


def _changed(snapshot: Any, type_url: str) -> Iterator[Any]:
    """The resources of ``type_url`` whose version changed since the last example."""
    resources = snapshot.resources[type_url]
    message = route_pb2.RouteConfiguration if type_url == TYPE_ROUTE else cluster_pb2.Cluster
    for name, version in resources.versions.items():
        if _seen[type_url].get(name) != version:
            _seen[type_url][name] = version
            found = message()
            resources.items[name].Unpack(found)
            yield found


@FUZZ
@given(st.one_of(routes, services, issuers))
def test_a_raw_write_of_any_document_is_refused_alone_and_every_build_succeeds(
    raw: dict[str, Any],
) -> None:
    """What a raw HSET gives the watcher: the stored JSON (a lone surrogate arrives as
    JSON's escape), refused on its own, never a build that fails for everyone."""
    kind = raw["kind"]
    name = raw["name"] if isinstance(raw["name"], str) else "x"
    stored: dict[str, dict[str, str]] = {"Service": {"s": json.dumps(SERVICE)}}
    stored.setdefault(kind, {})
    stored[kind][name] = json.dumps(raw)
    parsed = BUILDER.parse(stored, {})
    catalog: Catalog = parsed.catalog
    for key, reason in catalog.refused.items():
        assert not UNPRINTABLE.search(key + reason), (key, reason)
    by_kind: dict[str, Mapping[str, Any]] = {
        "Route": catalog.routes,
        "Service": catalog.services,
        "Issuer": catalog.issuers,
    }
    served = by_kind[kind]
    assert (f"{kind}/{printable(name)}" in catalog.refused) != (name in served)
    snapshot = BUILDER.build(parsed, {}, revision=1)
    for message in (*_changed(snapshot, TYPE_ROUTE), *_changed(snapshot, TYPE_CLUSTER)):
        assert_clean(message)
