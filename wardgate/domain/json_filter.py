"""``response_json``: keep (``include``) or drop (``exclude``) fields of a JSON document by
dotted paths.

A path is keys joined by ``.``; ``*`` stands for any key at its level. Arrays are looked
through: ``items.id`` reaches the ``id`` of every element of ``items``, and a document that is
an array has each element filtered. ``include`` keeps exactly the fields its paths reach (with
the objects on the way) and drops everything else, values of another shape included: an
``include`` cannot let through what it does not name. ``exclude`` drops what its paths reach
and keeps the rest.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

MAX_PATHS = 64
MAX_DEPTH = 16
MAX_PATH_CHARS = 256
WILDCARD = "*"
_SEGMENT = re.compile(r"[^.\x00-\x1f\x7f]{1,128}")
_DROP = object()  # a value that is not kept


@dataclasses.dataclass
class _Node:
    children: dict[str, _Node] = dataclasses.field(default_factory=dict)
    terminal: bool = False  # a path ends here

    def child(self, segment: str) -> _Node:
        return self.children.setdefault(segment, _Node())


def check_path(path: str) -> list[str]:
    """The segments of ``path``; ``ValueError`` if it is not a usable path."""
    if not path or len(path) > MAX_PATH_CHARS:
        raise ValueError(f"{path!r}: a path is 1 to {MAX_PATH_CHARS} characters")
    segments = path.split(".")
    if len(segments) > MAX_DEPTH:
        raise ValueError(f"{path!r}: at most {MAX_DEPTH} segments")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            raise ValueError(f"{path!r}: empty segment or a control character")
    return segments


class JsonFilter:
    """One route's ``response_json``, compiled: ``apply`` filters a parsed document."""

    def __init__(self, *, include: list[str] | None = None, exclude: list[str] | None = None):
        if (include is None) == (exclude is None):
            raise ValueError("response_json needs exactly one of include or exclude")
        paths = include if include is not None else exclude
        assert paths is not None
        if not paths or len(paths) > MAX_PATHS:
            raise ValueError(f"response_json: 1 to {MAX_PATHS} paths")
        self.include = include is not None
        self._root = _Node()
        for path in paths:
            node = self._root
            for segment in check_path(path):
                node = node.child(segment)
            node.terminal = True

    def apply(self, document: Any) -> Any:
        """The filtered document (a new one; ``document`` is not changed). ``include`` of a
        document of the wrong shape gives an empty object (or array)."""
        if self.include:
            kept = _include(document, (self._root,))
            if kept is _DROP:
                return [] if isinstance(document, list) else {}
            return kept
        out = _exclude(document, (self._root,))
        return {} if out is _DROP else out


def _matching(nodes: tuple[_Node, ...], key: str) -> tuple[_Node, ...]:
    found = []
    for node in nodes:
        for name in (key, WILDCARD):
            child = node.children.get(name)
            if child is not None:
                found.append(child)
    return tuple(found)


def _include(value: Any, nodes: tuple[_Node, ...]) -> Any:
    if any(n.terminal for n in nodes):
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            sub = _matching(nodes, key)
            if sub:
                kept = _include(item, sub)
                if kept is not _DROP:
                    out[key] = kept
        return out
    if isinstance(value, list):
        return [kept for item in value if (kept := _include(item, nodes)) is not _DROP]
    return _DROP  # a scalar where the path goes on: it holds nothing the path names


def _exclude(value: Any, nodes: tuple[_Node, ...]) -> Any:
    if any(n.terminal for n in nodes):
        return _DROP
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            sub = _matching(nodes, key)
            if not sub:
                out[key] = item
                continue
            kept = _exclude(item, sub)
            if kept is not _DROP:
                out[key] = kept
        return out
    if isinstance(value, list):
        return [_exclude(item, nodes) for item in value]
    return value
