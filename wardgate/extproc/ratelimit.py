"""Rate limit ``ShouldRateLimit``: descriptors in, ``RateLimiter`` decision out."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2

from wardgate.domain.bans import AbuseMonitor
from wardgate.domain.ports import RefusalLog
from wardgate.domain.ratelimit import LimitRequest, RateLimiter, Verdict, parse_descriptor
from wardgate.errors import StoreError
from wardgate.metrics import Metrics

log = logging.getLogger("wardgate.ratelimit")
OK = rls_pb2.RateLimitResponse.Code.OK
OVER = rls_pb2.RateLimitResponse.Code.OVER_LIMIT
_UNITS = {1: "SECOND", 60: "MINUTE", 3600: "HOUR", 86400: "DAY"}


def _unit(period: int) -> int:
    # Envoy's limit carries a unit, not a period; a period of e.g. 30s reports as per-second
    # with the count scaled down (rounded up), the reset header stays exact.
    name = _UNITS.get(period, "SECOND")
    return int(rls_pb2.RateLimitResponse.RateLimit.Unit.Value(name))


def _requests_per_unit(req: LimitRequest) -> int:
    if req.period in _UNITS:
        return req.requests
    return max(1, -(-req.requests // req.period))


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        limiter: RateLimiter,
        metrics: Metrics,
        fail_open: bool,
        refusals: RefusalLog | None = None,
        abuse: AbuseMonitor | None = None,
    ) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._fail_open = fail_open
        self._refusals = refusals
        self._abuse = abuse
        self._pending: set[asyncio.Task[None]] = set()
        self.refused_rules: dict[str, float] = {}  # rule -> last refusal (for the reporter)

    def _log_refusals(self, refused: list[Verdict]) -> None:
        """Off the decision's path: each refused client is counted (distinct clients per
        rule), and the request is one strike against its client's address (bans) when its
        own counter refused it; a failure here costs a metric, never a decision."""
        if not refused or len(self._pending) > 1000:
            return
        now = time.time()
        for v in refused:
            self.refused_rules[v.request.rule] = now
        refusals, abuse = self._refusals, self._abuse
        network = next((v.request.network for v in refused if not v.overflow), None)

        async def record() -> None:
            if refusals is not None:
                try:
                    for v in refused:
                        await refusals.record(v.request.rule, v.request.client, now=now)
                except StoreError:
                    self._metrics.store_errors.labels("refusal_log").inc()
            if abuse is not None and network is not None:
                try:
                    await abuse.refused(network)
                except StoreError:
                    self._metrics.store_errors.labels("bans").inc()

        task = asyncio.create_task(record())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        started = time.perf_counter()
        parsed = [
            parse_descriptor([(e.key, e.value) for e in d.entries]) for d in request.descriptors
        ]
        requests = [p for p in parsed if p is not None]
        try:
            decision = await self._limiter.decide(requests)
        except StoreError as exc:
            self._metrics.store_errors.labels("ratelimit").inc()
            mode = "open" if self._fail_open else "closed"
            self._metrics.ratelimit_failures.labels(mode).inc()
            log.warning(
                "ratelimit: store unavailable (%s), failing %s",
                exc,
                mode,
                extra={"event": "store_error", "component": "ratelimit", "failure_mode": mode},
            )
            if self._fail_open:
                return rls_pb2.RateLimitResponse(overall_code=OK)
            return rls_pb2.RateLimitResponse(
                overall_code=OVER,
                response_headers_to_add=[base_pb2.HeaderValue(key="retry-after", value="1")],
            )
        finally:
            self._metrics.ratelimit_seconds.observe(time.perf_counter() - started)
        verdicts = iter(decision.verdicts)
        refused: list[Verdict] = []
        response = rls_pb2.RateLimitResponse(overall_code=OK if decision.allowed else OVER)
        for p in parsed:
            if p is None:
                response.statuses.add(code=OK)
                continue
            v = next(verdicts)
            if v.allowed:
                label = "ok" if v.remaining >= p.requests * 0.2 else "near"
            else:
                label = "shadow_over" if p.shadow else "over"
                if not p.shadow:
                    refused.append(v)
            self._metrics.ratelimit_decisions.labels(p.rule, label).inc()
            response.statuses.add(
                code=OK if v.allowed or p.shadow else OVER,
                current_limit=rls_pb2.RateLimitResponse.RateLimit(
                    requests_per_unit=_requests_per_unit(p),
                    unit=_unit(p.period),
                ),
                limit_remaining=v.remaining,
                duration_until_reset=duration_pb2.Duration(seconds=v.reset_seconds),
            )
        self._log_refusals(refused)
        if not decision.allowed:
            response.response_headers_to_add.append(
                base_pb2.HeaderValue(key="retry-after", value=str(max(1, decision.retry_after)))
            )
        return response
