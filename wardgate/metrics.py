"""Every Prometheus metric wardgate exports, defined once and passed in.

With ``--workers N`` (N > 1) ``wardgate serve`` sets PROMETHEUS_MULTIPROC_DIR so that every
worker writes its figures there and ``/metrics``, whichever worker answers, adds them up.
"""

from __future__ import annotations

import dataclasses
import os

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
    documents_refused: Gauge
    documents: Gauge
    # enforce: quota (extproc/quota.py)
    quota_requests: Counter
    quota_leases: Counter
    quota_leased: Counter
    quota_unleased: Counter
    quota_streams: Gauge
    quota_failures: Counter


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition(metrics: Metrics) -> bytes:
    """The text /metrics serves: this process's registry, or all workers' figures."""
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
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
        documents_refused=Gauge(
            "wardgate_documents_refused", "Stored documents refused by validation now.", registry=r
        ),
        documents=Gauge(
            "wardgate_documents", "Valid documents served, by kind.", ["kind"], registry=r
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
    )
