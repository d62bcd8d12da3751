"""Statistics with several processes: `--workers 2` behind an Envoy with two worker threads
adds up to exactly the requests sent, in /metrics and in Redis; a worker stopped cleanly
writes what it had counted before it goes, and nothing twice."""

from __future__ import annotations

import pytest

from tests.e2e.test_statistics import entry, metrics_text, sample, usage, wait_for
from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_two_workers_add_up(private_stack: Stack) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("envoy-test"))
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate("--workers", "2")
    s.start_envoy(concurrency=2)
    s.apply(route("wk", "/wk", "echo"))
    with s.client() as http:
        eventually(lambda: http.get("/wk/warm").status_code == 200, timeout=15)
    sent = 1
    for _ in range(6):  # new connections: Envoy's worker threads each take some
        with s.client() as http:
            for _ in range(10):
                assert http.get("/wk/x").status_code == 200
                sent += 1

    def added_up() -> bool:
        # Whichever worker answers the scrape, it reports both workers' figures.
        text = metrics_text(s)
        return sample(text, "wardgate_route_requests_total", route="wk") == sent

    wait_for(added_up, timeout=20)
    wait_for(lambda: entry(usage(s, "--by", "route"), "route", "wk")["requests"] == sent)
    text = metrics_text(s)
    assert sample(text, "wardgate_route_request_duration_seconds_count", route="wk") == sent


def test_a_clean_restart_loses_nothing_and_counts_nothing_twice(private_stack: Stack) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    # Flushes only at the end: what reaches Redis is what the worker wrote as it stopped.
    slow = {"WARDGATE_USAGE_FLUSH_INTERVAL": "1h"}
    s.start_wardgate(extra_env=slow)
    s.apply(route("rs", "/rs", "echo"))
    with s.client() as http:
        eventually(lambda: http.get("/rs/warm").status_code == 200, timeout=15)
        for _ in range(20):
            assert http.get("/rs/x").status_code == 200
    # Envoy has delivered every entry (within its flush interval) ...
    wait_for(lambda: sample(metrics_text(s), "wardgate_route_requests_total", route="rs") == 21)
    assert usage(s, "--by", "route") == []  # ... and nothing is in Redis yet
    devstack.stop(s.procs.pop("wardgate"))  # SIGTERM: the last flush
    assert entry(usage(s, "--by", "route"), "route", "rs")["requests"] == 21
    s.start_wardgate(extra_env=slow)
    with s.client() as http:
        eventually(lambda: http.get("/rs/again").status_code == 200, timeout=15)
    wait_for(lambda: sample(metrics_text(s), "wardgate_route_requests_total", route="rs") >= 1)
    devstack.stop(s.procs.pop("wardgate"))
    assert entry(usage(s, "--by", "route"), "route", "rs")["requests"] == 22
