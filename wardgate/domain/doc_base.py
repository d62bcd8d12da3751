"""What every document model shares: names, durations, regexes Envoy accepts."""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Annotated, Any

import re2  # type: ignore[import-untyped]
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
)

from wardgate.domain.durations import parse_duration
from wardgate.domain.sessions import IDENTITY_HEADERS
from wardgate.domain.tickets import TICKET_SID_HEADER

NAME_RE = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
# Roles and tiers: safe in a header value and in the comma-joined x-user-roles.
ROLE_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
RESERVED_PREFIX = "wardgate"


def _not_reserved(name: str) -> str:
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(f"names starting with '{RESERVED_PREFIX}' are reserved for the gateway")
    return name


Name = Annotated[
    str,
    Field(pattern=NAME_RE, description="lower-case letters, digits, '.', '_', '-'"),
    AfterValidator(_not_reserved),
]
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
RETRY_CONDITIONS = {
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "http3-post-connect-failure",
}

# --- text that reaches Envoy: headers, and strings a person reads ---------------------------
# The JSON Schema carries each pattern; the validators say in words what is wrong. Python's
# ``$`` also matches before a final newline, so they use ``fullmatch``, never ``match``.

# An HTTP token (RFC 9110 section 5.6.2): a header name, a method. No space, ':', ',', quote.
TOKEN_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_NAME_RE = re.compile(TOKEN_PATTERN)
TOKEN_RULE = "letters, digits and !#$%&'*+-.^_`|~ (an HTTP token)"
# A header value wardgate sends or matches: visible ASCII, spaces only inside (HTTP strips
# them at the ends). Control characters could split a header; non-ASCII (obsolete obs-text)
# is read differently by each client (docs/DECISIONS.md, record 25).
HEADER_VALUE_PATTERN = r"^([!-~]([ -~]*[!-~])?)?$"
_HEADER_VALUE = re.compile(HEADER_VALUE_PATTERN)
# Control characters: C0 (NUL to US, CR and LF among them), DEL, C1, and the Unicode line and
# paragraph separators, which break a line as well.
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
_CONTROL = re.compile(f"[{CONTROL_CHARS}]")
NO_CONTROL_PATTERN = f"^[^{CONTROL_CHARS}]*$"
# What cannot be put in one line of a message as it is: control characters, lone surrogates.
_UNPRINTABLE = re.compile(rf"[{CONTROL_CHARS}\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SHOWN_MAX = 64


def printable(text: str) -> str:
    """``text`` on one line: control characters and lone surrogates as Python escapes."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def unprintable(text: str) -> str | None:
    """Why ``text`` cannot be in a document, or None: it holds a control character, or a lone
    surrogate (which JSON's ``\\ud800`` escape can write, and protobuf cannot encode)."""
    if m := _UNPRINTABLE.search(text):
        if _SURROGATE.fullmatch(m.group()):
            return f"{shown(text)} is not Unicode text (a lone surrogate)"
        return f"{shown(text)} holds the control character {m.group()!r}"
    return None


def shown(value: str) -> str:
    """A value quoted for a one-line message: escaped, and cut after 64 characters."""
    cut = value if len(value) <= _SHOWN_MAX else value[:_SHOWN_MAX]
    return repr(cut) + ("..." if cut is not value else "")


def _header_name(value: str) -> str:
    if not HEADER_NAME_RE.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a header name: use {TOKEN_RULE}")
    return value


def _method_token(value: str) -> str:
    if not HEADER_NAME_RE.fullmatch(value):
        raise ValueError(f"{shown(value)} is not an HTTP method: use {TOKEN_RULE}")
    return value


def _header_value(value: str) -> str:
    if not _HEADER_VALUE.fullmatch(value):
        if bad := next((c for c in value if not " " <= c <= "~"), None):
            what = "a control character" if _CONTROL.fullmatch(bad) else "a non-ASCII character"
            raise ValueError(
                f"{shown(value)} holds {what} ({bad!r}); a header value is visible ASCII"
            )
        raise ValueError(f"{shown(value)} starts or ends with a space, which HTTP strips")
    return value


def _no_control(value: str) -> str:
    if m := _CONTROL.search(value):
        raise ValueError(f"{shown(value)} holds the control character {m.group()!r}")
    return value


HeaderName = Annotated[
    str, AfterValidator(_header_name), Field(json_schema_extra={"pattern": TOKEN_PATTERN})
]
MethodToken = Annotated[
    str, AfterValidator(_method_token), Field(json_schema_extra={"pattern": TOKEN_PATTERN})
]
HeaderValue = Annotated[
    str, AfterValidator(_header_value), Field(json_schema_extra={"pattern": HEADER_VALUE_PATTERN})
]
# Headers to match: the schema says it with propertyNames (patternProperties, what pydantic
# writes for constrained keys, would let any other name through).
HeaderMap = Annotated[
    dict[HeaderName, HeaderValue],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": TOKEN_PATTERN},
            "additionalProperties": {"type": "string", "pattern": HEADER_VALUE_PATTERN},
        }
    ),
]
# Text that reaches no header but does reach messages and logs (an issuer, a file path).
Text = Annotated[
    str, AfterValidator(_no_control), Field(json_schema_extra={"pattern": NO_CONTROL_PATTERN})
]
# Set or stripped by the gateway (x-wardgate-scope: Envoy's scope key, xds/scope_key.py; the
# ticket's session id: domain/tickets.py).
# Envoy's rate_limit_quota filters, one quota rule each per request; each reads the rule from
# its header, which the gateway sets per route (xds/quota.py).
QUOTA_SLOTS = 2
QUOTA_HEADERS = tuple(f"x-wardgate-quota-{slot}" for slot in range(QUOTA_SLOTS))
RESERVED_HEADERS = {
    *IDENTITY_HEADERS,
    "x-request-id",
    "x-wardgate-scope",
    TICKET_SID_HEADER,
    *QUOTA_HEADERS,
}


