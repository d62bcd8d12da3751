"""Routes written to Redis go live through a real Envoy, and bad ones never reach it."""

from __future__ import annotations

import json
import time

import pytest

from tests.support import Stack, echo, eventually, route, service

pytestmark = pytest.mark.e2e


def test_route_applied_with_cli_is_served_within_a_second_and_leaves_on_delete(
    stack: Stack,
) -> None:
    """Served within a second of the CLI's write (its return: the write, the history entry
    and the announcement are done then). The CLI's own start, ~0.9 s of Python imports on
    this machine, is not part of that second: counted in, the test failed on a busy
    machine on any version."""
    with stack.client() as http:
        assert http.get("/live-cli/x").status_code == 404
        stack.apply(route("live-cli", "/live-cli", "echo"))
        started = time.monotonic()
        eventually(lambda: http.get("/live-cli/x").status_code == 200, timeout=1.0, interval=0.01)
        served_after = time.monotonic() - started
        assert echo(http.get("/live-cli/a/b"))["path"] == "/live-cli/a/b"
        result = stack.cli("delete", "route", "live-cli")
        assert result.returncode == 0, result.stderr
        assert "route/live-cli deleted" in result.stdout
        eventually(lambda: http.get("/live-cli/x").status_code == 404, timeout=1.0, interval=0.01)
    assert served_after < 1.0


def test_raw_hset_is_picked_up_like_a_cli_change(stack: Stack) -> None:
    doc = route("live-raw", "/live-raw", "echo")
    r = stack.redis()
    with stack.client() as http:
        r.hset(f"{stack.prefix}routes", "live-raw", json.dumps(doc))
        eventually(lambda: http.get("/live-raw").status_code == 200, timeout=1.0, interval=0.01)
        r.hdel(f"{stack.prefix}routes", "live-raw")
        eventually(lambda: http.get("/live-raw").status_code == 404, timeout=1.0, interval=0.01)


def _authz_checks(stack: Stack) -> float:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{stack.http_port}/metrics", timeout=3).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("wardgate_authz_decisions_total{")
    )


def test_not_found_has_the_json_error_body(stack: Stack) -> None:
    before = _authz_checks(stack)
    with stack.client() as http:
        resp = http.get("/no/such/route")
        for _ in range(5):
            http.post("/nor/this", content=b"x")
    assert _authz_checks(stack) == before  # Envoy answers unknown paths without a callout
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["error"] == "not_found"
    assert body["message"]
    assert len(body["request_id"]) >= 16


def test_prefix_matches_whole_path_segments_and_rewrites(stack: Stack) -> None:
    stack.apply(route("seg", "/seg/api", "echo", rewrite_prefix="/inner"))
    with stack.client() as http:
        eventually(lambda: http.get("/seg/api").status_code == 200, timeout=2)
        assert echo(http.get("/seg/api/users"))["path"] == "/inner/users"
        assert http.get("/seg/apiX").status_code == 404


def test_methods_and_headers_narrow_a_route(stack: Stack) -> None:
    stack.apply(
        route(
            "narrow",
            "/narrow",
            "echo",
            match={"prefix": "/narrow", "methods": ["GET"], "headers": {"x-api-version": "v2"}},
        )
    )
    with stack.client() as http:
        eventually(
            lambda: http.get("/narrow", headers={"x-api-version": "v2"}).status_code == 200,
            timeout=2,
        )
        assert http.get("/narrow").status_code == 404
        assert http.post("/narrow", headers={"x-api-version": "v2"}).status_code == 404


def test_invalid_document_is_refused_by_the_cli_and_nothing_changes(stack: Stack) -> None:
    stack.apply(route("keep", "/keep", "echo"))
    before = stack.redis().hgetall(f"{stack.prefix}routes")
    bad = stack.workdir / "bad.yaml"
    bad.write_text(
        "kind: Route\nname: keep\nmatch: {prefix: /keep2}\nbackend: echo\n---\n"
        "kind: Route\nname: broken\nmatch: {prefix: nope}\nbackend: echo\n"
    )
    result = stack.cli("apply", "-f", str(bad))
    assert result.returncode == 1
    assert "route/broken" in result.stderr and "must start with '/'" in result.stderr
    assert stack.redis().hgetall(f"{stack.prefix}routes") == before
    missing = stack.workdir / "missing.yaml"
    missing.write_text(
        "kind: Route\nname: orphan\nmatch: {prefix: /orphan}\nbackend: no-such-service\n"
    )
    result = stack.cli("apply", "-f", str(missing))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "no-such-service does not exist" in result.stderr
    assert stack.redis().hgetall(f"{stack.prefix}routes") == before
    with stack.client() as http:
        assert http.get("/keep").status_code == 200
        assert http.get("/keep2").status_code == 404


def test_raw_invalid_document_is_refused_alone_and_shown_in_status(stack: Stack) -> None:
    stack.apply(route("steady", "/steady", "echo"))
    r = stack.redis()
    with stack.client() as http:
        eventually(lambda: http.get("/steady").status_code == 200, timeout=2)
        r.hset(
            f"{stack.prefix}routes",
            "rawbad",
            json.dumps(
                {
                    "kind": "Route",
                    "name": "rawbad",
                    "match": {"prefix": "/rawbad"},
                    "backend": "echo",
                    "timeout": "soon",
                }
            ),
        )
        r.hset(f"{stack.prefix}routes", "rawjunk", "{not json")
        r.hset(f"{stack.prefix}routes", "rawgood", json.dumps(route("rawgood", "/rawgood", "echo")))
        eventually(lambda: http.get("/rawgood").status_code == 200, timeout=2)
        assert http.get("/steady").status_code == 200
        assert http.get("/rawbad").status_code == 404

        def refused() -> bool:
            status = json.loads(stack.cli("status", "-o", "json").stdout)
            return "Route/rawbad" in status["refused"] and "Route/rawjunk" in status["refused"]

        eventually(refused, timeout=3)
        text = stack.cli("status").stdout
        assert "Route/rawbad: timeout" in text
        assert "not valid JSON" in text
        r.hdel(f"{stack.prefix}routes", "rawbad", "rawjunk", "rawgood")


