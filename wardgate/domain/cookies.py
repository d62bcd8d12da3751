"""Reading one cookie from, and removing one cookie from, ``Cookie`` headers however they come.

Browsers send one ``Cookie`` header of ``name=value`` pairs joined by ``"; "``. Other clients
send several headers, and Envoy hands them on in three shapes (observed with Envoy 1.40,
docs/DECISIONS.md record 23): over HTTP/1.1 the upstream gets them as separate header lines,
while ext_authz and Lua's ``headers:get`` see them joined with ``","``; over HTTP/2 Envoy joins
the cookie entries with ``"; "`` into one header. So both ``";"`` and ``","`` separate the
*pieces* looked at here, although a comma may also sit inside a value (``a=Mon, 01 Jan``).

- A piece's name is its text before the first ``=``, trimmed at both ends of every character
  that cannot be part of a cookie name (whitespace, quotes, controls, non-ASCII). A piece
  without ``=`` has no name.
- ``strip_cookie`` removes every piece named ``name`` (or one of several names) and keeps
  the rest as written, commas inside values included. The Lua filter in ``xds/listener.py``
  (``strip_cookie_lua``) is the same algorithm, applied to each Cookie header Envoy holds;
  tests hold the two together.
- ``read_cookie`` answers the value of the pieces named ``name``; pieces disagreeing about it
  answer nothing (a cookie planted by a sibling domain cannot choose the session read).
"""

from __future__ import annotations

import re

MAX_COOKIE_HEADER = 8192
# Everything but RFC 9110 token characters, what a cookie name is made of (Lua twin: OTHER).
_NOT_NAME = r"[^A-Za-z0-9!#$%&'*+\-.^_`|~]"
_TRIMMED_NAME = re.compile(rf"{_NOT_NAME}*(.*?){_NOT_NAME}*\Z", re.S)
_OWS = " \t"


def cookie_name(piece: str) -> str | None:
    """The name of one ``name=value`` piece, trimmed of non-name characters; ``None`` without
    ``=``."""
    raw, sep, _ = piece.partition("=")
    if not sep:
        return None
    match = _TRIMMED_NAME.match(raw)
    assert match is not None  # the pattern matches every string
    return match.group(1)


def _pieces(header: str) -> list[str]:
    return [p for part in header.split(";") for p in part.split(",")]


def read_cookie(header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a (possibly joined) Cookie header; ``None`` when absent,
    when the header is over ``MAX_COOKIE_HEADER``, or when two pieces give different values."""
    if not header or len(header) > MAX_COOKIE_HEADER or name not in header:
        return None
    found: str | None = None
    for piece in _pieces(header):
        if cookie_name(piece) != name:
            continue
        value = piece.partition("=")[2].strip().strip('"')
        if found is not None and value != found:
            return None  # ambiguous: no value rather than the attacker's choice of one
        found = value
    return found


def strip_cookie(header: str, *names: str) -> str:
    """The Cookie header without any piece named one of ``names`` (what an upstream may see).
    Parts between ``;`` are joined again with ``"; "``, kept pieces of a part with ``","``; a
    header that holds no such piece comes back as it is."""
    if not any(name in header for name in names):
        return header
    parts: list[str] = []
    removed = False
    for part in header.split(";"):
        pieces = part.split(",")
        kept = [p for p in pieces if cookie_name(p) not in names]
        removed = removed or len(kept) != len(pieces)
        text = ",".join(kept).strip(_OWS)
        if text:
            parts.append(text)
    return "; ".join(parts) if removed else header
