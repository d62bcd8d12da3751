"""transform, cache and compose as Envoy is told them: the ext_proc filter off unless a route
says so, only the phases a route needs, Envoy's own header edits, failure modes, the compose
listener and its routes."""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from google.protobuf import json_format

from tests.unit.test_translate import hcm_of
from wardgate.domain.documents import Route, parse_document
from wardgate.extproc.compose_client import valid_via
from wardgate.extproc.processor import compose_via
from wardgate.xds.extproc import (
    COMPOSE_ROUTES,
    F_EXTPROC,
    F_TRANSFORM,
    POLICY_HEADER,
    ComposeAddress,
    compose_listener,
    compose_routes,
)
from wardgate.xds.listener import build_listener
from wardgate.xds.routes import route_entry, virtual_host_head
from wardgate.xds.translate import TranslateOptions

OPTS = TranslateOptions()


def route(**extra: Any) -> Route:
    doc = {"kind": "Route", "name": "r", "match": {"prefix": "/r"}, "backend": "b", **extra}
    r = parse_document(doc)
    assert isinstance(r, Route)
    return r


def per_route(r: Route) -> dict[str, Any]:
    return dict(route_entry(r).get("typed_per_filter_config", {}))


def extproc_of(r: Route) -> ext_proc_pb2.ExtProcPerRoute | None:
    config = per_route(r).get(F_EXTPROC)
    if config is None:
        return None
    msg = ext_proc_pb2.ExtProcPerRoute()
    json_format.ParseDict({k: v for k, v in config.items() if k != "@type"}, msg)
    return msg


def test_the_processor_is_off_at_the_virtual_host_and_for_routes_without_a_policy() -> None:
    head = virtual_host_head()
    assert head["typed_per_filter_config"][F_EXTPROC]["disabled"] is True
    assert F_EXTPROC not in per_route(route())
    # Only constant headers and removals: Envoy's own work, no callout.
    constant = route(
        transform={
            "request_headers": {"set": {"x-a": "1"}, "remove": ["x-b"]},
            "response_headers": {"set": {"x-frame-options": "DENY"}, "remove": ["server"]},
        }
    )
    assert F_EXTPROC not in per_route(constant)
    mutations = per_route(constant)[F_TRANSFORM]["mutations"]
    assert {"remove": "x-b"} in mutations["request_mutations"]
    assert {"remove": "server"} in mutations["response_mutations"]


def test_each_route_asks_only_for_the_phases_it_needs() -> None:
    mode = processing_mode_pb2.ProcessingMode
    enrich = extproc_of(route(transform={"request_headers": {"set": {"x-t": "{user}"}}}))
    assert enrich is not None and not enrich.disabled
    pm = enrich.overrides.processing_mode
    assert (pm.request_header_mode, pm.response_header_mode, pm.response_body_mode) == (
        mode.SEND,
        mode.SKIP,
        mode.NONE,
    )
    assert enrich.overrides.failure_mode_allow.value is True  # enrichment fails open
    hide = extproc_of(route(transform={"response_json": {"exclude": ["secret"]}}))
    assert hide is not None
    pm = hide.overrides.processing_mode
    assert (pm.request_header_mode, pm.response_header_mode, pm.response_body_mode) == (
        mode.SKIP,
        mode.SEND,
        mode.BUFFERED_PARTIAL,
    )
    assert hide.overrides.failure_mode_allow.value is False  # hiding fields fails closed
    cached = extproc_of(route(cache={"ttl": "1m"}))
    assert cached is not None and cached.overrides.failure_mode_allow.value is True


def test_a_policy_travels_in_the_metadata_with_percent_signs_escaped() -> None:
    r = route(transform={"request_headers": {"set": {"x-t": "100%-{user}"}}})
    config = extproc_of(r)
    assert config is not None
    (md,) = config.overrides.grpc_initial_metadata
    assert md.key == POLICY_HEADER
    assert "100%%-{user}" in md.value  # Envoy formats the value: a lone '%' is a command


def test_request_headers_the_processor_sets_are_stripped_by_envoy_first() -> None:
    """When the processor fails open, a client's own x-tenant must not reach the upstream."""
    r = route(
        transform={
            "request_headers": {"set": {"x-tenant": "{user}", "x-pct": "50%"}},
            "response_json": {"include": ["a"]},
        }
    )
    mutations = per_route(r)[F_TRANSFORM]["mutations"]["request_mutations"]
    assert {"remove": "x-tenant"} in mutations
    assert {"remove": "accept-encoding"} in mutations  # JSON the processor can read
    # The whole document: a range of it is JSON the paths do not reach ('"hunter2"').
    assert {"remove": "range"} in mutations and {"remove": "if-range"} in mutations
    (constant,) = [m for m in mutations if "append" in m]
    assert constant["append"]["header"] == {"key": "x-pct", "value": "50%%"}
    msg = header_mutation_pb2.HeaderMutationPerRoute()
    json_format.ParseDict({"mutations": per_route(r)[F_TRANSFORM]["mutations"]}, msg)


