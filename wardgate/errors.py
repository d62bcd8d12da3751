"""Every error wardgate raises on purpose, in one tree.

    WardgateError
    ├── SettingsError         a setting is missing or malformed; the process stops
    ├── DocumentError         a Route/Service document fails validation (kind, name, reason)
    │   └── ReferenceError_   a document names something that does not exist
    ├── StoreError            Redis is unreachable, slow, or answered nonsense
    ├── ConflictError         a concurrent writer changed the documents; retry
    └── AuthError             a credential was refused (carries the HTTP status)
        ├── Unauthenticated   401: no credential, or a bad one
        ├── Forbidden         403: a good credential without the role, or a CSRF refusal
        └── TooManyAttempts   429: too many failed logins for one user name

Edges translate: the CLI prints ``str(err)`` and exits 1, servicers turn
``AuthError`` into a deny response and ``StoreError`` into the configured failure mode.
"""

from __future__ import annotations


class WardgateError(Exception):
    """Base of every deliberate wardgate error."""


class SettingsError(WardgateError):
    """A setting is missing or malformed."""


class DocumentError(WardgateError):
    """A document failed validation."""

    def __init__(self, reason: str, *, kind: str = "", name: str = "") -> None:
        self.kind = kind
        self.name = name
        self.reason = reason
        where = f"{kind.lower()}/{name}: " if kind and name else (f"{kind}: " if kind else "")
        super().__init__(f"{where}{reason}")


class ReferenceError_(DocumentError):
    """A document refers to a document that does not exist (or is being deleted)."""


class StoreError(WardgateError):
    """The store (Redis) could not answer."""


class ConflictError(WardgateError):
    """Someone else changed the documents between our read and our write."""


class AuthError(WardgateError):
    """A request's credentials were refused."""

    status = 401
    code = "unauthenticated"


class Unauthenticated(AuthError):
    status = 401
    code = "unauthenticated"


class Forbidden(AuthError):
    status = 403
    code = "forbidden"


class TooManyAttempts(AuthError):
    status = 429
    code = "too_many_attempts"

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many failed sign-ins for this user; retry in {retry_after} s")
