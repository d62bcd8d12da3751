"""A Service's ``tls`` as Envoy's upstream transport socket.

The certificate authorities come inline from the ``ca_file`` wardgate reads (bounded, regular
files only: ``files.read_bounded_file``), or from each Envoy's system trust store. Only the
certificates parsed from it are sent, written out again: whatever else the file holds (a
private key of a bundle, comments) never reaches Envoy's configuration, where every admin
``/config_dump`` would show it. The
endpoint's certificate must name ``sni`` (a DNS subject alternative name, exact): checking
the chain alone would accept any certificate the authority ever signed. ALPN asks for h2 on
http2/grpc services and http/1.1 otherwise. TLS 1.2 is the least accepted.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401

from wardgate.domain.doc_upstream_tls import UpstreamTls
from wardgate.files import read_bounded_file
from wardgate.xds.typeurls import T_UPSTREAM_TLS


def trusted_ca(tls: UpstreamTls) -> dict[str, Any]:
    """The validation context's roots: the ca_file's certificates, or the system's."""
    if tls.ca_file is None:
        return {"system_root_certs": {}}
    pem = read_bounded_file(tls.ca_file)
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
        if not certificates:
            raise ValueError("no certificate")
    except ValueError as exc:
        raise ValueError(f"tls.ca_file {tls.ca_file}: no PEM certificate ({exc})") from None
    only = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)
    return {"trusted_ca": {"inline_string": only}}


def transport_socket(tls: UpstreamTls, protocol: str) -> dict[str, Any]:
    validation = {
        **trusted_ca(tls),
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": tls.sni}}],
    }
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": T_UPSTREAM_TLS,
            "sni": tls.sni,
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "alpn_protocols": ["h2"] if protocol in ("http2", "grpc") else ["http/1.1"],
                "validation_context": validation,
            },
        },
    }
