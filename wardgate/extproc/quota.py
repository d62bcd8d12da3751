"""The Rate Limit Quota Service (``StreamRateLimitQuotas``): Envoys' usage reports in,
leases out (``domain/quota.py``).

One stream per Envoy (its ``rate_limit_quota`` filters share it). Each report is answered
with one action per bucket of wardgate's: the lease as a token bucket that holds the lease's
requests and practically never refills (a new lease is a new bucket; its serial changes the
fill interval by a nanosecond, which Envoy 1.40 compares but does not use, so Envoy replaces
the bucket even when the count is the same), ``DENY_ALL`` when nothing is left for that Envoy,
or abandon. Every action lives ``LEASE_TTL_S``; each report renews it.

When Redis cannot settle a report it is left unanswered (counted): the Envoy keeps its leases
until they expire, then its local bound decides (docs/DECISIONS.md 52).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from envoy.service.rate_limit_quota.v3 import rlqs_pb2, rlqs_pb2_grpc

from wardgate.domain.quota import (
    LEASE_TTL_S,
    MAX_BUCKETS_PER_REPORT,
    BucketUsage,
    LeaseKind,
    QuotaService,
    Settled,
)
from wardgate.errors import StoreError
from wardgate.metrics import Metrics

log = logging.getLogger("wardgate.quota")
_BucketAction = rlqs_pb2.RateLimitQuotaResponse.BucketAction
# A lease's bucket refills one request every ten years: the lease is what it holds.
NEVER_S = 10 * 365 * 86400
_ACTION = {
    LeaseKind.KEEP: "keep",
    LeaseKind.GRANT: "grant",
    LeaseKind.DENY: "deny",
    LeaseKind.ABANDON: "abandon",
}


def bucket_action(bucket_id: rlqs_pb2.BucketId, settled: Settled) -> Any:
    """The answer for one bucket (a ``RateLimitQuotaResponse.BucketAction``)."""
    action = _BucketAction(bucket_id=bucket_id)
    lease = settled.lease
    if lease.kind == LeaseKind.ABANDON:
        action.abandon_action.SetInParent()
        return action
    assignment = action.quota_assignment_action
    assignment.assignment_time_to_live.seconds = LEASE_TTL_S
    strategy = assignment.rate_limit_strategy
    if lease.kind == LeaseKind.DENY or lease.tokens < 1:
        strategy.blanket_rule = strategy.DENY_ALL
        return action
    bucket = strategy.token_bucket
    bucket.max_tokens = lease.tokens
    bucket.tokens_per_fill.value = 1
    bucket.fill_interval.seconds = NEVER_S
    bucket.fill_interval.nanos = lease.serial % 2
    return action


class RateLimitQuotaService(rlqs_pb2_grpc.RateLimitQuotaServiceServicer):  # type: ignore[misc]
    def __init__(self, *, quota: QuotaService, metrics: Metrics) -> None:
        self._quota = quota
        self._metrics = metrics

    async def StreamRateLimitQuotas(
        self,
        request_iterator: AsyncIterator[rlqs_pb2.RateLimitQuotaUsageReports],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rlqs_pb2.RateLimitQuotaResponse]:
        holder = secrets.token_hex(8)  # Envoy's reports carry no node id: the stream is it
        self._metrics.quota_streams.inc()
        try:
            async for reports in request_iterator:
                response = await self._answer(holder, reports)
                if response is not None:
                    yield response
        finally:
            self._metrics.quota_streams.dec()

    async def _answer(
        self, holder: str, reports: rlqs_pb2.RateLimitQuotaUsageReports
    ) -> rlqs_pb2.RateLimitQuotaResponse | None:
        ids: dict[tuple[tuple[str, str], ...], rlqs_pb2.BucketId] = {}
        parsed = []
        for u in reports.bucket_quota_usages:
            entries = dict(u.bucket_id.bucket)
            parsed.append(BucketUsage(entries, u.num_requests_allowed, u.num_requests_denied))
            ids[_key(entries)] = u.bucket_id
        if len(parsed) > MAX_BUCKETS_PER_REPORT:  # the rest get no lease: their local bound alone
            dropped = len(parsed) - MAX_BUCKETS_PER_REPORT
            self._metrics.quota_buckets_dropped.inc(dropped)
            log.warning(
                "quota: a report of %s held %d buckets; %d left without a lease",
                holder,
                len(parsed),
                dropped,
            )
        try:
            settled = await self._quota.settle(holder, parsed)
        except StoreError as exc:
            self._metrics.store_errors.labels("quota").inc()
            self._metrics.quota_failures.inc()
            log.warning("quota: store unavailable (%s); report left unanswered", exc)
            return None
        if not settled:
            return None
        response = rlqs_pb2.RateLimitQuotaResponse()
        m = self._metrics
        for s in settled:
            rule = s.request.rule
            if s.usage.allowed:
                m.quota_requests.labels(rule, "allowed").inc(s.usage.allowed)
            if s.usage.denied:
                m.quota_requests.labels(rule, "denied").inc(s.usage.denied)
            m.quota_leases.labels(rule, _ACTION[s.lease.kind]).inc()
            if s.lease.kind == LeaseKind.GRANT:
                m.quota_leased.labels(rule).inc(s.lease.tokens)
            if s.lease.unleased:
                m.quota_unleased.labels(rule).inc(s.lease.unleased)
            response.bucket_action.append(bucket_action(ids[_key(s.usage.entries)], s))
        return response


def _key(entries: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(entries.items()))
