"""The parts of a Route that wardgate's external processor carries out: ``transform``
(headers and JSON fields), ``cache`` (the shared response cache) and ``compose`` (one answer
from several backends). docs/TRANSFORMS.md says what each does at run time."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from wardgate.domain.doc_base import (
    RESERVED_HEADERS,
    HeaderName,
    Name,
    _Doc,
    _duration,
    shown,
)
from wardgate.domain.durations import parse_duration
from wardgate.domain.json_filter import MAX_PATHS, JsonFilter, check_path
from wardgate.domain.templates import parse_template

# Headers a transform may neither set nor remove: the caller's identity and the gateway's
# own (set by ext_authz and Envoy, read by upstreams as the truth), credentials, what frames
# the message, what Envoy routes by, and the cache's own answer headers.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)
TRANSFORM_RESERVED = frozenset(
    {*RESERVED_HEADERS, "cookie", "set-cookie", "x-cache", "age", "x-compose-partial"} | HOP_BY_HOP
)
MAX_HEADERS = 32
MAX_TTL = 86400.0
MAX_COMPOSE_TIMEOUT = 60.0  # the longest Envoy waits for the external processor (listener)
PART_NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$"
# A part's path and query: URL characters (RFC 3986), placeholders filled in percent-encoded.
_PART_URL = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")


def _reserved(name: str) -> str:
    lname = name.lower()
    if lname in TRANSFORM_RESERVED or lname.startswith("x-envoy-"):
        raise ValueError(
            f"{shown(name)} is reserved for the gateway (identity, credentials, "
            "framing, x-envoy-*, the cache's headers); a transform cannot change it"
        )
    return lname


class HeaderOps(_Doc):
    """Headers a transform sets or removes, on the request (before it goes upstream) or on
    the response (before it reaches the client)."""

    set: dict[HeaderName, str] | None = Field(
        default=None,
        description=(
            "Headers to set (any value the client or upstream sent is replaced), at most 32. "
            "Values are visible ASCII and may hold placeholders: {user}, {roles}, "
            "{auth_method}, {tier}, {route}, {request_id}, {header:NAME} ({{ and }} for a "
            "brace). A value whose placeholder has nothing to fill it (a public request's "
            "{user}) removes the header instead."
        ),
    )
    remove: list[HeaderName] | None = Field(
        default=None, description="Headers to remove, at most 32."
    )

    @field_validator("set")
    @classmethod
    def _set(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_HEADERS:
            raise ValueError(f"at most {MAX_HEADERS} headers")
        seen: set[str] = set()
        for name, template in value.items():
            lname = _reserved(name)
            if lname in seen:
                raise ValueError(f"{shown(name)} is named twice")
            seen.add(lname)
            _check_value(template, name)
        return value

    @field_validator("remove")
    @classmethod
    def _remove(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if len(value) > MAX_HEADERS:
            raise ValueError(f"at most {MAX_HEADERS} headers")
        for name in value:
            _reserved(name)
        return value

    @model_validator(mode="after")
    def _apart(self) -> HeaderOps:
        both = {n.lower() for n in self.set or {}} & {n.lower() for n in self.remove or []}
        if both:
            raise ValueError(f"a header is both set and removed: {', '.join(sorted(both))}")
        if not self.set and not self.remove:
            raise ValueError("set or remove at least one header")
        return self


def _check_value(template: str, where: str) -> None:
    """A header value template: visible ASCII (spaces inside), placeholders that exist."""
    if not re.fullmatch(r"[!-~]([ -~]*[!-~])?", template):
        raise ValueError(
            f"{shown(where)}: {shown(template)}: a header value is visible ASCII, with spaces only "
            "inside"
        )
    parse_template(template)


class ResponseJson(_Doc):
    """Fields of JSON responses kept or dropped (``include`` or ``exclude``)."""

    include: list[str] | None = Field(
        default=None,
        description=(
            "Dotted paths of the fields to keep (at most 64, up to 16 segments each; '*' for "
            "any key; arrays are looked through); everything else is dropped."
        ),
    )
    exclude: list[str] | None = Field(
        default=None, description="Dotted paths of the fields to drop; everything else is kept."
    )

    @field_validator("include", "exclude")
    @classmethod
    def _paths(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value or len(value) > MAX_PATHS:
            raise ValueError(f"1 to {MAX_PATHS} paths")
        for path in value:
            check_path(path)
        return value

    @model_validator(mode="after")
    def _one(self) -> ResponseJson:
        JsonFilter(include=self.include, exclude=self.exclude)  # exactly one, compiled
        return self


class Transform(_Doc):
    """What wardgate's external processor changes on the way (docs/TRANSFORMS.md)."""

    request_headers: HeaderOps | None = Field(
        default=None, description="Headers set or removed before the request goes upstream."
    )
    response_headers: HeaderOps | None = Field(
        default=None, description="Headers set or removed before the response reaches the client."
    )
    response_json: ResponseJson | None = Field(
        default=None,
        description=(
            "Fields of JSON response bodies kept or dropped. Fails closed: a JSON body that "
            "cannot be filtered (malformed, compressed other than gzip/deflate, larger than "
            "extproc_max_body_bytes) is answered 502, never passed on."
        ),
    )

    @model_validator(mode="after")
    def _something(self) -> Transform:
        if not (self.request_headers or self.response_headers or self.response_json):
            raise ValueError("transform needs request_headers, response_headers or response_json")
        return self


