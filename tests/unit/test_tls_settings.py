"""TLS settings and certificate checks: a half-configured TLS stops start-up, TLS makes the
session cookie Secure and __Host-; a pair is refused unless the key is the leaf's and the
leaf is valid now."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from tests.tls_certs import TestCA
from wardgate.domain.documents import parse_document
from wardgate.domain.tls_material import check_pair
from wardgate.errors import DocumentError, SettingsError
from wardgate.settings import load_settings
from wardgate.xds.listener import build_listener
from wardgate.xds.listener_tls import ListenerTls
from wardgate.xds.translate import TranslateOptions


def test_tls_settings_go_together() -> None:
    with pytest.raises(SettingsError, match="both"):
        load_settings(environ={"WARDGATE_TLS_CERT_FILE": "/c.pem"})
    with pytest.raises(SettingsError, match="needs TLS"):
        load_settings(environ={"WARDGATE_TLS_REDIRECT_HTTP": "true"})
    plain = load_settings(environ={})
    assert plain.session_cookie == "wg_session" and not plain.cookie_secure
    tls = load_settings(
        environ={"WARDGATE_TLS_CERT_FILE": "/c.pem", "WARDGATE_TLS_KEY_FILE": "/k.pem"}
    )
    assert tls.session_cookie == "__Host-wg_session" and tls.cookie_secure
    named = load_settings(
        environ={
            "WARDGATE_TLS_CERT_FILE": "/c.pem",
            "WARDGATE_TLS_KEY_FILE": "/k.pem",
            "WARDGATE_SESSION_COOKIE": "__Secure-sid",
        }
    )
    assert named.session_cookie == "__Secure-sid"


def test_the_listener_has_a_plain_text_chain_only_to_redirect() -> None:
    without = build_listener("0.0.0.0", 1, TranslateOptions(tls=ListenerTls()))
    assert [c.filter_chain_match.transport_protocol for c in without.filter_chains] == ["tls"]
    redirect = build_listener("0.0.0.0", 1, TranslateOptions(tls=ListenerTls(redirect_http=True)))
    chains = [c.filter_chain_match.transport_protocol for c in redirect.filter_chains]
    assert chains == ["tls", "raw_buffer"]
    plain = build_listener("0.0.0.0", 1, TranslateOptions())
    assert len(plain.filter_chains) == 1 and not plain.listener_filters


def test_pairs_are_checked(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    one, two = ca.leaf("one", ["a.test"]), ca.leaf("two", ["a.test"])
    info = check_pair(one.cert.read_text(), one.key.read_text())
    assert info.serial == one.serial
    with pytest.raises(ValueError, match="not the key of the certificate"):
        check_pair(one.cert.read_text(), two.key.read_text())
    with pytest.raises(ValueError, match="certificate: not a PEM"):
        check_pair("garbage", one.key.read_text())
    with pytest.raises(ValueError, match="key: not an unencrypted"):
        check_pair(one.cert.read_text(), "garbage")
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
    with pytest.raises(ValueError, match="not valid now"):
        check_pair(one.cert.read_text(), one.key.read_text(), now=later)


@pytest.mark.parametrize("order", ["key first", "key last"])
def test_a_chain_holding_the_key_is_refused_without_showing_it(tmp_path: Path, order: str) -> None:
    """A bundle (``cat tls.key tls.crt``) parses as a chain, the key block skipped: stored as
    a Secret's certificate, ``wardgate get`` would print the key, and every Envoy would get it
    as part of the chain."""
    one = TestCA(tmp_path).leaf("one", ["a.test"])
    cert, key = one.cert.read_text(), one.key.read_text()
    bundle = key + cert if order == "key first" else cert + key
    with pytest.raises(ValueError, match="other than CERTIFICATE") as caught:
        check_pair(bundle, key)
    assert "'PRIVATE KEY'" in str(caught.value)
    assert key.splitlines()[1] not in str(caught.value)


@pytest.mark.parametrize("layout", ["value", "nested", "key"])
def test_a_secret_with_its_key_written_raw_is_refused_without_quoting_it(
    tmp_path: Path, layout: str
) -> None:
    """A raw write of the PEM key itself (line breaks and all) is refused for its control
    characters; the reason, which ``wardgate status``, the logs and ``apply`` show, names the
    field and never quotes it (quoting the first 64 characters of an EC key's PEM gives half
    of its private scalar)."""
    one = TestCA(tmp_path).leaf("one", ["a.test"])
    key = one.key.read_text()
    raw: dict[str, object] = {"kind": "Secret", "name": "gw", "certificate": "AAAA"}
    if layout == "value":
        raw["private_key"] = key
    elif layout == "nested":
        raw["private_key"] = {"pem": [key]}
    else:
        raw[key] = "x"
    with pytest.raises(DocumentError) as caught:
        parse_document(raw)
    reason = caught.value.reason
    assert "not shown" in reason, reason
    assert "BEGIN" not in reason and key.splitlines()[1][:8] not in reason
