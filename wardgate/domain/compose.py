"""Composition: one request, several backends called at once, one JSON answer.

Each part is a GET through Envoy (``PartFetcher``: wardgate's processor calls the asking
Envoy's compose listener, whose routes send each part to its backend's cluster, so that
balancing, health checks, circuit breaking, retries and the part's timeout are Envoy's). The
answer is ``{"<part>": <its JSON>, ...}``; an optional part that fails is ``null`` and named in
``x-compose-partial``, a required one that fails makes the answer a 502 naming it. The whole
answer is bounded in time (the route's timeout) and size.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any, Protocol

from wardgate.domain.extproc_policy import HeaderEdit, PartPolicy, Policy
from wardgate.domain.jsontext import loads
from wardgate.domain.templates import Facts, Placeholder, valid_header_value

IDENTITY = ("x-user-id", "x-user-roles", "x-auth-method")
KEY_HEADER = "x-wardgate-compose-key"


class ComposeKey:
    """The deployment's compose key as this process last read it (with the documents): the
    processor sends it with every part, Envoy's compose listener routes nothing without it.
    "" until read: no part is sent."""

    def __init__(self, value: str = "") -> None:
        self.value = value


@dataclasses.dataclass(frozen=True, slots=True)
class PartRequest:
    route: str
    part: str
    path: str
    headers: tuple[tuple[str, str], ...]
    timeout: float
    max_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class PartResponse:
    """What came back: a status and body, or ``error`` (timeout, unreachable, too_large)."""

    status: int = 0
    body: bytes = b""
    error: str = ""


class PartFetcher(Protocol):
    async def fetch(self, via: str, request: PartRequest) -> PartResponse: ...


@dataclasses.dataclass(frozen=True, slots=True)
class PartOutcome:
    name: str
    ok: bool
    value: Any = None
    reason: str = ""  # why it failed: timeout, unreachable, too_large, status_NNN, not_json


@dataclasses.dataclass(frozen=True, slots=True)
class Composed:
    """The answer: 200 with ``document`` (``partial`` naming the optional parts that failed),
    or 502 (``failed`` naming the required parts that failed)."""

    status: int
    document: dict[str, Any] | None
    outcomes: tuple[PartOutcome, ...]
    optional: frozenset[str] = frozenset()

    @property
    def partial(self) -> list[str]:
        return [o.name for o in self.outcomes if not o.ok and o.name in self.optional]

    @property
    def failed(self) -> list[str]:
        return [o.name for o in self.outcomes if not o.ok and o.name not in self.optional]


def part_path(part: PartPolicy, facts: Facts) -> str | None:
    """The part's path with its placeholders filled in, each value percent-encoded whole
    (a user named ``../admin`` stays one segment); None when a placeholder has no value, is
    empty (``/users//orders`` is another resource to many servers), or would make a ``.`` or
    ``..`` segment of the path: percent-encoding leaves dots alone, and a user named ``..``
    would otherwise send ``/users/../orders`` (the document's own path has none of them,
    ``doc_extproc.py``)."""

    def value(p: Placeholder) -> str | None:
        return facts.value(p) or None

    path = part.path.render(value, lambda v: urllib.parse.quote(v, safe=""))
    if path is None:
        return None
    if any(s in (".", "..") for s in path.split("?", 1)[0].split("/")):
        return None
    return path


def part_headers(facts: Facts, host: str, edit: HeaderEdit | None) -> tuple[tuple[str, str], ...]:
    """Headers of every part: the caller's identity and request id as ext_authz and Envoy set
    them, the client's host, and the route's request header transform."""
    headers: dict[str, str] = {"accept": "application/json", "host": host}
    if facts.request_id:
        headers["x-request-id"] = facts.request_id
    for name, value in (
        ("x-user-id", facts.user),
        ("x-user-roles", facts.roles),
        ("x-auth-method", facts.auth_method),
    ):
        if value:
            headers[name] = value
    if edit is not None:
        for name in edit.remove:
            headers.pop(name, None)
        for name, template in edit.set:
            rendered = template.render(facts.value)
            if rendered is None or not valid_header_value(rendered):
                headers.pop(name, None)
            else:
                headers[name] = rendered
    return tuple(headers.items())


class Composer:
    def __init__(self, *, fetcher: PartFetcher, max_bytes: int) -> None:
        self._fetcher = fetcher
        self._max = max_bytes

    async def compose(self, *, via: str, policy: Policy, facts: Facts, host: str) -> Composed:
        headers = part_headers(facts, host, policy.request_headers)

        async def one(part: PartPolicy) -> PartOutcome:
            path = part_path(part, facts)
            if path is None:
                return _failed(part, "no_value")
            request = PartRequest(policy.route, part.name, path, headers, part.timeout, self._max)
            return _outcome(part, await self._fetcher.fetch(via, request))

        try:
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(one(p) for p in policy.parts)), policy.compose_timeout
            )
        except TimeoutError:
            outcomes = [_failed(p, "timeout") for p in policy.parts]
        return self._assemble(policy, list(outcomes))

    def _assemble(self, policy: Policy, outcomes: list[PartOutcome]) -> Composed:
        optional = frozenset(p.name for p in policy.parts if p.optional)
        composed = Composed(200, None, tuple(outcomes), optional)
        if composed.failed:
            return dataclasses.replace(composed, status=502)
        document = {o.name: o.value if o.ok else None for o in outcomes}
        if len(json.dumps(document, separators=(",", ":"), ensure_ascii=False)) > self._max:
            too_large = tuple(PartOutcome(o.name, False, reason="too_large") for o in outcomes)
            return Composed(502, None, too_large, frozenset())
        return dataclasses.replace(composed, document=document)


def _failed(part: PartPolicy, reason: str) -> PartOutcome:
    return PartOutcome(part.name, False, reason=reason)


def _outcome(part: PartPolicy, response: PartResponse) -> PartOutcome:
    if response.error:
        return _failed(part, response.error)
    if not 200 <= response.status < 300:
        return _failed(part, f"status_{response.status}")
    if not response.body.strip():
        return PartOutcome(part.name, True, None)
    try:
        return PartOutcome(part.name, True, loads(response.body))
    except (ValueError, UnicodeDecodeError):
        return _failed(part, "not_json")


def error_document(
    failed: list[str], outcomes: Mapping[str, str], request_id: str
) -> dict[str, Any]:
    """The JSON error body of a failed composition."""
    detail = ", ".join(f"{n} ({outcomes.get(n, 'failed')})" for n in failed)
    return {
        "error": "bad_gateway",
        "message": f"a required part of this answer failed: {detail}",
        "request_id": request_id,
    }
