"""JSON from outside (request bodies, stored documents, key files, token parts), parsed so
that its shape cannot crash the caller: nesting deeper than the parser's recursion limit is
a ``ValueError`` like any other malformed input, not a ``RecursionError`` that escapes every
``except ValueError`` and turns a bad request into a 500 or a traceback."""

from __future__ import annotations

import json
from typing import Any


class TooDeep(ValueError):
    """JSON (or YAML) nested too deeply to parse."""

    def __init__(self) -> None:
        super().__init__("nested too deeply")


def loads(text: str | bytes) -> Any:
    """``json.loads``; ``ValueError`` (``json.JSONDecodeError`` or ``TooDeep``) if it
    cannot be parsed."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeep() from None
