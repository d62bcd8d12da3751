"""A Service's ``tls``: Envoy speaks TLS to the service's endpoints and checks who they are."""

from __future__ import annotations

from pydantic import Field

from wardgate.domain.doc_base import Text, _Doc

DNS_NAME_PATTERN = (
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class UpstreamTls(_Doc):
    """TLS from Envoy to the service: the name it asks for (SNI) is the name the endpoint's
    certificate must carry, checked against the service's certificate authorities."""

    sni: str = Field(
        pattern=DNS_NAME_PATTERN,
        max_length=253,
        description=(
            "The server name Envoy sends (SNI) and that the endpoint's certificate must hold "
            "as a DNS subject alternative name (exact). A DNS name, at most 253 characters."
        ),
    )
    ca_file: Text | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "PEM file of the certificate authorities trusted for this service, on each host "
            "running wardgate serve (read when the document is translated, sent to Envoy "
            "inline; a file that cannot be read or holds no certificate refuses this service "
            "alone). Unset: the system's trust store of each Envoy."
        ),
    )
