"""Scoped routes: a request ends in a scope holding, in the global order, every route that can
match it. Checked against the whole table with a model of Envoy's path matching."""

from __future__ import annotations

import random
import re

import pytest
from envoy.config.route.v3 import route_components_pb2

from tests.xds_views import build_route_configuration, route_configs, routes_for
from wardgate.domain.catalog import Catalog
from wardgate.domain.documents import parse_document
from wardgate.xds.assemble import Translator, build_base
from wardgate.xds.scope_envoy import scope_resources
from wardgate.xds.scope_key import BUCKETS, MAX_DEPTH
from wardgate.xds.translate import TranslateOptions

OPTS = TranslateOptions()
SVC = {"kind": "Service", "name": "s", "endpoints": [{"address": "127.0.0.1", "port": 1}]}


def matches(route: route_components_pb2.Route, path: str) -> bool:
    """Envoy's path matching (query string ignored; headers are not generated here)."""
    bare = re.split(r"[?#]", path, maxsplit=1)[0]
    m = route.match
    kind = m.WhichOneof("path_specifier")
    if kind == "path":
        return bare == m.path
    if kind == "prefix":
        return path.startswith(m.prefix)
    if kind == "path_separated_prefix":
        p = m.path_separated_prefix
        return bare == p or bare.startswith(p + "/")
    if kind == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, bare) is not None
    raise AssertionError(kind)


def first_match(routes: list[route_components_pb2.Route], path: str) -> str | None:
    for r in routes:
        if matches(r, path):
            return r.name
    return None


def random_table(rng: random.Random, n: int) -> dict[str, dict[str, object]]:
    firsts = ["api", "api", "api", "shop", "img", "x"]
    seconds = [f"s{i}" for i in range(40)] + ["v1"] * 10
    thirds = [f"t{i}" for i in range(40)]
    docs: dict[str, dict[str, object]] = {}
    for i in range(n):
        segs = [rng.choice(firsts), rng.choice(seconds), rng.choice(thirds)][: rng.randint(1, 3)]
        path = "/" + "/".join(segs)
        kind = rng.random()
        if kind < 0.5:
            match: dict[str, object] = {"prefix": path + ("/" if rng.random() < 0.2 else "")}
        elif kind < 0.8:
            match = {"path": path}
        elif kind < 0.95:
            match = {"regex": path + "/[0-9]+"}
        else:
            match = rng.choice([{"prefix": "/"}, {"regex": ".*\\.png"}, {"regex": "/(api|x)/z"}])
        docs[f"r{i}"] = {
            "kind": "Route",
            "name": f"r{i}",
            "match": match,
            "backend": "s",
            "priority": rng.choice([0, 0, 0, 1]),
        }
    return docs


def random_path(rng: random.Random) -> str:
    segs = [
        rng.choice(["api", "shop", "img", "x", "zzz", "a.png"]),
        rng.choice(["s1", "s2", "s17", "v1", "z", "9"]),
        rng.choice(["t1", "t3", "t39", "9", "b.png"]),
        rng.choice(["1", "42", "q"]),
    ][: rng.randint(0, 4)]
    path = "/" + "/".join(segs)
    if rng.random() < 0.2:
        path += "/"
    if rng.random() < 0.2:
        path += "?q=/api/s1"
    return path


@pytest.mark.parametrize("seed", range(8))
def test_every_request_ends_in_a_scope_that_answers_as_the_whole_table(seed: int) -> None:
    rng = random.Random(seed)
    docs = random_table(rng, 600)
    routes = {name: parse_document(d) for name, d in docs.items()}
    catalog = Catalog(routes=routes, services={"s": parse_document(SVC)}, refused={})
    base = build_base(catalog, OPTS)
    assert base.depths, "the table must be big enough for some first segment to go deeper"
    whole = list(build_route_configuration(list(routes.values()), OPTS).virtual_hosts[0].routes)
    for _ in range(400):
        path = random_path(rng)
        assert first_match(routes_for(base, path), path) == first_match(whole, path), path


