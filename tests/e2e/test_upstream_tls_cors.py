"""Through a real Envoy: TLS to a Service's endpoints (the name checked, the CA checked, a bad
ca_file refusing that service alone), and wildcard CORS origins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.inproc_cli import apply as cli_apply
from tests.inproc_cli import run as cli
from tests.jwks_server import jwks_server
from tests.support import Stack, eventually, route
from tests.tls_certs import TestCA

pytestmark = pytest.mark.e2e


def _tls_service(name: str, port: int, **tls: str) -> dict[str, object]:
    return {
        "kind": "Service",
        "name": name,
        "endpoints": [{"address": "127.0.0.1", "port": port}],
        "tls": tls,
    }


def test_upstream_tls_checks_the_name_and_the_ca(stack: Stack, tmp_path: Path) -> None:
    ca, other_ca = TestCA(tmp_path / "ca"), TestCA(tmp_path / "other", "another CA")
    leaf = ca.leaf("backend", ["backend.test"])
    names = ["ut-good", "ut-wrong-name", "ut-wrong-ca", "ut-system", "ut-missing"]
    with jwks_server(cert=leaf.cert, key=leaf.key) as backend:
        backend.body = b'{"secret": "over tls"}'
        port = int(backend.url.split(":")[2].split("/")[0])
        ca_file = str(ca.cert_file)
        try:
            cli_apply(
                stack,
                _tls_service("ut-good", port, sni="backend.test", ca_file=ca_file),
                _tls_service("ut-wrong-name", port, sni="other.test", ca_file=ca_file),
                _tls_service(
                    "ut-wrong-ca", port, sni="backend.test", ca_file=str(other_ca.cert_file)
                ),
                _tls_service("ut-system", port, sni="backend.test"),  # the system's roots
                *(route(n, f"/{n}/", n) for n in names[:4]),
            )
            with stack.client() as http:
                good = eventually(lambda: (r := http.get("/ut-good/x")).status_code == 200 and r)
                assert good.json() == {"secret": "over tls"}
                for name in ("ut-wrong-name", "ut-wrong-ca", "ut-system"):
                    assert http.get(f"/{name}/x").status_code == 503, name
            # A ca_file wardgate cannot read refuses that service alone.
            missing = _tls_service(
                "ut-missing", port, sni="backend.test", ca_file="/nonexistent.pem"
            )
            stack.redis().hset(f"{stack.prefix}services", "ut-missing", json.dumps(missing))

            def refused() -> str:
                out = json.loads(cli(stack, "status", "-o", "json").stdout)["refused"]
                return str(out.get("Service/ut-missing", ""))

            assert "nonexistent.pem" in eventually(refused, timeout=10)
            with stack.client() as http:
                assert http.get("/ut-good/x").status_code == 200
        finally:
            stack.redis().hdel(f"{stack.prefix}services", "ut-missing")
            for name in names[:4]:
                cli(stack, "delete", "route", name)
                cli(stack, "delete", "service", name)


def test_wildcard_cors_origins_through_envoy(stack: Stack) -> None:
    cors = {"allow_origins": ["https://*.example.com"], "allow_methods": ["GET", "POST"]}
    cli_apply(stack, route("wc-cors", "/wc-cors/", "echo", cors=cors))
    try:
        with stack.client() as http:

            def preflight(origin: str) -> dict[str, str]:
                got = http.options(
                    "/wc-cors/x",
                    headers={"origin": origin, "access-control-request-method": "POST"},
                )
                return dict(got.headers)

            allowed = eventually(
                lambda: (
                    (h := preflight("https://app.example.com")).get("access-control-allow-origin")
                    and h
                )
            )
            assert allowed["access-control-allow-origin"] == "https://app.example.com"
            for foreign in (
                "https://example.com",
                "https://app.example.com.evil.net",
                "https://evilexample.com",
                "http://app.example.com",
            ):
                assert "access-control-allow-origin" not in preflight(foreign), foreign
            simple = http.get("/wc-cors/x", headers={"origin": "https://a.b.example.com"})
            assert simple.headers["access-control-allow-origin"] == "https://a.b.example.com"
    finally:
        cli(stack, "delete", "route", "wc-cors")
