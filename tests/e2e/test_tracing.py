"""Tracing with WARDGATE_OTLP_ENDPOINT: Envoy's spans and wardgate's (Check, ShouldRateLimit,
xDS pushes) reach an OTLP receiver, and wardgate's calls join the trace Envoy started or the
one the client's traceparent named."""

from __future__ import annotations

import json
import secrets

import pytest

from tests.otlp_receiver import OtlpReceiver
from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_envoy_and_wardgate_spans_share_trace_ids(private_stack: Stack) -> None:
    s = private_stack
    with OtlpReceiver() as receiver:
        devstack.stop(s.procs.pop("wardgate"))
        s.start_wardgate(
            extra_env={
                "WARDGATE_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
                "WARDGATE_LOG_FORMAT": "json",
            }
        )
        s.apply(
            route("tr-auth", "/tr/auth", "echo", auth={"require": "session"}),
            route(
                "tr-limit",
                "/tr/limit",
                "echo",
                rate_limits=[{"by": "ip", "requests": 1000, "per": "minute"}],
            ),
        )
        # The tracer comes with a new listener: a connection opened before it arrived keeps
        # the old one (no tracing) until it closes. So wait for it, then connect.
        eventually(
            lambda: (
                "envoy.tracers.opentelemetry" in s.admin("/config_dump?resource=dynamic_listeners")
            ),
            timeout=15,
        )
        with s.client() as http:
            eventually(lambda: http.get("/tr/auth").status_code == 401, timeout=15)
            eventually(lambda: http.get("/tr/limit").status_code == 200, timeout=15)
            given = secrets.token_hex(16)
            parent = f"00-{given}-{secrets.token_hex(8)}-01"
            denied = http.get("/tr/auth", headers={"traceparent": parent})
            assert denied.status_code == 401
            request_id = denied.json()["request_id"]
            limited = http.get("/tr/limit", headers={"traceparent": parent})
            assert limited.status_code == 200

        def joined() -> bool:
            spans = [sp for sp in receiver.received() if sp.trace_id == given]
            envoy = {sp.span_id for sp in spans if sp.service == "wardgate-envoy"}
            mine = {sp.name: sp for sp in spans if sp.service == "wardgate"}
            if not envoy or not {
                "wardgate.authz.Check",
                "wardgate.ratelimit.ShouldRateLimit",
            } <= set(mine):
                return False
            check = mine["wardgate.authz.Check"]
            # Children of Envoy's spans (its ext_authz and rate-limit calls), in its trace.
            assert check.parent_id in envoy, (check, envoy)
            assert mine["wardgate.ratelimit.ShouldRateLimit"].parent_id in envoy
            assert check.attributes["wardgate.request_id"] == request_id
            assert check.attributes["wardgate.decision"] == "deny"
            return True

        eventually(joined, timeout=20, interval=0.3)
        names = {sp.name for sp in receiver.received() if sp.service == "wardgate"}
        assert any(n.startswith("wardgate.xds.push ") for n in names), names
        devstack.stop(s.procs.pop("wardgate"))
    # JSON log lines, one object each.
    lines = (s.workdir / "wardgate.log").read_text().splitlines()
    objects = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(o.get("message", "").startswith("wardgate serving") for o in objects)