class Cache(_Doc):
    """The shared response cache (Redis) for GET and HEAD answers with status 200."""

    ttl: str = Field(
        description=(
            "How long an answer is served from the cache, a duration from 1s to 1d. A shorter "
            "max-age (s-maxage) from the upstream wins."
        )
    )
    vary: list[HeaderName] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "Request headers whose values select different cached answers (at most 8), "
            "besides method, host, path, query and accept-encoding. An upstream answer whose "
            "Vary names another header is not stored."
        ),
    )
    shared: bool = Field(
        default=False,
        description=(
            "On an authenticated route: one cached answer for every caller (default false: "
            "each user has their own)."
        ),
    )

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str) -> str:
        _duration(value)
        if parse_duration(value) < 1:
            raise ValueError("ttl is at least 1s")
        return value

    @field_validator("vary")
    @classmethod
    def _vary(cls, value: list[str]) -> list[str]:
        lowered = [v.lower() for v in value]
        if len(set(lowered)) != len(lowered):
            raise ValueError("vary names a header twice")
        return lowered

    @property
    def ttl_seconds(self) -> float:
        return parse_duration(self.ttl)


class ComposePart(_Doc):
    """One backend call of a composed answer: its JSON becomes the field of the part's name."""

    backend: Name = Field(description="The Service called (through Envoy's cluster for it).")
    path: str = Field(
        description=(
            "Path and query sent to the backend, starting with '/'; placeholders ({user}, "
            "{header:NAME}, ...) are filled in percent-encoded."
        )
    )
    timeout: str | None = Field(
        default=None,
        description=(
            "How long this part may take, more than 0 and at most 60s (Envoy route timeout "
            "of the part). Unset: the route's timeout, else 10s."
        ),
    )
    optional: bool = Field(
        default=False,
        description=(
            "A failing optional part becomes null and is named in x-compose-partial; a "
            "failing required one makes the answer 502."
        ),
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        template = parse_template(value)
        literal = "".join(p if isinstance(p, str) else "x" for p in template.pieces)
        if not _PART_URL.fullmatch(literal):
            raise ValueError(
                f"{shown(value)}: a path starts with '/' and holds URL characters only "
                "(percent-encode the others; no '#')"
            )
        if re.search(r"(^|/)\.\.?(/|\?|$)", literal):
            raise ValueError(f"{shown(value)}: no '.' or '..' segments")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _duration(value)
        if parse_duration(value) > MAX_COMPOSE_TIMEOUT:
            raise ValueError("a part's timeout is at most 60s")
        return value


PartName = Annotated[str, Field(pattern=PART_NAME)]
Compose = dict[PartName, ComposePart]


def check_compose(parts: dict[str, Any]) -> None:
    if not 1 <= len(parts) <= 16:
        raise ValueError("compose: 1 to 16 parts")
