"""A Service's ``tls`` as Envoy's upstream transport socket: the CA file's certificates go
inline, and nothing else the file holds."""

from __future__ import annotations

from pathlib import Path

from tests.tls_certs import TestCA
from wardgate.domain.doc_upstream_tls import UpstreamTls
from wardgate.xds.upstream_tls import transport_socket


def test_only_the_certificates_of_the_ca_file_reach_envoy(tmp_path: Path) -> None:
    """A bundle named as ``ca_file`` (the key beside the certificate, as HAProxy keeps them):
    the key must not go inline into the cluster, which Envoy's ``/config_dump`` shows."""
    ca = TestCA(tmp_path)
    leaf = ca.leaf("svc", ["svc.test"])
    bundle = tmp_path / "bundle.pem"
    key = leaf.key.read_text()
    bundle.write_text("# the service's bundle\n" + key + ca.cert_file.read_text())
    socket = transport_socket(UpstreamTls(sni="svc.test", ca_file=str(bundle)), "http")
    inline = socket["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"]
    assert inline["inline_string"] == ca.cert_file.read_text()
    assert "PRIVATE KEY" not in str(socket) and key.splitlines()[1] not in str(socket)
