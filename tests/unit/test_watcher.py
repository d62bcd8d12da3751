"""The control plane's parts without Redis: the pure build, last good versions, the watcher
loop over an in-memory document source, and its consumers (issuers, refused report, GC)."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from wardgate.domain.documents import parse_document
from wardgate.domain.registry import Instance
from wardgate.domain.tokens import IssuerHolder
from wardgate.metrics import Metrics, create_metrics
from wardgate.wiring import ControlPlane, readiness
from wardgate.xds.bans import BanPublisher
from wardgate.xds.build import LastGood, SnapshotBuilder
from wardgate.xds.gc_policy import GcPolicy
from wardgate.xds.issuers import IssuerLoader
from wardgate.xds.listener import build_listener
from wardgate.xds.memory import MemoryDocumentSource, MemoryStatusStore
from wardgate.xds.nodes import NodeRegistry
from wardgate.xds.ports import Signal
from wardgate.xds.refused import RefusedReport
from wardgate.xds.snapshot import NodeGroup, Snapshot, SnapshotCache
from wardgate.xds.translate import TranslateOptions
from wardgate.xds.typeurls import TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER
from wardgate.xds.watcher import DocumentWatcher

OPTS = TranslateOptions()


def _svc(name: str, **extra: Any) -> str:
    doc = {"kind": "Service", "name": name, "endpoints": [{"address": "10.0.0.1", "port": 80}]}
    return json.dumps({**doc, **extra})


def _route(name: str, backend: str, prefix: str, **extra: Any) -> str:
    doc = {"kind": "Route", "name": name, "match": {"prefix": prefix}, "backend": backend}
    return json.dumps({**doc, **extra})


def _documents(routes: int = 3) -> dict[str, dict[str, str]]:
    return {
        "Issuer": {},
        "Service": {"users": _svc("users")},
        "Route": {f"r{i}": _route(f"r{i}", "users", f"/r{i}") for i in range(routes)},
    }


def _names(snapshot: Snapshot, type_url: str) -> set[str]:
    return set(snapshot.get(type_url).items)


# --- the pure build -----------------------------------------------------------------------


def test_build_turns_documents_into_a_snapshot() -> None:
    builder = SnapshotBuilder(OPTS)
    parsed = builder.parse(_documents(), {})
    snapshot = builder.build(parsed, {}, revision=7)
    assert "users" in _names(snapshot, TYPE_CLUSTER)
    assert "users" in _names(snapshot, TYPE_ENDPOINT)
    assert snapshot.revision == 7
    assert "users" in snapshot.route_clusters
    assert builder.is_current(_documents())
    assert not builder.is_current(_documents(routes=4))


def test_a_parse_that_is_not_built_does_not_become_current() -> None:
    builder = SnapshotBuilder(OPTS)
    builder.build(builder.parse(_documents(), {}), {}, revision=1)
    builder.parse(_documents(routes=5), {})  # say the build after it failed
    assert builder.is_current(_documents())
    assert not builder.is_current(_documents(routes=5))


def test_incremental_build_equals_a_fresh_one() -> None:
    warm = SnapshotBuilder(OPTS)
    warm.build(warm.parse(_documents(routes=20), {}), {}, revision=1)
    changed = _documents(routes=20)
    changed["Route"]["r3"] = _route("r3", "users", "/moved")
    del changed["Route"]["r5"]
    patched = warm.parse(changed, {})
    assert patched.catalog.changed is not None  # patched, not parsed whole
    incremental = warm.build(patched, {}, revision=2)
    cold = SnapshotBuilder(OPTS)
    fresh = cold.build(cold.parse(changed, {}), {}, revision=2)
    for type_url in fresh.resources:
        assert incremental.get(type_url).version == fresh.get(type_url).version, type_url


def _versions(snapshot: Snapshot) -> dict[str, dict[str, str]]:
    return {t: dict(r.versions) for t, r in snapshot.resources.items()}


def test_changes_by_name_in_place_give_what_a_fresh_build_gives() -> None:
    """Random changes by name (routes created, moved, broken, deleted; services changed; a
    quota rule, a compose route), each patched in place into the last build: every snapshot
    is the one a fresh builder makes of the same documents, last good versions included;
    a parse whose build never happened (a store error between them) is not patched from."""
    rng = random.Random(9)
    svc_extra = [{}, {"lb": "ring_hash"}, {"timeout": "3s"}]
    route_extra: list[dict[str, Any]] = [
        {},
        {"rate_limits": [{"by": "ip", "requests": 5, "per": "minute", "enforce": "quota"}]},
    ]
    docs = _documents(routes=30)
    docs["Service"]["other"] = _svc("other")
    last_good = LastGood({})
    warm = SnapshotBuilder(OPTS)
    first = warm.parse(copy.deepcopy(docs), last_good.documents)
    warm.build(first, {}, revision=0)
    last_good.apply(last_good.diff(warm.catalog))  # type: ignore[arg-type]
    patched = 0
    for step in range(60):
        changes: dict[tuple[str, str], str | None] = {}
        for _ in range(rng.choice((1, 1, 2, 3))):
            name = f"r{rng.randrange(40)}"
            what = rng.random()
            if what < 0.15:
                changes[("Route", name)] = None
            elif what < 0.25:
                changes[("Route", name)] = json.dumps({"kind": "Route", "name": name})  # invalid
            elif what < 0.32:
                svc = rng.choice(("users", "other"))
                changes[("Service", svc)] = _svc(svc, **rng.choice(svc_extra))
            else:
                extra = rng.choice(route_extra)
                backend = rng.choice(("users", "other", "missing"))
                changes[("Route", name)] = _route(
                    name, backend, f"/p{rng.randrange(9)}/{name}", **extra
                )
        for (kind, name), text in changes.items():
            if text is None:
                docs[kind].pop(name, None)
            else:
                docs[kind][name] = text
        parsed = warm.parse_changes(changes, last_good.documents)
        patched += parsed.catalog.patched_from is not None
        if step % 13 == 5:
            continue  # never built: the next parse must not patch from it
        got = warm.build(parsed, {}, revision=step)
        last_good.apply(last_good.diff(warm.catalog))  # type: ignore[arg-type]
        cold = SnapshotBuilder(OPTS)
        fresh = cold.build(cold.parse(copy.deepcopy(docs), last_good.documents), {}, revision=step)
        assert _versions(got) == _versions(fresh), step
        assert warm.catalog is not None and cold.catalog is not None
        assert warm.catalog.refused == cold.catalog.refused, step
        assert warm.is_current(docs)
    assert patched >= 20  # most steps were patched in place, not parsed whole


@pytest.mark.parametrize("seed", range(4))
def test_patches_with_features_and_failed_builds_give_what_a_fresh_build_gives(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, with what the test above leaves out: transcoding routes (and routes that
    take their bindings), a descriptor and a gRPC service deleted and restored, compose
    routes, shared rate-limit keys, maglev, routes that cannot be translated (served in
    their last good version, or not), builds that fail after the layout was changed, and
    full parses between the patches. Refusal reasons may differ (a route refused in its
    last good version loses that version, and a fresh parse then gives the stored one's
    reason); what is refused and what is served may not."""
    import wardgate.xds.assemble as assemble

    real_entry, real_transcoder = assemble.route_entry, assemble.Translator._transcoder
    fail_once = [False]

    def entry(route: Any, **kw: Any) -> dict[str, Any]:
        if (route.match.prefix or "").startswith("/boom"):
            raise OverflowError("a value Envoy cannot hold")
        return real_entry(route, **kw)

    def transcoder(self: Any, catalog: Any) -> bytes:
        if fail_once[0]:
            fail_once[0] = False
            raise RuntimeError("a bug after the layout changed")
        return real_transcoder(self, catalog)

    monkeypatch.setattr(assemble, "route_entry", entry)
    monkeypatch.setattr(assemble.Translator, "_transcoder", transcoder)
    demo = Path(__file__).resolve().parents[2] / "wardgate" / "_proto" / "demo.pb"
    descriptor = json.dumps(
        {
            "kind": "Descriptor",
            "name": "demo",
            "descriptor_set": base64.b64encode(demo.read_bytes()).decode(),
        }
    )
    grpc = _svc("g", protocol="grpc")
    transcode = {"descriptor": "demo", "services": ["wardgate.demo.v1.Greeter"]}
    route_extra: list[dict[str, Any]] = [
        {},
        {},
        {"rate_limits": [{"by": "user", "requests": 5, "per": "minute", "enforce": "quota"}]},
        {"rate_limits": [{"by": "ip", "requests": 5, "per": "minute", "key": "k"}]},
        {"rate_limits": [{"by": "ip", "requests": 7, "per": "minute", "key": "k"}]},
    ]
    rng = random.Random(seed)
    docs = _documents(routes=20)
    docs["Service"].update(other=_svc("other"), g=grpc)
    docs["Descriptor"] = {"demo": descriptor}
    last_good = LastGood({})
    warm = SnapshotBuilder(OPTS)
    warm.build(warm.parse(copy.deepcopy(docs), last_good.documents), {}, revision=0)
    last_good.apply(last_good.diff(warm.catalog))  # type: ignore[arg-type]
    for step in range(50):
        changes: dict[tuple[str, str], str | None] = {}
        for _ in range(rng.choice((1, 1, 2, 3))):
            name = f"r{rng.randrange(25)}"
            what = rng.random()
            if what < 0.1:
                changes[("Route", name)] = None
            elif what < 0.15:
                changes[("Route", name)] = json.dumps({"kind": "Route", "name": name})
            elif what < 0.2:
                svc = rng.choice(("users", "other"))
                lb = rng.choice(({}, {"lb": "ring_hash"}, {"lb": "maglev"}, {"timeout": "3s"}))
                changes[("Service", svc)] = _svc(svc, **lb)
            elif what < 0.23:
                changes[("Descriptor", "demo")] = rng.choice((None, descriptor))
            elif what < 0.26:
                changes[("Service", "g")] = rng.choice((None, grpc))
            elif what < 0.36:
                prefix = rng.choice(("/v1", "/v1/greeter", "/v1/notes"))
                changes[("Route", name)] = _route(name, "g", prefix, transcode=transcode)
            elif what < 0.42:
                backend = rng.choice(("users", "missing"))
                doc = {
                    "kind": "Route",
                    "name": name,
                    "match": {"path": f"/c/{name}", "methods": ["GET"]},
                    "compose": {"a": {"backend": backend, "path": "/a"}},
                }
                changes[("Route", name)] = json.dumps(doc)
            elif what < 0.47:
                changes[("Route", name)] = _route(name, "users", f"/boom/{name}")
            else:
                backend = rng.choice(("users", "other", "missing", "g"))
                prefix = rng.choice((f"/p{rng.randrange(9)}/{name}", "/v1/greeter/x", "/v1"))
                changes[("Route", name)] = _route(name, backend, prefix, **rng.choice(route_extra))
        for (kind, name), text in changes.items():
            if text is None:
                docs[kind].pop(name, None)
            else:
                docs[kind][name] = text
        before = copy.deepcopy(last_good.documents)
        how = rng.random()
        if how < 0.15:
            parsed = warm.parse(copy.deepcopy(docs), last_good.documents)  # a full read
        else:
            parsed = warm.parse_changes(changes, last_good.documents)
        if how > 0.9:
            continue  # never built: the next parse must not patch from it
        if how > 0.8:
            fail_once[0] = True
            with pytest.raises(RuntimeError):
                warm.build(parsed, {}, revision=step)
            parsed = warm.parse(copy.deepcopy(docs), last_good.documents)  # read again
        got = warm.build(parsed, {}, revision=step)
        last_good.apply(last_good.diff(warm.catalog))  # type: ignore[arg-type]
        cold = SnapshotBuilder(OPTS)
        fresh = cold.build(cold.parse(copy.deepcopy(docs), before), {}, revision=step)
        assert warm.catalog is not None and cold.catalog is not None
        assert warm.catalog.refused.keys() == cold.catalog.refused.keys(), step
        assert warm.catalog.served == cold.catalog.served, step
        assert _versions(got) == _versions(fresh), step
        assert got.route_clusters == fresh.route_clusters, step
        assert warm.is_current(docs)


