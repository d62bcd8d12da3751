"""The statistics' domain: access-log entries read, labels bounded, usage aggregated and
bounded, refusals logged within a budget, batches kept until the store takes them, the top
view's arithmetic, OTLP messages; hostile values never become labels or log lines as sent."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from prometheus_client import CollectorRegistry

from wardgate.errors import StoreError
from wardgate.metrics import create_stats_metrics
from wardgate.stats.als import request_of
from wardgate.stats.decision_log import DecisionLog, refusal_reason
from wardgate.stats.flusher import UsageFlusher
from wardgate.stats.logs import JsonFormatter
from wardgate.stats.records import (
    MAX_CLIENT_CHARS,
    NO_ROUTE,
    OTHER_ROUTE,
    Request,
    RouteLabels,
    client_of,
    method_label,
    status_class,
)
from wardgate.stats.route_metrics import RouteMetrics
from wardgate.stats.top_view import Scrape, quantile, rows
from wardgate.stats.usage import OVERFLOW_KEY, Batch, Totals, UsageKey, UsageMeter, hours_since


def req(**kw: object) -> Request:
    base: dict[str, object] = {
        "route": "r",
        "method": "GET",
        "status": 200,
        "bytes_in": 100,
        "bytes_out": 1000,
        "duration": 0.01,
        "start": 7200.0 + 30,
    }
    return Request(**{**base, **kw})  # type: ignore[arg-type]


def test_an_access_log_entry_becomes_a_request() -> None:
    e = accesslog_pb2.HTTPAccessLogEntry()
    c = e.common_properties
    c.route_name = "users-api"
    c.start_time.seconds = 3600
    c.duration.nanos = 250_000_000
    c.downstream_remote_address.socket_address.address = "203.0.113.9"
    c.response_flags.rate_limited = True
    c.metadata.filter_metadata["envoy.filters.http.ext_authz"].update(
        {"user": "ci-bot", "api_key": "ci-bot", "auth_method": "api_key"}
    )
    e.request.request_method = 3  # POST
    e.request.request_headers_bytes = 200
    e.request.request_body_bytes = 50
    e.request.request_id = "rid-1"
    e.response.response_code.value = 429
    e.response.response_headers_bytes = 120
    e.response.response_body_bytes = 80
    r = request_of(e)
    assert (r.route, r.method, r.status, r.bytes_in, r.bytes_out) == (
        "users-api",
        "POST",
        429,
        250,
        200,
    )
    assert (r.duration, r.start, r.address) == (0.25, 3600.0, "203.0.113.9")
    assert (r.user, r.api_key, r.rate_limited, r.request_id) == ("ci-bot", "ci-bot", True, "rid-1")
    assert client_of(r) == "api_key:ci-bot"
    assert request_of(accesslog_pb2.HTTPAccessLogEntry()).method == "OTHER"


GATE = {"envoy.filters.http.rbac": {"wardgate_native.shadow_engine_result": "allowed"}}
TICKET = {
    "envoy.filters.http.jwt_authn": {
        "wg_ticket": {"sub": "ann", "sid": "1" * 32, "roles": ["user"], "am": "session"}
    }
}
JWT = {
    "envoy.filters.http.jwt_authn": {"jwt|sub|groups|60": {"sub": "ada", "groups": ["reader"]}},
    "wardgate.identity": {"user": "ada", "roles": ",reader,", "method": "jwt"},
}


def logged(meta: dict[str, dict[str, object]], *, status: int = 200, details: str = "") -> Request:
    e = accesslog_pb2.HTTPAccessLogEntry()
    e.response.response_code_details = details
    e.common_properties.downstream_remote_address.socket_address.address = "203.0.113.9"
    for namespace, fields in meta.items():
        e.common_properties.metadata.filter_metadata[namespace].update(fields)
    e.response.response_code.value = status
    return request_of(e)


def test_a_ticket_envoy_decided_alone_names_its_user() -> None:
    """The fast path skips ext_authz: the user is the verified ticket's ``sub``."""
    r = logged({**TICKET, **GATE})
    assert (r.user, r.api_key, client_of(r)) == ("ann", "", "user:ann")
    limited = logged({**TICKET, **GATE}, status=429)
    assert client_of(limited) == "user:ann"


