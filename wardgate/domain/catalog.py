"""The set of documents as a whole: what is valid, what is refused, what a change would do."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from wardgate.domain import jsontext
from wardgate.domain.documents import (
    Descriptor,
    Document,
    Issuer,
    Route,
    Secret,
    Service,
    check_references,
    parse_clean_json,
    parse_document,
    printable,
    shown,
    to_json_dict,
)
from wardgate.domain.route_order import RouteIndex, matches
from wardgate.domain.transcoding import (
    TRANSCODER_PROBLEM,
    TranscoderSet,
    binding_problem,
    reference_problem,
)
from wardgate.errors import DocumentError, ReferenceError_

# What routes use comes before them: issuers, descriptors and services, then routes.
KIND_ORDER = ("Secret", "Issuer", "Descriptor", "Service", "Route")
# The documents as stored: kind -> name -> the JSON text.
RawDocuments = dict[str, dict[str, str]]
_GENERATIONS = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class Catalog:
    routes: dict[str, Route]
    services: dict[str, Service]
    refused: dict[str, str]  # "Kind/name" -> reason
    issuers: dict[str, Issuer] = dataclasses.field(default_factory=dict)
    descriptors: dict[str, Descriptor] = dataclasses.field(default_factory=dict)
    secrets: dict[str, Secret] = dataclasses.field(default_factory=dict)  # TLS, over SDS

    # For each served document, the JSON it was served from (the last good version).
    served: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    # Set by ``patched``: the only documents whose served version may differ from the
    # catalog it was patched from (None: any may), and that catalog's ``generation``.
    changed: frozenset[tuple[str, str]] | None = None
    patched_from: int | None = dataclasses.field(default=None, repr=False, compare=False)
    # This catalog among all made in this process (``patched_from`` names one).
    generation: int = dataclasses.field(
        default_factory=lambda: next(_GENERATIONS), init=False, repr=False, compare=False
    )
    # Indexes computed once per catalog (``transcoding_routes``); a patched catalog gets
    # them patched.
    _index: dict[str, Any] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def transcoding_routes(self) -> dict[str, Route]:
        """The routes that transcode, by name."""
        found: dict[str, Route] | None = self._index.get("transcoding")
        if found is None:
            found = {n: r for n, r in self.routes.items() if r.transcode is not None}
            self._index["transcoding"] = found
        return found

    @classmethod
    def from_raw(
        cls,
        raw: Mapping[str, Mapping[str, str]],
        last_good: Mapping[str, Mapping[str, str]] | None = None,
        *,
        memo: ParseMemo | None = None,
        services: Mapping[str, Service] | None = None,
        descriptors: Mapping[str, Descriptor] | None = None,
    ) -> Catalog:
        """Parse what Redis holds; a document that fails is refused on its own, with a reason.

        With ``last_good`` (what was served before), a refused document that has a last good
        version keeps being served in that version: a bad raw write never takes a working
        route off the gateway. ``services`` (and ``descriptors``): already parsed (raw
        services, descriptors and issuers are then not read).
        """
        work = _Parse(raw, last_good or {}, memo or _NO_MEMO)
        if services is not None:
            work.parsed["Service"] = dict(services)
            work.parsed["Descriptor"] = dict(descriptors or {})
        for kind in KIND_ORDER if services is None else ("Route",):
            work.parse_kind(kind)
        work.keep_deleted_services()
        routes = work.checked_routes()
        if services is None:
            work.refuse_unreachable_bindings(routes)
            work.refuse_differing_shared_keys(routes)
        return cls(
            routes=routes,
            services=work.parsed["Service"],
            refused=work.refused,
            served=work.served,
            issuers=work.parsed["Issuer"],
            descriptors=work.parsed["Descriptor"],
            secrets=work.parsed["Secret"],
        )

    @classmethod
    def updated(
        cls,
        previous: Catalog,
        previous_raw: Mapping[str, Mapping[str, str]],
        raw: Mapping[str, Mapping[str, str]],
        last_good: Mapping[str, Mapping[str, str]] | None = None,
        *,
        memo: ParseMemo | None = None,
        limit: int = 200,
    ) -> Catalog | None:
        """``from_raw(raw, last_good)`` computed from ``previous`` (``from_raw`` of
        ``previous_raw``) when only a few routes changed: the changed routes are checked
        against the services, the others kept as they were. None when that would not give
        the same answer (services or issuers changed, a service is being kept for the routes
        using it, too many changes): call ``from_raw``."""
        if any(
            raw.get(k, {}) != previous_raw.get(k, {})
            for k in ("Service", "Issuer", "Descriptor", "Secret")
        ):
            return None
        old, new = previous_raw.get("Route", {}), raw.get("Route", {})
        changed = {n for n, text in new.items() if old.get(n) != text}
        changed.update(n for n in old if n not in new)
        if len(changed) > limit:
            return None
        return cls.patched(previous, {n: new.get(n) for n in changed}, last_good, memo=memo)

    @classmethod
    def patched(
        cls,
        previous: Catalog,
        routes: Mapping[str, str | None],
        last_good: Mapping[str, Mapping[str, str]] | None = None,
        *,
        memo: ParseMemo | None = None,
        in_place: bool = False,
    ) -> Catalog | None:
        """``previous`` with the stored ``routes`` (name -> text, None: deleted) changed,
        as ``from_raw`` would give it, or None when only ``from_raw`` can say (see
        ``updated``). ``in_place``: ``previous``'s tables are changed and shared with the
        result, instead of copied (a copy of a hundred thousand routes costs tens of
        milliseconds); ``previous`` must not be used again, the result may be None even
        then (call ``from_raw``)."""
        if any(k.startswith(("Service/", "Descriptor/")) for k in previous.refused):
            return None
        if any(_BINDING in v for v in previous.refused.values()):
            return None  # a route that took a binding may be gone: check every route again
        changed = set(routes)
        part = cls.from_raw(
            {"Route": {n: text for n, text in routes.items() if text is not None}},
            last_good,
            memo=memo,
            services=previous.services,
            descriptors=previous.descriptors,
        )
        if any(k.startswith(("Service/", "Descriptor/")) for k in part.refused):
            return None  # a changed route keeps a deleted one alive: others may use it
        transcoding = previous.transcoding_routes()
        if _touches_transcoding(
            previous.routes, transcoding, part.routes, changed, previous.descriptors
        ):
            return None  # bindings may reach other routes now: check them all
        if any(
            rule.key
            for route in (*part.routes.values(), *(previous.routes.get(n) for n in changed))
            if route is not None
            for rule in route.rate_limits
        ):
            return None  # a shared counter's rules must agree across routes: check them all
        changed_keys = {printable(n) for n in changed}
        table = previous.routes if in_place else dict(previous.routes)
        served = previous.served if in_place else dict(previous.served)
        for n in changed:
            table.pop(n, None)
            served.pop(("Route", n), None)
        table.update(part.routes)
        served.update(part.served)
        refused = {
            k: v
            for k, v in previous.refused.items()
            if not k.startswith("Route/") or k[len("Route/") :] not in changed_keys
        }
        refused.update(part.refused)
        result = cls(
            routes=table,
            services=previous.services,
            refused=refused,
            served=served,
            issuers=previous.issuers,
            descriptors=previous.descriptors,
            secrets=previous.secrets,
            changed=frozenset(("Route", n) for n in changed),
            patched_from=previous.generation,
        )
        # No changed route transcodes, before or now (_touches_transcoding): the same ones do.
        result._index["transcoding"] = transcoding
        return result


class _Parse:
    """One ``Catalog.from_raw`` in steps: what is parsed, served and refused so far."""

    def __init__(
        self,
        raw: Mapping[str, Mapping[str, str]],
        last_good: Mapping[str, Mapping[str, str]],
        memo: ParseMemo,
    ) -> None:
        self.raw = raw
        self.last_good = last_good
        self.memo = memo
        self.parsed: dict[str, dict[str, Any]] = {kind: {} for kind in KIND_ORDER}
        self.served: dict[tuple[str, str], str] = {}
        self.refused: dict[str, str] = {}

    def parse_kind(self, kind: str) -> None:
        """Every stored document of ``kind``; one that fails is refused and, if it has a
        different last good version, served in that one."""
        for name, text in sorted(self.raw.get(kind, {}).items()):
            try:
                self.parsed[kind][name] = self.memo.parse(kind, name, text)
                self.served[(kind, name)] = text
                continue
            except DocumentError as exc:
                key = f"{kind}/{printable(name)}"  # a raw HSET's field name may hold CR/LF
                self.refused[key] = exc.reason
            previous = self.last_good.get(kind, {}).get(name)
            if previous is not None and previous != text:
                with contextlib.suppress(DocumentError):
                    self.parsed[kind][name] = self.memo.parse(kind, name, previous)
                    self.served[(kind, name)] = previous
                    self.refused[key] += " (still serving the last good version)"

    def keep_deleted_services(self) -> None:
        """A service or descriptor deleted (raw HDEL) while routes use it is refused like the
        CLI would: it keeps being served in its last good version, for the routes that use
        it."""
        for route in self.parsed["Route"].values():
            used = [("Service", svc) for svc in route.services()]
            if route.transcode is not None:
                used.append(("Descriptor", route.transcode.descriptor))
            for kind, name in used:
                known = self.parsed[kind]
                prev = self.last_good.get(kind, {}).get(name)
                if name in known or prev is None:
                    continue
                with contextlib.suppress(DocumentError):
                    known[name] = self.memo.parse(kind, name, prev)
                    self.served[(kind, name)] = prev
                    self.refused[f"{kind}/{name}"] = (
                        f"deleted while route {route.name} uses it "
                        "(still serving the last good version)"
                    )

    def _problem(self, route: Route) -> str | None:
        known: dict[str, Service] = self.parsed["Service"]
        missing = [s for s in route.services() if s not in known]
        if missing:
            return f"backend service {', '.join(missing)} does not exist"
        return reference_problem(route, self.parsed["Descriptor"], known)

    def checked_routes(self) -> dict[str, Route]:
        """The routes whose services (and descriptor) exist; one that names a missing one is
        refused and, if its last good version names only existing ones, served in that
        version."""
        routes: dict[str, Route] = {}
        for name, route in self.parsed["Route"].items():
            reason = self._problem(route)
            if reason is None:
                routes[name] = route
                continue
            self.served.pop(("Route", name), None)
            prev = self.last_good.get("Route", {}).get(name)
            if prev is not None and prev != self.raw.get("Route", {}).get(name):
                with contextlib.suppress(DocumentError):
                    old_route = self.memo.parse("Route", name, prev)
                    assert isinstance(old_route, Route)
                    if self._problem(old_route) is None:
                        routes[name] = old_route
                        self.served[("Route", name)] = prev
                        reason += " (still serving the last good version)"
            self.refused[f"Route/{printable(name)}"] = reason
        return routes

    def refuse_unreachable_bindings(self, routes: dict[str, Route]) -> None:
        """Transcoding routes whose REST bindings would not reach them, or whose services
        cannot join the other routes' in Envoy's one transcoder (routes already served as
        they are first, then by name), are refused (``domain/transcoding.py``); ``routes`` is
        changed in place."""
        descriptors = self.parsed["Descriptor"]
        together = TranscoderSet()
        # Routes served as they are now go first: a new route cannot take an old one down.
        served = self.last_good.get("Route", {})
        current = self.raw.get("Route", {})

        def newcomer_last(item: tuple[str, Route]) -> tuple[bool, str]:
            name = item[0]
            return (served.get(name) is None or served.get(name) != current.get(name), name)

        index = RouteIndex(routes)  # reads ``routes`` live: refused ones drop out of it
        for name, route in sorted(routes.items(), key=newcomer_last):
            if route.transcode is None:
                continue
            reason = binding_problem(route, descriptors, routes, index) or together.add(
                route, descriptors
            )
            if reason is not None:
                del routes[name]
                self.served.pop(("Route", name), None)
                self.refused[f"Route/{printable(name)}"] = reason

    def refuse_differing_shared_keys(self, routes: dict[str, Route]) -> None:
        """Rules that share a counter (``key``) must count alike: the same requests, period,
        algorithm, dimensions, tiers and enforcement. A route whose rule differs from the first
        route (by name) using that key is refused; ``routes`` is changed in place."""
        first: dict[str, tuple[str, tuple[object, ...]]] = {}
        for name, route in sorted(routes.items()):
            for rule in route.rate_limits:
                if not rule.key:
                    continue
                shape = (
                    rule.requests,
                    rule.period_seconds,
                    rule.algorithm,
                    tuple(rule.dimensions),
                    tuple(sorted((rule.tiers or {}).items())),
                    rule.enforce,
                )
                owner, known = first.setdefault(rule.key, (name, shape))
                if known != shape:
                    del routes[name]
                    self.served.pop(("Route", name), None)
                    self.refused[f"Route/{printable(name)}"] = (
                        f"rate limit key {rule.key} counts differently on route {owner} "
                        "(requests, per, algorithm, by, tiers and enforce must be the same)"
                    )
                    break


_BINDING = ") is "  # in every reason binding_problem gives: "GET /x (pkg.S/M) is ..."


def _touches_transcoding(
    before: Mapping[str, Route],
    transcoding: Mapping[str, Route],
    changed_now: Mapping[str, Route],
    changed: Iterable[str],
    descriptors: Mapping[str, Descriptor],
) -> bool:
    """Whether changed routes can change which route a REST binding reaches: a transcoding
    route changed, or a changed route (as it was or is now) takes a binding's request."""
    changed_before = [before[n] for n in changed if n in before]
    touched = [*changed_now.values(), *changed_before]
    if any(r.transcode is not None for r in touched):
        return True
    samples = [
        (binding.verb, binding.sample_path())
        for route in transcoding.values()
        if route.transcode is not None and route.transcode.descriptor in descriptors
        for service in route.transcode.services
        for method in descriptors[route.transcode.descriptor].api.services.get(service, ())
        for binding in method.bindings
    ]
    return any(matches(r, verb, path) for r in touched for verb, path in samples)


