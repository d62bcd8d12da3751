"""What a route with ``transcode`` needs from the other documents (docs/TRANSCODING.md).

- its Descriptor exists and defines the services it names;
- its backends speak gRPC (``protocol: grpc``);
- a REST binding of those services (a ``google.api.http`` option) that this route's match
  takes is not taken first by a route that does not transcode that service: for each such
  binding, the route Envoy would pick for a request with that method and path (``{name}``
  filled in) transcodes the service. Otherwise REST requests for it would reach that other
  route untranscoded: this route is refused with the binding named. Bindings outside this
  route's match are another route's business (or nobody's: then they answer 404); methods
  without a binding are reachable as ``POST /package.Service/Method`` where a transcoding
  route's match covers that path.
"""

from __future__ import annotations

from collections.abc import Mapping

from wardgate.domain.doc_descriptor import Descriptor
from wardgate.domain.doc_route import Route
from wardgate.domain.doc_service import Service
from wardgate.domain.grpc_api import GrpcApi, combined_problem
from wardgate.domain.route_order import RouteIndex, matches


def reference_problem(
    route: Route, descriptors: Mapping[str, Descriptor], services: Mapping[str, Service]
) -> str | None:
    """Why ``route``'s transcoding cannot work with these documents, or None. Reasons start
    with ``descriptor `` when a descriptor (or a service in it) is missing."""
    t = route.transcode
    if t is None:
        return None
    descriptor = descriptors.get(t.descriptor)
    if descriptor is None:
        return f"descriptor {t.descriptor} does not exist"
    missing = [s for s in t.services if s not in descriptor.api.services]
    if missing:
        return f"descriptor {t.descriptor} defines no service {', '.join(missing)}"
    not_grpc = [s for s in route.services() if s in services and services[s].protocol != "grpc"]
    if not_grpc:
        return (
            f"transcode needs gRPC backends: service {not_grpc[0]} has protocol "
            f"{services[not_grpc[0]].protocol}"
        )
    return None


def binding_problem(
    route: Route,
    descriptors: Mapping[str, Descriptor],
    routes: Mapping[str, Route],
    index: RouteIndex | None = None,
) -> str | None:
    """Why a REST binding ``route`` takes would reach a route that does not transcode it,
    or None. ``index``: ``RouteIndex(routes)``, for a caller asking about many routes (a
    descriptor may hold tens of thousands of bindings, a catalog tens of thousands of
    routes)."""
    t = route.transcode
    if t is None or t.descriptor not in descriptors:
        return None
    index = index or RouteIndex(routes)
    api = descriptors[t.descriptor].api
    for service in t.services:
        for method in api.services.get(service, ()):
            for binding in method.bindings:
                path = binding.sample_path()
                if not matches(route, binding.verb, path):
                    continue
                first = index.first(binding.verb, path)
                if first is None or _transcodes(first, service):
                    continue
                return (
                    f"{binding.verb} {binding.template} ({service}/{method.name}) is taken by "
                    f"route {first.name}, earlier in the route order, which does not transcode it"
                )
    return None


def _transcodes(route: Route, service: str) -> bool:
    return route.transcode is not None and service in route.transcode.services


TRANSCODER_PROBLEM = "transcoder: "  # how every reason TranscoderSet gives starts


class TranscoderSet:
    """The services transcoding routes have been given so far, as Envoy's one transcoder
    holds them (``xds/transcoder.py``): whatever a route adds must build with the rest."""

    def __init__(self) -> None:
        self._apis: dict[str, GrpcApi] = {}
        self._owners: dict[str, tuple[str, str]] = {}  # service: (descriptor, route)

    def add(self, route: Route, descriptors: Mapping[str, Descriptor]) -> str | None:
        """Why ``route``'s services cannot join the others, or None (they are added)."""
        t = route.transcode
        if t is None or t.descriptor not in descriptors:
            return None
        api = descriptors[t.descriptor].api
        for service in t.services:
            owner = self._owners.get(service)
            if owner is not None and owner[0] != t.descriptor:
                return (
                    f"{TRANSCODER_PROBLEM}service {service} is transcoded from descriptor "
                    f"{owner[0]} on route {owner[1]}; one service comes from one descriptor"
                )
        new = [s for s in t.services if s not in self._apis]
        if not new:
            return None
        known = any(a is api for a in self._apis.values())
        candidate = {**self._apis, **dict.fromkeys(new, api)}
        problem = combined_problem(candidate, files_checked=known)
        if problem is not None:
            return f"{TRANSCODER_PROBLEM}with the other routes' services, {problem}"
        self._apis = candidate
        self._owners.update(dict.fromkeys(new, (t.descriptor, route.name)))
        return None