# Envoy's safe_regex is RE2 with a program-size limit (runtime re2.max_program_size.error_level,
# 100 by default): check with RE2 itself so a regex Envoy would NACK is refused here.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
RE2_MAX_PROGRAM_SIZE = 100


def check_envoy_regex(pattern: str, where: str) -> None:
    try:
        program = re2.compile(pattern, _RE2_OPTIONS).programsize
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"{where} is not a regex Envoy accepts (RE2): {reason}") from None
    if program > RE2_MAX_PROGRAM_SIZE:
        raise ValueError(
            f"{where} is too complex for Envoy (RE2 program size {program} > "
            f"{RE2_MAX_PROGRAM_SIZE}); simplify it"
        )


def host_regex(hosts: list[str]) -> str:
    """The ``:authority`` regex for ``hosts`` (``*.example.com`` allowed), any port."""
    alts = []
    for host in hosts:
        if host.startswith("*."):
            alts.append(r"[^.:]+(\.[^.:]+)*" + re.escape(host[1:]))
        else:
            alts.append(re.escape(host))
    # Host names are case-insensitive; clients may send ADMIN.example.com.
    return rf"(?i)^({'|'.join(alts)})(:[0-9]+)?$"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def model_post_init(self, context: Any, /) -> None:
        # Which fields were set, a set per document (728 bytes for a route's seven): documents
        # that set the same fields share one. Pydantic only reads it, and copies it before
        # changing a copy's (``model_copy``).
        key = frozenset(self.__pydantic_fields_set__)
        found = _FIELDS_SET.get(key)
        if found is None:
            if len(_FIELDS_SET) >= _FIELDS_SET_MAX:
                _FIELDS_SET.clear()
            found = _FIELDS_SET[key] = set(key)
        object.__setattr__(self, "__pydantic_fields_set__", found)


_FIELDS_SET: dict[frozenset[str], set[str]] = {}
_FIELDS_SET_MAX = 4096


def _duration(value: Any) -> str:
    if type(value) is str:
        return _checked_duration(value)
    return _check_duration(value)


# Thousands of documents write the same few durations ('5s'): each is checked once, and the
# documents share the one string. A duration that is refused is not remembered.
@functools.lru_cache(maxsize=1024)
def _checked_duration(value: str) -> str:
    return _check_duration(value)


def _check_duration(value: Any) -> str:
    seconds = parse_duration(value)
    if not 0 < seconds <= 86400:
        raise ValueError(f"'{value}' must be more than 0 and at most 1d")
    return str(value)


def _cidrs(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    for cidr in value:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"'{cidr}' is not an IP address or CIDR block") from None
    return value


# --- parts written alike, validated once and shared -----------------------------------------
# Thousands of routes write the same auth, rate limits or methods. A part's validated value
# depends on what is written there and on nothing else (no validator reads another field or
# a context), and it is frozen, so the documents that write a part alike share one validated
# value: validated once, held once. Only what JSON holds is recognised (dict, list, str, int,
# bool, None, with their types: 1, 1.0 and true are different inputs); anything else, and any
# part that is refused, goes through validation every time.
_SHARED: dict[tuple[Any, ...], Any] = {}
_SHARED_MAX = 16384


class _Unkeyable(Exception):
    pass


_DICT, _LIST, _TRUE, _FALSE = object(), object(), object(), object()


def _frozen(value: Any) -> Any:
    """A hashable stand-in for ``value``, equal to another's only for the same JSON value
    written with the same types. (Strings, integers and None stand for themselves, also
    inside a dict or a list, without a call.)"""
    kind = type(value)
    if kind is dict:
        out: list[Any] = [_DICT]
        for key, item in value.items():
            if type(key) is not str:
                raise _Unkeyable()
            out.append(key)
            kind = type(item)
            out.append(item if kind is str or kind is int or item is None else _frozen(item))
        return tuple(out)
    if kind is list:
        out = [_LIST]
        for item in value:
            kind = type(item)
            out.append(item if kind is str or kind is int or item is None else _frozen(item))
        return tuple(out)
    if kind is str or kind is int or value is None:
        return value
    if kind is bool:
        return _TRUE if value else _FALSE
    raise _Unkeyable()  # a float (0.0 and -0.0 are equal), a model, anything else


def shared(
    cls: type[BaseModel], value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
) -> Any:
    """A wrap validator: ``value`` validated, or the value validated before from the same
    input to the same field of ``cls``."""
    try:
        key = (cls, info.field_name, info.mode, _frozen(value))
    except (_Unkeyable, RecursionError):
        return handler(value)
    found = _SHARED.get(key, _SHARED)
    if found is _SHARED:
        found = handler(value)
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        _SHARED[key] = found
    return found
