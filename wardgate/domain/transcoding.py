"""What a route with ``transcode`` needs from the other documents (docs/TRANSCODING.md).

- its Descriptor exists and defines the services it names;
- its backends speak gRPC (``protocol: grpc``);
- the REST bindings of those services (their ``google.api.http`` options) reach it: for each
  binding, the route Envoy would pick for a request with that method and path (``{name}``
  filled in) is this one. A binding outside the route's match, or taken by a route earlier in
  the global order, would never be transcoded: the route is refused with the binding named.
  Methods without a binding are reachable as ``POST /package.Service/Method`` where the
  route's match covers that path; nothing is refused for them.
"""

from __future__ import annotations

from collections.abc import Mapping

from wardgate.domain.doc_descriptor import Descriptor
from wardgate.domain.doc_route import Route
from wardgate.domain.doc_service import Service
from wardgate.domain.route_order import first_route, matches


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
    route: Route, descriptors: Mapping[str, Descriptor], routes: Mapping[str, Route]
) -> str | None:
    """Why a REST binding of ``route``'s services would not reach it, or None."""
    t = route.transcode
    if t is None or t.descriptor not in descriptors:
        return None
    api = descriptors[t.descriptor].api
    for service in t.services:
        for method in api.services.get(service, ()):
            for binding in method.bindings:
                path = binding.sample_path()
                if not matches(route, binding.verb, path):
                    return (
                        f"{binding.verb} {binding.template} ({service}/{method.name}) is "
                        "outside this route's match"
                    )
                first = first_route(routes.values(), binding.verb, path)
                if first is not None and first.name != route.name:
                    return (
                        f"{binding.verb} {binding.template} ({service}/{method.name}) is "
                        f"taken by route {first.name}, earlier in the route order"
                    )
    return None