def test_a_crowded_first_segment_is_keyed_deeper_and_small_ones_are_not() -> None:
    routes = {
        f"r{i}": parse_document(
            {
                "kind": "Route",
                "name": f"r{i}",
                "match": {"prefix": f"/api/v1/svc{i}"},
                "backend": "s",
            }
        )
        for i in range(500)
    }
    routes["shop"] = parse_document(
        {"kind": "Route", "name": "shop", "match": {"prefix": "/shop"}, "backend": "s"}
    )
    catalog = Catalog(routes=routes, services={"s": parse_document(SVC)}, refused={})
    base = build_base(catalog, OPTS)
    # /api/v1/... : the second segment is the same everywhere, the third tells them apart.
    assert base.depths == {"api": 3}
    sizes = [len(c.virtual_hosts[0].routes) for c in route_configs(base).values()]
    assert max(sizes) < 30  # 500 routes over 64 buckets, not one table of 500
    assert [r.name for r in routes_for(base, "/api/v1/svc7/x?y=1")].count("r7") == 1


def test_scopes_are_fixed_and_each_names_its_route_configuration() -> None:
    names = [r["route_configuration_name"] for r in scope_resources()]
    assert len(names) == len(set(names)) == BUCKETS * MAX_DEPTH
    keys = [r["key"]["fragments"][0]["string_key"] for r in scope_resources()]  # type: ignore[index]
    assert "1:0" in keys and f"{MAX_DEPTH}:{BUCKETS - 1}" in keys


@pytest.mark.parametrize("seed", range(4))
def test_incremental_layout_equals_a_fresh_build_after_every_change(seed: int) -> None:
    """Route by route updates (including groups crossing the depth thresholds and back)
    give byte for byte what building everything again gives."""
    rng = random.Random(seed)
    docs = random_table(rng, 200)
    services = {"s": parse_document(SVC), "t": parse_document({**SVC, "name": "t"})}
    translator = Translator(OPTS)
    routes = {name: parse_document(d) for name, d in docs.items()}
    next_id = len(docs)
    seen: set[tuple[tuple[str, int], ...]] = set()
    moves = 0
    for step in range(40):
        action = rng.random()
        if action < 0.3 and routes:  # remove a few
            for name in rng.sample(sorted(routes), min(len(routes), rng.randint(1, 30))):
                del routes[name]
        elif action < 0.6:  # add a burst under one first segment
            first = rng.choice(["api", "burst", "x"])
            for _ in range(rng.randint(1, 90)):
                name = f"r{next_id}"
                next_id += 1
                routes[name] = parse_document(
                    {
                        "kind": "Route",
                        "name": name,
                        "match": {"prefix": f"/{first}/n{rng.randint(0, 300)}/m{next_id}"},
                        "backend": rng.choice(["s", "t"]),
                    }
                )
        else:  # change one
            name = rng.choice(sorted(routes))
            doc = random_table(rng, 1)["r0"]
            routes[name] = parse_document({**doc, "name": name, "backend": "t"})
        catalog = Catalog(routes=dict(routes), services=services, refused={})
        got = build_base(catalog, OPTS, translator=translator)
        whole = list(build_route_configuration(list(routes.values()), OPTS).virtual_hosts[0].routes)
        paths = [random_path(rng) for _ in range(40)] + [
            f"/{rng.choice(['api', 'burst', 'x'])}/n{rng.randint(0, 300)}/m{rng.randint(0, 900)}"
            for _ in range(40)
        ]
        # While routes move between placements, requests are answered as by the whole table.
        moves += translator.moving
        while True:
            for path in paths:
                assert first_match(routes_for(got, path), path) == first_match(whole, path), path
            settled = translator.settle(got, after=0)
            if settled is None:
                break
            got = settled
        fresh = build_base(catalog, OPTS)
        assert got.depths == fresh.depths, step
        assert got.route_clusters == fresh.route_clusters, step
        assert got.route_bytes == fresh.route_bytes, step
        seen.add(tuple(sorted(got.depths.items())))
    assert len(seen) >= 3  # groups went deeper and back
    assert moves > 0  # and some did so make-before-break, through the in-between state