def test_same_documents_give_the_same_versions_in_every_builder() -> None:
    a, b = SnapshotBuilder(OPTS), SnapshotBuilder(OPTS)
    sa = a.build(a.parse(_documents(), {}), {}, revision=1)
    sb = b.build(b.parse(_documents(), {}), {}, revision=99)
    assert {t: r.version for t, r in sa.resources.items()} == {
        t: r.version for t, r in sb.resources.items()
    }


def test_registry_instances_change_only_endpoints() -> None:
    docs = _documents()
    docs["Service"]["reg"] = json.dumps({"kind": "Service", "name": "reg", "discovery": "registry"})
    docs["Route"]["reg"] = _route("reg", "reg", "/reg")
    builder = SnapshotBuilder(OPTS)
    parsed = builder.parse(docs, {})
    assert parsed.registry_services == ["reg"]
    first = builder.build(parsed, {"reg": []}, revision=1)
    assert builder.with_instances({"reg": []}) is None  # nothing new
    second = builder.with_instances({"reg": [Instance("10.0.0.9", 9000, 1)]})
    assert second is not None
    assert second.get(TYPE_ENDPOINT).version != first.get(TYPE_ENDPOINT).version
    assert second.get(TYPE_CLUSTER).version == first.get(TYPE_CLUSTER).version


