"""The listener's access log: every request's entry streamed to wardgate's
``AccessLogService`` (``envoy.access_loggers.http_grpc``), buffered by each Envoy worker and
sent in batches, off the request path (``wardgate/stats/``).

Each entry carries the request's dynamic metadata in full (``common_properties.metadata``:
Envoy filters none of it; ``filter_state_objects_to_log`` is about filter state, which
wardgate does not read). That is where the request's identity comes from, whoever decided
it: ext_authz, jwt_authn's verified ticket, the JWT identity script, and the gate between
them (``stats/als.py`` ``identity_of``)."""

from __future__ import annotations

import dataclasses
from typing import Any

# Importing this registers the message type that "@type" below refers to.
from envoy.extensions.access_loggers.grpc.v3 import als_pb2  # noqa: F401

from wardgate.domain.durations import format_duration
from wardgate.xds.typeurls import of

T_HTTP_GRPC_ACCESS_LOG = of("envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig")
LOG_NAME = "wardgate"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccessLogOptions:
    flush_interval: float = 1.0  # Envoy's buffer_flush_interval
    buffer_bytes: int = 16384  # Envoy's buffer_size_bytes: a batch goes out when this full


def access_log_config(opts: AccessLogOptions, grpc_service: dict[str, Any]) -> list[dict[str, Any]]:
    """The connection manager's ``access_log``: one gRPC access logger to wardgate."""
    return [
        {
            "name": "envoy.access_loggers.http_grpc",
            "typed_config": {
                "@type": T_HTTP_GRPC_ACCESS_LOG,
                "common_config": {
                    "log_name": LOG_NAME,
                    "grpc_service": grpc_service,
                    "transport_api_version": "V3",
                    "buffer_flush_interval": format_duration(opts.flush_interval),
                    "buffer_size_bytes": opts.buffer_bytes,
                },
            },
        }
    ]
