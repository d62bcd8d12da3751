"""The document set as a whole: Catalog.from_raw, plan_apply, plan_delete."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wardgate.domain.catalog import Catalog, Change, canonical_json, plan_apply, plan_delete
from wardgate.domain.documents import Document, parse_document
from wardgate.errors import DocumentError, ReferenceError_


def _svc(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "Service",
        "name": name,
        "endpoints": [{"address": "10.0.0.1", "port": 8080}],
        **extra,
    }


def _route(name: str, backend: str, prefix: str = "/", **extra: Any) -> dict[str, Any]:
    return {"kind": "Route", "name": name, "match": {"prefix": prefix}, "backend": backend, **extra}


def _raw(*docs: dict[str, Any]) -> dict[str, dict[str, str]]:
    """What Redis holds: kind -> name -> JSON."""
    out: dict[str, dict[str, str]] = {"Route": {}, "Service": {}}
    for doc in docs:
        out[doc["kind"]][doc["name"]] = json.dumps(doc)
    return out


def _docs(*docs: dict[str, Any]) -> list[Document]:
    return [parse_document(d) for d in docs]


# --- Catalog.from_raw ---------------------------------------------------------------------


def test_from_raw_parses_a_consistent_set() -> None:
    cat = Catalog.from_raw(_raw(_svc("users"), _route("users-api", "users", "/api/users")))
    assert set(cat.services) == {"users"}
    assert set(cat.routes) == {"users-api"}
    assert cat.routes["users-api"].match.prefix == "/api/users"
    assert cat.refused == {}


def test_from_raw_of_nothing_is_empty() -> None:
    cat = Catalog.from_raw({})
    assert (cat.routes, cat.services, cat.refused) == ({}, {}, {})


def test_from_raw_refuses_invalid_json_alone() -> None:
    raw = _raw(_svc("good"), _route("ok", "good"))
    raw["Service"]["broken"] = "{not json"
    cat = Catalog.from_raw(raw)
    assert set(cat.services) == {"good"}
    assert set(cat.routes) == {"ok"}
    assert set(cat.refused) == {"Service/broken"}
    assert cat.refused["Service/broken"].startswith("not valid JSON")


def test_from_raw_refuses_an_invalid_document_alone() -> None:
    raw = _raw(_svc("good"), _route("ok", "good"), _route("bad", "good", timeout="soon"))
    cat = Catalog.from_raw(raw)
    assert set(cat.routes) == {"ok"}
    assert set(cat.refused) == {"Route/bad"}
    assert "timeout" in cat.refused["Route/bad"]


def test_from_raw_refuses_a_json_value_that_is_not_a_mapping() -> None:
    raw = _raw(_svc("good"))
    raw["Service"]["list"] = "[1, 2]"
    cat = Catalog.from_raw(raw)
    assert set(cat.services) == {"good"}
    assert "mapping" in cat.refused["Service/list"]


def test_from_raw_refuses_a_name_mismatch_alone() -> None:
    raw = _raw(_svc("good"))
    raw["Service"]["alias"] = json.dumps(_svc("other"))
    cat = Catalog.from_raw(raw)
    assert set(cat.services) == {"good"}
    assert set(cat.refused) == {"Service/alias"}
    assert "alias" in cat.refused["Service/alias"]
    assert "other" in cat.refused["Service/alias"]


def test_from_raw_refuses_a_document_of_the_other_kind_in_the_hash() -> None:
    raw = _raw(_svc("good"))
    raw["Service"]["r"] = json.dumps(_route("r", "good"))
    cat = Catalog.from_raw(raw)
    assert "Service/r" in cat.refused
    assert "r" not in cat.routes


def test_from_raw_refuses_a_route_whose_service_is_missing_alone() -> None:
    raw = _raw(_svc("good"), _route("ok", "good"), _route("orphan", "gone", "/o"))
    cat = Catalog.from_raw(raw)
    assert set(cat.routes) == {"ok"}
    assert cat.refused == {"Route/orphan": "backend service gone does not exist"}


def test_from_raw_a_route_to_a_refused_service_is_refused_too() -> None:
    raw = _raw(_route("r", "bad"), _svc("bad", lb="fastest"))
    cat = Catalog.from_raw(raw)
    assert set(cat.refused) == {"Service/bad", "Route/r"}
    assert cat.routes == {}


def test_from_raw_refuses_a_weighted_route_naming_one_missing_service() -> None:
    route = {
        "kind": "Route",
        "name": "split",
        "match": {"prefix": "/"},
        "backends": [{"service": "v1", "weight": 90}, {"service": "v2", "weight": 10}],
    }
    cat = Catalog.from_raw(_raw(_svc("v1"), route))
    assert cat.routes == {}
    assert "v2" in cat.refused["Route/split"]
    assert "v1" not in cat.refused["Route/split"]


def test_from_raw_refuses_an_overflowing_period_alone() -> None:
    bad = _route("bad", "good", rate_limits=[{"by": "ip", "requests": 1, "per": "9" * 400 + "s"}])
    cat = Catalog.from_raw(_raw(_svc("good"), _route("ok", "good"), bad))
    assert set(cat.routes) == {"ok"}
    assert "Route/bad" in cat.refused


def test_a_raw_write_with_cr_lf_is_refused_alone_with_a_one_line_reason() -> None:
    """A raw HSET of the attack run's route; the field name itself may hold a newline too, and
    neither may add a line to ``wardgate status`` or the log."""
    hostile = _route("hostile", "good", cors={"allow_origins": ["*"], "allow_headers": ["x"]})
    hostile["cors"]["allow_headers"] = ["x\r\nSet-Cookie: a=1"]
    raw = _raw(_svc("good"), _route("ok", "good"), hostile)
    raw["Route"]["a\nb"] = json.dumps(_route("a\nb", "good"))
    cat = Catalog.from_raw(raw)
    assert set(cat.routes) == {"ok"}
    assert set(cat.refused) == {"Route/hostile", "Route/a\\nb"}
    assert "cors.allow_headers.0" in cat.refused["Route/hostile"]
    for key, reason in cat.refused.items():
        assert "\n" not in key + reason and "\r" not in key + reason
    # The patched catalog drops the refusal once the field is gone, as a full parse does.
    now = {k: dict(v) for k, v in raw.items()}
    del now["Route"]["a\nb"]
    patched = Catalog.updated(cat, raw, now)
    assert patched is not None
    assert (
        patched.refused
        == Catalog.from_raw(now).refused
        == {"Route/hostile": cat.refused["Route/hostile"]}
    )


# --- plan_apply ---------------------------------------------------------------------------


def test_plan_apply_creates_into_an_empty_store() -> None:
    changes = plan_apply({}, _docs(_route("r", "s"), _svc("s")))
    # Services first (routes refer to them), then by name.
    assert [(c.kind, c.name, c.action) for c in changes] == [
        ("Service", "s", "created"),
        ("Route", "r", "created"),
    ]
    assert [str(c) for c in changes] == ["service/s created", "route/r created"]
    assert all(c.value is not None for c in changes)


def test_plan_apply_value_is_the_canonical_json() -> None:
    doc = parse_document(_svc("s", lb="maglev"))
    (change,) = plan_apply({}, [doc])
    assert change.value == canonical_json(doc)
    assert json.loads(change.value or "") == _svc("s", lb="maglev")


def test_plan_apply_unchanged_and_configured() -> None:
    current = _raw(_svc("s"), _route("r", "s"))
    changes = plan_apply(current, _docs(_svc("s"), _route("r", "s", timeout="5s")))
    assert {(c.kind, c.name): c.action for c in changes} == {
        ("Service", "s"): "unchanged",
        ("Route", "r"): "configured",
    }


def test_plan_apply_unchanged_ignores_key_order_and_spacing_of_what_is_stored() -> None:
    stored = json.dumps(dict(reversed(list(_svc("s").items()))), indent=4)
    (change,) = plan_apply({"Service": {"s": stored}}, _docs(_svc("s")))
    assert change.action == "unchanged"


def test_plan_apply_over_a_stored_document_that_is_not_json_is_configured() -> None:
    (change,) = plan_apply({"Service": {"s": "{oops"}}, _docs(_svc("s")))
    assert change.action == "configured"


def test_plan_apply_refuses_a_duplicate_in_the_input() -> None:
    with pytest.raises(DocumentError) as info:
        plan_apply({}, _docs(_svc("s"), _svc("s", lb="random")))
    assert "twice" in str(info.value)
    assert info.value.name == "s"


def test_same_name_in_two_kinds_is_no_duplicate() -> None:
    changes = plan_apply({}, _docs(_svc("x"), _route("x", "x")))
    assert len(changes) == 2


def test_plan_apply_refuses_a_route_to_an_unknown_service() -> None:
    with pytest.raises(ReferenceError_) as info:
        plan_apply(_raw(_svc("s")), _docs(_route("r", "nope")))
    assert info.value.kind == "Route"
    assert info.value.name == "r"
    assert "nope" in str(info.value)


def test_plan_apply_route_and_new_service_together() -> None:
    changes = plan_apply(_raw(_svc("s")), _docs(_route("r", "new"), _svc("new")))
    assert [(c.kind, c.name, c.action) for c in changes] == [
        ("Service", "new", "created"),
        ("Route", "r", "created"),
    ]


def test_plan_apply_ignores_unrelated_documents_already_refused() -> None:
    current = _raw(_svc("s"), _route("orphan", "gone"))
    current["Service"]["junk"] = "{"
    (change,) = plan_apply(current, _docs(_svc("t")))
    assert (change.name, change.action) == ("t", "created")


# --- plan_delete --------------------------------------------------------------------------


def test_plan_delete_of_an_unused_service() -> None:
    current = _raw(_svc("s"), _svc("t"), _route("r", "s"))
    change = plan_delete(current, "Service", "t")
    assert change == Change("Service", "t", "deleted", None, current["Service"]["t"])
    assert str(change) == "service/t deleted"


def test_plan_delete_of_a_route() -> None:
    change = plan_delete(_raw(_svc("s"), _route("r", "s")), "Route", "r")
    assert (change.kind, change.name, change.action, change.value) == (
        "Route",
        "r",
        "deleted",
        None,
    )


def test_plan_delete_of_a_service_still_used_names_the_route() -> None:
    current = _raw(_svc("s"), _route("users-api", "s"))
    with pytest.raises(ReferenceError_) as info:
        plan_delete(current, "Service", "s")
    assert "users-api" in str(info.value)
    assert info.value.kind == "Service"
    assert info.value.name == "s"


def test_plan_delete_of_a_service_used_through_weighted_backends_is_refused() -> None:
    route = {
        "kind": "Route",
        "name": "split",
        "match": {"prefix": "/"},
        "backends": [{"service": "a", "weight": 1}, {"service": "b", "weight": 1}],
    }
    with pytest.raises(ReferenceError_, match="split"):
        plan_delete(_raw(_svc("a"), _svc("b"), route), "Service", "b")


def test_plan_delete_of_a_missing_document_is_refused() -> None:
    with pytest.raises(DocumentError, match="not found") as info:
        plan_delete(_raw(_svc("s")), "Service", "ghost")
    assert info.value.name == "ghost"


def test_plan_delete_of_a_route_with_the_name_of_a_service_is_refused() -> None:
    with pytest.raises(DocumentError, match="not found"):
        plan_delete(_raw(_svc("s")), "Route", "s")


def test_plan_delete_of_a_service_only_a_refused_route_names_is_allowed() -> None:
    # The route was already refused (its other service is missing): deleting is no new harm.
    route = {
        "kind": "Route",
        "name": "split",
        "match": {"prefix": "/"},
        "backends": [{"service": "a", "weight": 1}, {"service": "gone", "weight": 1}],
    }
    change = plan_delete(_raw(_svc("a"), route), "Service", "a")
    assert change.action == "deleted"


def test_a_raw_write_naming_a_missing_service_keeps_the_last_good_route() -> None:
    import json as _json

    good = _raw(_svc("s"), _route("r", "s"))
    bad = {
        **good,
        "Route": {"r": _json.dumps({**_json.loads(good["Route"]["r"]), "backend": "typo"})},
    }
    cat = Catalog.from_raw(bad, good)
    assert cat.routes["r"].backend == "s"
    assert "still serving the last good version" in cat.refused["Route/r"]
    assert cat.served[("Route", "r")] == good["Route"]["r"]


def test_a_raw_delete_of_a_service_in_use_keeps_serving_it() -> None:
    good = _raw(_svc("s"), _route("r", "s"))
    without = {**good, "Service": {}}
    cat = Catalog.from_raw(without, good)
    assert "s" in cat.services and "r" in cat.routes
    assert "deleted while route r uses it" in cat.refused["Service/s"]
    # Without a last good version there is nothing to keep.
    assert "r" not in Catalog.from_raw(without).routes


# --- Catalog.updated (the watcher's incremental path) ---------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_updated_catalog_equals_from_raw_after_every_raw_write(seed: int) -> None:
    """Raw writes of every sort (good, bad, missing backends, deleted services), each followed
    by the watcher's bookkeeping of last good versions: patching gives what re-reading gives."""
    import random

    from wardgate.domain.catalog import ParseMemo

    rng = random.Random(seed)
    raw: dict[str, dict[str, str]] = {"Route": {}, "Service": {}, "Issuer": {}}
    for i in range(4):
        raw["Service"][f"s{i}"] = json.dumps(_svc(f"s{i}"))
    for i in range(30):
        raw["Route"][f"r{i}"] = json.dumps(_route(f"r{i}", f"s{i % 4}", f"/p{i}"))
    memo = ParseMemo()
    last_good: dict[str, dict[str, str]] = {}
    prev_raw = {k: dict(v) for k, v in raw.items()}
    prev = Catalog.from_raw(prev_raw, last_good, memo=memo)
    patched = 0
    for _ in range(100):
        roll = rng.random()
        name = f"r{rng.randint(0, 34)}"
        if roll < 0.4:
            backend = rng.choice(["s0", "s1", "s2", "s3", "missing"])
            raw["Route"][name] = json.dumps(_route(name, backend, f"/q{rng.randint(0, 9)}"))
        elif roll < 0.55:
            raw["Route"][name] = '{"kind": "Route", "name": "' + name + '", "match": 5}'
        elif roll < 0.7:
            raw["Route"].pop(name, None)
        elif roll < 0.74:
            raw["Service"].pop(f"s{rng.randint(0, 3)}", None)
        elif roll < 0.9:
            i = rng.randint(0, 3)
            raw["Service"][f"s{i}"] = json.dumps(_svc(f"s{i}"))
        else:
            for n in rng.sample(sorted(raw["Route"]), min(3, len(raw["Route"]))):
                raw["Route"][n] = json.dumps(_route(n, "s0", f"/z{rng.randint(0, 99)}"))
        now_raw = {k: dict(v) for k, v in raw.items()}
        expected = Catalog.from_raw(now_raw, last_good, memo=memo)
        got = Catalog.updated(prev, prev_raw, now_raw, last_good, memo=memo)
        if got is not None:
            patched += 1
            assert got.routes == expected.routes
            assert got.services == expected.services
            assert got.refused == expected.refused
            assert got.served == expected.served
            assert got.issuers == expected.issuers
        last_good = {}
        for (kind, n), text in expected.served.items():
            last_good.setdefault(kind, {})[n] = text
        prev, prev_raw = expected, now_raw
    assert patched > 8  # the incremental path was taken, not only the fallback


def test_rules_sharing_a_counter_must_count_alike() -> None:
    """Issue 10 review: 'give such rules the same numbers and by' was not checked."""
    shared = {"by": "ip", "requests": 5, "per": "minute", "key": "budget"}
    a = _route("a", "s", "/a", rate_limits=[shared])
    b = _route("b", "s", "/b", rate_limits=[{**shared, "requests": 50}])
    c = _route("c", "s", "/c", rate_limits=[shared])
    cat = Catalog.from_raw(_raw(_svc("s"), a, b, c))
    assert set(cat.routes) == {"a", "c"}
    assert "counts differently on route a" in cat.refused["Route/b"]
    with pytest.raises(ReferenceError_, match="counts differently"):
        plan_apply(_raw(_svc("s"), a), _docs(b))