def test_bad_document_is_served_in_its_last_good_version() -> None:
    builder = SnapshotBuilder(OPTS)
    docs = _documents()
    last_good = LastGood({})
    first = builder.parse(docs, last_good.documents)
    last_good.apply(last_good.diff(first.catalog))
    assert last_good.documents["Route"]["r1"] == docs["Route"]["r1"]
    docs["Route"]["r1"] = '{"kind": "Route", "name": "r1"}'  # a raw write, invalid
    second = builder.parse(docs, last_good.documents)
    assert "r1" in second.catalog.routes  # still served
    assert "still serving the last good version" in second.catalog.refused["Route/r1"]
    assert not last_good.diff(second.catalog)  # what is served did not change


def test_last_good_diff_names_only_what_changed() -> None:
    builder = SnapshotBuilder(OPTS)
    last_good = LastGood({})
    parsed = builder.parse(_documents(routes=3), {})
    builder.build(parsed, {}, revision=1)
    last_good.apply(last_good.diff(parsed.catalog))
    docs = _documents(routes=2)  # r2 deleted
    docs["Route"]["r0"] = _route("r0", "users", "/zero")
    diff = last_good.diff(builder.parse(docs, last_good.documents).catalog)
    assert set(diff.changed) == {("Route", "r0")}
    assert diff.gone == [("Route", "r2")]
    last_good.apply(diff)
    assert set(last_good.documents["Route"]) == {"r0", "r1"}


