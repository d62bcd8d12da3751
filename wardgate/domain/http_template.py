"""Path templates of ``google.api.http`` rules, checked the way Envoy's transcoder reads them.

    Template = "/" | "/" Segments [ Verb ]
    Segments = Segment { "/" Segment }
    Segment  = "*" | "**" | LITERAL | Variable
    Variable = "{" FieldPath [ "=" Segments ] "}"
    FieldPath = IDENT { "." IDENT }
    Verb     = ":" LITERAL

Envoy refuses its whole transcoder configuration when one template does not parse
(grpc-httpjson-transcoding's ``http_template.cc``), so that is found here, before anything
reaches Envoy. Two bindings with one pattern (``GET /v1/{a}`` and ``GET /v1/{b}`` are one
pattern) Envoy takes, but then answers 404 on that path for both: ``pattern`` says which.

Where Envoy's parser is laxer (any character but ``/ : }`` in a literal, any but ``. } =`` in
a variable's name) this one keeps to what a URL path and a field path can hold.
"""

from __future__ import annotations

import dataclasses
import re

_LITERAL = re.compile(r"^[A-Za-z0-9\-._~!$&'()+,;=@%]+$")
_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
MAX_TEMPLATE = 1024


@dataclasses.dataclass(frozen=True)
class Template:
    """A parsed template: its segments (variables replaced by what they match) and the
    field paths of its variables."""

    segments: tuple[str, ...]
    verb: str
    variables: tuple[str, ...]

    def pattern(self) -> str:
        """What the template matches, variable names left out: two templates with one pattern
        are one route for the transcoder."""
        return "/" + "/".join(self.segments) + (f":{self.verb}" if self.verb else "")


def parse_template(text: str) -> Template:
    """``text`` parsed; ``ValueError`` saying what is wrong with it."""
    if len(text) > MAX_TEMPLATE:
        raise ValueError(f"longer than {MAX_TEMPLATE} characters")
    if not text.startswith("/"):
        raise ValueError("does not start with /")
    if text == "/":
        return Template((), "", ())
    body, verb = text[1:], ""
    # A verb follows the last segment; a ':' inside braces belongs to no verb.
    last = body.rsplit("/", 1)[-1]
    if ":" in last and "}" not in last.split(":")[-1]:
        body, verb = body.rsplit(":", 1)
        if not _LITERAL.match(verb):
            raise ValueError(f"verb {verb!r} is not a literal")
    if body == "":  # Envoy: a verb needs a segment before it ("/:verb" does not parse)
        raise ValueError("no segment before the verb" if verb else "empty")
    segments: list[str] = []
    variables: list[str] = []
    for part in _split(body):
        if part.startswith("{"):
            if not part.endswith("}"):
                raise ValueError(f"variable {part!r} is not closed")
            name, _, inner = part[1:-1].partition("=")
            if not _FIELD_PATH.match(name):
                raise ValueError(f"variable name {name!r} is not a field path")
            if "{" in inner:
                raise ValueError("variables do not nest")
            if "=" in part and not inner:  # Envoy: "{name=}" does not parse
                raise ValueError(f"variable {name!r} has nothing after '='")
            variables.append(name)
            segments += _plain(inner or "*")
        else:
            segments += _plain(part)
    if "**" in segments and any(s in ("*", "**") for s in segments[segments.index("**") + 1 :]):
        raise ValueError("only literal segments may follow **")
    return Template(tuple(segments), verb, tuple(variables))


def _split(body: str) -> list[str]:
    """``body`` cut at the slashes outside braces."""
    parts, depth, current = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced }")
        if ch == "/" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise ValueError("unbalanced {")
    parts.append(current)
    return parts


def _plain(text: str) -> list[str]:
    out = []
    for seg in text.split("/"):
        if seg not in ("*", "**") and not _LITERAL.match(seg):
            raise ValueError(f"segment {seg!r} is empty or holds a character not allowed")
        out.append(seg)
    return out
