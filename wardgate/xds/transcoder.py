"""gRPC-JSON transcoding in Envoy: one transcoder filter whose configuration comes over ECDS
(docs/TRANSCODING.md, docs/DECISIONS.md).

Every descriptor a route uses is merged into one ``FileDescriptorSet`` and sent once, as the
``TypedExtensionConfig`` ``wardgate.transcoder``, whatever the number of routes using it: a
changed descriptor is one ECDS push, picked up by new streams without a listener drain. The
filter is on at the listener and off, by a configuration without services, on every route
that does not transcode (``xds/assemble.py``: in the virtual host of a scope without
transcoding routes, else on each such route), so a request on another route is never
transcoded even when its path matches a binding.

``match_incoming_request_route`` keeps the REST route (its cluster, timeout, retries, rate
limits) after the path becomes ``/package.Service/Method``. A second filter, on the same
routes, removes the ``grpc-status`` and ``grpc-message`` headers the transcoder leaves on a
unary REST answer.

The one configuration holds every transcoding route's services, so on any transcoding route
the transcoder would map a binding of another route's service too: a route exposing a public
service under ``/v1`` would carry ``PUT /v1/admin/...`` of an admin service to its own
backend, past the admin route's checks. A third filter, after the transcoder, refuses a
transcoded request whose gRPC path is not one of the route's own services (404, like a path
no method binds); native gRPC requests, which the transcoder lets through untouched, are left
as they were.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

# Importing these registers the message types that "@type" below refers to.
from envoy.config.core.v3 import extension_pb2
from envoy.config.route.v3 import route_components_pb2  # noqa: F401
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: F401

from wardgate.domain.grpc_api import GrpcApi, transcoder_set
from wardgate.xds import canonical
from wardgate.xds.typeurls import (
    T_HEADER_MUTATION,
    T_HEADER_MUTATION_ROUTE,
    T_RBAC,
    T_RBAC_ROUTE,
    of,
)

TRANSCODER = "wardgate.transcoder"
GRPC_HEADERS = "wardgate.transcoded_headers"
SERVICES_GUARD = "wardgate.transcoded_services"
# Set by the transcoder on every request it transcodes (to the REST path it had).
ORIGINAL_PATH = "x-envoy-original-path"
OTHER_SERVICES_POLICY = "other-services"  # the services guard's policy (in Envoy's details)
T_TRANSCODER = of("envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder")
MAX_BODY = 4 << 20  # request and response bodies the transcoder buffers, in bytes
# What a gRPC server answers that means nothing to a REST client.
_GRPC_ONLY_HEADERS = ("grpc-status", "grpc-message", "grpc-accept-encoding", "grpc-encoding")
# A configuration without services: the transcoder lets every request through untouched.
_PLACEHOLDER = {"@type": T_TRANSCODER, "proto_descriptor_bin": "", "services": []}


def transcoder_config(apis: Iterable[GrpcApi], services: Iterable[str]) -> dict[str, Any]:
    """The transcoder's configuration for these descriptor sets and services (none: the
    placeholder, which transcodes nothing)."""
    apis, services = list(apis), sorted(set(services))
    if not services:
        return dict(_PLACEHOLDER)
    merged = transcoder_set(apis)  # the routes' checks (domain/transcoding.py) ran it
    return {
        "@type": T_TRANSCODER,
        "proto_descriptor_bin": base64.b64encode(merged).decode(),
        "services": services,
        "match_incoming_request_route": True,
        "auto_mapping": True,
        "convert_grpc_status": True,
        "request_validation_options": {
            "reject_unknown_method": True,
            "reject_binding_body_field_collisions": True,
        },
        "ignore_unknown_query_parameters": True,
        "print_options": {"always_print_primitive_fields": True},
        "max_request_body_size": MAX_BODY,
        "max_response_body_size": MAX_BODY,
    }


def transcoder_resource(apis: Iterable[GrpcApi], services: Iterable[str]) -> bytes:
    """The ECDS resource, serialized deterministically (one, always: Envoy refuses an ECDS
    answer without one)."""
    resource = canonical.parse(
        {"name": TRANSCODER, "typed_config": transcoder_config(apis, services)},
        extension_pb2.TypedExtensionConfig(),
    )
    data: bytes = resource.SerializeToString(deterministic=True)
    return data


def transcoder_filters() -> list[dict[str, Any]]:
    """The listener's three filters: the headers filter first (a response passes the filters
    in reverse order), the transcoder, then the services guard (an RBAC filter without rules:
    it allows everything unless a route says otherwise). All are on at the listener and do
    nothing unless a route says so: per-route ``FilterConfig`` switches are decided when Envoy
    creates the request's filter chain, before the scope filter has set the scope key, that
    is from the client's own headers (docs/DECISIONS.md)."""
    return [
        {"name": GRPC_HEADERS, "typed_config": {"@type": T_HEADER_MUTATION, "mutations": {}}},
        {
            "name": TRANSCODER,
            "config_discovery": {
                "config_source": {"ads": {}, "resource_api_version": "V3"},
                "default_config": _PLACEHOLDER,
                "apply_default_config_without_warming": True,
                "type_urls": [T_TRANSCODER],
            },
        },
        {"name": SERVICES_GUARD, "typed_config": {"@type": T_RBAC}},
    ]


def transcoder_off() -> dict[str, Any]:
    """The transcoder's per-route (or virtual host) configuration that turns it off: one that
    transcodes no service."""
    return {TRANSCODER: dict(_PLACEHOLDER)}


def route_filters(services: Iterable[str]) -> dict[str, Any]:
    """A transcoding route's own configuration: the REST answer loses the gRPC status
    headers, and a request transcoded to a method of a service the route does not name is
    refused. (The transcoder itself it inherits from the listener: the configuration ECDS
    sends.)"""
    own = [{"url_path": {"path": {"prefix": f"/{s}/"}}} for s in sorted(services)]
    other_service = {
        "and_rules": {
            "rules": [
                {"header": {"name": ORIGINAL_PATH, "present_match": True}},
                {"not_rule": {"or_rules": {"rules": own}}},
            ]
        }
    }
    return {
        GRPC_HEADERS: {
            "@type": T_HEADER_MUTATION_ROUTE,
            "mutations": {"response_mutations": [{"remove": h} for h in _GRPC_ONLY_HEADERS]},
        },
        SERVICES_GUARD: {
            "@type": T_RBAC_ROUTE,
            "rbac": {
                "rules": {
                    "action": "DENY",
                    "policies": {
                        OTHER_SERVICES_POLICY: {
                            "permissions": [other_service],
                            "principals": [{"any": True}],
                        }
                    },
                }
            },
        },
    }