def test_a_revoked_tickets_refusal_names_nobody() -> None:
    """Envoy refuses a revoked ticket after the gate said the ticket decides (its payload and
    the gate's verdict are in the metadata): the 401 counts for the client's address, as
    ext_authz's refusal of an ended session does, not for the user the ticket named."""
    revoked = "rbac_access_denied_matched_policy[wardgate.revoked]"
    r = logged({**TICKET, **GATE}, status=401, details=revoked)
    assert (r.user, r.api_key, client_of(r)) == ("", "", "ip:203.0.113.9")
    # A route's roles refused it: the ticket is valid, its user is who asked.
    roles = "rbac_access_denied_matched_policy[wardgate.roles]"
    assert logged({**TICKET, **GATE}, status=403, details=roles).user == "ann"


def test_an_issuer_jwt_envoy_decided_alone_names_the_scripts_user() -> None:
    r = logged({**JWT, **GATE})
    assert (r.user, r.api_key, client_of(r)) == ("ada", "", "user:ada")
    # Beside a ticket (the gate let the JWT speak: a ticket never does beside a bearer token).
    assert logged({**TICKET, **JWT, **GATE}).user == "ada"


def test_identity_comes_from_whoever_decided_in_order() -> None:
    key = {"envoy.filters.http.ext_authz": {"user": "ci-bot", "api_key": "ci-bot"}}
    session = {"envoy.filters.http.ext_authz": {"user": "bob", "auth_method": "session"}}
    # ext_authz ran (a write, another credential beside the ticket): what it said stands.
    r = logged({**TICKET, **key})
    assert (r.user, r.api_key, client_of(r)) == ("ci-bot", "ci-bot", "api_key:ci-bot")
    assert logged({**TICKET, **session}).user == "bob"
    # ext_authz ran and refused: a verified ticket that did not decide names nobody, and
    # neither does a JWT payload the script did not accept, or the gate alone.
    denied = {"envoy.filters.http.rbac": {"wardgate_native.shadow_engine_result": "denied"}}
    for meta in (TICKET, {**TICKET, **denied}, {**JWT, **denied}, GATE):
        r = logged(meta, status=401)
        assert (r.user, r.api_key, client_of(r)) == ("", "", "ip:203.0.113.9"), meta
    unscripted = {"envoy.filters.http.jwt_authn": JWT["envoy.filters.http.jwt_authn"], **GATE}
    assert logged(unscripted).user == ""


def test_labels_come_from_bounded_sets() -> None:
    assert [status_class(s) for s in (0, 99, 200, 404, 503, 600)] == [
        "none",
        "none",
        "2xx",
        "4xx",
        "5xx",
        "none",
    ]
    assert method_label("GET") == "GET" and method_label("BREW") == "OTHER"
    labels = RouteLabels(limit=3)
    assert labels.label("") == NO_ROUTE
    assert [labels.label(f"r{i}") for i in range(5)] == ["r0", "r1", "r2", OTHER_ROUTE, OTHER_ROUTE]
    assert labels.label("r1") == "r1"  # known names keep their label
    assert labels.overflowed == 2
    # Names no document could have (a forged entry) never become labels.
    for hostile in ('a"}\nwardgate_up 1', "X" * 80, "Route", "ünicode", "(unmatched)"):
        assert labels.label(hostile) == OTHER_ROUTE


def test_client_names_are_cut_and_printable() -> None:
    c = client_of(req(user="evil\r\nx-injected: 1" + "z" * 500))
    assert c.startswith("user:evil??x-injected:?1")
    assert len(c) == MAX_CLIENT_CHARS and c.isprintable() and " " not in c
    assert client_of(req(address="")) == "ip:unknown"