class ParseMemo:
    """Remembers the parse (document or error) of each stored document's latest texts, so that
    re-reading thousands of unchanged documents costs a look-up and a string comparison each,
    not a validation. Per kind and name it keeps the two texts parsed last (a refused document
    and its last good version are both read on every pass), each as its latest copy, so that
    a re-read of the store does not keep the previous read's strings alive."""

    def __init__(self, *, max_entries: int = 200_000) -> None:
        self._kinds: dict[str, _Parses] = {}
        self._entries = 0
        self._max = max_entries

    def parse(self, kind: str, name: str, text: str) -> Document:
        parses = self._kinds.get(kind)
        if parses is None:
            parses = self._kinds[kind] = _Parses()
        found = parses.get(name, text)
        if found is None:
            try:
                found = parse_stored(kind, name, text)
            except DocumentError as exc:
                found = exc.reason
            if name not in parses.text:
                if self._entries >= self._max:
                    self._kinds.clear()
                    self._entries = 0
                    parses = self._kinds[kind] = _Parses()
                self._entries += 1
            parses.put(name, text, found)
        if isinstance(found, str):
            raise DocumentError(found, kind=kind, name=name)
        return found


class _Parses:
    """The parses of one kind's documents: the latest text of each name and its parse in two
    flat dictionaries (no object per document for the garbage collector to visit), the one
    before in a third."""

    def __init__(self) -> None:
        self.text: dict[str, str] = {}
        self.found: dict[str, Document | str] = {}
        self.older: dict[str, tuple[str, Document | str]] = {}

    def get(self, name: str, text: str) -> Document | str | None:
        """The parse of ``text`` if it is one of the two parsed last; it becomes the latest."""
        latest = self.text.get(name)
        if latest is None:
            return None
        if latest == text:
            if latest is not text:
                self.text[name] = text  # the latest copy: the older one may be freed
            return self.found[name]
        older = self.older.get(name)
        if older is None or older[0] != text:
            return None
        self.put(name, text, older[1])
        return older[1]

    def put(self, name: str, text: str, found: Document | str) -> None:
        latest = self.text.get(name)
        if latest is not None:
            self.older[name] = (latest, self.found[name])
        self.text[name] = text
        self.found[name] = found


