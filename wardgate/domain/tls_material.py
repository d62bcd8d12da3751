"""Certificates and keys as PEM text: checked before Envoy is given them.

A pair is usable when the chain parses (leaf first) and holds nothing but certificates, the
key parses (unencrypted) and is the leaf's, and the leaf is valid now. A chain file that also
holds the key (``cat tls.key tls.crt``, an HAProxy-style bundle) is refused: the certificate
is what ``wardgate get`` shows and what goes to every Envoy as the chain, and a private key
must be in neither. Envoy would refuse a bad pair too, but late and per Envoy (a NACK, or a
listener that resets every connection); checked here, a bad pair is refused with its reason
and the last good one stays in service.
"""

from __future__ import annotations

import dataclasses
import datetime
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

MAX_PEM = 1 << 20
_PEM_LABEL = re.compile(r"-----BEGIN ([^-\r\n]{1,64})-----")


def _other_blocks(pem: str) -> list[str]:
    return sorted({label for label in _PEM_LABEL.findall(pem) if label != "CERTIFICATE"})


def only_certificates(pem: str) -> bool:
    """Whether ``pem`` holds no PEM block but certificates (no key), so may be shown."""
    return not _other_blocks(pem)


@dataclasses.dataclass(frozen=True)
class CertInfo:
    subject: str
    serial: int
    not_after: datetime.datetime


def check_pair(chain_pem: str, key_pem: str, *, now: datetime.datetime | None = None) -> CertInfo:
    """The leaf of a usable pair; ValueError saying why the pair is not usable."""
    if len(chain_pem) > MAX_PEM or len(key_pem) > MAX_PEM:
        raise ValueError(f"a certificate or key larger than {MAX_PEM} bytes")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError as exc:
        raise ValueError(f"certificate: not a PEM certificate chain ({exc})") from None
    if others := _other_blocks(chain_pem):
        shown = ", ".join(repr(label) for label in others if label.isprintable())[:120]
        raise ValueError(
            f"certificate: holds PEM blocks other than CERTIFICATE ({shown or 'unprintable'}); "
            "the chain holds certificates only, the key goes in its own file"
        )
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"key: not an unencrypted PEM private key ({exc})") from None
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != leaf.public_key().public_bytes(der, public):
        raise ValueError("key: not the key of the certificate (the first in the chain)")
    now = now or datetime.datetime.now(datetime.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ValueError(
            f"certificate: not valid now (valid {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
        )
    return CertInfo(leaf.subject.rfc4514_string(), leaf.serial_number, leaf.not_valid_after_utc)
