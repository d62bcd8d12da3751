"""The Secret document: a TLS certificate and its key, served to Envoy over SDS.

The listener takes its certificate from the Secret named by the ``tls_secret`` setting
(``xds/listener_tls.py``). A Secret leaves wardgate only for an Envoy that asks for it by
name (SDS), never in ``wardgate get`` (which shows the certificate's subject and dates, not
the key). Stored like every document, as JSON, the PEM texts base64-encoded (a document holds
no control characters, and PEM has line breaks): ``wardgate secrets put NAME --cert FILE
--key FILE`` writes it; a raw ``HSET`` works too.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from wardgate.domain.doc_base import Name, _Doc
from wardgate.domain.tls_material import MAX_PEM, CertInfo, check_pair

_MAX_B64 = (MAX_PEM * 4) // 3 + 4


class Secret(_Doc):
    """A TLS certificate chain and its private key."""

    kind: Literal["Secret"] = Field(default="Secret", description="Document kind: Secret.")
    name: Name = Field(
        description=(
            "Unique secret name (same rules as a route name); the tls_secret setting names "
            "it. Also the SDS resource name Envoy asks for."
        )
    )
    certificate: str = Field(
        max_length=_MAX_B64,
        description=(
            "The PEM certificate chain (leaf first), base64 (standard alphabet, padded). The "
            "leaf must be valid now."
        ),
    )
    private_key: str = Field(
        max_length=_MAX_B64,
        description=(
            "The leaf's PEM private key (unencrypted), base64. Never shown by the CLI; sent "
            "only to Envoys that ask for this secret."
        ),
    )
    _info: CertInfo | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _usable(self) -> Secret:
        self._info = check_pair(self.certificate_pem, self.private_key_pem)
        return self

    @property
    def certificate_pem(self) -> str:
        return pem_text(self.certificate, "certificate")

    @property
    def private_key_pem(self) -> str:
        return pem_text(self.private_key, "private_key")

    @property
    def info(self) -> CertInfo:
        assert self._info is not None  # set by validation
        return self._info


def pem_text(value: str, field: str) -> str:
    """The PEM text a Secret's ``field`` holds; ValueError (not saying what) if none."""
    try:
        return base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} is not base64 of PEM text") from None


def encode_pem(text: str) -> str:
    """What a Secret field holds for the PEM ``text``."""
    return base64.b64encode(text.encode("ascii")).decode()