class _NoMemo(ParseMemo):
    def parse(self, kind: str, name: str, text: str) -> Document:
        return parse_stored(kind, name, text)


_NO_MEMO = _NoMemo()


def parse_stored(kind: str, name: str, text: str) -> Document:
    """A document as stored in Redis under ``name``; ``DocumentError`` says why not."""
    try:
        text.encode("utf-8")  # bytes that were not UTF-8 are kept as surrogate escapes
    except UnicodeEncodeError as exc:
        raise DocumentError(
            f"the stored value is not UTF-8 text (bad byte at offset {exc.start})",
            kind=kind,
            name=name,
        ) from None
    doc = parse_clean_json(text, kind=kind)
    if doc is not None and doc.name == name:
        return doc
    try:
        data = jsontext.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(
            f"not valid JSON: {exc.msg} at {exc.pos}", kind=kind, name=name
        ) from None
    except ValueError as exc:
        raise DocumentError(f"not valid JSON: {exc}", kind=kind, name=name) from None
    doc = parse_document(data, expect_kind=kind, source=text)
    if doc.name != name:
        raise DocumentError(
            f"stored under field {shown(name)} but named '{doc.name}'",
            kind=kind,
            name=printable(name),
        )
    return doc


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: str  # created | configured | unchanged | deleted
    value: str | None  # the JSON to store; None for a delete
    before: str | None = None  # the JSON stored now (None: nothing)

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name} {self.action}"


