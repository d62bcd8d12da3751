"""TLS on the listener: one port for both, told apart by the TLS inspector.

A connection that opens with a TLS ClientHello goes to the TLS filter chain: the certificate
comes over SDS (the secret ``LISTENER_SECRET``, which wardgate publishes from the
certificate and key files it reads, ``listener_secrets.py``), ALPN offers h2 and http/1.1, TLS
1.2 is the least accepted. Plain-text connections to the same port get, with
``redirect_http``, a connection manager whose only route redirects to https (same host, same
port: that port speaks TLS too, so ``http://gw:10000/x`` goes to ``https://gw:10000/x``, and
a Service mapping 80 and 443 to it redirects to the standard port); without it they match no
chain and are closed. Nothing but the redirect is ever served in plain text.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Importing these registers the message types that "@type" below refers to.
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401

from wardgate.xds.typeurls import T_DOWNSTREAM_TLS, T_HCM, T_ROUTER, T_TLS_INSPECTOR

LISTENER_SECRET = "wardgate-listener-tls"
ALPN = ["h2", "http/1.1"]


@dataclasses.dataclass(frozen=True)
class ListenerTls:
    """TLS settings of the listener (fixed when wardgate starts)."""

    redirect_http: bool = False
    secret: str = LISTENER_SECRET


def listener_filters() -> list[dict[str, Any]]:
    return [
        {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": T_TLS_INSPECTOR}}
    ]


def filter_chains(connection_manager: dict[str, Any], tls: ListenerTls) -> list[dict[str, Any]]:
    """The TLS chain serving ``connection_manager``, and the plain-text redirect chain."""
    chains: list[dict[str, Any]] = [
        {
            "name": "tls",
            "filter_chain_match": {"transport_protocol": "tls"},
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": downstream_tls_context(tls.secret),
            },
            "filters": [
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": connection_manager,
                }
            ],
        }
    ]
    if tls.redirect_http:
        chains.append(
            {
                "name": "plain-text-redirect",
                "filter_chain_match": {"transport_protocol": "raw_buffer"},
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": _redirect_manager(),
                    }
                ],
            }
        )
    return chains


def downstream_tls_context(secret: str) -> dict[str, Any]:
    return {
        "@type": T_DOWNSTREAM_TLS,
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "alpn_protocols": ALPN,
            "tls_certificate_sds_secret_configs": [
                {"name": secret, "sds_config": {"ads": {}, "resource_api_version": "V3"}}
            ],
        },
    }


def _redirect_manager() -> dict[str, Any]:
    """Plain text: every request answered 301 to the same URL over https."""
    return {
        "@type": T_HCM,
        "stat_prefix": "wardgate_plain_text",
        "codec_type": "HTTP1",
        "route_config": {
            "name": "wardgate-https-redirect",
            "virtual_hosts": [
                {
                    "name": "https-redirect",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "redirect": {"https_redirect": True}}],
                }
            ],
        },
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": T_ROUTER}}
        ],
    }
