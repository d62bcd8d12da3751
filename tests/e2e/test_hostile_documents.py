"""Hostile writes straight into Redis: one bad value is refused on its own, everything else
keeps working (issue 10, item 3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support import REGISTRY_TOKEN, Stack, eventually, route

pytestmark = pytest.mark.e2e


def _status(stack: Stack) -> dict[str, object]:
    result = stack.cli("status", "-o", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def _refusal(stack: Stack, key: str, reason: str) -> str:
    """The reason ``wardgate status`` gives for refusing ``key``, once it holds ``reason``."""
    found = str(_status(stack)["refused"].get(key, ""))  # type: ignore[attr-defined]
    assert reason in found, found
    return found


def test_a_value_that_is_not_utf8_is_refused_alone(stack: Stack) -> None:
    key = f"{stack.prefix}routes"
    r = stack.redis()
    r.hset(key, "not-utf8", b'{"kind": "Route", "name": "not-utf8"\xff}')
    r.hset(key, b"bad\xfename", b"{}")
    try:
        refused = eventually(lambda: _status(stack)["refused"], timeout=5)
        assert "not UTF-8" in refused["Route/not-utf8"]  # type: ignore[index]
        assert "Route/bad\\xfename" in refused  # type: ignore[operator]
        # Configuration changes still flow, and every command still answers.
        stack.apply(route("after-bad-bytes", "/after-bad-bytes", "echo"))
        with stack.client() as http:
            eventually(lambda: http.get("/after-bad-bytes").status_code == 200, timeout=3)
        for args in (["get", "routes"], ["get", "routes", "-o", "json"], ["history"]):
            result = stack.cli(*args)
            assert result.returncode == 0, (args, result.stderr)
            assert "Traceback" not in result.stderr
        deleted = stack.cli("delete", "route", "after-bad-bytes")
        assert deleted.returncode == 0, deleted.stderr
        ready = httpx.get(f"http://127.0.0.1:{stack.http_port}/readyz", timeout=3)
        assert ready.status_code == 200
    finally:
        r.hdel(key, "not-utf8", b"bad\xfename")
    eventually(lambda: not _status(stack)["refused"], timeout=5)


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "big"])
def test_a_key_file_that_is_not_a_small_regular_file_is_refused_without_a_stall(
    stack: Stack, tmp_path: Path, target: str
) -> None:
    """Issue 10, item 5: ``jwks_file`` naming a FIFO once hung the whole service, and
    /dev/zero would have exhausted its memory."""
    if target == "fifo":
        path = tmp_path / "keys.fifo"
        os.mkfifo(path)
    elif target == "big":
        path = tmp_path / "big.json"
        path.write_bytes(b" " * (2 << 20))
    else:
        path = Path(target)
    name = f"hostile-{target.strip('/').replace('/', '-')}"
    issuer = {
        "kind": "Issuer",
        "name": name,
        "issuer": f"https://{name}.example",
        "audiences": ["api"],
        "jwks_file": str(path),
    }
    stack.apply(issuer, route(f"{name}-r", f"/{name}", "echo", auth={"require": "jwt"}))
    reason = eventually(lambda: _status(stack)["refused"].get(f"Issuer/{name}"), timeout=8)  # type: ignore[attr-defined]
    assert "not a regular file" in reason or "larger than" in reason
    health = httpx.get(f"http://127.0.0.1:{stack.http_port}/healthz", timeout=3)
    assert health.status_code == 200  # the service is not stalled
    with stack.client() as http:
        eventually(lambda: http.get(f"/{name}").status_code == 401, timeout=5)
    assert stack.cli("delete", "route", f"{name}-r").returncode == 0
    deleted = stack.cli("delete", "issuer", name)
    assert deleted.returncode == 0, deleted.stderr
    eventually(lambda: f"Issuer/{name}" not in _status(stack)["refused"], timeout=8)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[" * 10_000, "nested too deeply"),
        ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n", "aliases"),
    ],
    ids=["deep", "aliases"],
)
def test_hostile_yaml_gets_one_error_line(
    stack: Stack, tmp_path: Path, text: str, reason: str
) -> None:
    """Issue 10, item 9: YAML nested 10,000 deep crashed ``apply`` with a traceback; nested
    aliases expand exponentially once written out."""
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    for command in ("apply", "validate"):
        result = stack.cli(command, "-f", str(path))
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and reason in result.stderr


def test_json_bodies_nested_too_deeply_are_400(stack: Stack) -> None:
    deep = b"[" * 10_000  # within every size limit: only its depth is hostile
    base = f"http://127.0.0.1:{stack.http_port}"
    json_type = {"content-type": "application/json"}
    login = httpx.post(f"{base}/auth/login", content=deep, headers=json_type, timeout=5)
    assert login.status_code == 400
    auth = {**json_type, "authorization": f"Bearer {REGISTRY_TOKEN}"}
    beat = httpx.post(f"{base}/registry/heartbeat", content=deep, headers=auth, timeout=5)
    assert beat.status_code == 400
    with stack.client() as http:  # and through Envoy
        assert http.post("/auth/login", content=deep, headers=json_type).status_code == 400


def test_cr_lf_in_a_cors_header_is_refused_and_never_reaches_a_response(
    stack: Stack, tmp_path: Path
) -> None:
    """Issue 10, item 4: the attack run's route, CR/LF in ``cors.allow_headers``, had Envoy
    write an injected Set-Cookie into preflight answers. Refused by ``apply``; refused when
    written raw, while Envoy keeps the last good policy. A lone surrogate written raw (JSON's
    escape) used to fail every build after it: refused alone, and changes still flow."""
    origin = "https://app.example.com"
    good = route(
        "cors-split",
        "/cors-split",
        "echo",
        cors={"allow_origins": [origin], "allow_headers": ["x-good"]},
    )
    stack.apply(good)
    preflight = {"origin": origin, "access-control-request-method": "GET"}

    def answer() -> httpx.Response:
        with stack.client() as http:
            resp = http.options("/cors-split", headers=preflight)
        assert resp.status_code == 200 and "access-control-allow-headers" in resp.headers
        return resp

    assert eventually(answer, timeout=5).headers["access-control-allow-headers"] == "x-good"
    bad = {**good, "cors": {"allow_origins": [origin], "allow_headers": ["x\r\nSet-Cookie: a=1"]}}
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = stack.cli("apply", "-f", str(path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "route/cors-split: cors.allow_headers.0: 'x\\r\\nSet-Cookie: a=1'" in lines[0]

    key = f"{stack.prefix}routes"
    r = stack.redis()
    surrogate = {**bad, "cors": {"allow_origins": [origin], "allow_headers": ["\ud800"]}}
    try:
        for value, reason in (
            (bad, "cors.allow_headers.0: 'x\\r\\nSet-Cookie: a=1' holds the control character"),
            (surrogate, "cors.allow_headers.0: '\\ud800' is not Unicode text"),
        ):
            r.hset(key, "cors-split", json.dumps(value))  # the surrogate as JSON's escape
            refused = eventually(lambda want=reason: _refusal(stack, "Route/cors-split", want))
            assert refused.endswith("(still serving the last good version)")
            assert "\n" not in refused and "\r" not in refused
            resp = answer()  # the last good policy, and nothing injected
            assert resp.headers["access-control-allow-headers"] == "x-good"
            assert "set-cookie" not in resp.headers
        # Configuration changes still flow past the refused document.
        stack.apply(route("cors-split-after", "/cors-split-after", "echo"))
        with stack.client() as http:
            eventually(lambda: http.get("/cors-split-after").status_code == 200, timeout=5)
    finally:
        r.hdel(key, "cors-split", "cors-split-after")
    eventually(lambda: "Route/cors-split" not in _status(stack)["refused"], timeout=5)  # type: ignore[operator]


def test_a_period_envoy_cannot_hold_is_refused_and_changes_keep_flowing(stack: Stack) -> None:
    """Issue 10 review: ``per: 999999999d`` was accepted, then failed every build."""
    huge = route(
        "huge-per",
        "/huge-per",
        "echo",
        rate_limits=[{"by": "ip", "requests": 10, "per": "999999999d"}],
    )
    path = stack.workdir / "huge.yaml"
    path.write_text(json.dumps(huge))
    refused = stack.cli("apply", "-f", str(path))
    assert refused.returncode == 1 and "at most 366d" in refused.stderr
    r = stack.redis()
    r.hset(f"{stack.prefix}routes", "huge-per", json.dumps(huge))
    try:
        stack.apply(route("after-huge", "/after-huge", "echo"))
        with stack.client() as http:
            eventually(lambda: http.get("/after-huge").status_code == 200, timeout=3)
        reason = eventually(lambda: _status(stack)["refused"].get("Route/huge-per"), timeout=5)  # type: ignore[attr-defined]
        assert "366d" in reason
        assert httpx.get(f"http://127.0.0.1:{stack.http_port}/readyz", timeout=3).status_code == 200
    finally:
        r.hdel(f"{stack.prefix}routes", "huge-per")
        stack.cli("delete", "route", "after-huge")
