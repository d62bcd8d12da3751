"""Bearer tokens (JWT) from trusted issuers, and API keys.

JWT rules: only HS256 (for an issuer configured with a shared secret) or RS256/ES256 (for an
issuer with a JWKS) are accepted, never ``none`` and never an algorithm the issuer's key is
not for (no algorithm confusion); the issuer selects the key, the token's ``kid`` picks
among the issuer's keys; ``iss``, ``aud``, ``exp`` are required and ``exp``, ``nbf``, ``iat``
are checked with the issuer's clock skew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from jwt.exceptions import PyJWTError

from wardgate.domain import jsontext
from wardgate.domain.doc_base import ROLE_PATTERN
from wardgate.domain.documents import Issuer
from wardgate.domain.durations import parse_duration
from wardgate.domain.jwks import SigningKey, keys_from_jwks
from wardgate.domain.sessions import Identity

MAX_TOKEN = 8192
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ROLE = re.compile(ROLE_PATTERN)
API_KEY_RE = re.compile(r"^wg_[A-Za-z0-9_-]{43}$")


class TokenError(ValueError):
    """A token was refused; the message says why (safe to show the client)."""


@dataclasses.dataclass(frozen=True)
class TrustedIssuer:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    keys: tuple[SigningKey, ...] = ()  # from a JWKS
    secret: bytes | None = None  # HS256
    roles_claim: str = "roles"
    user_claim: str = "sub"
    skew: float = 30.0


class JwtVerifier:
    def __init__(self, issuers: list[TrustedIssuer]) -> None:
        self._by_iss = {i.issuer: i for i in issuers}

    def __len__(self) -> int:
        return len(self._by_iss)

    @property
    def issuers(self) -> tuple[TrustedIssuer, ...]:
        """The trusted issuers, in the order given (Envoy verifies their tokens too)."""
        return tuple(self._by_iss.values())

    def verify(self, token: str) -> Identity:
        """The identity a token proves; ``TokenError`` saying why not."""
        header, claims = _unverified(token)
        iss = claims.get("iss")
        issuer = self._by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise TokenError("token from an issuer this gateway does not trust")
        alg = header.get("alg")
        verified = _verified_claims(token, issuer, str(alg), _candidate_keys(issuer, header))
        return _identity(verified, issuer)


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, not yet trusted: only to find the issuer and its key."""
    if not token or len(token) > MAX_TOKEN or token.count(".") != 2 or not token.isascii():
        raise TokenError("malformed token")  # base64url and dots only: ASCII
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except (PyJWTError, RecursionError):  # deep nesting in a part: malformed too
        raise TokenError("malformed token") from None
    return header, claims


def _candidate_keys(issuer: TrustedIssuer, header: Mapping[str, Any]) -> list[Any]:
    """The issuer's keys for the token's algorithm (and ``kid``, when it names one). The
    issuer decides which algorithms are possible: never ``none``, never HS256 with a
    public key (no algorithm confusion)."""
    alg = header.get("alg")
    if alg == "HS256" and issuer.secret is not None:
        return [issuer.secret]
    if alg in ("RS256", "ES256") and any(a == alg for _, a, _ in issuer.keys):
        kid = header.get("kid")
        keys = [k for (i, a, k) in issuer.keys if a == alg and (kid is None or i == kid)]
        if not keys:
            raise TokenError(f"no key with kid {str(kid)[:64]!r} for this issuer")
        return keys
    raise TokenError(f"algorithm {str(alg)[:16]!r} is not accepted for this issuer")


def _verified_claims(
    token: str, issuer: TrustedIssuer, alg: str, keys: list[Any]
) -> dict[str, Any]:
    """The claims, once the signature, issuer, audience and times are checked."""
    last: Exception | None = None
    for key in keys:
        try:
            verified: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                leeway=issuer.skew,
                options={"require": ["exp", "iss", "aud"], "verify_iat": True},
            )
            break
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenError("token not meant for this gateway (audience)") from None
        except PyJWTError as exc:
            last = exc
    else:
        raise TokenError(
            "invalid signature" if last is None or "ignature" in str(last) else str(last)
        )
    for claim in ("exp", "nbf", "iat"):  # PyJWT reads "123" as 123: not a NumericDate
        value = verified.get(claim)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not numeric:
            raise TokenError(f"claim '{claim}' must be a number (seconds since the epoch)")
    return verified


def _identity(verified: Mapping[str, Any], issuer: TrustedIssuer) -> Identity:
    """User and roles from verified claims, as they will appear in headers."""
    user = verified.get(issuer.user_claim)
    if not isinstance(user, str) or not 0 < len(user) <= 256:
        raise TokenError(f"token has no usable '{issuer.user_claim}' claim")
    if _CONTROL.search(user):  # it becomes the x-user-id header
        raise TokenError(f"claim '{issuer.user_claim}' holds control characters")
    roles = verified.get(issuer.roles_claim, [])
    if isinstance(roles, str):
        roles = [r for r in re.split(r"[ ,]+", roles) if r]
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise TokenError(f"claim '{issuer.roles_claim}' must be a list of strings")
    # Roles a route could never name are dropped: joined by commas into x-user-roles,
    # "user,admin" would read as two roles upstream.
    usable = [r for r in roles if _ROLE.fullmatch(r)]  # fullmatch: "admin\n" is no role
    return Identity(user, tuple(usable[:64]), "jwt", float(verified.get("exp", 0)))


# --- API keys --------------------------------------------------------------------------


def new_api_key() -> str:
    """256 random bits, prefixed so that a leaked key is recognisable."""
    return "wg_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def well_formed_api_key(key: str) -> bool:
    return bool(API_KEY_RE.fullmatch(key))


def _no_urls(url: str) -> str:
    raise OSError("key sets from URLs are not fetched here")


def trusted_issuer(
    doc: Issuer,
    *,
    environ: Mapping[str, str],
    read_text: Callable[[str], str],
    read_url: Callable[[str], str] = _no_urls,
) -> TrustedIssuer:
    """The keys of an Issuer document, loaded; ValueError with the reason if they cannot be.
    ``read_text`` reads a ``jwks_file``, ``read_url`` gives a ``jwks_url``'s last key set."""
    keys: list[SigningKey] = []
    secret = None
    if doc.hs256_secret_env:
        value = environ.get(doc.hs256_secret_env, "")
        if len(value) < 32:
            raise ValueError(
                f"env {doc.hs256_secret_env} must hold the HS256 secret (32 characters or more)"
            )
        secret = value.encode()
    elif doc.jwks is not None:
        keys = keys_from_jwks(doc.jwks)
    elif doc.jwks_file:
        try:
            data = jsontext.loads(read_text(doc.jwks_file))
        except (OSError, ValueError) as exc:
            raise ValueError(f"jwks_file {doc.jwks_file}: {exc}") from None
        keys = keys_from_jwks(data)
    elif doc.jwks_url:
        try:
            data = jsontext.loads(read_url(doc.jwks_url))
        except (OSError, ValueError) as exc:
            raise ValueError(f"jwks_url: {exc}") from None
        keys = keys_from_jwks(data)
    return TrustedIssuer(
        name=doc.name,
        issuer=doc.issuer,
        audiences=tuple(doc.audiences),
        keys=tuple(keys),
        secret=secret,
        roles_claim=doc.roles_claim,
        user_claim=doc.user_claim,
        skew=parse_duration(doc.clock_skew),
    )


class IssuerHolder:
    """The verifier in force; the document watcher replaces it when issuers change."""

    def __init__(self) -> None:
        self.verifier = JwtVerifier([])
