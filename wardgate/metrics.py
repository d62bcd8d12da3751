"""Every Prometheus metric wardgate exports, defined once and passed in.

With ``--workers N`` (N > 1) ``wardgate serve`` sets PROMETHEUS_MULTIPROC_DIR so that every
worker writes its figures there and ``/metrics``, whichever worker answers, adds them up.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclasses.dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    authz_decisions: Counter
    authz_seconds: Histogram
    ratelimit_decisions: Counter
    ratelimit_seconds: Histogram
    ratelimit_failures: Counter
    refused_clients: Gauge
    store_errors: Counter
    logins: Counter
    logouts: Counter
    xds_connected: Gauge
    xds_pushes: Counter
    xds_acks: Counter
    xds_nacks: Counter
    subscriptions: Gauge
    redis_may_evict: Gauge
    bans: Counter
    task_restarts: Counter
    banned_clients: Gauge
    ratelimit_overflow: Counter
    snapshot_builds: Counter
    snapshot_seconds: Histogram
    snapshot_reads: Counter
    documents_refused: Gauge
    documents: Gauge
    # External processing (extproc/processor.py): transform, cache, compose.
    extproc_messages: Counter
    extproc_seconds: Histogram
    extproc_errors: Counter
    transform_results: Counter
    cache_requests: Counter
    cache_bypass: Counter
    cache_stores: Counter
    compose_answers: Counter
    compose_parts: Counter
    jwks_fetches: Counter
    xds_stream_checks: Counter
    tls_certificate_loads: Counter
    # Session tickets (domain/tickets.py); Envoy counts its own fast-path decisions.
    tickets_issued: Counter
    ticket_keys: Gauge
    revoked_sessions: Gauge
    revocations_dropped: Counter
    # enforce: quota (extproc/quota.py)
    quota_requests: Counter
    quota_leases: Counter
    quota_leased: Counter
    quota_unleased: Counter
    quota_streams: Gauge
    quota_failures: Counter
    quota_buckets_dropped: Counter
    # Collectors computed when /metrics is read (e.g. the top rate-limited clients), in
    # multiprocess mode too.
    collectors: list[Any] = dataclasses.field(default_factory=list)


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition(metrics: Metrics) -> bytes:
    """The text /metrics serves: this process's registry, or all workers' figures."""
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in metrics.collectors:
            registry.register(collector)
        return bytes(generate_latest(registry))
    return bytes(generate_latest(metrics.registry))


def create_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    r = registry or CollectorRegistry()
    return Metrics(
        registry=r,
        authz_decisions=Counter(
            "wardgate_authz_decisions_total",
            "ext_authz decisions by outcome and credential method.",
            ["decision", "method", "reason"],
            registry=r,
        ),
        authz_seconds=Histogram(
            "wardgate_authz_check_seconds", "Time to answer one Check.", buckets=_FAST, registry=r
        ),
        ratelimit_decisions=Counter(
            "wardgate_ratelimit_decisions_total",
            "Rate-limit verdicts per rule: ok, near (under 20% left), over, shadow_over.",
            ["rule", "decision"],
            registry=r,
        ),
        ratelimit_seconds=Histogram(
            "wardgate_ratelimit_decision_seconds",
            "Time to answer one ShouldRateLimit.",
            buckets=_FAST,
            registry=r,
        ),
        ratelimit_failures=Counter(
            "wardgate_ratelimit_failures_total",
            "ShouldRateLimit calls answered by the failure mode because Redis could not answer.",
            ["mode"],
            registry=r,
        ),
        refused_clients=Gauge(
            "wardgate_ratelimit_refused_clients",
            "Distinct clients a rule refused in the current minute (all workers, HyperLogLog).",
            ["rule"],
            registry=r,
            multiprocess_mode="livemax",
        ),
        store_errors=Counter(
            "wardgate_store_errors_total", "Redis errors by component.", ["component"], registry=r
        ),
        logins=Counter(
            "wardgate_logins_total", "Login attempts by result.", ["result"], registry=r
        ),
        logouts=Counter(
            "wardgate_logouts_total",
            "Logouts by result: ok, csrf (a foreign Origin or Referer, refused).",
            ["result"],
            registry=r,
        ),
        xds_connected=Gauge(
            "wardgate_xds_connected_nodes",
            "Envoy ADS streams open now.",
            ["mode"],
            registry=r,
            multiprocess_mode="livesum",
        ),
        xds_pushes=Counter(
            "wardgate_xds_pushes_total", "xDS responses sent, by type.", ["type"], registry=r
        ),
        xds_acks=Counter("wardgate_xds_acks_total", "xDS ACKs, by type.", ["type"], registry=r),
        xds_nacks=Counter("wardgate_xds_nacks_total", "xDS NACKs, by type.", ["type"], registry=r),
        subscriptions=Gauge(
            "wardgate_subscriptions",
            "Whether a Redis subscription is up (1) or not (0): changes (document and "
            "registry announcements), keyspace (raw writes), revocations (credential caches). "
            "With several workers, the lowest.",
            ["name"],
            registry=r,
            multiprocess_mode="livemin",
        ),
        redis_may_evict=Gauge(
            "wardgate_redis_may_evict",
            "1 when the Redis of wardgate's data has a memory limit and a policy that evicts "
            "keys (maxmemory-policy other than noeviction).",
            registry=r,
            multiprocess_mode="livemax",
        ),
        bans=Counter(
            "wardgate_bans_total",
            "Client networks banned for being refused too often (the ban_* settings).",
            registry=r,
        ),
        task_restarts=Counter(
            "wardgate_task_restarts_total",
            "Background tasks that failed and were started again, by task.",
            ["task"],
            registry=r,
        ),
        banned_clients=Gauge(
            "wardgate_banned_clients",
            "Client networks on the ban list this process last published to Envoy.",
            registry=r,
            multiprocess_mode="livemax",
        ),
        ratelimit_overflow=Counter(
            "wardgate_ratelimit_overflow_total",
            "Requests counted on a rule's shared overflow counter: their client-chosen value "
            "came after ratelimit_max_clients others in the window.",
            ["rule"],
            registry=r,
        ),
        snapshot_builds=Counter(
            "wardgate_xds_snapshot_builds_total",
            "Snapshot builds by result (changed, unchanged, failed).",
            ["result"],
            registry=r,
        ),
        snapshot_seconds=Histogram(
            "wardgate_xds_snapshot_build_seconds",
            "Time to read, validate and translate the documents.",
            registry=r,
        ),
        snapshot_reads=Counter(
            "wardgate_xds_document_reads_total",
            "Builds by how the documents were read: by_name (the CLI's changes named them) "
            "or all (start, a raw write, the periodic re-read, a gap in the history).",
            ["how"],
            registry=r,
        ),
        documents_refused=Gauge(
            "wardgate_documents_refused", "Stored documents refused by validation now.", registry=r
        ),
        documents=Gauge(
            "wardgate_documents", "Valid documents served, by kind.", ["kind"], registry=r
        ),
        extproc_messages=Counter(
            "wardgate_extproc_messages_total",
            "ext_proc messages answered, by phase (request_headers, response_headers, "
            "response_body).",
            ["phase"],
            registry=r,
        ),
        extproc_seconds=Histogram(
            "wardgate_extproc_message_seconds",
            "Time to answer one ext_proc message, by phase (a cache miss waiting for another "
            "request's answer and a composition included).",
            ["phase"],
            buckets=_FAST,
            registry=r,
        ),
        extproc_errors=Counter(
            "wardgate_extproc_errors_total",
            "ext_proc streams ended by an error (bad_policy, internal); Envoy then applies "
            "the route's failure mode (its own count: http.wardgate.ext_proc.*).",
            ["reason"],
            registry=r,
        ),
        transform_results=Counter(
            "wardgate_transform_total",
            "Transform outcomes per route: json_filtered, json_not_json (passed untouched), "
            "json_refused_{malformed,too_large,encoding,partial} (502, fail closed), no_value and "
            "bad_value (a header whose placeholder had no usable value, removed).",
            ["route", "result"],
            registry=r,
        ),
        cache_requests=Counter(
            "wardgate_cache_requests_total",
            "GET and HEAD requests on cached routes: hit, hit_after_wait (another request's "
            "answer), miss (went upstream), bypass (not cacheable), unavailable (Redis down: "
            "went upstream).",
            ["route", "result"],
            registry=r,
        ),
        cache_bypass=Counter(
            "wardgate_cache_bypass_total",
            "Why a request was not answered from the cache: no_store, no_cache, "
            "authorization, no_identity, pass, wait_timeout.",
            ["route", "reason"],
            registry=r,
        ),
        cache_stores=Counter(
            "wardgate_cache_stores_total",
            "Answers stored, or why not (not_stored_status, _private, _no-store, _no-cache, "
            "_set_cookie, _vary, _max_age, _too_large, _store).",
            ["route", "result"],
            registry=r,
        ),
        compose_answers=Counter(
            "wardgate_compose_answers_total",
            "Composed answers: complete, partial (an optional part failed), failed (502), "
            "unavailable (503: the Envoy has no compose listener).",
            ["route", "result"],
            registry=r,
        ),
        compose_parts=Counter(
            "wardgate_compose_parts_total",
            "Composition parts by result: ok, timeout, unreachable, too_large, not_json, "
            "status_4xx, status_5xx, no_value.",
            ["route", "part", "result"],
            registry=r,
        ),
        jwks_fetches=Counter(
            "wardgate_jwks_fetches_total",
            "Fetches of Issuers' jwks_url by result: ok (new keys), unchanged, failed (kept "
            "the last keys, if any), unusable (no usable key in the answer; last keys kept).",
            ["result"],
            registry=r,
        ),
        xds_stream_checks=Counter(
            "wardgate_xds_stream_checks_total",
            "New ADS streams by how the snapshot was checked against the store before the "
            "first answer: current, synced (this replica was behind and caught up), "
            "unavailable (store unreachable and the Envoy has configuration: stream refused).",
            ["result"],
            registry=r,
        ),
        tls_certificate_loads=Counter(
            "wardgate_tls_certificate_loads_total",
            "Reads of the listener's certificate and key files by result: changed (a new pair "
            "published over SDS), unchanged, refused (unreadable or unusable; the last good "
            "pair stays).",
            ["result"],
            registry=r,
        ),
        tickets_issued=Counter(
            "wardgate_tickets_issued_total",
            "Session tickets set on a response, by where: login, authz (a renewal by ext_authz).",
            ["where"],
            registry=r,
        ),
        ticket_keys=Gauge(
            "wardgate_ticket_keys",
            "Ticket signing keys (public halves) this process last published to Envoy.",
            registry=r,
            multiprocess_mode="livemax",
        ),
        revoked_sessions=Gauge(
            "wardgate_revoked_sessions",
            "Revoked sessions on the list this process last published to Envoy.",
            registry=r,
            multiprocess_mode="livemax",
        ),
        revocations_dropped=Counter(
            "wardgate_revocations_dropped_total",
            "Revoked sessions left off the list sent to Envoy because it was full (their "
            "tickets pass until they expire).",
            registry=r,
        ),
        quota_requests=Counter(
            "wardgate_quota_requests_total",
            "Requests of quota rules as the Envoys report them (every 5 s), by rule and "
            "decision (allowed, denied).",
            ["rule", "decision"],
            registry=r,
        ),
        quota_leases=Counter(
            "wardgate_quota_leases_total",
            "Answers to Envoys' quota reports, per bucket: keep (the lease stays), grant (a "
            "new lease), deny (nothing left for that Envoy), abandon (the bucket was idle).",
            ["rule", "action"],
            registry=r,
        ),
        quota_leased=Counter(
            "wardgate_quota_leased_tokens_total",
            "Requests granted to Envoys in new leases, by rule.",
            ["rule"],
            registry=r,
        ),
        quota_unleased=Counter(
            "wardgate_quota_unleased_total",
            "Requests Envoys admitted beyond their leases (before a bucket's first lease, "
            "between a report and its answer, while wardgate was unreachable): the overshoot.",
            ["rule"],
            registry=r,
        ),
        quota_streams=Gauge(
            "wardgate_quota_streams",
            "Envoys' quota streams open now.",
            registry=r,
            multiprocess_mode="livesum",
        ),
        quota_failures=Counter(
            "wardgate_quota_failures_total",
            "Quota reports left unanswered because Redis could not settle them (Envoys keep "
            "their leases until they expire, then their local bound decides).",
            registry=r,
        ),
        quota_buckets_dropped=Counter(
            "wardgate_quota_buckets_dropped_total",
            "Buckets of an Envoy's quota report past the most one report is answered for "
            "(20,000): they get no lease, so only their local bound holds.",
            registry=r,
        ),
    )


# --- request statistics from Envoy's access log (wardgate/stats/) ------------------------------

# Request durations through the gateway: a millisecond to half a minute.
_REQUEST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclasses.dataclass(frozen=True)
class StatsMetrics:
    """The metrics made from Envoy's access log, labelled only from bounded sets
    (``stats/records.py``)."""

    route_requests: Counter
    route_received_bytes: Counter
    route_sent_bytes: Counter
    route_duration: Histogram
    access_log_entries: Counter
    access_log_streams: Gauge
    label_overflow: Counter
    usage_flushes: Counter
    decision_logs_suppressed: Counter
    trace_exports: Counter


def create_stats_metrics(r: CollectorRegistry) -> StatsMetrics:
    return StatsMetrics(
        route_requests=Counter(
            "wardgate_route_requests_total",
            "Requests through Envoy by route, method and status class (from the access log).",
            ["route", "method", "status_class"],
            registry=r,
        ),
        route_received_bytes=Counter(
            "wardgate_route_received_bytes_total",
            "Bytes received from clients (request headers and body) by route.",
            ["route"],
            registry=r,
        ),
        route_sent_bytes=Counter(
            "wardgate_route_sent_bytes_total",
            "Bytes sent to clients (response headers and body) by route.",
            ["route"],
            registry=r,
        ),
        route_duration=Histogram(
            "wardgate_route_request_duration_seconds",
            "Time from a request's first byte to its response's last, by route.",
            ["route"],
            buckets=_REQUEST,
            registry=r,
        ),
        access_log_entries=Counter(
            "wardgate_access_log_entries_total",
            "Access-log entries received from Envoy (one per request).",
            registry=r,
        ),
        access_log_streams=Gauge(
            "wardgate_access_log_streams",
            "Envoy access-log streams open now.",
            registry=r,
            multiprocess_mode="livesum",
        ),
        label_overflow=Counter(
            "wardgate_stats_overflow_total",
            "Requests counted under (other) because a bound was reached: route (distinct route "
            "labels per process), usage (distinct keys per flush).",
            ["kind"],
            registry=r,
        ),
        usage_flushes=Counter(
            "wardgate_usage_flushes_total",
            "Usage batches sent to Redis by result: ok, error (kept, sent again), dropped "
            "(too many waiting: figures lost).",
            ["result"],
            registry=r,
        ),
        decision_logs_suppressed=Counter(
            "wardgate_decision_logs_suppressed_total",
            "Refusal log lines left out because more than the allowed number per second came.",
            registry=r,
        ),
        trace_exports=Counter(
            "wardgate_trace_exports_total",
            "Span batches sent to the OTLP endpoint by result (ok, error).",
            ["result"],
            registry=r,
        ),
    )
