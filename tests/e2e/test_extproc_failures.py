"""What each route does when the external processor or its Redis cannot answer (issue 12):
Redis stopped mid-traffic bypasses the cache; a processor past its deadline or gone lets
enrichment and the cache through (fail open) and refuses what hides fields or composes (fail
closed), as Envoy counts; an Envoy without a compose listener answers compositions 503."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_extproc import metric, start_upstream, stat, xp_route
from tests.support import Stack, eventually, service
from wardgate import devstack

pytestmark = pytest.mark.e2e
EXTPROC = "http.wardgate.ext_proc.wardgate"


def routes() -> list[dict[str, Any]]:
    return [
        xp_route(
            "fo-enrich", "/fo/enrich", transform={"request_headers": {"set": {"x-t": "{route}"}}}
        ),
        xp_route("fo-hide", "/fo/hide", transform={"response_json": {"exclude": ["password"]}}),
        xp_route("fo-cache", "/fo/cache", cache={"ttl": "60s"}),
        {
            "kind": "Route",
            "name": "fo-dash",
            "match": {"path": "/fo/dash", "methods": ["GET"]},
            "compose": {"a": {"backend": "xp-up", "path": "/a"}},
        },
    ]


def test_each_route_fails_as_documented(private_stack: Stack, tmp_path: Path) -> None:
    s = private_stack
    port = devstack.free_port()
    s.procs["xp-up"] = start_upstream(port, tmp_path / "xp-upstream.log")
    s.apply(service("xp-up", port), *routes())
    http = httpx.Client(base_url=s.base, timeout=10)
    eventually(lambda: http.get("/fo/cache/warm").headers.get("x-cache") == "MISS", timeout=5)
    assert http.get("/fo/cache/warm").headers["x-cache"] == "HIT"
    assert http.get("/fo/dash").status_code == 200

    # An Envoy whose bootstrap gives no compose listener: compositions are 503, clearly.
    other_port = devstack.free_port()
    s.procs["envoy-nocompose"] = devstack.start_envoy(
        workdir=s.workdir,
        node_id="envoy-nocompose",
        listen_port=other_port,
        admin_port=devstack.free_port(),
        wardgate_port=s.grpc_port,
        compose_port=0,
    )
    other = httpx.Client(base_url=f"http://127.0.0.1:{other_port}", timeout=10)
    eventually(lambda: other.get("/fo/dash").status_code == 503, timeout=10)
    assert "compose_port" in other.get("/fo/dash").json()["message"]
    other.close()

    # Redis stopped mid-traffic: the cache is bypassed, never an error.
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=s.base, timeout=10) as client:
            while not stop.is_set():
                got = client.get("/fo/cache/warm")
                statuses.append((got.status_code, got.headers.get("x-cache", "")))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        eventually(lambda: len(statuses) >= 5, timeout=10)
        devstack.stop(s.procs.pop("redis-server"))
        seen = len(statuses)
        eventually(lambda: len(statuses) >= seen + 20, timeout=20)
    finally:
        stop.set()
        worker.join()
    assert {code for code, _ in statuses} == {200}
    assert statuses[-1] == (200, "MISS")  # from the upstream while Redis is gone
    assert metric(s, "wardgate_cache_requests_total", result="unavailable", route="fo-cache") > 0

    # The processor past its deadline (paused): open routes pass, closed ones are refused.
    wardgate = s.procs["wardgate"]
    timeouts = stat(s, f"{EXTPROC}.message_timeouts")
    os.kill(wardgate.pid, signal.SIGSTOP)
    try:
        # At once: each waits out Envoy's deadline (extproc_timeout, 2 s in tests).
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            enriched, cached, hidden, composed = pool.map(
                lambda args: httpx.get(s.base + args[0], headers=args[1], timeout=20),
                [
                    ("/fo/enrich/a", {"x-t": "forged"}),
                    ("/fo/cache/x", {}),
                    ("/fo/hide/a", {}),
                    ("/fo/dash", {}),
                ],
            )
        assert enriched.status_code == 200 and "x-t" not in enriched.json()["headers"]
        assert cached.status_code == 200
        assert hidden.status_code == 504 and "hunter2" not in hidden.text
        assert composed.status_code == 504
    finally:
        os.kill(wardgate.pid, signal.SIGCONT)
    assert stat(s, f"{EXTPROC}.message_timeouts") >= timeouts + 4

    # The processor gone: the same, with 503 for the closed ones.
    allowed = stat(s, f"{EXTPROC}.failure_mode_allowed")
    devstack.stop(s.procs.pop("wardgate"))
    enriched = http.get("/fo/enrich/a", headers={"x-t": "forged"})
    assert enriched.status_code == 200 and "x-t" not in enriched.json()["headers"]
    hidden = http.get("/fo/hide/a")
    assert hidden.status_code == 503 and hidden.json()["error"] == "unavailable"
    assert "hunter2" not in hidden.text
    assert http.get("/fo/dash").status_code == 503
    assert stat(s, f"{EXTPROC}.failure_mode_allowed") > allowed
    http.close()


def test_a_compose_listener_on_every_address_is_reached_at_the_envoys_address(
    private_stack: Stack, tmp_path: Path
) -> None:
    """Envoy in another container or pod: its compose listener binds 0.0.0.0 and wardgate
    sends the parts to the address the Envoy connects from; without the key, 404 there."""
    s = private_stack
    port = devstack.free_port()
    s.procs["xp-up"] = start_upstream(port, tmp_path / "xp-upstream.log")
    s.apply(service("xp-up", port), *routes())
    listen, compose = devstack.free_port(), devstack.free_port()
    s.procs["envoy-anywhere"] = devstack.start_envoy(
        workdir=s.workdir,
        node_id="envoy-anywhere",
        listen_port=listen,
        admin_port=devstack.free_port(),
        wardgate_port=s.grpc_port,
        compose_port=compose,
        compose_address="0.0.0.0",
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{listen}", timeout=10) as http:
        eventually(lambda: http.get("/fo/dash").status_code == 200, timeout=10)
        assert http.get("/fo/dash").json()["a"]["path"] == "/a"
    with httpx.Client(base_url=f"http://127.0.0.1:{compose}", timeout=5) as http:
        assert http.get("/a", headers={"x-wardgate-part": "fo-dash/a"}).status_code == 404


def test_the_processor_lost_after_the_response_began_never_passes_a_hidden_field(
    private_stack: Stack, tmp_path: Path
) -> None:
    """The processor answered the request and the response headers, then stops answering
    (paused, then gone) before the body: Envoy held the headers (the body is buffered for
    it), so a route that hides fields answers an error, never the unfiltered body; the cache
    route passes it on."""
    s = private_stack
    port = devstack.free_port()
    s.procs["xp-up"] = start_upstream(port, tmp_path / "xp-upstream.log")
    s.apply(service("xp-up", port), *routes())
    http = httpx.Client(base_url=s.base, timeout=20)
    eventually(lambda: http.get("/fo/hide/warm").status_code == 200, timeout=5)
    wardgate = s.procs["wardgate"]

    def midway(lose: Any) -> tuple[httpx.Response, httpx.Response]:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            hidden = pool.submit(http.get, "/fo/hide/l", params={"late": 1.5})
            cached = pool.submit(http.get, "/fo/cache/l", params={"late": 1.5})
            time.sleep(0.8)  # the response headers are answered; the body comes at 1.5 s
            lose()
            return hidden.result(), cached.result()

    try:
        hidden, cached = midway(lambda: os.kill(wardgate.pid, signal.SIGSTOP))
    finally:
        os.kill(wardgate.pid, signal.SIGCONT)
    assert hidden.status_code == 504 and "hunter2" not in hidden.text
    assert cached.status_code == 200 and cached.json()["password"] == "hunter2"

    def die() -> None:  # no goodbye: no stream is finished
        gone = s.procs.pop("wardgate")
        gone.kill()
        gone.wait(5)

    hidden, cached = midway(die)
    assert hidden.status_code == 503 and "hunter2" not in hidden.text
    assert cached.status_code == 200 and cached.json()["password"] == "hunter2"
    http.close()