# --- the watcher over an in-memory source -------------------------------------------------


class Parts:
    def __init__(self, source: MemoryDocumentSource, *, resync: float = 30.0) -> None:
        self.source = source
        self.status = MemoryStatusStore()
        self.metrics: Metrics = create_metrics()
        self.cache = SnapshotCache(
            listener_factory=lambda g: build_listener(g.listen_address, g.listen_port, OPTS)
        )
        self.holder = IssuerHolder()
        self.files: dict[str, str] = {}
        self.watcher = DocumentWatcher(
            source=source,
            builder=SnapshotBuilder(OPTS),
            publisher=self.cache,
            refused=RefusedReport(status=self.status, metrics=self.metrics),
            issuers=IssuerLoader(holder=self.holder, environ={}, read_file=self.read_file),
            metrics=self.metrics,
            resync_interval=resync,
        )

    def read_file(self, path: str) -> str:
        if path not in self.files:
            raise FileNotFoundError(f"no such file: {path}")
        return self.files[path]

    def snapshot(self) -> Snapshot:
        snap = self.cache.snapshot_for(NodeGroup("0.0.0.0", 10000))
        assert snap is not None
        return snap

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def _run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 20))


async def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not true in time"
        await asyncio.sleep(0.01)


def test_sync_publishes_and_a_second_sync_changes_nothing() -> None:
    async def body() -> None:
        parts = Parts(MemoryDocumentSource(_documents()))
        assert await parts.watcher.sync() is True
        assert parts.cache.ready
        assert TYPE_LISTENER in parts.snapshot().resources
        generation = parts.cache.generation
        assert await parts.watcher.sync() is False
        assert parts.cache.generation == generation
        assert parts.count("wardgate_xds_snapshot_builds_total", result="unchanged") == 1
        assert parts.source.last_good["Route"].keys() == {"r0", "r1", "r2"}

    _run(body)


def test_run_follows_raw_writes_and_records_refusals() -> None:
    async def body() -> None:
        parts = Parts(MemoryDocumentSource(_documents()))
        task = asyncio.create_task(parts.watcher.run())
        await _eventually(lambda: parts.cache.ready)
        parts.source.put("Route", "new", _route("new", "users", "/new"))
        await _eventually(lambda: "new" in parts.watcher._builder.catalog.routes)  # type: ignore[union-attr]
        parts.source.put("Route", "broken", "{not json")
        await _eventually(lambda: "Route/broken" in parts.status.refused)
        assert "not valid JSON" in parts.status.refused["Route/broken"]
        assert parts.count("wardgate_documents_refused") == 1
        parts.source.put("Route", "broken", None)
        await _eventually(lambda: parts.status.refused == {})
        task.cancel()

    _run(body)


def test_a_failing_store_keeps_the_last_snapshot_and_recovers() -> None:
    async def body() -> None:
        parts = Parts(MemoryDocumentSource(_documents()))
        task = asyncio.create_task(parts.watcher.run())
        await _eventually(lambda: parts.cache.ready)
        before = parts.snapshot()
        parts.source.fail = True
        parts.source.announce(Signal.DOCUMENTS)
        await _eventually(lambda: parts.watcher.last_error != "")
        assert parts.count("wardgate_store_errors_total", component="watcher") >= 1
        assert parts.snapshot().resources == before.resources  # still served
        parts.source.documents["Route"]["later"] = _route("later", "users", "/later")
        parts.source.fail = False
        await _eventually(lambda: parts.watcher.last_error == "", timeout=8)
        await _eventually(lambda: "later" in parts.watcher._builder.catalog.routes)  # type: ignore[union-attr]
        task.cancel()

    _run(body)


def test_the_resync_interval_catches_unannounced_writes() -> None:
    async def body() -> None:
        parts = Parts(MemoryDocumentSource(_documents()), resync=0.2)
        task = asyncio.create_task(parts.watcher.run())
        await _eventually(lambda: parts.cache.ready)
        parts.source.put("Route", "quiet", _route("quiet", "users", "/quiet"), announce=False)
        await _eventually(lambda: "quiet" in parts.watcher._builder.catalog.routes)  # type: ignore[union-attr]
        task.cancel()

    _run(body)


def test_registry_announcements_refresh_endpoints_only() -> None:
    async def body() -> None:
        docs = _documents()
        docs["Service"]["reg"] = json.dumps(
            {"kind": "Service", "name": "reg", "discovery": "registry"}
        )
        parts = Parts(MemoryDocumentSource(docs))
        task = asyncio.create_task(parts.watcher.run())
        await _eventually(lambda: parts.cache.ready)
        loads = parts.source.loads
        endpoints = parts.snapshot().get(TYPE_ENDPOINT).version
        parts.source.instances["reg"] = [Instance("10.1.1.1", 7000, 1)]
        parts.source.announce(Signal.REGISTRY)
        await _eventually(lambda: parts.snapshot().get(TYPE_ENDPOINT).version != endpoints)
        assert parts.source.loads == loads  # no document re-read for a heartbeat
        task.cancel()

    _run(body)