def test_route_metrics_add_up_a_batch() -> None:
    sm = create_stats_metrics(CollectorRegistry())
    routes = RouteMetrics(metrics=sm, routes=RouteLabels(limit=1))
    routes.observe([req(), req(status=503), req(route="b"), req(route="")])
    get = sm.route_requests.labels
    assert get("r", "GET", "2xx")._value.get() == 1
    assert get("r", "GET", "5xx")._value.get() == 1
    assert get(OTHER_ROUTE, "GET", "2xx")._value.get() == 1
    assert get(NO_ROUTE, "GET", "2xx")._value.get() == 1
    assert sm.route_received_bytes.labels("r")._value.get() == 200
    assert sm.label_overflow.labels("route")._value.get() == 1
    assert sm.access_log_entries._value.get() == 4


def test_usage_is_aggregated_per_dimension_and_hour() -> None:
    meter = UsageMeter(max_keys=100)
    meter.observe(req(user="alice"))
    meter.observe(req(user="alice", start=7200.0 + 3600))  # the next hour
    meter.observe(req(api_key="bot", user="bot"))
    meter.observe(req(rate_limited=True, address="198.51.100.1", start=7260.0))
    batch = meter.take()
    assert batch.usage[UsageKey("user", "alice", 2)] == Totals(1, 100, 1000)
    assert batch.usage[UsageKey("user", "alice", 3)] == Totals(1, 100, 1000)
    assert batch.usage[UsageKey("api_key", "bot", 2)] == Totals(1, 100, 1000)
    assert batch.usage[UsageKey("route", "r", 2)] == Totals(3, 300, 3000)
    assert batch.limited == {(121, "ip:198.51.100.1"): 1}
    assert not meter.take()  # a new, empty batch


def test_a_flood_of_new_names_cannot_grow_a_worker() -> None:
    overflows = []
    meter = UsageMeter(max_keys=100, on_overflow=lambda: overflows.append(1))
    for i in range(1000):
        meter.observe(
            req(route="", user=f"u{i}", rate_limited=True, address=f"10.0.{i // 250}.{i % 250}")
        )
    batch = meter.take()
    assert len(batch.usage) <= 101 and len(batch.limited) <= 101
    assert batch.usage[UsageKey("user", OVERFLOW_KEY, 2)].requests == 900
    assert sum(batch.limited.values()) == 1000  # every refusal is still counted
    assert overflows


def test_hours_since_covers_every_overlapping_hour() -> None:
    assert hours_since(3 * 3600 + 10, 3600) == [2, 3]
    assert hours_since(3 * 3600, 86400) == list(range(-21, 4))


class FlakyStore:
    def __init__(self) -> None:
        self.fail = True
        self.applied: list[str] = []

    async def add(self, batch: Batch) -> None:
        if self.fail:
            raise StoreError("down")
        self.applied.append(batch.id)


def test_a_batch_the_store_refused_is_sent_again_first_with_its_id() -> None:
    meter = UsageMeter(max_keys=100)
    store = FlakyStore()
    results: list[str] = []
    flusher = UsageFlusher(meter=meter, store=store, interval=1, on_flush=results.append)

    async def main() -> None:
        meter.observe(req())
        assert not await flusher.flush()
        first = flusher._pending[0].id
        store.fail = False
        meter.observe(req())
        await flusher.close()
        assert flusher.pending == 0 and store.applied[0] == first and len(store.applied) == 2
        assert results == ["error", "ok", "ok"]

    asyncio.run(main())


def test_batches_waiting_are_bounded() -> None:
    meter = UsageMeter(max_keys=100)
    store = FlakyStore()
    results: list[str] = []
    flusher = UsageFlusher(
        meter=meter, store=store, interval=1, max_pending=2, on_flush=results.append
    )

    async def main() -> None:
        ids = []
        for _ in range(3):
            meter.observe(req())
            assert not await flusher.flush()
            ids.append(flusher._pending[-1].id)
        assert flusher.pending == 2 and results.count("dropped") == 1
        store.fail = False
        await flusher.close()
        assert store.applied == ids[1:]  # the oldest was dropped, and counted

    asyncio.run(main())


