"""Scoped routes through a real Envoy: the Lua script's key agrees with wardgate's placement
at every depth, and a client cannot pick the scope."""

from __future__ import annotations

import pytest

from tests.support import Stack, echo, eventually, route, service
from wardgate.domain.catalog import Catalog
from wardgate.domain.documents import parse_document
from wardgate.xds.assemble import build_base
from wardgate.xds.scope_key import BUCKETS, MAX_DEPTH, SCOPE_HEADER
from wardgate.xds.translate import TranslateOptions

OPTS = TranslateOptions()

pytestmark = pytest.mark.e2e


def _answer(http: object, path: str, **kw: object) -> str:
    resp = http.get(path, **kw)  # type: ignore[attr-defined]
    return str(echo(resp)["path"])


def test_routes_at_every_depth_are_served_and_the_order_holds(stack: Stack) -> None:
    # 80 routes under /deep/v1/: enough for "deep" to be keyed three segments deep.
    docs = [
        route(f"deep-{i}", f"/deep/v1/svc{i}", "echo", rewrite_prefix=f"/got/svc{i}")
        for i in range(80)
    ]
    docs.append(route("deep-root", "/deep", "echo", rewrite_prefix="/got/root"))
    docs.append(route("deep-v2", "/deep/v2", "echo", rewrite_prefix="/got/v2"))
    docs.append(
        {
            "kind": "Route",
            "name": "deep-exact",
            "match": {"path": "/deep/v1"},
            "backend": "echo",
        }
    )
    docs.append(
        {
            "kind": "Route",
            "name": "deep-regex",
            "match": {"regex": "/deep/v1/svc1[0-9]/special"},
            "backend": "echo",
            "priority": 5,
            "auth": {"require": "session"},
        }
    )
    # What wardgate makes of them: "deep" keyed by three segments (so the script descends).
    routes = {d["name"]: parse_document(d) for d in docs}
    svc = parse_document(service("echo", 1))
    base = build_base(Catalog(routes=routes, services={"echo": svc}, refused={}), OPTS)
    assert base.depths == {"deep": 3}
    stack.apply(*docs)
    with stack.client() as http:
        eventually(lambda: http.get("/deep/v1/svc79/x").status_code == 200, timeout=2.0)
        assert _answer(http, "/deep/v1/svc5/x") == "/got/svc5/x"
        assert _answer(http, "/deep/v1/svc79?next=/deep/v1/svc3") == "/got/svc79?next=/deep/v1/svc3"
        assert _answer(http, "/deep/v1/svc80/x") == "/got/root/v1/svc80/x"  # only /deep matches
        assert _answer(http, "/deep") == "/got/root"
        assert _answer(http, "/deep/v2/a") == "/got/v2/a"
        assert _answer(http, "/deep/v1") == "/deep/v1"  # the exact path, not /deep
        # The higher-priority regex beats the prefix route in the same scope.
        assert http.get("/deep/v1/svc12/special").status_code == 401
        assert _answer(http, "/deep/v1/svc12/other") == "/got/svc12/other"
        # Upstreams never see the scope key.
        assert SCOPE_HEADER not in echo(http.get("/deep/v1/svc5"))["headers"]


def test_long_segments_are_keyed_alike_by_envoy_and_wardgate(stack: Stack) -> None:
    # Only the first 64 bytes of a segment are hashed, on both sides.
    first = "l" * 62 + "%C3%A9" + "tail"
    stack.apply(route("long-seg", f"/{first}/end", "echo", rewrite_prefix="/got/long"))
    with stack.client() as http:
        eventually(lambda: http.get(f"/{first}/end/x").status_code == 200, timeout=2.0)
        assert _answer(http, f"/{first}/end/x") == "/got/long/x"
        assert http.get(f"/{first[:-1]}/end/x").status_code == 404


def test_a_client_sent_scope_key_changes_nothing(stack: Stack) -> None:
    stack.apply(
        route("pick-open", "/pick", "echo"),
        route("pick-locked", "/pick/locked", "echo", auth={"require": "session"}),
    )
    with stack.client() as http:
        eventually(lambda: http.get("/pick/x").status_code == 200, timeout=2.0)
        # Every key there is: the protected route stays protected, whatever the client sends.
        for depth in range(1, MAX_DEPTH + 1):
            for b in range(BUCKETS):
                resp = http.get("/pick/locked", headers={SCOPE_HEADER: f"{depth}:{b}"})
                assert resp.status_code == 401, (depth, b)


def _has_marker(stack: Stack, segment: str) -> bool:
    import httpx

    dump = httpx.get(
        f"http://127.0.0.1:{stack.admin_port}/config_dump?resource=dynamic_route_configs",
        timeout=5,
    ).text
    return f"wardgate.scope/{segment}" in dump


def test_a_segment_going_deeper_moves_its_routes_without_a_miss(stack: Stack) -> None:
    """80 routes arrive under /mv: its routes move to scopes keyed by two segments, make
    before break. A client hammering an existing /mv route never gets anything but 200."""
    import threading

    stack.apply(route("mv-keep", "/mv/keep", "echo"))
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with stack.client() as http:
            while not stop.is_set():
                statuses.append(http.get("/mv/keep/x").status_code)

    with stack.client() as http:
        eventually(lambda: http.get("/mv/keep/x").status_code == 200, timeout=2.0)
        assert not _has_marker(stack, "mv")
        worker = threading.Thread(target=hammer, daemon=True)
        worker.start()
        try:
            stack.apply(*[route(f"mv-{i}", f"/mv/n{i}", "echo") for i in range(80)])
            eventually(lambda: http.get("/mv/n79/x").status_code == 200, timeout=2.0)
            # First step: the routes are in both placements, requests still go the old way.
            assert not _has_marker(stack, "mv")
            # The marker comes in the second step, once Envoys had time to take the first.
            eventually(lambda: _has_marker(stack, "mv"), timeout=6.0, interval=0.05)
            eventually(lambda: http.get("/mv/n3").status_code == 200, timeout=2.0)
            n = len(statuses)
            eventually(lambda: len(statuses) > n + 50, timeout=5.0)
        finally:
            stop.set()
            worker.join(timeout=5)
    assert len(statuses) > 100
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