def test_the_listener_filter_is_on_with_every_phase_skipped_and_guards_headers() -> None:
    hcm = hcm_of(OPTS)
    (f,) = [f for f in hcm.http_filters if f.name == F_EXTPROC]
    config = ext_proc_pb2.ExternalProcessor()
    assert f.typed_config.Unpack(config)
    pm = config.processing_mode
    skip = processing_mode_pb2.ProcessingMode.SKIP
    assert pm.request_header_mode == skip and pm.response_header_mode == skip
    assert config.failure_mode_allow and config.allow_mode_override
    assert config.status_on_error.code == 503
    assert config.message_timeout.ToMilliseconds() == 200
    assert config.max_message_timeout.seconds == 61
    # Envoy itself refuses, whatever the processor answers, to let it touch these.
    regex = config.mutation_rules.disallow_expression.regex
    for name in ("x-user-id", "x-user-roles", "x-auth-method", "cookie", "set-cookie"):
        assert name in regex
    assert config.mutation_rules.disallow_is_error.value is True
    assert list(config.metadata_options.forwarding_namespaces.untyped) == [
        "envoy.filters.http.ext_authz"
    ]
    assert not config.grpc_service.initial_metadata  # no compose listener here


def test_the_compose_listener_is_loopback_and_routes_parts_by_header() -> None:
    compose = ComposeAddress("127.0.0.1", 9902)
    main = build_listener("0.0.0.0", 10000, OPTS, compose)
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    assert main.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    (f,) = [f for f in hcm.http_filters if f.name == F_EXTPROC]
    config = ext_proc_pb2.ExternalProcessor()
    assert f.typed_config.Unpack(config)
    assert [(m.key, m.value) for m in config.grpc_service.initial_metadata] == [
        ("x-wardgate-compose", "127.0.0.1:9902")
    ]
    listener = compose_listener(compose)
    assert listener.address.socket_address.address == "127.0.0.1"
    assert listener.address.socket_address.port_value == 9902
    assert ComposeAddress("::1", 1).via == "[::1]:1"
    # Bound to every address (Envoy in another container or pod): where it connects from.
    assert ComposeAddress("0.0.0.0", 9902).via == ComposeAddress("::", 9902).via == "peer:9902"

    r = parse_document(
        {
            "kind": "Route",
            "name": "dash",
            "match": {"path": "/dash", "methods": ["GET"]},
            "timeout": "3s",
            "retries": {"attempts": 2},
            "compose": {
                "profile": {"backend": "users", "path": "/u/{user}"},
                "orders": {"backend": "orders", "path": "/o", "timeout": "1s"},
            },
        }
    )
    assert isinstance(r, Route)
    config_bytes = compose_routes([r, route()], "k3y")
    routes = route_pb2.RouteConfiguration.FromString(config_bytes)
    assert routes.name == COMPOSE_ROUTES
    entries = {e.name: e for e in routes.virtual_hosts[0].routes}
    assert set(entries) == {"dash/profile", "dash/orders", "none"}
    orders = entries["dash/orders"]
    assert orders.route.cluster == "orders" and orders.route.timeout.seconds == 1
    assert orders.route.retry_policy.num_retries.value == 2
    assert orders.match.headers[0].string_match.exact == "dash/orders"
    # Only wardgate, which holds the deployment's key, reaches a backend through it.
    assert orders.match.headers[1].name == "x-wardgate-compose-key"
    assert orders.match.headers[1].string_match.exact == "k3y"
    assert set(orders.request_headers_to_remove) == {"x-wardgate-part", "x-wardgate-compose-key"}
    assert entries["dash/profile"].route.timeout.seconds == 3
    assert entries["none"].direct_response.status == 404
    # The compose route itself never reaches a cluster (the processor answers it).
    action = route_entry(r)["route"]
    assert action["cluster_not_found_response_code"] == "SERVICE_UNAVAILABLE"


def test_without_a_compose_key_the_compose_listener_routes_nothing() -> None:
    r = parse_document(
        {
            "kind": "Route",
            "name": "dash",
            "match": {"path": "/dash", "methods": ["GET"]},
            "compose": {"profile": {"backend": "users", "path": "/u/{user}"}},
        }
    )
    assert isinstance(r, Route)
    routes = route_pb2.RouteConfiguration.FromString(compose_routes([r], ""))
    (only,) = routes.virtual_hosts[0].routes
    assert only.name == "none" and only.direct_response.status == 404
    # The key is part of the route match: a match without it would let anyone through.
    keyed = route_pb2.RouteConfiguration.FromString(compose_routes([r], "k"))
    for entry in keyed.virtual_hosts[0].routes:
        if entry.name != "none":
            assert {h.name for h in entry.match.headers} >= {"x-wardgate-compose-key"}


def test_a_compose_listener_on_every_address_is_reached_where_its_envoy_connects_from() -> None:
    assert compose_via("127.0.0.1:9902", "ipv4:10.0.0.9:4000") == "127.0.0.1:9902"
    assert compose_via("peer:9902", "ipv4:10.1.2.3:51234") == "10.1.2.3:9902"
    assert compose_via("peer:9902", "ipv6:[fd00::7]:51234") == "[fd00::7]:9902"
    # An IPv4 Envoy on wardgate's dual-stack socket.
    assert compose_via("peer:9902", "ipv6:[::ffff:10.1.2.3]:51234") == "10.1.2.3:9902"
    assert compose_via("peer:9902", "unix:/run/wardgate.sock") == ""
    assert compose_via("peer:9902", "ipv4:not-an-ip:1") == ""
    assert valid_via(compose_via("peer:9902", "ipv6:[fd00::7]:1"))
