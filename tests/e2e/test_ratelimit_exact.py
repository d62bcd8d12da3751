"""Exact under concurrency: two wardgate workers, two Envoys, many concurrent clients, and
exactly N requests pass a fixed window of N."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_exactly_n_pass_across_two_workers_and_two_envoys(private_stack: Stack) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate("--workers", "2")
    listen2, admin2 = devstack.free_port(), devstack.free_port()
    s.procs["envoy-2"] = devstack.start_envoy(
        workdir=s.workdir,
        node_id="envoy-2",
        listen_port=listen2,
        admin_port=admin2,
        wardgate_port=s.grpc_port,
        delta=True,
    )
    limit = 50
    s.apply(
        route(
            "exact",
            "/exact",
            "echo",
            rate_limits=[{"by": "route", "requests": limit, "per": "day"}],
        )
    )
    bases = [s.base, f"http://127.0.0.1:{listen2}"]
    for base in bases:
        eventually(
            lambda b=base: httpx.get(b + "/nothing", timeout=2).status_code == 404, timeout=10
        )
    # Routes are live on both Envoys before counting (the probe uses another path).
    s.apply(route("exact-ready", "/exact-ready", "echo"))
    for base in bases:
        eventually(
            lambda b=base: httpx.get(b + "/exact-ready", timeout=2).status_code == 200, timeout=10
        )

    async def fire() -> list[int]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
            requests = [client.get(bases[i % 2] + "/exact") for i in range(300)]
            return [r.status_code for r in await asyncio.gather(*requests)]

    codes = asyncio.run(fire())
    assert codes.count(200) == limit, codes.count(200)
    assert codes.count(429) == 300 - limit
