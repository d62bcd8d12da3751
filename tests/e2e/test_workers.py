"""wardgate serve --workers 2: both processes answer Envoy; /metrics adds their figures up."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_two_workers_share_the_ports_and_the_metrics(private_stack: Stack) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate("--workers", "2")
    s.apply(route("wk", "/wk", "echo", auth={"require": "session"}))
    with s.client() as http:
        eventually(lambda: http.get("/wk").status_code == 401, timeout=10)

        def denied_total() -> float:
            text = httpx.get(f"http://127.0.0.1:{s.http_port}/metrics", timeout=3).text
            found = re.findall(
                r"^wardgate_authz_decisions_total"
                r'\{decision="deny",method="session",reason="unauthenticated"\} (\S+)$',
                text,
                re.M,
            )
            return float(found[0]) if found else 0.0

        before = denied_total()
        for _ in range(40):
            assert http.get("/wk").status_code == 401
        # Whichever worker answers the scrape, it reports both workers' decisions.
        for _ in range(4):
            assert denied_total() - before == 40
    pid = s.procs["wardgate"].pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = f.read().split()
    workers = []
    for child in children:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                workers.append(child)
    assert len(workers) == 2
