"""Assembling the snapshot's resources from translated documents, incrementally.

The ``Translator`` remembers, per document, its serialized Envoy message: a change to one
route among ten thousand translates that route only. Route configurations (one per scope,
``scope_layout.py``) are assembled on the wire from each route's bytes (``wire.py``).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.route.v3 import route_components_pb2, scoped_route_pb2

from wardgate.domain.catalog import Catalog
from wardgate.domain.documents import Descriptor, Route, Service
from wardgate.domain.route_order import SortKey, route_sort_key
from wardgate.xds import canonical
from wardgate.xds.clusters import (
    build_auth_cluster,
    build_cluster,
    build_load_assignment,
    uses_eds,
)
from wardgate.xds.extproc import COMPOSE_ROUTES, compose_routes
from wardgate.xds.quota import QuotaExtensions
from wardgate.xds.routes import builtin_routes, route_entry, virtual_host_head
from wardgate.xds.scope_envoy import marker_route, scope_resources
from wardgate.xds.scope_key import Pin, pin_buckets
from wardgate.xds.scope_layout import Entry, Layout, Placed
from wardgate.xds.transcoder import TRANSCODER, transcoder_off, transcoder_resource
from wardgate.xds.translate import HTTP_CLUSTER, ROUTE_CONFIG_NAME, TranslateOptions
from wardgate.xds.wire import route_configuration, route_field, with_route_extra

HASHING_LB = ("ring_hash", "maglev")
_BUILTIN_KEY: SortKey = (-(2**62), 0, 0, 0, "")  # wardgate's own routes come first
# Routes moving between scopes stay in both placements this long before the markers switch:
# long enough for every connected Envoy to have taken the first step.
SETTLE_AFTER = 2.0


def placed_route(entry: dict[str, Any], key: SortKey) -> Placed:
    """A route ready for the scopes: where it sorts, its bytes, what its path fixes and its
    buckets."""
    m = entry["match"]
    pin = Pin.of(
        prefix=m.get("prefix", m.get("path_separated_prefix")),
        path=m.get("path"),
        regex=m.get("safe_regex", {}).get("regex"),
    )
    return Placed(Entry(key, route_field(entry)), pin, pin_buckets(pin))


class TranslationError(Exception):
    """A document that validated but could not be turned into Envoy's configuration (a
    wardgate bug, or a limit Envoy has and validation missed): the build refuses it alone."""

    def __init__(self, kind: str, name: str, reason: str) -> None:
        super().__init__(f"{kind}/{name}: {reason}")
        self.kind = kind
        self.name = name
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Base:
    """Every resource but the listener, serialized: (name, bytes) per resource."""

    cluster_bytes: list[tuple[str, bytes]]
    endpoint_bytes: list[tuple[str, bytes]]
    route_bytes: list[tuple[str, bytes]]  # one route configuration per scope
    scope_bytes: list[tuple[str, bytes]]
    route_clusters: frozenset[str]  # the clusters the routes send traffic to
    depths: dict[str, int]  # first segments keyed deeper than one segment
    # Filter configurations the listener discovers (ECDS): the transcoder's, the quota filters'.
    extension_bytes: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True)
class _TranslatedRoute:
    """A route document's translation, and what it was translated with."""

    document: Route
    hashing: bool  # a backend balances by consistent hashing (route_entry's ``hashing``)
    placed: Placed


@dataclasses.dataclass(frozen=True, slots=True)
class _Transcoding:
    """The transcoder's resource, and the descriptors and services it was built from."""

    services: frozenset[str]
    descriptors: tuple[tuple[str, Descriptor], ...]
    data: bytes

    def built_from(
        self, services: frozenset[str], descriptors: tuple[tuple[str, Descriptor], ...]
    ) -> bool:
        return (
            self.services == services
            and len(self.descriptors) == len(descriptors)
            and all(
                n == m and a is b
                for (n, a), (m, b) in zip(self.descriptors, descriptors, strict=True)
            )
        )


