"""The ``match`` of a Route (which requests it takes) and the path-character rules that
``match.prefix``, ``match.path`` and ``rewrite_prefix`` share."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from wardgate.domain.doc_base import (
    HTTP_METHODS,
    RESERVED_HEADERS,
    HeaderMap,
    _Doc,
    check_envoy_regex,
    host_regex,
    shared,
    shown,
)

# What Envoy matches as it comes (RFC 3986 path characters, '[' and ']'); it percent-encodes
# the rest of ASCII ('|', '^', '{', ...) before routing and refuses raw non-ASCII bytes.
_PCHAR = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/\[\]]|%[0-9A-Fa-f]{2})*")
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%\[\]]")
HOST_PATTERN = r"^(\*\.)?[A-Za-z0-9.-]+$"
_HOST = re.compile(HOST_PATTERN)
_DECODED = re.compile(r"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DdEeFf]|5[CcFf]|7[Ee])")
# The common case in one match: path characters and no '%' at all (so no percent-encoding
# to check); anything else takes the checks below, which say what is wrong.
_PLAIN_NO_PERCENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/\[\]]*")


def check_path_chars(value: str, where: str) -> None:
    """A path as Envoy compares it: URL path characters, others percent-encoded; and no
    percent-encoded letter, digit, '-._~' or slash, which Envoy decodes (or redirects)
    before routing, so that the encoded form would never match."""
    if _PLAIN_NO_PERCENT.fullmatch(value):
        return
    bad = next((c for c in value if not _PLAIN.fullmatch(c)), None)
    if bad is not None:
        encoded = "".join(f"%{b:02X}" for b in bad.encode())
        raise ValueError(
            f"{where} holds {bad!r}: paths are matched as sent on the wire; write it "
            f"percent-encoded ({encoded})"
        )
    if not _PCHAR.fullmatch(value):
        raise ValueError(f"{where}: '%' must start a percent-encoding such as %25")
    if m := _DECODED.search(value):
        decoded = bytes.fromhex(m.group(0)[1:]).decode()
        if decoded in "/\\":
            raise ValueError(
                f"{where} holds {m.group(0)}: Envoy answers requests holding an escaped "
                "slash with a redirect to the unescaped path, so no route ever sees one"
            )
        raise ValueError(
            f"{where} holds {m.group(0)}: Envoy decodes it to {decoded!r} before routing; "
            f"write {decoded!r}"
        )


def _check_path(value: str, key: str) -> None:
    if not value.startswith("/") or "?" in value or "#" in value or " " in value:
        raise ValueError(f"match.{key} must start with '/' and hold no '?', '#' or space")
    check_path_chars(value, f"match.{key}")


class Match(_Doc):
    """Which requests a route takes (Envoy ``route.match``). Exactly one of ``prefix``,
    ``path`` or ``regex`` is required; ``methods``, ``headers`` and ``hosts`` narrow the
    match, and every condition given must hold."""

    prefix: str | None = Field(
        default=None,
        description=(
            "Path prefix: starts with '/', holds no '?', '#' or space, and is written as on "
            "the wire: URL path characters, anything else percent-encoded ('/caf%C3%A9'), "
            "never an encoded letter, digit, '-._~' or slash (Envoy decodes those before "
            "routing). Without a trailing '/' "
            "it becomes Envoy's path_separated_prefix ('/api/users' matches /api/users and "
            "/api/users/42, not /api/usersX); ending in '/' a plain prefix ('/' matches every "
            "path). Exactly one of prefix, path or regex."
        ),
    )
    path: str | None = Field(
        default=None,
        description=(
            "Exact path (Envoy match.path), same character rules as prefix. Exactly one of "
            "prefix, path or regex."
        ),
    )
    regex: str | None = Field(
        default=None,
        description=(
            "RE2 regex the whole path (without the query string) must match (Envoy "
            "match.safe_regex). Refused if RE2 rejects it or its program size is over 100. "
            "Exactly one of prefix, path or regex."
        ),
    )
    methods: list[str] | None = Field(
        default=None,
        description=(
            "HTTP methods the route takes, upper-cased: GET, HEAD, POST, PUT, PATCH, DELETE, "
            "OPTIONS, CONNECT, TRACE (a ':method' header matcher in Envoy; OPTIONS is added "
            "when the route has cors, for preflights). Unset: any method."
        ),
    )
    headers: HeaderMap | None = Field(
        default=None,
        description=(
            "Request headers that must be present with exactly this value (Envoy header "
            "matcher, string_match.exact). Names are HTTP tokens, lower-cased; values are "
            "visible ASCII, spaces only inside, possibly empty. x-user-id, "
            "x-user-roles, x-auth-method, x-request-id, x-wardgate-scope, x-wardgate-quota-0, "
            "x-wardgate-quota-1, cookie, authorization and x-api-key cannot be named."
        ),
    )
    hosts: list[Annotated[str, Field(json_schema_extra={"pattern": HOST_PATTERN})]] | None = Field(
        default=None,
        description=(
            "Host names the Host/:authority header must be one of, with any port (an "
            "':authority' regex matcher in Envoy). A leading '*.' matches any subdomain, not "
            "the bare domain; names are lower-cased. Unset: any host."
        ),
    )

    @model_validator(mode="after")
    def _one_path_matcher(self) -> Match:
        prefix, path, regex = self.prefix, self.path, self.regex
        if (prefix is None) + (path is None) + (regex is None) != 2:
            raise ValueError("match needs exactly one of prefix, path or regex")
        if prefix is not None:
            _check_path(prefix, "prefix")
        elif path is not None:
            _check_path(path, "path")
        elif regex is not None:
            check_envoy_regex(regex, "match.regex")
        return self

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        upper = [m.upper() for m in value]
        bad = [m for m in upper if m not in HTTP_METHODS]
        if bad or not upper:
            raise ValueError(f"unknown HTTP method(s) {bad}; use {sorted(HTTP_METHODS)}")
        return upper

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        out = {}
        for name, want in value.items():
            lname = name.lower()
            if lname in RESERVED_HEADERS or lname in ("cookie", "authorization", "x-api-key"):
                raise ValueError(
                    f"'{lname}' cannot be matched: the gateway sets or strips it, and a client "
                    "could otherwise choose the route by sending it"
                )
            out[lname] = want
        return out

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for host in value:
            if not _HOST.fullmatch(host):
                raise ValueError(f"{shown(host)} is not a host name (a leading '*.' is allowed)")
        hosts = [h.lower() for h in value]
        check_envoy_regex(host_regex(hosts), "match.hosts (as a regex)")
        return hosts

    # Last, so that it wraps the validators above.
    _shared = field_validator("methods", "headers", "hosts", mode="wrap")(classmethod(shared))
