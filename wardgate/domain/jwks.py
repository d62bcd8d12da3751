"""The signing keys of a JWKS (a JSON Web Key Set), as JWT verification uses them.

Both the Issuer document (an inline ``jwks`` must hold a usable key when it is validated) and
the token verifier (which loads the keys) need this, so it sits below both and imports
neither.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from jwt import PyJWKSet
from jwt.exceptions import InvalidKeyError, PyJWKError, PyJWKSetError

SigningKey = tuple[str | None, str, Any]  # (kid, algorithm, key)
_CURVES = {"P-256": "ES256"}


def keys_from_jwks(jwks: Mapping[str, Any]) -> list[SigningKey]:
    """(kid, algorithm, key) for every RS256/ES256 key of a JWKS; ValueError otherwise."""
    try:
        keyset = PyJWKSet.from_dict(dict(jwks))
    except (PyJWKSetError, PyJWKError, InvalidKeyError, TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"jwks: not a usable key set: {exc}") from None
    out: list[SigningKey] = []
    for k in keyset.keys:
        raw = k._jwk_data  # the JWK's own fields: kty, crv, use, alg
        if raw.get("use", "sig") != "sig":
            continue
        if raw.get("kty") == "RSA":
            alg = "RS256"
        elif raw.get("kty") == "EC" and raw.get("crv") in _CURVES:
            alg = _CURVES[raw["crv"]]
        else:
            continue
        if raw.get("alg") not in (None, alg):
            continue
        out.append((k.key_id, alg, k.key))
    if not out:
        raise ValueError("jwks: no RS256 or ES256 signing key in the set")
    return out


def check_jwks_url(url: str) -> None:
    """ValueError unless ``url`` may be fetched for keys: https, or http to a loopback
    address (anyone on the path of plain http could hand out keys); a host, no user info
    (it would show in logs and status), no fragment, printable ASCII only."""
    if not url.isascii() or not url.isprintable() or " " in url:
        raise ValueError("printable ASCII without spaces only")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("an https:// URL with a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("no user info (user:password@) in the URL")
    if parts.fragment or url.endswith("#"):
        raise ValueError("no fragment (#...)")
    if port == 0:
        raise ValueError("port 0")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValueError("plain http only to a loopback address; use https")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
