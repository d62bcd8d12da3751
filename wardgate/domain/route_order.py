"""The global route order, and which route a request meets first (docs/ROUTING.md).

Envoy tries routes in the order it is given; wardgate gives them in the order
``route_sort_key`` defines. ``first_route`` mirrors Envoy's matching for a request that has
only a method and a path, which is what a REST binding of a transcoded gRPC method implies
(``domain/transcoding.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import re2  # type: ignore[import-untyped]

from wardgate.domain.doc_route import Route

# A route's place in the global order, smallest first.
SortKey = tuple[int, int, int, int, str]


def route_sort_key(route: Route) -> SortKey:
    """Higher ``priority`` first; then exact path, regex, prefix; longer paths first; routes
    with more conditions (methods, headers, hosts) first; then by name."""
    m = route.match
    kind = 0 if m.path is not None else (1 if m.regex is not None else 2)
    length = len(m.path or m.prefix or m.regex or "")
    conditions = bool(m.methods) + len(m.headers or {}) + bool(m.hosts)
    return (-route.priority, kind, -length, -conditions, route.name)


def matches(route: Route, method: str, path: str) -> bool:
    """Whether ``route`` takes a request with this method and path (query string removed),
    and no header or host it requires."""
    m = route.match
    if m.headers or m.hosts:
        return False
    if m.methods and method not in m.methods:
        return False
    if m.path is not None:
        return path == m.path
    if m.regex is not None:
        return bool(re2.fullmatch(m.regex, path))
    prefix = m.prefix or "/"
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def first_route(routes: Iterable[Route], method: str, path: str) -> Route | None:
    """The route Envoy would pick for this request among ``routes``, if any."""
    candidates = [r for r in routes if matches(r, method, path)]
    return min(candidates, key=route_sort_key) if candidates else None


class RouteIndex:
    """``first_route`` asked many times over one set of routes (every REST binding of every
    transcoding route), in time that grows with the path, not with the number of routes:
    exact paths and prefixes are looked up, only regex routes are scanned. ``routes`` is
    read live: a route the caller has since removed from it (refused) no longer counts."""

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self._routes = routes
        self._exact: dict[str, list[Route]] = {}
        self._prefix: dict[str, list[Route]] = {}
        self._regex: list[Route] = []
        for route in routes.values():
            m = route.match
            if m.headers or m.hosts:
                continue  # a request with only a method and a path never meets it
            if m.path is not None:
                self._exact.setdefault(m.path, []).append(route)
            elif m.regex is not None:
                self._regex.append(route)
            else:
                self._prefix.setdefault(m.prefix or "/", []).append(route)

    def first(self, method: str, path: str) -> Route | None:
        """``first_route(routes.values(), method, path)``."""
        candidates: list[Route] = [*self._exact.get(path, ()), *self._regex]
        for end in range(1, len(path) + 1):
            candidates += self._prefix.get(path[:end], ())
        live = [r for r in candidates if _present(self._routes, r) and matches(r, method, path)]
        return min(live, key=route_sort_key) if live else None


def _present(routes: Mapping[str, Route], route: Route) -> bool:
    return routes.get(route.name) is route