# --- consumers ----------------------------------------------------------------------------


def _issuer(name: str, iss: str, **keys: Any) -> str:
    return json.dumps({"kind": "Issuer", "name": name, "issuer": iss, "audiences": ["api"], **keys})


def test_issuers_that_cannot_load_are_refused_and_retried() -> None:
    async def body() -> None:
        docs = _documents()
        docs["Issuer"]["idp"] = _issuer("idp", "https://idp", jwks_file="/keys.json")
        docs["Issuer"]["twin"] = _issuer("twin", "https://idp", hs256_secret_env="NOPE")
        parts = Parts(MemoryDocumentSource(docs))
        await parts.watcher.sync()
        assert "jwks_file /keys.json" in parts.status.refused["Issuer/idp"]
        assert "Issuer/twin" in parts.status.refused  # env var missing
        assert len(parts.holder.verifier) == 0
        parts.files["/keys.json"] = json.dumps(_jwks())
        await parts.watcher.sync()  # unchanged documents: key files are read again
        assert "Issuer/idp" not in parts.status.refused
        assert "already trusted through issuer idp" in parts.status.refused["Issuer/twin"]
        assert len(parts.holder.verifier) == 1

    _run(body)


def _jwks() -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = json.loads(ECAlgorithm.to_jwk(key))
    return {"keys": [{**jwk, "kid": "k1", "use": "sig"}]}


def test_refused_report_writes_only_changes_and_retries_failures() -> None:
    async def body() -> None:
        status = MemoryStatusStore()
        metrics = create_metrics()
        report = RefusedReport(status=status, metrics=metrics)
        writes = 0
        save = status.save_refused

        async def counting(refused: Any) -> None:
            nonlocal writes
            writes += 1
            await save(refused)

        status.save_refused = counting  # type: ignore[method-assign]
        await report.report({"Route/a": "bad"})
        await report.report({"Route/a": "bad"})
        assert writes == 1
        status.fail = True
        await report.report({"Route/a": "bad", "Route/b": "worse"})
        assert writes == 2 and status.refused == {"Route/a": "bad"}
        status.fail = False
        await report.report({"Route/a": "bad", "Route/b": "worse"})  # same set, not saved yet
        assert status.refused == {"Route/a": "bad", "Route/b": "worse"}
        report.forget_saved()
        await report.report({"Route/a": "bad", "Route/b": "worse"})
        assert writes == 4

    _run(body)


class FakeGc:
    def __init__(self) -> None:
        self.now = 0.0
        self.events: list[str] = []

    def policy(self) -> GcPolicy:
        return GcPolicy(
            clock=lambda: self.now,
            freeze=lambda: self.events.append("freeze"),
            thaw=lambda: self.events.append("thaw"),
            collect=lambda: self.events.append("collect"),
        )


def test_gc_is_frozen_after_builds_and_collected_when_quiet() -> None:
    gc = FakeGc()
    policy = gc.policy()
    for _ in range(GcPolicy.IDLE_AFTER_BUILDS):
        policy.after_build()
    assert set(gc.events) == {"freeze"}
    gc.events.clear()
    policy.idle()  # not quiet long enough
    assert gc.events == []
    gc.now += GcPolicy.IDLE_QUIET_SECONDS + 1
    policy.idle()
    assert gc.events == ["thaw", "collect", "freeze"]


@pytest.mark.parametrize("by", ["builds", "time"])
def test_gc_is_collected_at_the_latest_under_steady_changes(by: str) -> None:
    gc = FakeGc()
    policy = gc.policy()
    steps = GcPolicy.THAW_EVERY_BUILDS if by == "builds" else 3
    for _ in range(steps):
        if by == "time":
            gc.now += GcPolicy.THAW_EVERY_SECONDS / 2 + 1
        policy.after_build()
    assert "collect" in gc.events


def test_not_ready_while_configuration_changes_cannot_come_through() -> None:
    async def body() -> None:
        parts = Parts(MemoryDocumentSource(_documents()))
        bans = BanPublisher(
            store=NoBans(), publish=parts.cache.set_extension, metrics=parts.metrics
        )
        control = ControlPlane(parts.cache, NodeRegistry(), parts.watcher, parts.status, bans)
        pings: list[str] = []

        async def ping() -> None:
            pings.append("ping")

        ready = readiness(control, ping)
        assert await ready() == (False, "no snapshot built yet")
        task = asyncio.create_task(parts.watcher.run())
        await _eventually(lambda: parts.cache.ready)
        assert await ready() == (True, "ok")
        parts.source.fail = True
        parts.source.announce(Signal.DOCUMENTS)
        await _eventually(lambda: parts.watcher.last_error != "")
        ok, reason = await ready()
        assert not ok and reason.startswith("configuration not updating: ")
        parts.source.fail = False
        await _eventually(lambda: parts.watcher.last_error == "", timeout=8)
        assert await ready() == (True, "ok")
        task.cancel()

    _run(body)


