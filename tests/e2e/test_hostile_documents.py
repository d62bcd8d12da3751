"""Hostile writes straight into Redis: one bad value is refused on its own, everything else
keeps working (issue 10, item 3)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support import Stack, eventually, route

pytestmark = pytest.mark.e2e


def _status(stack: Stack) -> dict[str, object]:
    result = stack.cli("status", "-o", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


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
