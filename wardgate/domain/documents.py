"""Route, Service and Issuer documents: the schema operators write, validated with pydantic.

``parse_document`` turns one mapping into a model or raises ``DocumentError`` with a one-line
reason; ``check_references`` validates a whole set (a route naming an unknown service). The
models live in ``doc_route`` (with ``doc_match`` and ``doc_route_parts``), ``doc_service`` and
``doc_issuer``; this module is their front.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from wardgate.domain.doc_base import (
    HEADER_NAME_RE,
    HTTP_METHODS,
    NAME_RE,
    RESERVED_HEADERS,
    RESERVED_PREFIX,
    RETRY_CONDITIONS,
    Name,
    check_envoy_regex,
    host_regex,
)
from wardgate.domain.doc_issuer import Issuer
from wardgate.domain.doc_match import Match
from wardgate.domain.doc_route import Route
from wardgate.domain.doc_route_parts import Auth, Cors, RateLimit, Retries, WeightedBackend
from wardgate.domain.doc_service import (
    CircuitBreaker,
    Endpoint,
    HealthCheck,
    OutlierDetection,
    Service,
)
from wardgate.errors import DocumentError, ReferenceError_

__all__ = [
    "HEADER_NAME_RE",
    "HTTP_METHODS",
    "KINDS",
    "NAME_RE",
    "RESERVED_HEADERS",
    "RESERVED_PREFIX",
    "RETRY_CONDITIONS",
    "Auth",
    "CircuitBreaker",
    "Cors",
    "Document",
    "Endpoint",
    "HealthCheck",
    "Issuer",
    "Match",
    "Name",
    "OutlierDetection",
    "RateLimit",
    "Retries",
    "Route",
    "Service",
    "WeightedBackend",
    "check_envoy_regex",
    "check_references",
    "host_regex",
    "parse_document",
    "to_json_dict",
]

Document = Route | Service | Issuer
KINDS: dict[str, type[Route] | type[Service] | type[Issuer]] = {
    "Route": Route,
    "Service": Service,
    "Issuer": Issuer,
}


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_document(raw: Any, *, expect_kind: str | None = None) -> Document:
    """Validate one document (a mapping); raise ``DocumentError`` with a one-line reason."""
    if not isinstance(raw, dict):
        raise DocumentError(f"a document is a mapping, not {type(raw).__name__}")
    kind = raw.get("kind")
    name: str = raw["name"] if isinstance(raw.get("name"), str) else ""
    if kind is None and expect_kind is not None:
        kind = expect_kind
        raw = {**raw, "kind": kind}
    if kind not in KINDS:
        raise DocumentError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}", name=name)
    if expect_kind is not None and kind != expect_kind:
        raise DocumentError(f"expected kind {expect_kind}, found {kind}", kind=kind, name=name)
    try:
        return KINDS[kind].model_validate(raw)
    except ValidationError as exc:
        raise DocumentError(_reason(exc), kind=kind, name=name) from None


def check_references(routes: dict[str, Route], services: dict[str, Service]) -> None:
    """Raise ``ReferenceError_`` for the first route naming a service that is not there."""
    for route in sorted(routes.values(), key=lambda r: r.name):
        missing = [s for s in route.services() if s not in services]
        if missing:
            raise ReferenceError_(
                f"backend service {', '.join(missing)} does not exist",
                kind="Route",
                name=route.name,
            )


def to_json_dict(doc: Document) -> dict[str, Any]:
    """The stored form: everything the operator set, nothing defaulted in."""
    return doc.model_dump(mode="json", exclude_unset=True) | {"kind": doc.kind, "name": doc.name}
