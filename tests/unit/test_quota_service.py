"""The RLQS servicer's answer to one report: what it leaves unanswered is counted."""

from __future__ import annotations

import asyncio
from typing import Any

from envoy.service.rate_limit_quota.v3 import rlqs_pb2
from prometheus_client import CollectorRegistry

from wardgate.domain.quota import MAX_BUCKETS_PER_REPORT, QuotaService
from wardgate.extproc.quota import RateLimitQuotaService
from wardgate.metrics import create_metrics


class _NoLedger:
    async def settle(self, checks: Any, *, now_ms: int) -> list[Any]:
        raise AssertionError("no bucket here is a quota rule's")  # pragma: no cover


def test_buckets_past_the_most_a_report_answers_are_counted() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    service = RateLimitQuotaService(
        quota=QuotaService(ledger=_NoLedger(), key_for=lambda rule, client: f"{rule}|{client}"),
        metrics=metrics,
    )
    reports = rlqs_pb2.RateLimitQuotaUsageReports(domain="wardgate")
    for i in range(MAX_BUCKETS_PER_REPORT + 7):
        usage = reports.bucket_quota_usages.add(num_requests_allowed=1)
        usage.bucket_id.bucket["other"] = str(i)  # not one of wardgate's rules: no lease
    assert asyncio.run(service._answer("envoy-1", reports)) is None
    assert registry.get_sample_value("wardgate_quota_buckets_dropped_total") == 7


def test_a_report_within_the_bound_drops_nothing() -> None:
    registry = CollectorRegistry()
    service = RateLimitQuotaService(
        quota=QuotaService(ledger=_NoLedger(), key_for=lambda rule, client: f"{rule}|{client}"),
        metrics=create_metrics(registry),
    )
    reports = rlqs_pb2.RateLimitQuotaUsageReports(domain="wardgate")
    reports.bucket_quota_usages.add().bucket_id.bucket["other"] = "x"
    assert asyncio.run(service._answer("envoy-1", reports)) is None
    assert registry.get_sample_value("wardgate_quota_buckets_dropped_total") == 0