def test_status_lists_the_connected_envoy_and_what_it_acked(stack: Stack) -> None:
    def connected() -> dict:
        status = json.loads(stack.cli("status", "-o", "json").stdout)
        envoys = [e for e in status["envoys"] if e["node"] == "envoy-test"]
        assert envoys and envoys[0]["types"]["RouteConfiguration"]["acked_version"]
        return envoys[0]

    envoy = eventually(connected, timeout=5, interval=0.3)
    for t in ("Cluster", "Listener", "RouteConfiguration"):
        assert envoy["types"][t]["acked_version"] == envoy["types"][t]["sent_version"]


def test_services_translate_to_clusters_envoy_accepts(stack: Stack) -> None:
    stack.apply(
        service(
            "full",
            stack.upstream_port,
            protocol="http",
            lb="least_request",
            health_check={"path": "/healthz", "interval": "1s"},
            circuit_breaker={
                "max_connections": 100,
                "max_pending_requests": 10,
                "max_requests": 100,
                "max_retries": 3,
            },
            outlier_detection={"consecutive_5xx": 5, "base_ejection_time": "30s"},
        ),
        route(
            "full",
            "/full",
            "full",
            timeout="2s",
            retries={"attempts": 2, "on": ["5xx", "reset"]},
            cors={"allow_origins": ["https://app.example.com"], "allow_credentials": True},
            ip_deny=["203.0.113.0/24"],
            max_body_bytes=1024,
        ),
    )
    with stack.client() as http:
        eventually(lambda: http.get("/full").status_code == 200, timeout=3)
        big = http.post("/full", content=b"x" * 4096)
        assert big.status_code == 413
        assert big.json()["error"] == "payload_too_large"
        assert http.post("/full", content=b"x" * 100).status_code == 200
    assert "full::" in stack.admin("/clusters")


def test_cors_preflight_is_answered_by_envoy(stack: Stack) -> None:
    stack.apply(
        route(
            "cors",
            "/cors",
            "echo",
            match={"prefix": "/cors", "methods": ["POST"]},
            auth={"require": "session"},
            cors={
                "allow_origins": ["https://app.example.com"],
                "allow_credentials": True,
                "max_age": "10m",
            },
        )
    )
    with stack.client() as http:
        headers = {"origin": "https://app.example.com", "access-control-request-method": "POST"}
        resp = eventually(
            lambda: (r := http.options("/cors", headers=headers)).status_code == 200 and r,
            timeout=3,
        )
        assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
        assert resp.headers["access-control-allow-credentials"] == "true"
        assert resp.headers["access-control-max-age"] == "600"
        other = http.options("/cors", headers={**headers, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_a_bad_raw_write_keeps_the_last_good_version_served(stack: Stack) -> None:
    stack.apply(route("lastgood", "/lastgood", "echo"))
    r = stack.redis()
    with stack.client() as http:
        eventually(lambda: http.get("/lastgood").status_code == 200, timeout=2)
        broken = {**route("lastgood", "/lastgood-v2", "echo"), "timeout": "whenever"}
        r.hset(f"{stack.prefix}routes", "lastgood", json.dumps(broken))

        def refused() -> bool:
            status = json.loads(stack.cli("status", "-o", "json").stdout)
            reason = status["refused"].get("Route/lastgood", "")
            return "still serving the last good version" in reason

        eventually(refused, timeout=3)
        assert http.get("/lastgood").status_code == 200
        assert http.get("/lastgood-v2").status_code == 404
        # A good write replaces it as usual.
        r.hset(
            f"{stack.prefix}routes",
            "lastgood",
            json.dumps(route("lastgood", "/lastgood-v3", "echo")),
        )
        eventually(lambda: http.get("/lastgood-v3").status_code == 200, timeout=2)
        assert http.get("/lastgood").status_code == 404


@pytest.mark.parametrize("path", ["/pn//admin", "/pn/./admin", "/pn/%61dmin", "/pn/x/../admin"])
def test_odd_spellings_of_a_protected_path_do_not_reach_a_public_route(
    stack: Stack, path: str
) -> None:
    stack.apply(
        route("pn-public", "/pn", "echo"),
        route("pn-admin", "/pn/admin", "echo", auth={"require": "session", "roles": ["admin"]}),
    )
    with stack.client() as http:
        eventually(lambda: http.get("/pn/admin").status_code == 401, timeout=3)
        resp = http.get(path)
    assert resp.status_code in (401, 307), (path, resp.status_code, resp.text)


def test_host_names_match_whatever_their_case(stack: Stack) -> None:
    stack.apply(
        route(
            "hostcase",
            "/hostcase",
            "echo",
            match={"prefix": "/hostcase", "hosts": ["admin.example.com"]},
        )
    )
    with stack.client() as http:
        eventually(
            lambda: http.get("/hostcase", headers={"host": "admin.example.com"}).status_code == 200,
            timeout=3,
        )
        assert http.get("/hostcase", headers={"host": "ADMIN.Example.COM"}).status_code == 200
        assert http.get("/hostcase", headers={"host": "other.example.com"}).status_code == 404
