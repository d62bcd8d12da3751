"""Rate rules Envoy enforces itself: ``enforce: local`` and ``enforce: quota`` (issue 14, part B)
-- the document rules and their translation into Envoy's configuration."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import DRAFT_VERSION_03
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.rate_limit_quota.v3 import rate_limit_quota_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from google.protobuf import json_format

from tests.unit.test_translate import OPTS, route, user_entries
from wardgate.domain.catalog import Catalog
from wardgate.domain.doc_base import QUOTA_HEADERS
from wardgate.domain.documents import parse_document
from wardgate.domain.ratelimit import RULE_KEY, encode_rule
from wardgate.errors import DocumentError
from wardgate.xds.assemble import build_base
from wardgate.xds.listener import build_listener
from wardgate.xds.local_limits import F_LOCAL_LIMITS
from wardgate.xds.quota import F_QUOTA_KEYS, QUOTA_FILTERS, QuotaExtensions, quota_config
from wardgate.xds.routes import virtual_host_head


def doc(rate_limits: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "kind": "Route",
        "name": "r",
        "match": {"prefix": "/r"},
        "backend": "svc",
        "rate_limits": rate_limits,
        **extra,
    }


def rule(**fields: Any) -> dict[str, Any]:
    return {"by": "user", "requests": 10, "per": "minute", **fields}


# --- the document -----------------------------------------------------------------------------


def test_enforce_defaults_to_global() -> None:
    r = parse_document(doc([rule()]))
    assert r.rate_limits[0].enforce == "global"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"enforce": "local", "algorithm": "sliding_window"}, "no sliding_window"),
        ({"enforce": "quota", "algorithm": "sliding_window"}, "no sliding_window"),
        ({"enforce": "local", "shadow": True}, "takes no shadow"),
        ({"enforce": "quota", "failure_mode": "closed"}, "takes no failure_mode"),
        ({"enforce": "quota", "tiers": {"gold": 5}, "by": "api_key"}, "takes no tiers"),
        ({"enforce": "local", "key": "shared"}, "needs enforce: global or quota"),
        ({"enforce": "quota", "by": "ip"}, "not ip"),
        ({"enforce": "quota", "by": ["user", "header:x-tenant"]}, "not header:x-tenant"),
        ({"enforce": "everywhere"}, "'global', 'local' or 'quota'"),
    ],
)
def test_what_local_and_quota_refuse(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(DocumentError, match=reason):
        parse_document(doc([rule(**fields)]))


def test_local_takes_every_dimension_and_quota_the_established_ones() -> None:
    local = rule(enforce="local", by=["ip", "user", "api_key", "header:x-t"])
    quota = rule(enforce="quota", by=["user", "api_key"], key="shared", algorithm="token_bucket")
    r = parse_document(doc([local, quota, rule(enforce="quota", by="route")]))
    assert [x.enforce for x in r.rate_limits] == ["local", "quota", "quota"]  # type: ignore[union-attr]


def test_at_most_two_quota_rules_per_route() -> None:
    with pytest.raises(DocumentError, match="at most 2 rate limits with enforce: quota"):
        parse_document(doc([rule(enforce="quota")] * 3))


@pytest.mark.parametrize("header", QUOTA_HEADERS)
def test_routes_cannot_match_the_quota_headers(header: str) -> None:
    with pytest.raises(DocumentError, match="cannot be matched"):
        parse_document(doc([], match={"prefix": "/r", "headers": {header: "x"}}))


def _raw(*docs: dict[str, Any]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {"Route": {}, "Service": {}}
    for d in docs:
        out[d["kind"]][d["name"]] = json.dumps(d)
    return out


SVC = {"kind": "Service", "name": "svc", "endpoints": [{"address": "10.0.0.1", "port": 80}]}


def test_a_shared_key_must_be_enforced_alike() -> None:
    a = doc([rule(enforce="quota", key="k")], name="a")
    b = doc([rule(key="k")], name="b")
    catalog = Catalog.from_raw(_raw(SVC, a, b))
    assert "enforce must be the same" in catalog.refused["Route/b"]


# --- local: Envoy's local_ratelimit, no callout ------------------------------------------------


def _local_of(entry: Any) -> local_rate_limit_pb2.LocalRateLimit:
    config = local_rate_limit_pb2.LocalRateLimit()
    assert entry.typed_per_filter_config[F_LOCAL_LIMITS].Unpack(config)
    return config


def test_a_route_with_only_local_rules_makes_no_callout() -> None:
    r = route(
        "l",
        {"prefix": "/l"},
        rate_limits=[
            {"by": "ip", "requests": 3, "per": "minute", "enforce": "local"},
            {
                "by": "user",
                "requests": 7,
                "per": "hour",
                "enforce": "local",
                "algorithm": "token_bucket",
            },
        ],
    )
    (entry,) = user_entries([r])
    assert not entry.route.rate_limits  # nothing for the exact check
    assert "envoy.filters.http.local_ratelimit" not in entry.typed_per_filter_config  # no guard
    config = _local_of(entry)
    ip, user = config.descriptors
    v0 = encode_rule("l#0", 3, 60, "fixed_window", False)
    assert [(e.key, e.value) for e in ip.entries] == [(RULE_KEY, v0), ("masked_remote_address", "")]
    # A fixed window refills all at once every period; a token bucket at the rule's rate.
    assert (ip.token_bucket.max_tokens, ip.token_bucket.tokens_per_fill.value) == (3, 3)
    assert ip.token_bucket.fill_interval.seconds == 60
    assert [e.key for e in user.entries] == [RULE_KEY, "user"]
    assert user.token_bucket.max_tokens == 7
    # The filter's own actions: the address as Envoy routes by it, IPv6 per /64; the user
    # from x-user-id (set by ext_authz, stripped from what clients send).
    actions = json_format.MessageToDict(config, preserving_proto_field_name=True)["rate_limits"]
    assert actions[0]["actions"][1] == {
        "masked_remote_address": {"v4_prefix_mask_len": 32, "v6_prefix_mask_len": 64}
    }
    assert actions[1]["actions"][1] == {
        "request_headers": {"header_name": "x-user-id", "descriptor_key": "user"}
    }
    assert config.enable_x_ratelimit_headers == DRAFT_VERSION_03
    headers = {h.header.key: h.header.value for h in config.response_headers_to_add}
    # Envoy's x-ratelimit-* come from the bucket; retry-after is fixed: the slowest refill.
    assert headers == {"retry-after": "515"}
    assert config.max_dynamic_descriptors.value == OPTS.guard.clients


def test_api_key_rules_count_only_requests_an_api_key_authenticated() -> None:
    r = route(
        "k",
        {"prefix": "/k"},
        auth={"require": "any"},
        rate_limits=[{"by": "api_key", "requests": 5, "per": "second", "enforce": "local"}],
    )
    (entry,) = user_entries([r])
    config = _local_of(entry)
    (d,) = config.descriptors
    assert [(e.key, e.value) for e in d.entries][1:] == [
        ("auth_method", "api_key"),
        ("api_key", ""),
    ]


def test_mixed_routes_leave_global_rules_to_the_exact_check_and_its_guard() -> None:
    r = route(
        "m",
        {"prefix": "/m"},
        rate_limits=[
            {"by": "ip", "requests": 100, "per": "minute"},
            {"by": "ip", "requests": 10, "per": "second", "enforce": "local"},
        ],
    )
    (entry,) = user_entries([r])
    (action,) = entry.route.rate_limits
    assert action.actions[0].generic_key.descriptor_value.startswith("m#0|")
    guard = local_rate_limit_pb2.LocalRateLimit()
    entry.typed_per_filter_config["envoy.filters.http.local_ratelimit"].Unpack(guard)
    assert len(guard.descriptors) == 1
    local = _local_of(entry)
    assert [d.entries[0].value.split("|")[0] for d in local.descriptors] == ["m#1"]
    # The exact check gives the x-ratelimit-* headers: this filter's 429 carries fixed ones.
    assert not local.enable_x_ratelimit_headers
    headers = {h.header.key: h.header.value for h in local.response_headers_to_add}
    assert headers == {
        "retry-after": "1",
        "x-ratelimit-limit": "10",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "1",
    }


# --- quota: rate_limit_quota over ECDS, the rule in a header ----------------------------------


def _quota_route(**extra: Any) -> Any:
    return route(
        "q",
        {"prefix": "/q"},
        auth={"require": "session"},
        rate_limits=[
            {
                "by": "user",
                "requests": 20,
                "per": "hour",
                "enforce": "quota",
                "algorithm": "token_bucket",
            },
            {"by": "route", "requests": 500, "per": "minute", "enforce": "quota"},
        ],
        **extra,
    )


def test_a_quota_route_names_its_rules_in_the_quota_headers_and_has_a_local_bound() -> None:
    (entry,) = user_entries([_quota_route()])
    assert not entry.route.rate_limits  # no callout per request
    keys = header_mutation_pb2.HeaderMutationPerRoute()
    assert entry.typed_per_filter_config[F_QUOTA_KEYS].Unpack(keys)
    set_ = [(m.append.header.key, m.append.header.value) for m in keys.mutations.request_mutations]
    v0 = encode_rule("q#0", 20, 3600, "token_bucket", False)
    v1 = encode_rule("q#1", 500, 60, "fixed_window", False)
    assert set_ == [(QUOTA_HEADERS[0], v0), (QUOTA_HEADERS[1], v1)]
    assert all(
        m.append.append_action == m.append.OVERWRITE_IF_EXISTS_OR_ADD
        for m in keys.mutations.request_mutations
    )
    # The local bound: what each rule can allow one client at once, refilled at its rate.
    user, whole = _local_of(entry).descriptors
    assert user.token_bucket.max_tokens == 21 and whole.token_bucket.max_tokens == 1000


def test_the_quota_filters_match_the_rule_header_and_count_per_client() -> None:
    extensions = dict(QuotaExtensions().resources([_quota_route()]))
    assert set(extensions) == set(QUOTA_FILTERS)
    resource = extension_pb2.TypedExtensionConfig()
    resource.ParseFromString(extensions[QUOTA_FILTERS[0]])
    config = rate_limit_quota_pb2.RateLimitQuotaFilterConfig()
    assert resource.typed_config.Unpack(config)
    tree = config.bucket_matchers.matcher_tree
    assert "x-wardgate-quota-0" in str(tree.input.typed_config.value)
    v0 = encode_rule("q#0", 20, 3600, "token_bucket", False)
    (on_match,) = tree.exact_match_map.map.values()
    settings = rate_limit_quota_pb2.RateLimitQuotaBucketSettings()
    assert on_match.action.typed_config.Unpack(settings)
    assert list(tree.exact_match_map.map) == [v0]
    builder = settings.bucket_id_builder.bucket_id_builder
    assert builder[RULE_KEY].string_value == v0
    assert b"x-user-id" in builder["user"].custom_value.typed_config.value
    # A bucket without a lease lets requests pass (a token bucket there crashes Envoy 1.40);
    # the route's local bound caps them.
    fallback = settings.no_assignment_behavior.fallback_rate_limit
    assert fallback.blanket_rule == fallback.ALLOW_ALL
    headers = {
        h.header.key: h.header.value
        for h in settings.deny_response_settings.response_headers_to_add
    }
    assert headers == {
        "retry-after": "180",
        "x-ratelimit-limit": "20",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "180",
    }


def test_api_key_quota_rules_match_only_api_key_requests() -> None:
    config = quota_config(
        0,
        [
            (
                "k#0|5|60|fixed_window|0",
                parse_document(doc([rule(by="api_key", enforce="quota")])).rate_limits[0],  # type: ignore[union-attr]
            )
        ],
    )
    on_match = config["bucket_matchers"]["matcher_tree"]["exact_match_map"]["map"][
        "k#0|5|60|fixed_window|0"
    ]
    inner = on_match["matcher"]["matcher_tree"]
    assert inner["input"]["typed_config"]["header_name"] == "x-auth-method"
    assert list(inner["exact_match_map"]["map"]) == ["api_key"]


def test_without_quota_rules_each_filter_gets_a_placeholder() -> None:
    ext = QuotaExtensions()
    first = ext.resources([])
    assert [n for n, _ in first] == list(QUOTA_FILTERS)
    again = ext.resources([route("plain", {"prefix": "/p"})])
    assert all(a is b for (_, a), (_, b) in zip(first, again, strict=True))  # reused bytes


def test_the_snapshot_carries_the_quota_filters() -> None:
    q = doc([rule(enforce="quota")], name="q")
    base = build_base(Catalog.from_raw(_raw(SVC, q)), OPTS)
    extensions = dict(base.extension_bytes)
    resource = extension_pb2.TypedExtensionConfig()
    resource.ParseFromString(extensions[QUOTA_FILTERS[0]])
    assert b"q#0|10|60|fixed_window|0" in resource.typed_config.value


def test_the_listener_strips_the_quota_headers_and_discovers_the_quota_filters() -> None:
    listener = build_listener("0.0.0.0", 10000, OPTS)
    assert isinstance(listener, listener_pb2.Listener)
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    by_name = {f.name: f for f in hcm.http_filters}
    keys = header_mutation_pb2.HeaderMutation()
    by_name[F_QUOTA_KEYS].typed_config.Unpack(keys)
    assert [m.remove for m in keys.mutations.request_mutations] == list(QUOTA_HEADERS)
    for name in QUOTA_FILTERS:
        discovery = by_name[name].config_discovery
        assert discovery.apply_default_config_without_warming
        assert discovery.config_source.HasField("ads")
    # The upstream never sees them.
    assert set(QUOTA_HEADERS) <= set(virtual_host_head()["request_headers_to_remove"])
