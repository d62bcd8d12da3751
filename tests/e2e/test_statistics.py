"""Statistics through a real Envoy: Envoy's access log reaches wardgate, whose /metrics then
carries per-route counters, bytes and durations; usage lands in Redis and `wardgate usage`
adds it up; rate-limited clients are counted and named; refusals are logged with their
request id; `wardgate top` draws the routes."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.support import Stack, eventually, route

pytestmark = pytest.mark.e2e


def metrics_text(s: Stack) -> str:
    return httpx.get(f"http://127.0.0.1:{s.http_port}/metrics", timeout=5).text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` whose labels include ``labels`` (summed), 0 if none."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', head))
        if head.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def usage(s: Stack, *args: str) -> list[dict[str, object]]:
    result = s.cli("usage", "-o", "json", *args)
    assert result.returncode == 0, result.stderr
    entries: list[dict[str, object]] = json.loads(result.stdout)
    return entries


def entry(entries: list[dict[str, object]], by: str, key: str) -> dict[str, object]:
    found = [e for e in entries if e["by"] == by and e["key"] == key]
    assert len(found) == 1, entries
    return found[0]


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    eventually(check, timeout=timeout, interval=0.2)


def test_per_route_counters_bytes_and_durations_move_with_traffic(stack: Stack) -> None:
    s = stack
    name = f"st-{uuid.uuid4().hex[:6]}"
    s.apply(route(name, f"/{name}", "echo"))
    with s.client() as http:
        # The route is new: every figure under its name comes from this test (one 200 here).
        eventually(lambda: http.get(f"/{name}/warm").status_code == 200, timeout=10)
        base = ""
        body = b"x" * 5000
        for _ in range(5):
            assert http.get(f"/{name}/a").status_code == 200
        sent = 0
        for _ in range(3):
            r = http.post(f"/{name}/b", content=body)
            assert r.status_code == 200
            sent += len(r.content)

    def moved() -> bool:
        now = metrics_text(s)

        def d(metric: str, **labels: str) -> float:
            return sample(now, metric, **labels) - sample(base, metric, **labels)

        gets = d("wardgate_route_requests_total", route=name, method="GET", status_class="2xx")
        posts = d("wardgate_route_requests_total", route=name, method="POST", status_class="2xx")
        if (gets, posts) != (6, 3):
            return False
        received = d("wardgate_route_received_bytes_total", route=name)
        out = d("wardgate_route_sent_bytes_total", route=name)
        # Headers count too: each request's are well under 1 KiB here.
        assert 3 * len(body) < received < 3 * len(body) + 8 * 1024, received
        assert out > sent, (out, sent)
        assert d("wardgate_route_request_duration_seconds_count", route=name) == 9
        assert d("wardgate_route_request_duration_seconds_sum", route=name) > 0
        assert d("wardgate_route_request_duration_seconds_bucket", route=name, le="+Inf") == 9
        return True

    wait_for(moved)


def test_unmatched_requests_count_under_a_label_of_their_own(stack: Stack) -> None:
    s = stack
    base = sample(metrics_text(s), "wardgate_route_requests_total", route="(unmatched)")
    with s.client() as http:
        for i in range(3):
            assert http.get(f"/no-such-route-{uuid.uuid4().hex}/{i}").status_code == 404
    wait_for(
        lambda: (
            sample(metrics_text(s), "wardgate_route_requests_total", route="(unmatched)") - base
            >= 3
        )
    )


def test_usage_totals_match_the_requests_sent(stack: Stack) -> None:
    s = stack
    tag = uuid.uuid4().hex[:6]
    name, user, key_name = f"us-{tag}", f"user-{tag}", f"bot-{tag}"
    s.apply(route(name, f"/{name}", "echo", auth={"require": "any"}))
    added = s.cli("users", "add", user, "--role", "user", "--password-stdin", stdin="pw-" + tag * 3)
    assert added.returncode == 0, added.stderr
    created = s.cli("keys", "create", "--name", key_name, "--role", "user")
    assert created.returncode == 0, created.stderr
    api_key = created.stdout.strip().splitlines()[-1]
    with s.client() as http:
        eventually(lambda: http.get(f"/{name}/x").status_code == 401, timeout=10)
        login = http.post("/auth/login", json={"username": user, "password": "pw-" + tag * 3})
        assert login.status_code == 200, login.text
        body = b"y" * 1000
        for _ in range(4):
            assert http.post(f"/{name}/s", content=body).status_code == 200
        http.cookies.clear()
        for _ in range(3):
            r = http.get(f"/{name}/k", headers={"x-api-key": api_key})
            assert r.status_code == 200

    def counted() -> bool:
        by_user = usage(s, "--by", "user", "--since", "1h")
        mine = [e for e in by_user if e["key"] == user]
        if not mine or mine[0]["requests"] != 4:
            return False
        assert 4 * len(body) < int(mine[0]["bytes_in"]) < 4 * len(body) + 8 * 1024  # type: ignore[call-overload]
        keys = usage(s, "--by", "api_key")
        if entry(keys, "api_key", key_name)["requests"] != 3:
            return False
        everything = usage(s)
        # The route saw the 401s before the route went live too, and the login is not on it.
        per_route = entry(everything, "route", name)
        assert int(per_route["requests"]) >= 7  # type: ignore[call-overload]
        assert {e["by"] for e in everything} >= {"user", "api_key", "route"}
        assert set(per_route) == {"by", "key", "requests", "bytes_in", "bytes_out"}
        return True

    wait_for(counted)


def test_rate_limited_clients_are_counted_named_and_logged(stack: Stack) -> None:
    s = stack
    name = f"rl-{uuid.uuid4().hex[:6]}"
    s.apply(route(name, f"/{name}", "echo", rate_limits=[{"by": "ip", "requests": 2, "per": "1h"}]))
    with s.client() as http:
        eventually(lambda: http.get(f"/{name}/x").status_code in (200, 429), timeout=10)
        codes = [http.get(f"/{name}/x") for _ in range(5)]
    refused = [r for r in codes if r.status_code == 429]
    assert len(refused) >= 4
    request_id = refused[-1].json()["request_id"]

    def reported() -> bool:
        text = metrics_text(s)
        return (
            sample(text, "wardgate_ratelimited_clients") >= 1
            and sample(text, "wardgate_ratelimited_client_requests", client="ip:127.0.0.1") >= 4
        )

    wait_for(reported)
    # The refusal log names the request (from the access log: Envoy flushes it every second,
    # so the line may come after the counts).
    line = re.compile(rf"refused rate_limited: 429 {name} by ip:127\.0\.0\.1 \({request_id}\)")
    wait_for(lambda: line.search((s.workdir / "wardgate.log").read_text()) is not None)


def test_top_shows_the_routes(stack: Stack) -> None:
    s = stack
    name = f"tp-{uuid.uuid4().hex[:6]}"
    s.apply(route(name, f"/{name}", "echo"))
    with s.client() as http:
        eventually(lambda: http.get(f"/{name}/x").status_code == 200, timeout=10)
    # `--once` scrapes twice, --interval apart: traffic flows all the while.
    import threading

    done = threading.Event()

    def traffic() -> None:
        with s.client() as http:
            while not done.is_set():
                http.get(f"/{name}/y")
                done.wait(0.05)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        result = s.cli("top", "--once", "--interval", "3")
    finally:
        done.set()
        t.join()
    assert result.returncode == 0, result.stderr
    assert name in result.stdout, result.stdout
    assert "most rate-limited clients" in result.stdout


def test_hostile_requests_make_no_labels_and_forge_no_ids(stack: Stack) -> None:
    """Random paths, methods and a client-chosen x-request-id: /metrics gains no label from
    them, and the refusal log carries the id Envoy made, not the one sent."""
    s = stack
    marker = uuid.uuid4().hex
    with s.client() as http:
        for i in range(20):
            http.request("BREW" if i % 2 else "GET", f"/{marker}-{i}")
        r = http.get(f"/{marker}-x", headers={"x-request-id": f"forged-{marker}"})
        assert r.status_code == 404
        assert r.json()["request_id"] != f"forged-{marker}"
    wait_for(lambda: sample(metrics_text(s), "wardgate_route_requests_total", method="OTHER") >= 10)
    assert marker not in metrics_text(s)
    assert f"forged-{marker}" not in (s.workdir / "wardgate.log").read_text()


@pytest.mark.parametrize(
    "args",
    [
        ("usage", "--since", "0s"),
        ("usage", "--since", "soon"),
        ("usage", "--since", "500d"),
        ("usage", "--by", "ip"),
        ("top", "--interval", "0"),
        ("top", "--url", "http://127.0.0.1:1/metrics", "--once"),
    ],
)
def test_bad_arguments_get_one_line_and_a_failure(stack: Stack, args: tuple[str, ...]) -> None:
    result = stack.cli(*args)
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
