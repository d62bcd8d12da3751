"""TLS on Envoy's listener, through real handshakes: the certificate wardgate reads from files
and serves over SDS, HTTP/2 and HTTP/1.1 over ALPN, plain text redirected, old protocol
versions refused, the session cookie Secure with the __Host- prefix, and a renewed
certificate served without a restart (a bad one refused, the last good one kept)."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.conftest import _start_stack
from tests.inproc_cli import apply as cli_apply
from tests.inproc_cli import run as cli
from tests.support import Stack, eventually, route
from tests.tls_certs import Leaf, TestCA

pytestmark = pytest.mark.e2e
HOSTS = ["gw.test", "localhost", "127.0.0.1"]


@pytest.fixture(scope="module")
def tls_stack(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, TestCA, Path]]:
    work = tmp_path_factory.mktemp("tls")
    ca = TestCA(work / "ca")
    live = work / "live"
    live.mkdir()
    _install(ca.leaf("first", HOSTS), live)
    env = {
        "WARDGATE_TLS_CERT_FILE": str(live / "tls.crt"),
        "WARDGATE_TLS_KEY_FILE": str(live / "tls.key"),
        "WARDGATE_TLS_REDIRECT_HTTP": "true",
        "WARDGATE_RESYNC_INTERVAL": "1s",
    }
    s = _start_stack(work, redis_url, "wgtls:", extra_env=env)
    try:
        cli_apply(
            s,
            route("tls-pub", "/tls/pub", "echo"),
            route("tls-me", "/tls/me", "echo", auth={"require": "session"}),
        )
        added = s.cli("users", "add", "tina", "--role", "user", "--password-stdin", stdin="t" * 16)
        assert added.returncode == 0, added.stderr
        yield s, ca, live
    finally:
        s.stop_all()
        r = s.redis()
        for key in r.scan_iter("wgtls:*"):
            r.delete(key)


def _install(leaf: Leaf, live: Path) -> None:
    """Replace the served pair as a renewal does: new files moved into place."""
    shutil.copy(leaf.cert, live / "tls.crt.new")
    shutil.copy(leaf.key, live / "tls.key.new")
    (live / "tls.key.new").replace(live / "tls.key")
    (live / "tls.crt.new").replace(live / "tls.crt")


def _client(s: Stack, ca: TestCA, **kw: object) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    return httpx.Client(
        base_url=f"https://127.0.0.1:{s.listen_port}", verify=context, timeout=5.0, **kw
    )


def _served_serial(s: Stack, ca: TestCA) -> int:
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    with (
        socket.create_connection(("127.0.0.1", s.listen_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="gw.test") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_https_with_http2_and_http1_over_alpn(tls_stack: tuple[Stack, TestCA, Path]) -> None:
    s, ca, _ = tls_stack
    with _client(s, ca, http2=True) as h2:
        got = eventually(lambda: (r := h2.get("/tls/pub/x")).status_code == 200 and r, timeout=20)
        assert got.http_version == "HTTP/2"
        assert got.json()["headers"]["x-forwarded-proto"] == "https"
    with _client(s, ca) as h1:
        got = h1.get("/tls/pub/x")
        assert got.status_code == 200 and got.http_version == "HTTP/1.1"
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    with (
        socket.create_connection(("127.0.0.1", s.listen_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="gw.test") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_plain_text_is_redirected_to_https(tls_stack: tuple[Stack, TestCA, Path]) -> None:
    s, _, _ = tls_stack
    got = httpx.get(f"http://127.0.0.1:{s.listen_port}/tls/me?q=1", timeout=5)
    assert got.status_code == 301
    assert got.headers["location"] == f"https://127.0.0.1:{s.listen_port}/tls/me?q=1"
    # Nothing is served over plain text: not even a public route, not the login.
    public = httpx.get(f"http://127.0.0.1:{s.listen_port}/tls/pub/x", timeout=5)
    assert public.status_code == 301 and "x-forwarded-proto" not in public.text
    login = httpx.post(
        f"http://127.0.0.1:{s.listen_port}/auth/login",
        json={"username": "tina", "password": "t" * 16},
        timeout=5,
    )
    assert login.status_code == 301 and "set-cookie" not in login.headers


def test_old_protocol_versions_and_unknown_names_get_no_session(
    tls_stack: tuple[Stack, TestCA, Path],
) -> None:
    s, ca, _ = tls_stack
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(ca.cert_file))
        old.set_ciphers("ALL:@SECLEVEL=0")
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with (
            socket.create_connection(("127.0.0.1", s.listen_port), timeout=5) as raw,
            pytest.raises((ssl.SSLError, ConnectionError)),
            old.wrap_socket(raw, server_hostname="gw.test"),
        ):
            pass
    # A client that checks names refuses a name the certificate does not carry.
    strict = ssl.create_default_context(cafile=str(ca.cert_file))
    with (
        socket.create_connection(("127.0.0.1", s.listen_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
        strict.wrap_socket(raw, server_hostname="evil.test"),
    ):
        pass


def test_session_cookie_is_secure_and_host_prefixed(tls_stack: tuple[Stack, TestCA, Path]) -> None:
    s, ca, _ = tls_stack
    with _client(s, ca) as http:
        assert http.get("/tls/me").status_code == 401
        login = http.post("/auth/login", json={"username": "tina", "password": "t" * 16})
        assert login.status_code == 200, login.text
        cookie = login.headers["set-cookie"]
        assert cookie.startswith("__Host-wg_session=")
        parts = {p.strip().split("=")[0].lower() for p in cookie.split(";")}
        assert {"secure", "httponly", "path"} <= parts and "domain" not in parts
        me = http.get("/tls/me")
        assert me.status_code == 200
        assert me.json()["headers"]["x-user-id"] == "tina"
        assert "wg_session" not in me.json()["headers"].get("cookie", "")
        # The unprefixed name is no session cookie here.
        value = cookie.split(";")[0].split("=", 1)[1]
        http.cookies.clear()
        assert http.get("/tls/me", headers={"cookie": f"wg_session={value}"}).status_code == 401


def test_a_renewed_certificate_is_served_without_a_restart_and_a_bad_one_is_refused(
    tls_stack: tuple[Stack, TestCA, Path],
) -> None:
    s, ca, live = tls_stack
    envoy = s.procs["envoy-test"]
    eventually(lambda: _served_serial(s, ca), timeout=20)
    renewed = ca.leaf("renewed", HOSTS)
    _install(renewed, live)
    eventually(lambda: _served_serial(s, ca) == renewed.serial, timeout=15)
    # A key that is not the certificate's, then garbage: refused, the renewed pair stays.
    other = ca.leaf("other", HOSTS)
    shutil.copy(other.key, live / "tls.key")
    (live / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    metrics = f"http://127.0.0.1:{s.http_port}/metrics"
    eventually(
        lambda: 'wardgate_tls_certificate_loads_total{result="refused"}' in httpx.get(metrics).text,
        timeout=10,
    )
    assert _served_serial(s, ca) == renewed.serial
    with _client(s, ca) as http:
        assert http.get("/tls/pub/x").status_code == 200
    assert envoy.poll() is None  # the same Envoy all along
    _install(renewed, live)


def test_a_secret_document_over_sds_rotated_by_the_cli(redis_url: str, tmp_path: Path) -> None:
    """TLS from a Secret document (WARDGATE_TLS_SECRET): not ready until it exists, served
    once put, rotated by putting a new one (no restart); a bad pair refused by the CLI and,
    written raw, refused with the last good one still served; the key never printed."""
    ca = TestCA(tmp_path / "ca")
    env = {"WARDGATE_TLS_SECRET": "gw-cert", "WARDGATE_RESYNC_INTERVAL": "1s"}
    s = _start_stack(tmp_path, redis_url, "wgtlsdoc:", extra_env=env)
    try:
        ready = f"http://127.0.0.1:{s.http_port}/readyz"
        assert httpx.get(ready, timeout=5).status_code == 503  # no Secret yet
        cli_apply(s, route("tlsd-pub", "/tlsd/", "echo"))
        first = ca.leaf("first", HOSTS)
        put = cli(
            s, "secrets", "put", "gw-cert", "--cert", str(first.cert), "--key", str(first.key)
        )
        assert put.returncode == 0, put.stderr
        eventually(lambda: httpx.get(ready, timeout=5).status_code == 200, timeout=10)
        eventually(lambda: _served_serial(s, ca) == first.serial, timeout=20)
        with _client(s, ca) as http:
            assert http.get("/tlsd/x").status_code == 200

        second = ca.leaf("second", HOSTS)
        args = ("secrets", "put", "gw-cert", "--cert", str(second.cert), "--key", str(second.key))
        assert cli(s, *args).returncode == 0
        eventually(lambda: _served_serial(s, ca) == second.serial, timeout=10)

        # A key that is not the certificate's: refused by the CLI, nothing changes.
        bad = cli(
            s, "secrets", "put", "gw-cert", "--cert", str(first.cert), "--key", str(second.key)
        )
        assert bad.returncode != 0 and "not the key of the certificate" in bad.stderr
        # Written raw: refused, the last good one stays in service.
        raw = {"kind": "Secret", "name": "gw-cert", "certificate": "AAAA", "private_key": "AAAA"}
        s.redis().hset("wgtlsdoc:secrets", "gw-cert", json.dumps(raw))
        eventually(
            lambda: "Secret/gw-cert" in json.loads(cli(s, "status", "-o", "json").stdout)["refused"]
        )
        assert _served_serial(s, ca) == second.serial
        assert cli(s, *args).returncode == 0  # repaired

        key_text = second.key.read_text().split("\n")[1]
        for shown in (
            cli(s, "get", "secrets", "-o", "json"),
            cli(s, "get", "secret", "gw-cert", "-o", "yaml"),
            cli(s, "get", "secrets"),
            cli(s, "history", "-o", "json"),
        ):
            assert shown.returncode == 0, shown.stderr
            assert key_text not in shown.stdout
            assert base64.b64encode(second.key.read_bytes()).decode()[:40] not in shown.stdout
        assert "gw.test" in cli(s, "get", "secrets").stdout
    finally:
        s.stop_all()
        r = s.redis()
        for key in r.scan_iter("wgtlsdoc:*"):
            r.delete(key)
