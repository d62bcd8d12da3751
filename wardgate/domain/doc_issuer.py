"""The Issuer document: a trusted JWT issuer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from wardgate.domain.doc_base import (
    Name,
    Text,
    _Doc,
)
from wardgate.domain.durations import parse_duration
from wardgate.domain.jwks import check_jwks_url, keys_from_jwks
from wardgate.domain.tickets import TICKET_ISSUER

ENV_NAME_RE = r"^[A-Z_][A-Z0-9_]{0,127}$"
CLAIM_RE = r"^[A-Za-z0-9_.:/-]{1,128}$"


class Issuer(_Doc):
    """A trusted JWT issuer: tokens it signs are accepted on routes with ``auth.require``
    ``jwt`` or ``any``."""

    kind: Literal["Issuer"] = Field(default="Issuer", description="Document kind: Issuer.")
    name: Name = Field(
        description=(
            "Unique issuer name (same rules as a route name; names starting with 'wardgate' "
            "are reserved). Not used in tokens."
        )
    )
    issuer: Text = Field(
        min_length=1,
        max_length=512,
        description=(
            "The token's iss claim must equal this; no control characters. One iss is "
            "trusted through one Issuer only: a later one (in name order) with the same value "
            "is refused."
        ),
    )
    audiences: list[Annotated[Text, Field(min_length=1, max_length=512)]] = Field(
        min_length=1,
        description=(
            "At least one audience, without control characters; the token's aud claim must "
            "name one of these."
        ),
    )
    jwks_file: Text | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "Path of a JWKS file on each host running wardgate serve (no control "
            "characters), re-read every resync_interval; its RS256 and ES256 (P-256) signing "
            "keys are used. Exactly one of jwks_file, jwks_url, jwks or hs256_secret_env."
        ),
    )
    jwks_url: Text | None = Field(
        default=None,
        max_length=2048,
        description=(
            "URL of the issuer's JWKS (its jwks_uri), fetched by wardgate serve: https://, "
            "or http:// to a loopback address only; no user info, no fragment, no control "
            "characters. Refreshed every jwks_refresh; a fetch that fails or holds no usable "
            "key keeps the last keys. Redirects are not followed; at most 1 MiB is read. "
            "Exactly one of jwks_file, jwks_url, jwks or hs256_secret_env."
        ),
    )
    jwks_ca_file: Text | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "PEM file of the certificate authorities that sign the jwks_url server's "
            "certificate, on each host running wardgate serve. Unset: the system's trust "
            "store. Only with jwks_url."
        ),
    )
    jwks_refresh: str = Field(
        default="5m",
        description=(
            "How often the jwks_url is fetched again, a duration from 1s to 1d. Default: 5m. "
            "A failed fetch is tried again after at most 30s."
        ),
    )
    jwks: dict[str, Any] | None = Field(
        default=None,
        description=(
            'An inline JWKS ({"keys": [...]}) holding at least one RS256 or ES256 (P-256) '
            "signing key, checked when the document is validated. Exactly one of jwks_file, "
            "jwks_url, jwks or hs256_secret_env."
        ),
    )
    hs256_secret_env: str | None = Field(
        default=None,
        pattern=ENV_NAME_RE,
        description=(
            "Name of the environment variable of wardgate serve holding the HS256 shared "
            "secret (32 characters or more). Exactly one of jwks_file, jwks_url, jwks or "
            "hs256_secret_env."
        ),
    )
    roles_claim: str = Field(
        default="roles",
        pattern=CLAIM_RE,
        description=(
            "Claim holding the roles: a list of strings, or one string of names separated by "
            "spaces or commas; missing means no roles; at most 64 are kept. Default: roles."
        ),
    )
    user_claim: str = Field(
        default="sub",
        pattern=CLAIM_RE,
        description=(
            "Claim holding the user, a string of 1 to 256 characters sent upstream as "
            "x-user-id. Default: sub."
        ),
    )
    clock_skew: str = Field(
        default="30s",
        description=(
            "Leeway when checking exp, nbf and iat, a duration such as '30s', at most 10m. "
            "Default: 30s."
        ),
    )

    @field_validator("clock_skew")
    @classmethod
    def _skew(cls, value: str) -> str:
        seconds = parse_duration(value)
        if seconds > 600:
            raise ValueError("clock_skew is at most 10m")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            check_jwks_url(value)
        return value

    @field_validator("jwks_refresh")
    @classmethod
    def _refresh(cls, value: str) -> str:
        if not 1 <= parse_duration(value) <= 86400:
            raise ValueError("jwks_refresh is from 1s to 1d")
        return value

    @field_validator("issuer")
    @classmethod
    def _not_tickets(cls, value: str) -> str:
        if value == TICKET_ISSUER:
            raise ValueError(f"issuer {TICKET_ISSUER} is the gateway's own (session tickets)")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> Issuer:
        sources = ("jwks_file", "jwks_url", "jwks", "hs256_secret_env")
        given = [k for k in sources if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "an issuer needs exactly one of jwks_file, jwks_url, jwks or hs256_secret_env"
            )
        if self.jwks_ca_file is not None and self.jwks_url is None:
            raise ValueError("jwks_ca_file goes with jwks_url only")
        if self.jwks is not None:
            keys_from_jwks(self.jwks)  # raises ValueError with the reason
        return self