def canonical_json(doc: Document) -> str:
    return json.dumps(to_json_dict(doc), sort_keys=True, separators=(",", ":"))


def plan_apply(
    current: Mapping[str, Mapping[str, str]], documents: Iterable[Document]
) -> list[Change]:
    """What applying ``documents`` would change; raises ``DocumentError`` if the result is invalid.

    All or nothing: the whole resulting set must be consistent (every route's services exist
    after the change). Documents already stored but invalid are left as they are.
    """
    changes: list[Change] = []
    seen: set[tuple[str, str]] = set()
    for doc in documents:
        if (doc.kind, doc.name) in seen:
            raise DocumentError("appears twice in the input", kind=doc.kind, name=doc.name)
        seen.add((doc.kind, doc.name))
        value = canonical_json(doc)
        old = current.get(doc.kind, {}).get(doc.name)
        action = "created" if old is None else ("unchanged" if _same(old, value) else "configured")
        changes.append(Change(doc.kind, doc.name, action, value, old))
    _check_result(current, changes)
    return sorted(changes, key=lambda c: (KIND_ORDER.index(c.kind), c.name))


def plan_delete(current: Mapping[str, Mapping[str, str]], kind: str, name: str) -> Change:
    if name not in current.get(kind, {}):
        raise DocumentError("not found", kind=kind, name=name)
    change = Change(kind, name, "deleted", None, current[kind][name])
    _check_result(current, [change])
    return change


