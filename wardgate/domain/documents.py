"""Route, Service and Issuer documents: the schema operators write, validated with pydantic.

``parse_document`` turns one mapping into a model or raises ``DocumentError`` with a one-line
reason; ``check_references`` validates a whole set (a route naming an unknown service). The
models live in ``doc_route`` (with ``doc_match`` and ``doc_route_parts``), ``doc_service`` and
``doc_issuer``; this module is their front.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
    printable,
    shown,
    unprintable,
)
from wardgate.domain.doc_descriptor import Descriptor
from wardgate.domain.doc_issuer import Issuer
from wardgate.domain.doc_match import Match
from wardgate.domain.doc_route import Route
from wardgate.domain.doc_route_parts import (
    Auth,
    Cors,
    RateLimit,
    Retries,
    Transcode,
    WeightedBackend,
)
from wardgate.domain.doc_secret import Secret
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
    "Descriptor",
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
    "Secret",
    "Service",
    "Transcode",
    "WeightedBackend",
    "check_envoy_regex",
    "check_references",
    "host_regex",
    "parse_clean_json",
    "parse_document",
    "printable",
    "shown",
    "to_json_dict",
]

Document = Route | Service | Issuer | Descriptor | Secret
KINDS: dict[str, type[Route] | type[Service] | type[Issuer] | type[Descriptor] | type[Secret]] = {
    "Route": Route,
    "Service": Service,
    "Issuer": Issuer,
    "Descriptor": Descriptor,
    "Secret": Secret,
}


def _reason(exc: ValidationError) -> str:
    """Pydantic's errors as one line: at most three, each naming its field. Whatever the
    document held is escaped, so a value with CR/LF cannot add a line to a log or a CLI."""
    parts = []
    for err in exc.errors()[:3]:
        path = [str(p) for p in err["loc"] if p != "__root__"]
        if path[-1:] == ["[key]"]:
            path = path[:-1]  # a mapping's key is wrong: its place is the key itself
        loc = ".".join(path)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(printable(f"{loc}: {msg}" if loc else msg))
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# How ``repr`` writes a control character or a lone surrogate: always as an escape. A match
# may be a false alarm (a backslash followed by 'n' in the text, another non-printable
# character); the walk then decides.
_SUSPECT = re.compile(r"\\(?:x[0-9a-f]{2}|[nrt]|u(?:202[89]|d[89a-f]))")


def _unprintable_string(raw: dict[str, Any], *, quote: bool = True) -> str | None:
    """The first string of ``raw``, key or value, holding a control character or a lone
    surrogate, with where it is; None when there is none. No field needs either, and either
    could split a header, a log line or the CLI's one-line errors, or stop Envoy's protobuf.
    One pass at C speed clears most documents; a suspect one is walked string by string.
    Without ``quote`` (a Secret: its PEM key written raw, line breaks and all, is the likely
    case) the string is not quoted, and only a field the schema has is named."""
    try:
        if not _SUSPECT.search(repr(raw)):
            return None
    except RecursionError:
        pass  # nested too deeply for repr: the walk has no such limit
    todo: list[tuple[str, Any]] = [("", raw)]
    while todo:
        where, value = todo.pop()
        if isinstance(value, str) and (why := unprintable(value)):
            if not quote:
                return _unquoted(where)
            return f"{where or 'the document'}: {why}"
        items: Iterable[tuple[Any, Any]] = ()
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        for key, item in reversed(list(items)):
            key = str(key)
            if why := unprintable(key):
                if not quote:
                    return _unquoted(where)
                return f"{where or 'the document'}: the key {why}"
            todo.append((f"{where}.{key}" if where else key, item))
    return None


# The same question asked of the JSON text a document was parsed from (by ``jsontext.loads``,
# which refuses a raw C0 control character inside a string): a parsed string can hold a
# control character or a lone surrogate only if the text holds one raw (DEL, C1, U+2028/9; a
# surrogate cannot be in text that was checked to be UTF-8, but is looked for all the same)
# or writes one as an escape (\b, \f, \n, \r, \t, or \u with a code in those ranges).
_RAW_SUSPECT = re.compile(r"[\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# An escape, read from the left as JSON reads it: an escaped backslash (group 1) is passed
# over, so the 'n' of an escaped backslash followed by 'n' is not taken for a line feed.
_ESCAPE_SUSPECT = re.compile(
    r"\\(?:(\\)|[bfnrt]|u(?:00[01][0-9a-fA-F]|007[fF]|00[89][0-9a-fA-F]|202[89]|[dD][89a-fA-F]))"
)


def _text_suspect(text: str) -> bool:
    """Whether a string parsed from the JSON ``text`` may hold a control character or a lone
    surrogate. False: none does. True may be a false alarm (a surrogate pair written as two
    escapes): the walk decides."""
    if "\x7f" in text or (not text.isascii() and _RAW_SUSPECT.search(text)):
        return True
    if "\\" not in text:
        return False
    return any(m.group(1) is None for m in _ESCAPE_SUSPECT.finditer(text))


def _unquoted(where: str) -> str:
    field = where.split(".")[0]
    named = field if field in Secret.model_fields else "a field"
    return f"{named}: holds a control character or a lone surrogate (not shown: a Secret)"


def parse_document(
    raw: Any, *, expect_kind: str | None = None, source: str | None = None
) -> Document:
    """Validate one document (a mapping); raise ``DocumentError`` with a one-line reason.
    ``source``: the JSON text ``raw`` was parsed from by ``jsontext.loads``, read once for
    control characters instead of walking every string of ``raw``."""
    if not isinstance(raw, dict):
        raise DocumentError(f"a document is a mapping, not {type(raw).__name__}")
    kind = raw.get("kind")
    name: str = printable(raw["name"]) if isinstance(raw.get("name"), str) else ""
    if kind is None and expect_kind is not None:
        kind = expect_kind
        raw = {**raw, "kind": kind}
    if not isinstance(kind, str) or kind not in KINDS:
        scalar = kind is None or isinstance(kind, int | float)
        shown_kind = (
            shown(kind)
            if isinstance(kind, str)
            else repr(kind)
            if scalar
            else f"a {type(kind).__name__}"
        )
        raise DocumentError(f"kind must be one of {', '.join(KINDS)}, not {shown_kind}", name=name)
    if expect_kind is not None and kind != expect_kind:
        raise DocumentError(f"expected kind {expect_kind}, found {kind}", kind=kind, name=name)
    if (source is None or _text_suspect(source)) and (
        why := _unprintable_string(raw, quote=kind != "Secret")
    ):
        raise DocumentError(why, kind=kind, name=name)
    try:
        return KINDS[kind].model_validate(raw)
    except ValidationError as exc:
        raise DocumentError(_reason(exc), kind=kind, name=name) from None


def parse_clean_json(text: str, *, kind: str) -> Document | None:
    """The document of ``kind`` the JSON ``text`` holds, validated straight from the text
    (pydantic's JSON parser: no dict built, and the garbage collector sees no containers of
    it), when the text holds no control character and the document is valid; None otherwise,
    and ``parse_document`` of the parsed text then says why. JSON and Python validation agree
    on what JSON can hold (the unit tests compare them); only a valid document is taken from
    this path, so every refusal and its reason come from ``parse_document``."""
    model = KINDS.get(kind)
    if model is None or _text_suspect(text):
        return None
    try:
        doc = model.model_validate_json(text)
    except ValidationError:
        return None
    # Without kind, ``parse_document`` writes it in, and it counts as set.
    return doc if "kind" in doc.model_fields_set else None


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
