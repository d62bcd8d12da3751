"""Values with placeholders, as transforms and composition parts write them: ``"{user}"``,
``"/orders?user={user}"``, ``"tenant-{header:x-tenant}"``.

A template is parsed once, when its document is validated, into literal pieces and
placeholders; rendering fills the placeholders from one request's facts (``Facts``). A
placeholder without a value makes the whole value absent (``None``): a header that would say
``x-tenant: `` for a caller without identity is not set at all, never half-filled.

``{{`` and ``}}`` write a literal brace; any other brace is an error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

# What a placeholder may name, and what each stands for (docs/TRANSFORMS.md).
NAMES = ("user", "roles", "auth_method", "tier", "route", "request_id")
HEADER_PREFIX = "header:"
# Credentials never travel into another header or a part's path: a transform could otherwise
# hand an upstream the caller's session, token or key under a name the gateway does not strip.
SECRET_HEADERS = frozenset({"cookie", "authorization", "proxy-authorization", "x-api-key"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_PIECE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]|[^{}]+")
MAX_TEMPLATE = 1024
_HEADER_VALUE = re.compile(r"[!-~](?:[ -~]{0,8190}[!-~])?")


@dataclasses.dataclass(frozen=True, slots=True)
class Placeholder:
    """``{name}``, or ``{header:NAME}`` (``name`` is ``header``, ``arg`` the header name)."""

    name: str
    arg: str = ""

    def __str__(self) -> str:
        return "{" + (f"{HEADER_PREFIX}{self.arg}" if self.name == "header" else self.name) + "}"


Piece = str | Placeholder


@dataclasses.dataclass(frozen=True, slots=True)
class Template:
    pieces: tuple[Piece, ...]
    constant: bool = dataclasses.field(init=False, compare=False)  # no placeholder

    def __post_init__(self) -> None:
        object.__setattr__(self, "constant", not self.placeholders)

    @property
    def placeholders(self) -> tuple[Placeholder, ...]:
        return tuple(p for p in self.pieces if isinstance(p, Placeholder))

    def render(
        self, value_of: Callable[[Placeholder], str | None], escape: Callable[[str], str] = str
    ) -> str | None:
        """The text with every placeholder filled (each value through ``escape``); None when
        one of them has no value."""
        out: list[str] = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            value = value_of(piece)
            if value is None:
                return None
            out.append(escape(value))
        return "".join(out)


def parse_template(text: str) -> Template:
    """``text`` as a template; ``ValueError`` naming what is wrong."""
    if len(text) > MAX_TEMPLATE:
        raise ValueError(f"a value is at most {MAX_TEMPLATE} characters")
    pieces: list[Piece] = []
    for m in _PIECE.finditer(text):
        whole = m.group(0)
        if whole in ("{{", "}}"):
            _add_literal(pieces, whole[0])
        elif whole in ("{", "}"):
            raise ValueError(f"{text!r} holds a lone {whole!r}; write {whole * 2} for a brace")
        elif m.group(1) is not None:
            pieces.append(_placeholder(m.group(1), text))
        else:
            _add_literal(pieces, whole)
    return Template(tuple(pieces))


def _add_literal(pieces: list[Piece], text: str) -> None:
    if pieces and isinstance(pieces[-1], str):
        pieces[-1] += text
    else:
        pieces.append(text)


def _placeholder(inner: str, text: str) -> Placeholder:
    if inner in NAMES:
        return Placeholder(inner)
    if inner.startswith(HEADER_PREFIX):
        header = inner.removeprefix(HEADER_PREFIX).lower()
        if not _TOKEN.fullmatch(header):
            raise ValueError(f"{{{inner}}} in {text!r}: not a header name")
        if header in SECRET_HEADERS:
            raise ValueError(
                f"{{{inner}}} in {text!r}: credentials ({', '.join(sorted(SECRET_HEADERS))}) "
                "cannot be copied"
            )
        return Placeholder("header", header)
    known = ", ".join("{" + n + "}" for n in NAMES)
    raise ValueError(
        f"{{{inner}}} in {text!r} is not a placeholder; use {known} or {{header:NAME}}"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Facts:
    """What placeholders are filled from: the identity ext_authz established (its headers,
    which Envoy strips from every client request first), the route and the request."""

    route: str
    request_id: str = ""
    user: str = ""
    roles: str = ""
    auth_method: str = ""
    tier: str = ""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def value(self, p: Placeholder) -> str | None:
        """The placeholder's value, or None when this request has none (no identity, no such
        header)."""
        if p.name == "header":
            return self.headers.get(p.arg)
        value: str = getattr(self, p.name)
        return value or None


def valid_header_value(value: str) -> bool:
    """Visible ASCII, spaces only inside, at most 8 KiB: what a filled template may set as a
    header (a value from a client's header may be anything Envoy let through: obs-text, a
    tab, 60 KiB)."""
    return _HEADER_VALUE.fullmatch(value) is not None