@dataclasses.dataclass(frozen=True, slots=True)
class _TranslatedService:
    """A service document's cluster, serialized."""

    document: Service
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class _ServiceResources:
    """The clusters and endpoints last built, and what they were built from."""

    services: dict[str, Service]
    instances: dict[str, list[tuple[str, int, int]]]
    cluster_bytes: list[tuple[str, bytes]]
    endpoint_bytes: list[tuple[str, bytes]]
    source: Mapping[str, Service]  # the catalog's table (a patched catalog shares it)

    def built_from(
        self, services: Mapping[str, Service], instances: Mapping[str, list[tuple[str, int, int]]]
    ) -> bool:
        """Whether these are the same service documents and the same registry instances."""
        if self.instances != instances:
            return False
        if services is self.source:  # services are never changed in place
            return True
        return self.services.keys() == services.keys() and all(
            self.services[n] is s for n, s in services.items()
        )


@dataclasses.dataclass(frozen=True)
class _Featured:
    """The routes the layout holds that use a feature with resources of its own (the
    transcoder's, the compose listener's, the quota filters'), kept up to date route by
    route so that a change costs what changed, not a pass over every route."""

    transcoding: dict[str, bytes] = dataclasses.field(default_factory=dict)  # placed bytes
    transcoding_routes: dict[str, Route] = dataclasses.field(default_factory=dict)
    compose: dict[str, Route] = dataclasses.field(default_factory=dict)
    quota: dict[str, Route] = dataclasses.field(default_factory=dict)

    def updated(
        self, removed: Iterable[str], routes: Mapping[str, Route], placed: Mapping[str, Placed]
    ) -> _Featured:
        """These sets after ``removed`` left and ``routes`` (placed as ``placed``) came."""
        new = _Featured(
            dict(self.transcoding),
            dict(self.transcoding_routes),
            dict(self.compose),
            dict(self.quota),
        )
        for n in removed:
            for table in (new.transcoding, new.transcoding_routes, new.compose, new.quota):
                table.pop(n, None)
        for n, route in routes.items():
            if route.transcode is not None:
                new.transcoding[n] = placed[n].entry.data
                new.transcoding_routes[n] = route
            if route.compose is not None:
                new.compose[n] = route
            if any(r.enforce == "quota" for r in route.rate_limits):
                new.quota[n] = route
        return new


