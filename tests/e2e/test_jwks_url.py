"""Issuers whose keys come from a jwks_url, through a real Envoy: fetched over HTTPS with the
issuer's CA, refreshed (key rotation), kept when the server fails or answers garbage; a server
the CA does not vouch for, or one that redirects, gives no keys."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.inproc_cli import apply as cli_apply
from tests.inproc_cli import run as cli
from tests.jwks_server import JwksServer, jwks_server
from tests.support import Stack, eventually, route
from tests.tls_certs import TestCA

pytestmark = pytest.mark.e2e
ISS = "https://jwks-url.idp.test"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _jwks(*keys: tuple[str, ec.EllipticCurvePrivateKey]) -> bytes:
    out = []
    for kid, key in keys:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        out.append({**jwk, "kid": kid, "use": "sig"})
    return json.dumps({"keys": out}).encode()


def _token(kid: str, key: ec.EllipticCurvePrivateKey, iss: str = ISS) -> str:
    claims = {"iss": iss, "aud": "api", "sub": "jwks-user", "exp": int(time.time()) + 600}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def _issuer(name: str, iss: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "Issuer",
        "name": name,
        "issuer": iss,
        "audiences": ["api"],
        "jwks_url": url,
        "jwks_refresh": "1s",
        **extra,
    }


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[tuple[JwksServer, TestCA]]:
    ca = TestCA(tmp_path / "ca")
    leaf = ca.leaf("idp", ["127.0.0.1"])
    with jwks_server(cert=leaf.cert, key=leaf.key) as server:
        yield server, ca


def test_keys_from_a_jwks_url_rotate_and_survive_a_failing_server(
    stack: Stack, idp: tuple[JwksServer, TestCA], tmp_path: Path
) -> None:
    server, ca = idp
    k1, k2 = _key(), _key()
    server.body = _jwks(("k1", k1))
    names = [("route", "ju-route"), ("issuer", "ju-corp")]
    try:
        cli_apply(
            stack,
            _issuer("ju-corp", ISS, server.url, jwks_ca_file=str(ca.cert_file)),
            route("ju-route", "/ju/", "echo", auth={"require": "jwt"}),
        )
        with stack.client() as http:

            def status(token: str) -> int:
                headers = {"authorization": f"Bearer {token}"}
                return http.get("/ju/x", headers=headers).status_code

            eventually(lambda: status(_token("k1", k1)) == 200, timeout=10)
            assert status(_token("k2", k2)) == 401
            answered = http.get("/ju/x", headers={"authorization": f"Bearer {_token('k1', k1)}"})
            assert answered.json()["headers"]["x-user-id"] == "jwks-user"

            # The provider rotates its keys: the new key is taken, the old one dropped.
            server.body = _jwks(("k2", k2))
            eventually(lambda: status(_token("k2", k2)) == 200, timeout=15)
            eventually(lambda: status(_token("k1", k1)) == 401, timeout=5)

            # The provider fails, then answers garbage, then a set without a usable key:
            # every time the last keys stay.
            for status_code, body in ((500, b"oops"), (200, b"<html>"), (200, b'{"keys":[]}')):
                server.status, server.body = status_code, body
                hits = server.hits
                eventually(lambda h=hits: server.hits >= h + 1, timeout=15)
                assert status(_token("k2", k2)) == 200
            # A key set forged in the token's own header is no key set.
            forged = jwt.encode(
                {"iss": ISS, "aud": "api", "sub": "x", "exp": int(time.time()) + 60},
                k1,
                algorithm="ES256",
                headers={"kid": "k2", "jku": "http://127.0.0.1:1/evil.json"},
            )
            assert status(forged) == 401
    finally:
        for kind, name in names:
            cli(stack, "delete", kind, name)


def test_a_server_the_ca_does_not_vouch_for_or_that_redirects_gives_no_keys(
    stack: Stack, idp: tuple[JwksServer, TestCA]
) -> None:
    server, _ca = idp
    key = _key()
    server.body = _jwks(("k", key))
    with jwks_server() as plain:  # plain http on loopback: allowed, but it redirects
        plain.status, plain.location = 302, server.url
        issuers = [
            # No jwks_ca_file: the system's trust store does not know the test CA.
            _issuer("ju-untrusted", "https://untrusted.idp.test", server.url),
            _issuer("ju-redirect", "https://redirect.idp.test", plain.url),
        ]
        try:
            cli_apply(
                stack,
                *issuers,
                route("ju-route2", "/ju2/", "echo", auth={"require": "jwt"}),
            )

            def refused() -> dict[str, str]:
                out = cli(stack, "status", "-o", "json")
                found: dict[str, str] = json.loads(out.stdout)["refused"]
                return found

            reasons = eventually(
                lambda: (
                    (r := refused()).get("Issuer/ju-untrusted")
                    and r.get("Issuer/ju-redirect")
                    and r
                ),
                timeout=15,
            )
            assert "CERTIFICATE_VERIFY_FAILED" in reasons["Issuer/ju-untrusted"]
            assert "302" in reasons["Issuer/ju-redirect"]
            assert server.hits == 0  # no handshake passed, the redirect was not followed
            with stack.client() as http:
                for iss in ("https://untrusted.idp.test", "https://redirect.idp.test"):
                    token = _token("k", key, iss=iss)
                    got = http.get("/ju2/x", headers={"authorization": f"Bearer {token}"})
                    assert got.status_code == 401
        finally:
            cli(stack, "delete", "route", "ju-route2")
            for doc in issuers:
                cli(stack, "delete", "issuer", doc["name"])
