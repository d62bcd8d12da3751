"""Envoy's tracer: OpenTelemetry spans exported over OTLP/gRPC to ``WARDGATE_OTLP_ENDPOINT``.

Envoy starts (or joins, from a ``traceparent`` header) a trace per request and passes its
context to the calls it makes: ext_authz, rate limit and ext_proc calls to wardgate carry it
in their gRPC metadata, and wardgate's spans join the trace (``wardgate/stats/tracing.py``).
The exporter reaches the endpoint with Envoy's Google gRPC client (``google_grpc``), so no
cluster is needed for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Importing this registers the message type that "@type" below refers to.
from envoy.config.trace.v3 import opentelemetry_pb2  # noqa: F401

from wardgate.xds.typeurls import of

T_OPENTELEMETRY = of("envoy.config.trace.v3.OpenTelemetryConfig")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TracingOptions:
    endpoint: str  # host:port of an OTLP/gRPC receiver
    sampling: float = 100.0  # percent of requests traced (a traceparent's sampled flag wins)
    service_name: str = "wardgate-envoy"


def tracing_config(opts: TracingOptions) -> dict[str, Any]:
    """The connection manager's ``tracing``."""
    return {
        "random_sampling": {"value": opts.sampling},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": T_OPENTELEMETRY,
                "grpc_service": {
                    "google_grpc": {"target_uri": opts.endpoint, "stat_prefix": "otlp"},
                    "timeout": "1s",
                },
                "service_name": opts.service_name,
            },
        },
    }