class NoBans:
    async def strike(self, network: str, policy: object, *, now: float) -> bool:
        return False

    async def ban(self, network: str, *, until: float) -> None:
        pass

    async def unban(self, network: str) -> bool:
        return False

    async def live(self, *, now: float) -> dict[str, float]:
        return {}

    async def version(self) -> int:
        return 0


def test_a_document_that_cannot_be_translated_is_refused_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 10 review: one route that validated but failed translation stopped every later
    change, and its never-served version became the 'last good' one."""
    import wardgate.xds.assemble as assemble

    real = assemble.route_entry

    def fragile(route: Any, **kw: Any) -> dict[str, Any]:
        if route.match.prefix == "/explodes":
            raise OverflowError("a value Envoy cannot hold")
        return real(route, **kw)

    monkeypatch.setattr(assemble, "route_entry", fragile)

    async def body() -> None:
        parts = Parts(MemoryDocumentSource(_documents()))
        await parts.watcher.sync()
        good = parts.source.last_good["Route"]["r1"]
        parts.source.put("Route", "r1", _route("r1", "users", "/explodes"), announce=False)
        parts.source.put("Route", "later", _route("later", "users", "/later"), announce=False)
        assert await parts.watcher.sync() is True
        catalog = parts.watcher._builder.catalog
        assert catalog is not None and "later" in catalog.routes  # other changes go through
        assert catalog.routes["r1"].match.prefix == "/r1"  # the last good version is served
        assert "cannot be translated" in parts.status.refused["Route/r1"]
        assert parts.source.last_good["Route"]["r1"] == good  # never the broken version
        parts.source.put("Route", "r1", "{not json", announce=False)
        parts.source.put("Route", "fresh", _route("fresh", "users", "/explodes"), announce=False)
        await parts.watcher.sync()
        catalog = parts.watcher._builder.catalog
        assert catalog is not None and catalog.routes["r1"].match.prefix == "/r1"
        assert "fresh" not in catalog.routes  # nothing good to fall back on: left out
        assert "cannot be translated" in parts.status.refused["Route/fresh"]
        assert parts.watcher.last_error == ""

    _run(body)


def test_an_untranslatable_route_falls_back_only_to_a_last_good_version_that_still_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A route that cannot be translated is served in its last good version only if that
    version's service (and descriptor) still exist: else the route went out to a cluster
    that is gone, and a transcoding one whose descriptor is gone failed every build."""
    import wardgate.xds.assemble as assemble

    real = assemble.route_entry

    def fragile(route: Any, **kw: Any) -> dict[str, Any]:
        if route.match.prefix == "/explodes":
            raise OverflowError("a value Envoy cannot hold")
        return real(route, **kw)

    monkeypatch.setattr(assemble, "route_entry", fragile)
    demo = Path(__file__).resolve().parents[2] / "wardgate" / "_proto" / "demo.pb"
    grpc = {"protocol": "grpc"}
    transcode = {"descriptor": "demo", "services": ["wardgate.demo.v1.Greeter"]}
    last_good = {
        "Route": {
            "plain": _route("plain", "gone", "/plain"),
            "rest": _route("rest", "g", "/v1", transcode=transcode),
        }
    }
    docs = _documents(0)
    docs["Service"]["g"] = _svc("g", **grpc)
    docs["Route"] = {n: _route(n, "users", "/explodes") for n in ("plain", "rest")}
    builder = SnapshotBuilder(OPTS)
    snapshot = builder.build(builder.parse(docs, last_good), {}, revision=1)
    catalog = builder.catalog
    assert catalog is not None and not catalog.routes
    assert "gone" not in snapshot.route_clusters
    for name in ("plain", "rest"):
        assert "cannot be translated" in catalog.refused[f"Route/{name}"]
        assert "last good" not in catalog.refused[f"Route/{name}"]
    # With what it uses there, the last good version is served.
    docs["Service"]["gone"] = _svc("gone")
    docs["Descriptor"] = {
        "demo": json.dumps(
            {
                "kind": "Descriptor",
                "name": "demo",
                "descriptor_set": base64.b64encode(demo.read_bytes()).decode(),
            }
        )
    }
    builder = SnapshotBuilder(OPTS)
    builder.build(builder.parse(docs, last_good), {}, revision=2)
    catalog = builder.catalog
    assert catalog is not None and set(catalog.routes) == {"plain", "rest"}
    assert "still serving the last good version" in catalog.refused["Route/rest"]


