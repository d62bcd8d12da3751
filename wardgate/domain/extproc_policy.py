"""A route's external-processing policy (transform, cache, compose) as it travels: Envoy sends
it to wardgate with every ext_proc stream (per-route gRPC initial metadata), so the processor
reads no documents and cannot disagree with the configuration the Envoy asking has (as the
rate-limit rules travel in their descriptors, docs/DECISIONS.md record 2).

``encode_policy`` writes the compact JSON (ASCII, one line, at most ``MAX_POLICY_BYTES``);
``decode_policy`` reads it back strictly into a ``Policy`` with compiled templates and JSON
filter. Which ext_proc phases a route needs follows from the policy alone (``Phases``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from wardgate.domain.doc_extproc import (
    TRANSFORM_RESERVED,
    Cache,
    ComposePart,
    HeaderOps,
    Transform,
)
from wardgate.domain.durations import parse_duration
from wardgate.domain.json_filter import JsonFilter
from wardgate.domain.templates import Template, parse_template

# gRPC servers refuse metadata past 8 KiB by default; the policy shares it with a few headers.
MAX_POLICY_BYTES = 6144
DEFAULT_COMPOSE_TIMEOUT = 10.0
MAX_COMPOSE_TIMEOUT = 60.0
VERSION = 1


class PolicyError(ValueError):
    """A policy that cannot be read (never written by this wardgate)."""


@dataclasses.dataclass(frozen=True, slots=True)
class HeaderEdit:
    set: tuple[tuple[str, Template], ...]
    remove: tuple[str, ...]
    # The sets whose values hold placeholders: what the processor does (Envoy the others).
    dynamic: tuple[tuple[str, Template], ...] = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dynamic", tuple((n, t) for n, t in self.set if not t.constant))

    @property
    def constant(self) -> bool:
        return not self.dynamic


@dataclasses.dataclass(frozen=True, slots=True)
class CachePolicy:
    ttl: float
    vary: tuple[str, ...]
    shared: bool


@dataclasses.dataclass(frozen=True, slots=True)
class PartPolicy:
    name: str
    backend: str
    path: Template
    timeout: float
    optional: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Phases:
    """What Envoy sends the processor for a route: request headers; response headers; the
    response body (buffered up to Envoy's limit)."""

    request_headers: bool
    response_headers: bool
    response_body: bool

    @property
    def any(self) -> bool:
        return self.request_headers or self.response_headers or self.response_body


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    route: str
    authenticated: bool  # the route requires a credential (ext_authz runs on it)
    request_headers: HeaderEdit | None = None
    response_headers: HeaderEdit | None = None
    response_json: JsonFilter | None = None
    cache: CachePolicy | None = None
    parts: tuple[PartPolicy, ...] = ()
    compose_timeout: float = DEFAULT_COMPOSE_TIMEOUT
    # A hash of the policy text: cached answers made under another policy are not served.
    fingerprint: str = ""

    @property
    def phases(self) -> Phases:
        return phases_of(self)


def phases_of(policy: Policy) -> Phases:
    """The phases a route needs. Header removals and sets of constant values are Envoy's own
    work (``xds/extproc.py``); only values with placeholders, JSON bodies, the cache and
    composition need the processor."""
    if policy.parts:  # composition answers from the request headers, nothing goes upstream
        return Phases(True, False, False)
    request_sets = policy.request_headers is not None and not policy.request_headers.constant
    response_sets = policy.response_headers is not None and not policy.response_headers.constant
    return Phases(
        request_headers=bool(request_sets or response_sets or policy.cache),
        response_headers=bool(response_sets or policy.response_json or policy.cache),
        response_body=bool(policy.response_json or policy.cache),
    )


def _ops(ops: HeaderOps | None) -> dict[str, Any] | None:
    if ops is None:
        return None
    out: dict[str, Any] = {}
    if ops.set:
        out["s"] = [[n.lower(), v] for n, v in ops.set.items()]
    if ops.remove:
        out["d"] = [n.lower() for n in ops.remove]
    return out


def compose_timeout(route_timeout: str | None) -> float:
    if route_timeout is None:
        return DEFAULT_COMPOSE_TIMEOUT
    return min(parse_duration(route_timeout), MAX_COMPOSE_TIMEOUT)


def encode_policy(
    *,
    route: str,
    authenticated: bool,
    transform: Transform | None,
    cache: Cache | None,
    compose: Mapping[str, ComposePart] | None,
    timeout: str | None,
) -> str:
    """The policy text of a route; ``ValueError`` when it is too large to travel."""
    doc: dict[str, Any] = {"v": VERSION, "r": route, "a": int(authenticated)}
    if transform is not None:
        if q := _ops(transform.request_headers):
            doc["q"] = q
        if p := _ops(transform.response_headers):
            doc["p"] = p
        if (j := transform.response_json) is not None:
            doc["j"] = {"i": j.include} if j.include is not None else {"e": j.exclude}
    if cache is not None:
        doc["c"] = [cache.ttl_seconds, cache.vary, int(cache.shared)]
    if compose:
        overall = compose_timeout(timeout)
        doc["x"] = [
            [
                name,
                part.backend,
                part.path,
                min(parse_duration(part.timeout), overall) if part.timeout else overall,
                int(part.optional),
            ]
            for name, part in compose.items()
        ]
        doc["xt"] = overall
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=True)
    if len(text) > MAX_POLICY_BYTES:
        raise ValueError(
            f"transform, cache and compose together take {len(text)} bytes as sent to the "
            f"external processor; at most {MAX_POLICY_BYTES}: use fewer or shorter paths, "
            "headers or parts"
        )
    return text


def decode_policy(text: str) -> Policy:
    """The policy ``encode_policy`` wrote; ``PolicyError`` for anything else."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise PolicyError("not a policy of this version")
        route = doc["r"]
        if not isinstance(route, str) or not route:
            raise PolicyError("no route")
        j = doc.get("j")
        json_filter = None
        if j is not None:
            json_filter = JsonFilter(include=_strs(j.get("i")), exclude=_strs(j.get("e")))
        cache = None
        if (c := doc.get("c")) is not None:
            ttl, vary, shared = c
            cache = CachePolicy(_positive(ttl), tuple(_strs(vary) or ()), bool(shared))
        parts = tuple(
            PartPolicy(str(name), str(backend), parse_template(str(path)), _positive(t), bool(opt))
            for name, backend, path, t, opt in doc.get("x", [])
        )
        return Policy(
            route=route,
            authenticated=bool(doc.get("a")),
            request_headers=_edit(doc.get("q")),
            response_headers=_edit(doc.get("p")),
            response_json=json_filter,
            cache=cache,
            parts=parts,
            compose_timeout=_positive(doc.get("xt", DEFAULT_COMPOSE_TIMEOUT)),
            fingerprint=hashlib.sha256(text.encode()).hexdigest()[:16],
        )
    except PolicyError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise PolicyError(f"malformed policy: {exc}") from None


def _strs(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError("expected a list of strings")
    return value


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
        raise PolicyError(f"bad duration {value!r}")
    return float(value)


def _edit(value: Any) -> HeaderEdit | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PolicyError("bad header edit")
    sets = tuple((str(n), parse_template(str(t))) for n, t in value.get("s", []))
    removes = tuple(_strs(value.get("d")) or ())
    for name in [n for n, _ in sets] + list(removes):
        # Whoever wrote this policy, a transform never touches these (doc_extproc.py).
        if name in TRANSFORM_RESERVED or name.startswith("x-envoy-") or name != name.lower():
            raise PolicyError(f"header {name!r} cannot be transformed")
    return HeaderEdit(sets, removes)