def _same(old: str, new: str) -> bool:
    try:
        return bool(json.loads(old) == json.loads(new))
    except json.JSONDecodeError:
        return False


def _check_result(current: Mapping[str, Mapping[str, str]], changes: list[Change]) -> None:
    """Refuse ``changes`` when the documents after them would refuse a route because of them:
    a changed route naming what does not exist, or a route that worked before and would not
    after (its service or descriptor deleted, one of its REST bindings taken)."""
    after = {kind: dict(current.get(kind, {})) for kind in KIND_ORDER}
    for c in changes:
        if c.value is None:
            after[c.kind].pop(c.name, None)
        else:
            after[c.kind][c.name] = c.value
    catalog = Catalog.from_raw(after)
    touched = {(c.kind, c.name) for c in changes}
    before: Catalog | None = None
    for key, reason in sorted(catalog.refused.items()):
        kind, name = key.split("/", 1)
        if kind != "Route" or not _is_reference_problem(reason):
            continue
        if (kind, name) in touched:
            raise ReferenceError_(reason, kind=kind, name=name)
        before = before or Catalog.from_raw(current)
        if name not in before.routes:
            continue  # refused already: not this change's doing
        for prefix, used_kind in (("backend service ", "Service"), ("descriptor ", "Descriptor")):
            if reason.startswith(prefix):
                used = reason.removeprefix(prefix).split(" ", 1)[0].split(",")[0]
                if (used_kind, used) in touched:
                    raise ReferenceError_(f"route {name} still uses it", kind=used_kind, name=used)
        culprit = sorted(touched, key=lambda t: (KIND_ORDER.index(t[0]), t[1]))[0]
        raise ReferenceError_(
            f"route {name} would be refused: {reason}", kind=culprit[0], name=culprit[1]
        )
    check_references(catalog.routes, catalog.services)


def _is_reference_problem(reason: str) -> bool:
    return (
        reason.startswith(
            (
                "backend service ",
                "descriptor ",
                "transcode needs gRPC backends",
                "rate limit key ",
                TRANSCODER_PROBLEM,
            )
        )
        or _BINDING in reason
    )


def plan_restore(
    current: Mapping[str, Mapping[str, str]], targets: Mapping[tuple[str, str], str | None]
) -> list[Change]:
    """Changes that bring each (kind, name) in ``targets`` to its value (None: absent).

    Used by rollback; the result is validated like any apply (all or nothing).
    """
    changes: list[Change] = []
    for (kind, name), value in sorted(targets.items()):
        old = current.get(kind, {}).get(name)
        if value is None:
            if old is not None:
                changes.append(Change(kind, name, "deleted", None, old))
            continue
        try:
            doc = parse_document(json.loads(value), expect_kind=kind)
        except (json.JSONDecodeError, DocumentError) as exc:
            raise DocumentError(f"cannot restore: {exc}", kind=kind, name=name) from None
        new = canonical_json(doc)
        action = "created" if old is None else ("unchanged" if _same(old, new) else "configured")
        changes.append(Change(kind, name, action, new, old))
    _check_result(current, changes)
    return sorted(changes, key=lambda c: (KIND_ORDER.index(c.kind), c.name))