def test_a_stuck_key_file_never_starves_other_reads() -> None:
    """Issue 10 review: each re-read of a key file on a stuck mount took another thread of
    the shared pool until logins (password hashing) and healthy issuers starved."""
    release = threading.Event()
    jwks = json.dumps(_jwks())

    def read(path: str) -> str:
        if path == "/stuck.json":
            release.wait(10)
        return jwks

    async def body() -> None:
        holder = IssuerHolder()
        loader = IssuerLoader(holder=holder, environ={}, read_file=read, read_timeout=0.1)
        issuers = {
            "stuck": parse_document(
                json.loads(_issuer("stuck", "https://a", jwks_file="/stuck.json"))
            ),
            "fine": parse_document(
                json.loads(_issuer("fine", "https://b", jwks_file="/fine.json"))
            ),
        }
        for _ in range(10):
            refused = await loader.load(issuers, force=True)  # type: ignore[arg-type]
            assert set(refused) == {"Issuer/stuck"}
            assert len(holder.verifier) == 1  # the healthy issuer keeps working
        # The default pool (password hashing runs there) is untouched.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 1) == 42

    try:
        _run(body)
    finally:
        release.set()


def test_a_new_descriptor_is_checked_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """protoc's check of a descriptor (hundreds of ms for a large one) runs in a thread before
    the parse, which then finds it done: the event loop, which also answers ext_authz, never
    waits on protoc."""
    from pathlib import Path

    from wardgate.domain import grpc_api

    demo = Path(__file__).resolve().parents[2] / "wardgate" / "_proto" / "demo.pb"
    data = demo.read_bytes()
    grpc_api._CPP_RESULTS.clear()
    loop_thread = threading.get_ident()
    threads: list[int] = []
    real = grpc_api._cpp_check

    def recording(*args: Any) -> str | None:
        threads.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(grpc_api, "_cpp_check", recording)
    docs = _documents()
    docs["Descriptor"] = {
        "demo": json.dumps(
            {
                "kind": "Descriptor",
                "name": "demo",
                "descriptor_set": base64.b64encode(data).decode(),
            }
        )
    }

    async def body() -> None:
        parts = Parts(MemoryDocumentSource(docs))
        assert await parts.watcher.sync() is True
        assert "demo" in (parts.watcher._builder.catalog or pytest.fail()).descriptors
        assert threads and loop_thread not in threads

    _run(body)


# --- reading by name what the CLI changed ---------------------------------------------------


def _served_routes(parts: Parts) -> dict[str, Any]:
    catalog = parts.watcher._builder.catalog
    assert catalog is not None
    return catalog.routes


def test_cli_changes_are_read_by_name_and_raw_writes_read_everything() -> None:
    """A change the CLI made (history entry, keyspace events it accounts for) reads only the
    documents it names; a raw write beside it, which no entry accounts for, reads
    everything; the result is the same snapshot a fresh build gives."""

    async def body() -> None:
        source = MemoryDocumentSource(_documents(5))
        parts = Parts(source)
        task = asyncio.create_task(parts.watcher.run())
        await _eventually(lambda: parts.cache.ready)
        loads = source.loads
        source.commit({("Route", "r1"): _route("r1", "users", "/moved")})
        await _eventually(lambda: _served_routes(parts)["r1"].match.prefix == "/moved")
        source.commit({("Route", "r2"): None, ("Route", "n"): _route("n", "users", "/n")})
        await _eventually(lambda: "n" in _served_routes(parts))
        assert "r2" not in _served_routes(parts)
        assert source.loads == loads  # both by name
        assert parts.count("wardgate_xds_document_reads_total", how="by_name") == 2
        # A raw write and a CLI change in one burst: the raw one is not in the history.
        source.put("Route", "raw", _route("raw", "users", "/raw"), announce=False)
        source.writes += 1  # its keyspace event, seen with the CLI's
        source.commit({("Route", "r3"): _route("r3", "users", "/r3b")})
        await _eventually(lambda: "raw" in _served_routes(parts))
        assert source.loads == loads + 1
        fresh = SnapshotBuilder(OPTS)
        expected = fresh.build(fresh.parse(source.documents, {}), {}, revision=0)
        got = parts.snapshot()
        for type_url, resources in expected.resources.items():
            assert got.get(type_url).versions == resources.versions, type_url
        task.cancel()

    _run(body)


def test_a_gap_in_the_history_reads_everything() -> None:
    """An entry whose revision does not follow the cursor's (the stream trimmed past it, or
    the revision written by something else): the documents are read whole."""

    async def body() -> None:
        source = MemoryDocumentSource(_documents(2))
        parts = Parts(source)
        task = asyncio.create_task(parts.watcher.run())
        await _eventually(lambda: parts.cache.ready)
        loads = source.loads
        source.revision += 5  # entries 1-5 lost
        source.commit({("Route", "r0"): _route("r0", "users", "/gap")})
        await _eventually(lambda: _served_routes(parts)["r0"].match.prefix == "/gap")
        assert source.loads == loads + 1
        task.cancel()

    _run(body)


def test_a_read_by_name_of_nothing_changed_builds_nothing() -> None:
    async def body() -> None:
        source = MemoryDocumentSource(_documents(2))
        parts = Parts(source)
        assert await parts.watcher.sync() is True
        assert parts.watcher._cursor is not None
        assert await parts.watcher.sync(writes=0) is False
        assert source.reads_by_name == 1 and source.loads == 1
        assert parts.count("wardgate_xds_snapshot_builds_total", result="unchanged") == 1

    _run(body)


