"""The build: stored documents in, a snapshot out. No Redis, no waiting.

``SnapshotBuilder`` parses the stored documents into a ``Catalog`` (refusing bad ones, falling
back to their last good versions), translates it into Envoy resources and packs them into a
``Snapshot``. It remembers what it built, so the next build costs what changed: parses are
memoized by stored text, a catalog is patched when only a few routes changed, and translated
resources keep their bytes (and so their version) while their documents are the same objects.

``LastGood`` keeps what was served per document, as the store does, and says what differs
after a build, so only differences are written back.

The watcher (``watcher.py``) does the reading and the waiting and calls these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from wardgate.domain.catalog import Catalog, ParseMemo, RawDocuments
from wardgate.domain.documents import Route, Secret, Service
from wardgate.domain.registry import Instance
from wardgate.domain.transcoding import reference_problem
from wardgate.errors import DocumentError
from wardgate.xds.assemble import Base, TranslationError, Translator
from wardgate.xds.listener_secrets import secret_bytes
from wardgate.xds.snapshot import Resources, Snapshot, resources_from_bytes
from wardgate.xds.translate import TranslateOptions
from wardgate.xds.typeurls import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_EXTENSION_CONFIG,
    TYPE_ROUTE,
    TYPE_SCOPED_ROUTE,
    TYPE_SECRET,
)

Endpoints = dict[str, list[tuple[str, int, int]]]  # service -> (address, port, weight)
MAX_UNTRANSLATABLE = 100  # documents one build refuses before giving up
PATCH_LIMIT = 200  # changed routes a catalog is patched with at most; more: parsed whole


@dataclasses.dataclass(frozen=True)
class LastGoodDiff:
    """What to record after a build: documents served in a new version, and no longer."""

    changed: dict[tuple[str, str], str]
    gone: list[tuple[str, str]]

    def __bool__(self) -> bool:
        return bool(self.changed or self.gone)


class LastGood:
    """The version of each document last served (kind -> name -> text)."""

    def __init__(self, documents: RawDocuments) -> None:
        self.documents = documents

    def diff(self, catalog: Catalog) -> LastGoodDiff:
        """What ``catalog`` serves that differs from what was served. A patched catalog says
        which documents may differ; otherwise every one is compared."""
        before_all = self.documents
        keys: Iterable[tuple[str, str]]
        if catalog.changed is not None:
            keys = catalog.changed
        else:
            keys = set(catalog.served) | {(k, n) for k, names in before_all.items() for n in names}
        changed: dict[tuple[str, str], str] = {}
        gone: list[tuple[str, str]] = []
        for kind, name in keys:
            text = catalog.served.get((kind, name))
            before = before_all.get(kind, {}).get(name)
            if text is None and before is not None:
                gone.append((kind, name))
            elif text is not None and text != before:
                changed[(kind, name)] = text
        return LastGoodDiff(changed, gone)

    def apply(self, diff: LastGoodDiff) -> None:
        for (kind, name), text in diff.changed.items():
            self.documents.setdefault(kind, {})[name] = text
        for kind, name in diff.gone:
            del self.documents[kind][name]


def registry_services(catalog: Catalog) -> list[str]:
    """The services whose endpoints come from registry heartbeats."""
    return sorted(n for n, svc in catalog.services.items() if svc.discovery == "registry")


@dataclasses.dataclass(frozen=True)
class Parsed:
    """Stored documents and the catalog parsed from them, ready to build."""

    documents: RawDocuments
    catalog: Catalog
    last_good: RawDocuments = dataclasses.field(default_factory=dict)

    @property
    def registry_services(self) -> list[str]:
        return registry_services(self.catalog)

    def without(self, error: TranslationError, memo: ParseMemo, *, last_good_too: bool) -> Parsed:
        """This catalog with the document that could not be translated refused: served in its
        last good version if it has one (and ``last_good_too``), else left out, with the
        routes that need it when it is a service."""
        kind, name = error.kind, error.name
        routes, services = dict(self.catalog.routes), dict(self.catalog.services)
        refused, served = dict(self.catalog.refused), dict(self.catalog.served)
        reason = f"cannot be translated for Envoy: {error.reason}"
        table: dict[str, Any] = routes if kind == "Route" else services
        previous = self.last_good.get(kind, {}).get(name)
        if last_good_too and previous is not None and previous != served.get((kind, name)):
            try:
                doc = memo.parse(kind, name, previous)
            except DocumentError:
                doc = None
            # A route's last good version, as in ``Catalog.from_raw``, only while what it
            # uses is there: else it routes to a cluster that is gone, or transcodes with a
            # descriptor that is gone (which fails every build).
            if doc is not None and not (
                isinstance(doc, Route)
                and (
                    any(s not in services for s in doc.services())
                    or reference_problem(doc, self.catalog.descriptors, services) is not None
                )
            ):
                table[name] = doc
                served[(kind, name)] = previous
                refused[f"{kind}/{name}"] = reason + " (still serving the last good version)"
                return self._with(routes, services, refused, served)
        table.pop(name, None)
        served.pop((kind, name), None)
        refused[f"{kind}/{name}"] = reason
        if kind == "Service":
            for route_name, route in list(routes.items()):
                if name in route.services():
                    del routes[route_name]
                    served.pop(("Route", route_name), None)
                    refused[f"Route/{route_name}"] = f"backend service {name} {reason}"
        return self._with(routes, services, refused, served)

    def _with(
        self,
        routes: dict[str, Route],
        services: dict[str, Service],
        refused: dict[str, str],
        served: dict[tuple[str, str], str],
    ) -> Parsed:
        catalog = dataclasses.replace(
            self.catalog,
            routes=routes,
            services=services,
            refused=refused,
            served=served,
            changed=None,
            patched_from=None,
        )
        return dataclasses.replace(self, catalog=catalog)


def _endpoints_of(live: Mapping[str, list[Instance]]) -> Endpoints:
    return {name: [(i.address, i.port, i.weight) for i in ins] for name, ins in live.items()}


class SnapshotBuilder:
    """Builds snapshots from stored documents, incrementally. Holds no connection: every
    input is an argument, every output a return value."""

    def __init__(self, options: TranslateOptions) -> None:
        self._translator = Translator(options)
        self._memo = ParseMemo()
        self._documents: RawDocuments | None = None  # what the catalog was parsed from
        # A parse changed the documents (and maybe the catalog) in place and no build has
        # succeeded since: they are not what was built, nothing is patched from them.
        self._pending = False
        self._catalog: Catalog | None = None
        self._base: Base | None = None
        self._instances: dict[str, list[Instance]] = {}
        self._revision = 0
        self._resources: dict[str, Resources] = {}
        self._sources: dict[str, list[tuple[str, bytes]]] = {}  # what they were made from
        self._secrets: dict[str, tuple[Secret, bytes]] = {}

    @property
    def catalog(self) -> Catalog | None:
        return self._catalog

    @property
    def registry_services(self) -> list[str]:
        return registry_services(self._catalog) if self._catalog is not None else []

    @property
    def moving(self) -> bool:
        """Whether routes sit in two placements, to be settled (``settle``) shortly."""
        return self._translator.moving

    def is_current(self, documents: RawDocuments, compose_key: str = "") -> bool:
        """Whether the last build was made from exactly these documents (and compose key)."""
        return (
            self._base is not None
            and not self._pending
            and documents == self._documents
            and compose_key == self._translator.compose_key
        )

    def is_current_with(
        self, changes: Mapping[tuple[str, str], str | None], compose_key: str = ""
    ) -> bool:
        """Whether the last build already has these documents as they are now (kind, name
        -> text; None: none)."""
        if self._base is None or self._pending or self._documents is None:
            return False
        documents = self._documents
        return compose_key == self._translator.compose_key and all(
            documents.get(kind, {}).get(name) == text for (kind, name), text in changes.items()
        )

    @property
    def documents(self) -> Mapping[str, Mapping[str, str]] | None:
        """The documents as last parsed (changes by name written in): for comparing with
        the store. Not to be changed."""
        return self._documents

    @property
    def can_take_changes(self) -> bool:
        """Whether ``parse_changes`` can be used: there is a build to start from."""
        return self._base is not None and self._documents is not None

    def parse(
        self, documents: RawDocuments, last_good: RawDocuments, *, incremental: bool = True
    ) -> Parsed:
        """The catalog of ``documents``: patched from the last one built when only a few
        routes changed and ``incremental``, else parsed whole. The builder keeps
        ``documents`` (``parse_changes`` changes them)."""
        catalog = None
        if (
            incremental
            and self._catalog is not None
            and self._documents is not None
            and not self._pending
        ):
            catalog = Catalog.updated(
                self._catalog, self._documents, documents, last_good, memo=self._memo
            )
        if catalog is None:
            catalog = Catalog.from_raw(documents, last_good, memo=self._memo)
        return Parsed(documents, catalog, last_good)

    def parse_changes(
        self, changes: Mapping[tuple[str, str], str | None], last_good: RawDocuments
    ) -> Parsed:
        """The catalog of the last build's documents with ``changes`` (kind, name -> text;
        None: deleted) in them. The documents and, when only a few routes changed, the last
        catalog are changed in place, not copied: with a hundred thousand routes a copy
        costs more than the change. Until a build succeeds, nothing is patched from them."""
        documents = self._documents
        assert documents is not None, "parse_changes needs a build to start from"
        differing = {
            (kind, name): text
            for (kind, name), text in changes.items()
            if documents.get(kind, {}).get(name) != text
        }
        for (kind, name), text in differing.items():
            table = documents.setdefault(kind, {})
            if text is None:
                table.pop(name, None)
            else:
                table[name] = text
        catalog = None
        if (
            self._catalog is not None
            and not self._pending
            and len(differing) <= PATCH_LIMIT
            and all(kind == "Route" for kind, _ in differing)
        ):
            routes = {name: text for (_, name), text in differing.items()}
            catalog = Catalog.patched(
                self._catalog, routes, last_good, memo=self._memo, in_place=True
            )
        self._pending = True  # the documents (and maybe the catalog) are ahead of the build
        if catalog is None:
            catalog = Catalog.from_raw(documents, last_good, memo=self._memo)
        return Parsed(documents, catalog, last_good)

    def build(
        self,
        parsed: Parsed,
        instances: Mapping[str, list[Instance]],
        *,
        revision: int,
        compose_key: str = "",
    ) -> Snapshot:
        """The snapshot serving ``parsed``, with ``instances`` as the endpoints of its
        registry services. A document that cannot be translated is refused alone (its last
        good version served if that translates). Only a build that succeeds becomes the base
        of the next; ``catalog`` is then what it serves."""
        failed: set[tuple[str, str]] = set()
        self._translator.compose_key = compose_key
        while True:
            try:
                base = self._translator.base(parsed.catalog, _endpoints_of(instances))
                break
            except TranslationError as exc:
                if len(failed) > MAX_UNTRANSLATABLE:
                    raise
                key = (exc.kind, exc.name)
                parsed = parsed.without(exc, self._memo, last_good_too=key not in failed)
                failed.add(key)
        self._base, self._catalog, self._documents = base, parsed.catalog, parsed.documents
        self._pending = False
        self._instances = dict(instances)
        self._revision = revision
        return self._snapshot()

    def with_instances(self, instances: Mapping[str, list[Instance]]) -> Snapshot | None:
        """The last snapshot with new registry endpoints; None if they did not change."""
        if self._base is None or dict(instances) == self._instances:
            return None
        self._instances = dict(instances)
        endpoints = _endpoints_of(self._instances)
        registry = set(self.registry_services)
        self._base = dataclasses.replace(
            self._base,
            endpoint_bytes=[
                (name, self._translator.endpoints(name, endpoints.get(name, [])))
                if name in registry
                else (name, data)
                for name, data in self._base.endpoint_bytes
            ],
        )
        return self._snapshot()

    def settle(self) -> Snapshot | None:
        """The last snapshot with the route moves that are due finished; None if none was."""
        if self._base is None:
            return None
        settled = self._translator.settle(self._base)
        if settled is None:
            return None
        self._base = settled
        return self._snapshot()

    def _secret_bytes(self) -> list[tuple[str, bytes]]:
        """The Secret documents as SDS resources (an Envoy gets one only by asking for it by
        name); a document's bytes are kept while it is the same object."""
        secrets = self._catalog.secrets if self._catalog is not None else {}
        memo: dict[str, tuple[Secret, bytes]] = {}
        for name, doc in secrets.items():
            known = self._secrets.get(name)
            if known is None or known[0] is not doc:
                known = (doc, secret_bytes(name, doc.certificate_pem, doc.private_key_pem))
            memo[name] = known
        self._secrets = memo
        return [(name, data) for name, (_doc, data) in memo.items()]

    def _snapshot(self) -> Snapshot:
        assert self._base is not None
        base, before, sources = self._base, self._resources, self._sources
        self._sources = {
            TYPE_CLUSTER: base.cluster_bytes,
            TYPE_ENDPOINT: base.endpoint_bytes,
            TYPE_SCOPED_ROUTE: base.scope_bytes,
            TYPE_ROUTE: base.route_bytes,
            TYPE_EXTENSION_CONFIG: base.extension_bytes,
            TYPE_SECRET: self._secret_bytes(),
        }
        # A list that is the same object as last time (the clusters and endpoints while no
        # service changed) gives the same resources: ten thousand of them are not looked at.
        self._resources = {
            t: before[t]
            if t in before and sources.get(t) is items
            else resources_from_bytes(t, items, before.get(t))
            for t, items in self._sources.items()
        }
        return Snapshot(
            dict(self._resources), revision=self._revision, route_clusters=base.route_clusters
        )