class Translator:
    """Translates documents, remembering each one's serialized result.

    Documents are remembered by identity (the watcher's parse memo hands out the same object
    for the same stored text), holding a reference so that an identity is never reused."""

    def __init__(self, opts: TranslateOptions, *, max_cached: int = 200_000) -> None:
        self.opts = opts
        # Memories by id() of the document (each holding it, so that the id is not reused).
        self._routes: dict[int, _TranslatedRoute] = {}
        self._clusters: dict[int, _TranslatedService] = {}
        self._endpoints: dict[tuple[str, tuple[tuple[str, int, int], ...]], bytes] = {}
        self._max = max_cached
        # wardgate's own routes: first in the order, named so no document can clash.
        self._builtin = {
            f"\0{e['name']}": placed_route(e, (_BUILTIN_KEY[0], i, 0, 0, e["name"]))
            for i, e in enumerate(builtin_routes(opts))
        }
        self._layout: Layout | None = None
        # The routes laid out (this table is the translator's own: a catalog's may be changed
        # in place, ``Catalog.patched``), and the catalog they came from.
        self._held: dict[str, Route] = {}
        self._generation: int | None = None
        self._hashing: frozenset[str] = frozenset()
        self._uses: Counter[str] = Counter()  # service -> how many routes use it
        self._route_clusters: frozenset[str] = frozenset()  # those used by at least one
        self._hashing_of: Mapping[str, Service] | None = None  # services hashing was found in
        self._hashing_now: frozenset[str] = frozenset()
        self._featured = _Featured()
        self._services: _ServiceResources | None = None
        self._transcoding: _Transcoding | None = None
        # The compose listener's routes, and the compose routes and key they were built from.
        self._compose: tuple[tuple[Route, ...], str, bytes] | None = None
        self.compose_key = ""  # the deployment's (Stored.compose_key); "": no compose routes
        self._quota = QuotaExtensions()  # the quota filters' ECDS resources
        self._markers: dict[tuple[str, int], bytes] = {}
        self._scope_bytes = [
            (
                str(r["name"]),
                canonical.parse(r, scoped_route_pb2.ScopedRouteConfiguration()).SerializeToString(
                    deterministic=True
                ),
            )
            for r in scope_resources()
        ]
        self._auth_cluster = build_auth_cluster(opts).SerializeToString(deterministic=True)
        self._vhost_head, self._vhost_head_transcoding = (
            canonical.parse(
                virtual_host_head(transcoding=t), route_components_pb2.VirtualHost()
            ).SerializeToString(deterministic=True)
            for t in (False, True)
        )
        # The routes that transcode, as placed in the scopes; the others' bytes with the
        # transcoder turned off, for scopes that hold one of them (transcoder.py).
        self._transcoding_fields: frozenset[bytes] = frozenset()
        self._off_fields: dict[bytes, bytes] = {}
        self._off_extra = canonical.parse(
            {"typed_per_filter_config": transcoder_off()}, route_components_pb2.Route()
        ).SerializeToString(deterministic=True)
        self.translated = 0  # documents translated, not served from memory (for tests)

    def _trim(self, table: dict[Any, Any]) -> None:
        """A memory that outgrew its bound starts over; the others are kept (a registry's
        churn of endpoints must not cost every route its translation)."""
        if len(table) >= self._max:
            table.clear()

    def _route_entry(self, route: Route, hashing: bool) -> Placed:
        found = self._routes.get(id(route))
        if found is not None and found.document is route and found.hashing == hashing:
            return found.placed
        try:
            entry = route_entry(route, hashing=hashing, opts=self.opts)
            placed = placed_route(entry, route_sort_key(route))
        except Exception as exc:  # whatever it is, it is this document's: refuse it alone
            raise TranslationError("Route", route.name, f"{type(exc).__name__}: {exc}") from exc
        self.translated += 1
        self._trim(self._routes)
        self._routes[id(route)] = _TranslatedRoute(route, hashing, placed)
        return placed

    def _marker(self, segment: str, depth: int) -> bytes:
        data = self._markers.get((segment, depth))
        if data is None:
            if len(self._markers) > 10_000:
                self._markers.clear()
            data = self._markers[(segment, depth)] = route_field(marker_route(segment, depth))
        return data

    def cluster(self, svc: Service) -> bytes:
        found = self._clusters.get(id(svc))
        if found is not None and found.document is svc:
            return found.data
        try:
            data: bytes = build_cluster(svc).SerializeToString(deterministic=True)
        except Exception as exc:  # whatever it is, it is this document's: refuse it alone
            raise TranslationError("Service", svc.name, f"{type(exc).__name__}: {exc}") from exc
        self.translated += 1
        self._trim(self._clusters)
        self._clusters[id(svc)] = _TranslatedService(svc, data)
        return data

    def endpoints(self, name: str, endpoints: list[tuple[str, int, int]]) -> bytes:
        key = (name, tuple(endpoints))
        data = self._endpoints.get(key)
        if data is None:
            data = build_load_assignment(name, endpoints).SerializeToString(deterministic=True)
            self._trim(self._endpoints)
            self._endpoints[key] = data
        return data

    def _ordered(self, routes: list[Route], services: Mapping[str, Service]) -> list[Placed]:
        """wardgate's own routes, then the documents' routes in the global order."""
        hashing = {n for n, s in services.items() if s.lb in HASHING_LB}
        placed = [
            self._route_entry(r, bool(hashing) and bool(hashing & set(r.services())))
            for r in routes
        ]
        placed.sort(key=lambda p: p.entry.key)
        return [*self._builtin.values(), *placed]

    def _config(self, name: str, fields: list[bytes]) -> bytes:
        transcoding = self._transcoding_fields
        if not transcoding or not any(f in transcoding for f in fields):
            return route_configuration(name, self._vhost_head, fields)
        return route_configuration(
            name,
            self._vhost_head_transcoding,
            [f if f in transcoding else self._off(f) for f in fields],
        )

    def _off(self, field: bytes) -> bytes:
        data = self._off_fields.get(field)
        if data is None:
            if len(self._off_fields) > 10_000:
                self._off_fields.clear()
            data = self._off_fields[field] = with_route_extra(field, self._off_extra)
        return data

    def route_configuration(self, routes: list[Route], services: Mapping[str, Service]) -> bytes:
        """The whole table as one configuration, in the global order: what the scopes split
        (for tests and tools; Envoy gets ``route_configurations``)."""
        return self._config(
            ROUTE_CONFIG_NAME, [p.entry.data for p in self._ordered(routes, services)]
        )

    def _route_diff(self, catalog: Catalog) -> tuple[list[str], dict[str, Route]]:
        """The routes the layout holds that are not in ``catalog`` as the same documents, and
        those of ``catalog`` it does not hold. A catalog patched from the one laid out last
        says which may differ; otherwise every route is compared."""
        held, routes = self._held, catalog.routes
        names: Iterable[str]
        if catalog.changed is not None and catalog.patched_from == self._generation:
            names = [n for kind, n in catalog.changed if kind == "Route"]
        else:
            names = held.keys() | routes.keys()
        removed = [n for n in names if n in held and routes.get(n) is not held[n]]
        added = {n: routes[n] for n in names if n in routes and held.get(n) is not routes[n]}
        return removed, added

    def _update_layout(self, catalog: Catalog) -> Layout:
        """The scopes after this catalog: only routes that are not the same documents as last
        time move (the whole layout again when a service's balancing changes how routes
        hash)."""
        if catalog.services is not self._hashing_of:  # a patched catalog shares its services
            self._hashing_of = catalog.services
            self._hashing_now = frozenset(
                n for n, s in catalog.services.items() if s.lb in HASHING_LB
            )
        hashing = self._hashing_now
        if self._layout is None or hashing != self._hashing:
            self._layout = Layout(self._marker, self._config)
            self._layout.apply([], self._builtin)
            self._held, self._uses, self._hashing = {}, Counter(), hashing
            self._featured = _Featured()
            self._generation = None
            self._route_clusters = frozenset()
        removed, changed = self._route_diff(catalog)
        added = {
            n: self._route_entry(r, bool(hashing) and bool(hashing & set(r.services())))
            for n, r in changed.items()
        }
        # A scope whose head changes (it gains or loses a transcoding route) is rebuilt
        # because its routes change; the others keep their bytes.
        featured = self._featured.updated(removed, changed, added)
        self._transcoding_fields = frozenset(featured.transcoding.values())
        try:
            self._layout.apply(removed, added, now=time.monotonic())
        except Exception:
            self._layout = None  # half applied: built again from scratch next time
            raise
        held, touched = self._held, set()
        for n in removed:
            gone = held.pop(n)
            touched.update(gone.services())
            self._uses.subtract(gone.services())
            # Its translation goes with it: a route changed a hundred thousand times must not
            # fill the memory until it is cleared whole (every route translated again).
            found = self._routes.get(id(gone))
            if found is not None and found.document is gone:
                del self._routes[id(gone)]
        for n, route in changed.items():
            held[n] = route
            touched.update(route.services())
            self._uses.update(route.services())
        if any((self._uses[s] > 0) != (s in self._route_clusters) for s in touched):
            self._route_clusters = frozenset(n for n, c in self._uses.items() if c > 0)
        self._featured, self._generation = featured, catalog.generation
        return self._layout

    @property
    def moving(self) -> bool:
        """Whether routes are between two placements (see ``scope_layout.Layout``)."""
        return self._layout is not None and bool(self._layout.moving)

    def settle(self, base: Base, *, after: float = SETTLE_AFTER) -> Base | None:
        """``base`` with the moves started at least ``after`` seconds ago finished; None if
        none was due."""
        if self._layout is None or not self._layout.settle(now=time.monotonic(), after=after):
            return None
        compose = [c for c in base.route_bytes if c[0] == COMPOSE_ROUTES]
        return dataclasses.replace(
            base, route_bytes=[*self._layout.configs(), *compose], depths=dict(self._layout.depths)
        )

    def _cluster_resources(
        self, catalog: Catalog, instances: Mapping[str, list[tuple[str, int, int]]]
    ) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        """Clusters and endpoints; the same lists again if no service changed."""
        prev = self._services
        if prev is not None and prev.built_from(catalog.services, instances):
            return prev.cluster_bytes, prev.endpoint_bytes
        services = [s for _, s in sorted(catalog.services.items())]
        endpoint_bytes = []
        for svc in services:
            if not uses_eds(svc):
                continue
            if svc.discovery == "registry":
                eps = list(instances.get(svc.name, []))
            else:
                eps = [(e.address, e.port, e.weight) for e in svc.endpoints or []]
            endpoint_bytes.append((svc.name, self.endpoints(svc.name, eps)))
        cluster_bytes = [(HTTP_CLUSTER, self._auth_cluster)] + [
            (s.name, self.cluster(s)) for s in services
        ]
        # Only the services there are now keep their translation.
        self._clusters = {id(s): self._clusters[id(s)] for s in services if id(s) in self._clusters}
        self._services = _ServiceResources(
            dict(catalog.services), dict(instances), cluster_bytes, endpoint_bytes, catalog.services
        )
        return cluster_bytes, endpoint_bytes

    def base(self, catalog: Catalog, instances: Mapping[str, list[tuple[str, int, int]]]) -> Base:
        cluster_bytes, endpoint_bytes = self._cluster_resources(catalog, instances)
        layout = self._update_layout(catalog)
        # Moves due are finished here too: under a steady stream of changes the watcher's
        # idle wake-up (which also settles) may not come.
        layout.settle(now=time.monotonic(), after=SETTLE_AFTER)
        return Base(
            cluster_bytes=cluster_bytes,
            endpoint_bytes=endpoint_bytes,
            route_bytes=[*layout.configs(), (COMPOSE_ROUTES, self._compose_routes(catalog))],
            scope_bytes=self._scope_bytes,
            route_clusters=self._route_clusters,
            depths=dict(layout.depths),
            extension_bytes=[
                (TRANSCODER, self._transcoder(catalog)),
                *self._quota.resources(self._featured.quota.values()),
            ],
        )

    def _compose_routes(self, catalog: Catalog) -> bytes:
        """The compose listener's routes (``xds/extproc.py``); the same bytes object while the
        compose routes are the same documents."""
        routes = tuple(r for _, r in sorted(self._featured.compose.items()))
        prev, key = self._compose, self.compose_key
        if (
            prev is not None
            and prev[1] == key
            and len(prev[0]) == len(routes)
            and all(a is b for a, b in zip(prev[0], routes, strict=True))
        ):
            return prev[2]
        try:
            data = compose_routes(routes, key)
        except Exception:
            for route in routes:  # whose is it? That route is refused alone
                try:
                    compose_routes([route], key)
                except Exception as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    raise TranslationError("Route", route.name, reason) from exc
            raise
        self._compose = (routes, key, data)
        return data

    def _transcoder(self, catalog: Catalog) -> bytes:
        """The transcoder's ECDS resource: the descriptors the routes use, merged; the same
        bytes object again while those descriptors and services stay the same objects."""
        used: dict[str, set[str]] = {}
        for route in self._featured.transcoding_routes.values():
            if route.transcode is not None:
                used.setdefault(route.transcode.descriptor, set()).update(route.transcode.services)
        descriptors = tuple((n, catalog.descriptors[n]) for n in sorted(used))
        services = frozenset(s for names in used.values() for s in names)
        prev = self._transcoding
        if prev is not None and prev.built_from(services, descriptors):
            return prev.data
        data = transcoder_resource([d.api for _, d in descriptors], services)
        self._transcoding = _Transcoding(services, descriptors, data)
        return data


def build_base(
    catalog: Catalog,
    opts: TranslateOptions,
    instances: Mapping[str, list[tuple[str, int, int]]] | None = None,
    *,
    translator: Translator | None = None,
) -> Base:
    """Every resource but the listener. ``instances`` are the live endpoints of the
    ``discovery: registry`` services; a long-lived ``translator`` makes it incremental."""
    return (translator or Translator(opts)).base(catalog, instances or {})