def test_gc_is_paused_around_a_whole_read_and_restored_after() -> None:
    import gc

    policy = GcPolicy()
    assert gc.isenabled()
    with policy.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        with policy.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), policy.paused():
        raise RuntimeError("a failed build")
    assert gc.isenabled()


def test_a_steady_stream_of_cli_changes_does_not_put_off_the_periodic_full_read() -> None:
    """A raw write no keyspace event announced (events off, a managed Redis; a DEL where the
    'g' class is off) is found only by the periodic full read: CLI changes read by name
    more often than the resync interval must not keep putting that read off."""

    async def body() -> None:
        source = MemoryDocumentSource(_documents(2))
        parts = Parts(source, resync=0.3)
        task = asyncio.create_task(parts.watcher.run())
        await _eventually(lambda: parts.cache.ready)
        source.put("Route", "quiet", _route("quiet", "users", "/quiet"), announce=False)
        deadline = asyncio.get_running_loop().time() + 2.0
        step = 0
        while "quiet" not in _served_routes(parts):
            assert asyncio.get_running_loop().time() < deadline, "the raw write was never read"
            step += 1
            source.commit({("Route", "r0"): _route("r0", "users", f"/s{step}")})
            await asyncio.sleep(0.1)
        task.cancel()

    _run(body)


def test_the_background_check_holds_up_no_change_and_finds_unannounced_writes() -> None:
    """The periodic read of every document runs beside the syncs: a change by the CLI made
    while it is stuck reading is served by name at once; what it finds that no
    announcement brought (a raw write without a keyspace event) is then read whole."""

    class SlowSource(MemoryDocumentSource):
        def __init__(self, documents: dict[str, dict[str, str]]) -> None:
            super().__init__(documents)
            self.hold: asyncio.Event | None = None

        async def scan(self) -> Any:
            async for kind, part in super().scan():
                if self.hold is not None:
                    await self.hold.wait()
                yield kind, part

    async def body() -> None:
        source = SlowSource(_documents(3))
        parts = Parts(source, resync=0.2)
        task = asyncio.create_task(parts.watcher.run())
        await _eventually(lambda: parts.cache.ready)
        source.hold = asyncio.Event()
        source.put("Route", "quiet", _route("quiet", "users", "/quiet"), announce=False)
        parts.watcher._full_at = 0.0  # the check is due: it starts, and waits in load()
        await _eventually(lambda: parts.watcher._checking is not None)
        source.commit({("Route", "r1"): _route("r1", "users", "/moved")})
        await _eventually(lambda: _served_routes(parts)["r1"].match.prefix == "/moved")
        assert parts.watcher._checking is not None  # still reading
        assert "quiet" not in _served_routes(parts)
        source.hold.set()
        await _eventually(lambda: "quiet" in _served_routes(parts))
        task.cancel()

    _run(body)


def test_the_check_finds_any_difference_between_the_store_and_the_build() -> None:
    async def body() -> None:
        source = MemoryDocumentSource(_documents(3))
        parts = Parts(source)
        assert await parts.watcher.sync() is True
        differs = parts.watcher._store_differs
        assert await differs() is False
        source.put("Route", "r1", _route("r1", "users", "/other"), announce=False)
        assert await differs() is True  # a value
        source.put("Route", "r1", _route("r1", "users", "/r1"), announce=False)
        assert await differs() is False
        source.put("Route", "r2", None, announce=False)
        assert await differs() is True  # a document gone
        source.put("Route", "r2", _route("r2", "users", "/r2"), announce=False)
        source.put("Issuer", "new", "{}", announce=False)
        assert await differs() is True  # a document more, of a kind that had none
        source.put("Issuer", "new", None, announce=False)
        assert await differs() is False
        assert source.scans == 6

    _run(body)


def test_a_route_changed_many_times_leaves_one_translation_behind() -> None:
    """A replaced route's translation is dropped with it: the memory holds what is served,
    not every version ever served (once full it was cleared whole, and every route had to
    be translated again)."""
    builder = SnapshotBuilder(OPTS)
    builder.build(builder.parse(_documents(5), {}), {}, revision=0)
    translator = builder._translator
    before = len(translator._routes)
    for k in range(40):
        parsed = builder.parse_changes({("Route", "r1"): _route("r1", "users", f"/v{k}")}, {})
        builder.build(parsed, {}, revision=k + 1)
    assert len(translator._routes) == before
    svc_before = len(translator._clusters)
    for k in range(10):
        endpoints = [{"address": "10.0.0.1", "port": 81 + k}]
        parsed = builder.parse_changes(
            {("Service", "users"): _svc("users", endpoints=endpoints)}, {}
        )
        builder.build(parsed, {}, revision=100 + k)
        assert builder.catalog is not None and "users" in builder.catalog.services
    assert len(translator._clusters) == svc_before
