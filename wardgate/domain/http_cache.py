"""The HTTP side of the response cache: which requests may be answered from it, which
answers may be stored and for how long (RFC 9111, as a shared cache), what an entry is keyed
by, and the entry's stored form.

The rule that must never break: a user never receives another user's answer. On a route that
requires a credential, the key holds the caller's identity (method, user, roles, tier) unless
the route says ``shared``; a request on such a route that arrives without identity (ext_authz
failing open) is never answered from the cache nor stored. On routes without identity (public,
or shared), a request carrying ``authorization`` is not cached (RFC 9111 section 3.5), and an
answer that sets a cookie, or varies on a header the key does not hold, is never stored.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import re
import struct
import time
from collections.abc import Iterable, Mapping

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
# Headers never stored with an entry: framing (recomputed), per-hop, per-answer.
_NOT_STORED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "age",
        "x-cache",
        "set-cookie",
        "x-envoy-upstream-service-time",
        "x-request-id",  # an upstream echoing the request's id: another request's, on a hit
    }
)
_DIRECTIVE = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("[^"]*"|[^,\s]*))?\s*')
_MAGIC = b"WGC1"


def cache_control(value: str | None) -> dict[str, str]:
    """``cache-control`` directives, lower-case names -> value ("" when it has none)."""
    out: dict[str, str] = {}
    for part in (value or "").split(","):
        m = _DIRECTIVE.fullmatch(part)
        if m:
            out.setdefault(m.group(1).lower(), (m.group(2) or "").strip('"'))
    return out


def _seconds(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return min(int(value), 2**31)


@dataclasses.dataclass(frozen=True, slots=True)
class RequestRule:
    """What the cache may do for one request: answer it (``lookup``), store its answer
    (``store``); ``reason`` names why not."""

    lookup: bool
    store: bool
    reason: str = ""


def request_rule(
    method: str,
    headers: Mapping[str, str],
    *,
    authenticated: bool,
    shared: bool,
    has_identity: bool,
) -> RequestRule:
    if method not in CACHEABLE_METHODS:
        return RequestRule(False, False, "method")
    if authenticated and not has_identity:
        return RequestRule(False, False, "no_identity")
    per_user = authenticated and not shared
    if not per_user and "authorization" in headers:
        return RequestRule(False, False, "authorization")
    cc = cache_control(headers.get("cache-control"))
    if "no-store" in cc:
        return RequestRule(False, False, "no_store")
    if (
        "no-cache" in cc
        or _seconds(cc.get("max-age")) == 0
        or "no-cache" in headers.get("pragma", "")
    ):
        return RequestRule(False, True, "no_cache")
    return RequestRule(True, True)


def storable_ttl(
    status: int,
    headers: Mapping[str, str],
    *,
    ttl: float,
    keyed_headers: Iterable[str],
    now: float | None = None,
) -> tuple[float, str]:
    """How long an answer may be kept (seconds; 0 when it may not, with the reason)."""
    if status != 200:
        return 0.0, "status"
    cc = cache_control(headers.get("cache-control"))
    for directive in ("no-store", "private", "no-cache"):
        if directive in cc:
            return 0.0, directive
    if "set-cookie" in headers:
        return 0.0, "set_cookie"
    vary = {v.strip().lower() for v in headers.get("vary", "").split(",") if v.strip()}
    if "*" in vary or not vary <= set(keyed_headers):
        return 0.0, "vary"
    limit = _seconds(cc.get("s-maxage"))
    if limit is None:
        limit = _seconds(cc.get("max-age"))
    if limit is None and "expires" in headers:
        # RFC 9111 section 5.3: without max-age, Expires (less Date) is how long it is
        # fresh; one that is not a date (`Expires: 0`) means already stale.
        limit = _expires_in(headers["expires"], headers.get("date"), now)
        if limit < 1:
            return 0.0, "expires"
    if limit is not None:
        age = _seconds(headers.get("age")) or 0
        ttl = min(ttl, limit - age)
    if ttl < 1:
        return 0.0, "max_age"
    return ttl, ""


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp()


def _expires_in(expires: str, date: str | None, now: float | None) -> int:
    """Seconds from the answer's ``Date`` (else now) to its ``Expires``; 0 when Expires is not
    a date or is past."""
    until = _http_date(expires)
    if until is None:
        return 0
    since = _http_date(date)
    if since is None:
        since = time.time() if now is None else now
    return max(0, min(int(until - since), 2**31))


def normalized_encoding(value: str | None) -> str:
    """``accept-encoding`` as a key part: its codings, lower-case and sorted."""
    codings = sorted({c.split(";")[0].strip().lower() for c in (value or "").split(",")})
    return ",".join(c for c in codings if c)


@dataclasses.dataclass(frozen=True, slots=True)
class CacheKey:
    """Where an entry lives: its route, a hash of its path (what ``cache purge --path``
    names) and a hash of everything else that selects it."""

    route: str
    path_hash: str
    variant: str


def path_hash(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:24]


def cache_key(
    *,
    route: str,
    fingerprint: str,
    method: str,
    host: str,
    path: str,
    query: str,
    vary: Mapping[str, str | None],
    accept_encoding: str,
    partition: tuple[str, ...],
) -> CacheKey:
    """The key of one request's entry. Every part is written length-prefixed, so no two
    different requests write the same bytes; ``partition`` is who the entry belongs to
    (``("shared",)`` or the caller's identity)."""
    parts = [
        fingerprint,
        method,
        host.lower(),
        path,
        query,
        accept_encoding,
        *(
            f"{name}\0{'' if v is None else v}\0{int(v is None)}"
            for name, v in sorted(vary.items())
        ),
        "\1",
        *partition,
    ]
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogateescape")
        h.update(struct.pack(">I", len(data)))
        h.update(data)
    return CacheKey(route, path_hash(path), h.hexdigest())


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """A stored answer: status, headers as the upstream sent them (less those never stored),
    body, when it was stored (epoch seconds) and its age then."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    age: int = 0
    expires_at: float = 0.0  # epoch seconds; 0: not known (not stored yet)

    def age_at(self, now: float) -> int:
        return self.age + max(0, int(now - self.stored_at))

    def encode(self) -> bytes:
        head = json.dumps(
            {
                "s": self.status,
                "h": self.headers,
                "t": self.stored_at,
                "a": self.age,
                "x": self.expires_at,
            },
            separators=(",", ":"),
        ).encode()
        return _MAGIC + struct.pack(">I", len(head)) + head + self.body


def stored_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in headers if k not in _NOT_STORED and not k.startswith(":"))


def decode_entry(data: bytes) -> Entry | None:
    """The entry ``Entry.encode`` wrote; None for anything else (treated as a miss)."""
    try:
        if not data.startswith(_MAGIC):
            return None
        (size,) = struct.unpack(">I", data[4:8])
        head = json.loads(data[8 : 8 + size])
        headers = tuple((str(k), str(v)) for k, v in head["h"])
        return Entry(
            int(head["s"]),
            headers,
            data[8 + size :],
            float(head["t"]),
            int(head.get("a", 0)),
            float(head.get("x", 0.0)),
        )
    except (ValueError, KeyError, TypeError, struct.error):
        return None
