"""What every document model shares: names, durations, regexes Envoy accepts."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

import re2  # type: ignore[import-untyped]
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
)

from wardgate.domain.durations import parse_duration
from wardgate.domain.sessions import IDENTITY_HEADERS

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
HEADER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9!#$%&'*+.^_`|~-]*$")
# Set or stripped by the gateway (x-wardgate-scope: Envoy's scope key, xds/scope_key.py).
RESERVED_HEADERS = {*IDENTITY_HEADERS, "x-request-id", "x-wardgate-scope"}


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


def _duration(value: Any) -> str:
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
