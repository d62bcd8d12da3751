"""gRPC-JSON transcoding in Envoy: one transcoder filter whose configuration comes over ECDS
(docs/TRANSCODING.md, docs/DECISIONS.md).

Every descriptor a route uses is merged into one ``FileDescriptorSet`` and sent once, as the
``TypedExtensionConfig`` ``wardgate.transcoder``, whatever the number of routes using it: a
changed descriptor is one ECDS push, picked up by new streams without a listener drain. The
filter is off at the listener and turned on per route (``FilterConfig{config: {}}``), so a
request on another route is never transcoded even when its path matches a binding.

``match_incoming_request_route`` keeps the REST route (its cluster, timeout, retries, rate
limits) after the path becomes ``/package.Service/Method``. A second filter, on the same
routes, removes the ``grpc-status`` and ``grpc-message`` headers the transcoder leaves on a
unary REST answer.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

# Importing these registers the message types that "@type" below refers to.
from envoy.config.core.v3 import extension_pb2
from envoy.config.route.v3 import route_components_pb2  # noqa: F401
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2  # noqa: F401
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2

from wardgate.domain.grpc_api import GrpcApi, merge
from wardgate.xds import canonical
from wardgate.xds.typeurls import T_HEADER_MUTATION, of

TRANSCODER = "wardgate.transcoder"
GRPC_HEADERS = "wardgate.transcoded_headers"
T_TRANSCODER = of("envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder")
T_FILTER_CONFIG = of("envoy.config.route.v3.FilterConfig")
MAX_BODY = 4 << 20  # request and response bodies the transcoder buffers, in bytes


def _files_of(module: Any) -> list[descriptor_pb2.FileDescriptorProto]:
    """A compiled module's file and the files it imports, dependencies first."""
    out: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def add(file: Any) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dep in file.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        out.append(proto)

    add(module.DESCRIPTOR)
    return out


# google.rpc.Status and its details: what convert_grpc_status turns into the JSON error body.
_STATUS_API = GrpcApi(tuple(_files_of(status_pb2) + _files_of(error_details_pb2)), {})


def transcoder_config(apis: Iterable[GrpcApi], services: Iterable[str]) -> dict[str, Any]:
    """The transcoder's configuration for these descriptor sets and services (none: the
    placeholder, which transcodes nothing)."""
    apis, services = list(apis), sorted(set(services))
    if not services:
        return {"@type": T_TRANSCODER, "proto_descriptor_bin": "", "services": []}
    try:
        merged = merge([*apis, _STATUS_API])
    except ValueError:  # a descriptor carries its own, different google/rpc files: keep it
        merged = merge(apis)
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
    """The listener's two filters, both off unless a route turns them on: the headers filter
    first (a response passes the filters in reverse order), then the transcoder."""
    placeholder = {"@type": T_TRANSCODER, "proto_descriptor_bin": "", "services": []}
    return [
        {
            "name": GRPC_HEADERS,
            "disabled": True,
            "typed_config": {
                "@type": T_HEADER_MUTATION,
                "mutations": {
                    "response_mutations": [{"remove": "grpc-status"}, {"remove": "grpc-message"}]
                },
            },
        },
        {
            "name": TRANSCODER,
            "disabled": True,
            "config_discovery": {
                "config_source": {"ads": {}, "resource_api_version": "V3"},
                "default_config": placeholder,
                "apply_default_config_without_warming": True,
                "type_urls": [T_TRANSCODER],
            },
        },
    ]


def route_filters() -> dict[str, Any]:
    """A transcoding route's per-filter configuration: both filters on, as configured at the
    listener (an empty ``config`` turns a disabled filter on; ``disabled: false`` alone is
    refused for a discovered filter)."""
    on = {"@type": T_FILTER_CONFIG, "config": {}}
    return {GRPC_HEADERS: dict(on), TRANSCODER: dict(on)}