def test_refusals_are_logged_within_a_budget() -> None:
    now = [0.0]
    suppressed: list[int] = []
    log = DecisionLog(per_second=2, on_suppressed=suppressed.append, clock=lambda: now[0])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("wardgate.decisions")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        hostile = req(
            status=429,
            rate_limited=True,
            flags=("rate_limited",),
            user='x"\n{"event":"fake"}',
            request_id="r1",
        )
        for _ in range(5):
            log.observe(hostile)
        now[0] = 1.0
        log.observe(hostile)
        log.observe(req(status=503))  # an upstream's 503: not a refusal
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and len(suppressed) == 3
    record = json.loads(lines[0])
    assert record["event"] == "refused" and record["reason"] == "rate_limited"
    assert record["request_id"] == "r1" and record["status"] == 429
    assert "\n" not in record["client"] and record["client"].startswith("user:x")


def test_a_refusal_line_in_text_cannot_be_forged_or_colour_the_terminal() -> None:
    """The text format writes the message as it is: a request id (the client's own
    ``x-request-id`` where Envoy keeps it) or a route name reaches it cut and made visible."""
    log = DecisionLog(per_second=10, on_suppressed=lambda _n: None)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("wardgate.decisions")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log.observe(
            req(
                status=429,
                flags=("rate_limited",),
                route="r\x1b]0;owned\x07",
                request_id="\x1b[2J\rrefused ok: 200 admin by ip:1.2.3.4 (x)" + "z" * 5000,
            )
        )
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert line.count("\n") == 1 and "\r" not in line and "\x1b" not in line and "\x07" not in line
    assert len(line) < 400


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"flags": ("rate_limited",)}, "rate_limited"),
        ({"flags": ("rate_limit_service_error",)}, "ratelimit_unavailable"),
        ({"flags": ("unauthorized_details",), "status": 401}, "unauthorized"),
        ({"flags": ("unauthorized_details",), "status": 503}, "unavailable"),
        ({"details": "rbac_access_denied_matched_policy[none]"}, "address_refused"),
        ({"details": "rbac_access_denied_matched_policy[ip]"}, "address_refused"),
        # Envoy's own authorization: a revoked ticket, a route's roles (native_auth.py) ...
        (
            {"details": "rbac_access_denied_matched_policy[wardgate.revoked]", "status": 401},
            "unauthorized",
        ),
        (
            {"details": "rbac_access_denied_matched_policy[wardgate.roles]", "status": 403},
            "unauthorized",
        ),
        # ... and a transcoded path of another route's service, answered 404 (transcoder.py).
        (
            {"details": "rbac_access_denied_matched_policy[other-services]", "status": 404},
            "no_route",
        ),
        ({"flags": ("no_route_found",)}, "no_route"),
        ({"flags": ("upstream_request_timeout",)}, None),
    ],
)
def test_refusal_reasons(kw: dict[str, object], reason: str | None) -> None:
    assert refusal_reason(req(**kw)) == reason


def test_quantiles_and_rates_as_prometheus_reads_them() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.95, buckets) == pytest.approx(0.75)
    assert quantile(0.5, {float("inf"): 0.0}) is None
    text_a = 'wardgate_route_requests_total{route="a",method="GET",status_class="2xx"} 10\n'
    text_b = (
        'wardgate_route_requests_total{route="a",method="GET",status_class="2xx"} 30\n'
        'wardgate_route_requests_total{route="a",method="GET",status_class="5xx"} 10\n'
    )
    (row,) = rows(Scrape.parse(text_a, 0.0), Scrape.parse(text_b, 2.0))
    assert row.route == "a" and row.rate == 15.0 and row.mix == {"2xx": 2 / 3, "5xx": 1 / 3}
