"""The Service document and its parts."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)

from wardgate.domain.doc_base import (
    Name,
    _Doc,
    _duration,
    shared,
    shown,
)
from wardgate.domain.doc_upstream_tls import UpstreamTls

# The request target of a health check as sent on the wire: a path, maybe a query; URL
# characters only (anything else percent-encoded). Envoy refuses a control character here by
# refusing the whole cluster update, every other cluster's change with it.
HEALTH_PATH_PATTERN = r"^/[A-Za-z0-9\-._~!$&'()*+,;=:@/%?\[\]]*$"
_HEALTH_PATH = re.compile(HEALTH_PATH_PATTERN)


def _health_path(value: str) -> str:
    if not _HEALTH_PATH.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a request path: it starts with '/' and holds URL "
            "characters only (letters, digits, -._~!$&'()*+,;=:@/%?[]); percent-encode others"
        )
    return value


HealthPath = Annotated[
    str, AfterValidator(_health_path), Field(json_schema_extra={"pattern": HEALTH_PATH_PATTERN})
]


class Endpoint(_Doc):
    """One host of a static service (an Envoy ``lb_endpoint``)."""

    address: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9.:-]+$",
        description=(
            "IP address or host name (Envoy socket_address.address). When any endpoint of the "
            "service is a host name, the cluster is STRICT_DNS and Envoy resolves the names; "
            "otherwise the endpoints go by EDS."
        ),
    )
    port: int = Field(ge=1, le=65535, description="TCP port, 1 to 65535 (Envoy port_value).")
    weight: int = Field(
        default=1,
        ge=1,
        le=128,
        description=(
            "Relative share of the traffic, 1 to 128 (Envoy load_balancing_weight). Default: 1."
        ),
    )


class HealthCheck(_Doc):
    """Active health checking of a service's hosts (the Envoy cluster's
    ``health_checks[0]``)."""

    path: HealthPath = Field(
        default="/healthz",
        description=(
            "Path requested, starting with '/', maybe with a query; URL characters only, "
            "anything else percent-encoded (Envoy http_health_check.path). Unused with "
            "protocol grpc, which checks the standard gRPC health service "
            "(grpc_health_check). Default: /healthz."
        ),
    )
    interval: str = Field(
        default="5s",
        description=(
            "Time between checks, a duration such as '5s' (more than 0, at most 1d; Envoy "
            "interval and no_traffic_interval). Default: 5s."
        ),
    )
    timeout: str = Field(
        default="1s",
        description=(
            "Time to wait for a check's answer, a duration such as '1s' (more than 0, at most "
            "1d; Envoy timeout). Default: 1s."
        ),
    )
    unhealthy_threshold: int = Field(
        default=2,
        ge=1,
        le=100,
        description=(
            "Failed checks in a row before a host is marked unhealthy, 1 to 100 (Envoy "
            "unhealthy_threshold). Default: 2."
        ),
    )
    healthy_threshold: int = Field(
        default=1,
        ge=1,
        le=100,
        description=(
            "Passed checks in a row before an unhealthy host is marked healthy again, 1 to "
            "100 (Envoy healthy_threshold). Default: 1."
        ),
    )

    _d = field_validator("interval", "timeout")(classmethod(lambda cls, v: _duration(v)))


class CircuitBreaker(_Doc):
    """Connection and request caps of a service: the fields set become Envoy's
    ``circuit_breakers.thresholds[0]`` (default priority). Fields left unset keep Envoy's
    defaults; with none set, no ``circuit_breakers`` block is sent."""

    max_connections: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most connections to the service's hosts, at least 1 (Envoy max_connections). "
            "Unset: Envoy's default (1024)."
        ),
    )
    max_pending_requests: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most requests waiting for a connection, at least 1 (Envoy max_pending_requests). "
            "Unset: Envoy's default (1024)."
        ),
    )
    max_requests: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most requests in flight to the service at once, at least 1 (Envoy max_requests). "
            "Unset: Envoy's default (1024)."
        ),
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Most retries in flight to the service at once, 0 or more (Envoy max_retries). "
            "Unset: Envoy's default (3)."
        ),
    )


class OutlierDetection(_Doc):
    """Ejection of a service's failing hosts (the Envoy cluster's ``outlier_detection``)."""

    consecutive_5xx: int = Field(
        default=5,
        ge=1,
        description=(
            "5xx answers in a row after which a host is ejected, at least 1 (Envoy "
            "consecutive_5xx). Default: 5."
        ),
    )
    interval: str = Field(
        default="10s",
        description=(
            "Time between ejection analysis sweeps, a duration such as '10s' (more than 0, at "
            "most 1d; Envoy interval). Default: 10s."
        ),
    )
    base_ejection_time: str = Field(
        default="30s",
        description=(
            "Base time a host stays ejected, multiplied by the number of times it has been "
            "ejected; a duration such as '30s' (more than 0, at most 1d; Envoy "
            "base_ejection_time). Default: 30s."
        ),
    )
    max_ejection_percent: int = Field(
        default=50,
        ge=1,
        le=100,
        description=(
            "Largest share of the service's hosts ejected at once, 1 to 100 percent (Envoy "
            "max_ejection_percent). Default: 50."
        ),
    )

    _d = field_validator("interval", "base_ejection_time")(classmethod(lambda cls, v: _duration(v)))


class Service(_Doc):
    """A Service document: an upstream service and how Envoy reaches it. Each service becomes
    one Envoy ``Cluster`` of the same name (type EDS, or STRICT_DNS when an endpoint is a host
    name)."""

    kind: Literal["Service"] = Field(default="Service", description="Document kind: Service.")
    name: Name = Field(
        description=(
            "Unique service name, also the Envoy cluster name: 1 to 63 lower-case letters, "
            "digits, '.', '_' or '-', starting and ending with a letter or digit; names "
            "starting with 'wardgate' are reserved."
        )
    )
    protocol: Literal["http", "http2", "grpc"] = Field(
        default="http",
        description=(
            "Upstream protocol: http, http2 or grpc. http2 and grpc use HTTP/2 (Envoy "
            "HttpProtocolOptions explicit_http_config.http2_protocol_options); a grpc "
            "service's health_check uses the gRPC health service. Default: http."
        ),
    )
    endpoints: list[Endpoint] | None = Field(
        default=None,
        description=(
            "Where the service runs (one Envoy locality of lb_endpoints, by EDS or inline for "
            "STRICT_DNS). At least one with discovery static; left out with discovery "
            "registry."
        ),
    )
    discovery: Literal["static", "registry"] = Field(
        default="static",
        description=(
            "static: the endpoints listed. registry: the instances currently sending "
            "heartbeats (POST /registry/heartbeat or wardgate register), by EDS. "
            "Default: static."
        ),
    )
    lb: Literal["round_robin", "least_request", "random", "ring_hash", "maglev"] = Field(
        default="round_robin",
        description=(
            "Load-balancing policy (Envoy lb_policy): round_robin, least_request, random, "
            "ring_hash or maglev; with ring_hash or maglev the routes to the service hash on "
            "the client's source IP. Default: round_robin."
        ),
    )
    connect_timeout: str = Field(
        default="1s",
        description=(
            "TCP connect timeout, a duration such as '250ms' or '1s' (more than 0, at most 1d; "
            "Envoy connect_timeout). Default: 1s."
        ),
    )
    health_check: HealthCheck | None = Field(
        default=None,
        description="Active health checking (Envoy health_checks[0]). Unset: none.",
    )
    circuit_breaker: CircuitBreaker | None = Field(
        default=None,
        description=(
            "Connection and request caps (Envoy circuit_breakers.thresholds[0]). Unset: "
            "Envoy's defaults."
        ),
    )
    outlier_detection: OutlierDetection | None = Field(
        default=None,
        description="Ejection of failing hosts (Envoy outlier_detection). Unset: none.",
    )
    tls: UpstreamTls | None = Field(
        default=None,
        description=(
            "TLS to the endpoints: {sni, ca_file}; the endpoint's certificate must name sni. "
            "Unset: plain text."
        ),
    )

    _ct = field_validator("connect_timeout")(classmethod(lambda cls, v: _duration(v)))
    _shared = field_validator(
        "endpoints", "health_check", "circuit_breaker", "outlier_detection", "tls", mode="wrap"
    )(classmethod(shared))

    @model_validator(mode="after")
    def _endpoints(self) -> Service:
        if self.discovery == "registry":
            if self.endpoints:
                raise ValueError(
                    "a registry service takes its endpoints from heartbeats; drop endpoints"
                )
        elif not self.endpoints:
            raise ValueError(
                "a static service needs at least one endpoint (or discovery: registry)"
            )
        return self
