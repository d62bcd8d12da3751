"""One log line per request the gateway refused (authorization, rate limits, bans and IP
rules, no route), with its request id, from the access log: off the request path, and for
refusals Envoy makes on its own (local limits, bans) as well as wardgate's.

A client can make refusals as fast as it can send requests, so the lines are limited to
``per_second`` (a token bucket); the rest are counted (``wardgate_decision_logs_suppressed_
total``), never written. The client's name and Envoy's details are cut and made printable,
so a request cannot forge a line (``logs.py`` writes JSON when asked).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from wardgate.stats.records import Request, client_of
from wardgate.xds.native_auth import REVOKED_ACTION, ROLES_POLICY
from wardgate.xds.transcoder import OTHER_SERVICES_POLICY

log = logging.getLogger("wardgate.decisions")
_UNAUTHORIZED_POLICIES = frozenset({REVOKED_ACTION, ROLES_POLICY})


def refusal_reason(req: Request) -> str | None:
    """Why the gateway refused ``req``, or None when it did not (an upstream answer)."""
    flags = set(req.flags)
    if "rate_limited" in flags:
        return "rate_limited"
    if "rate_limit_service_error" in flags:
        return "ratelimit_unavailable"
    if "unauthorized_details" in flags:
        return "unavailable" if req.status == 503 else "unauthorized"
    if req.details.startswith("rbac_access_denied"):
        # Envoy's own RBAC refusals, by the policy that matched: a revoked ticket or missing
        # roles (xds/native_auth.py) are authorization, as when ext_authz refuses; a
        # transcoded path of another route's service is answered as no route (a 404).
        policy = req.details.partition("[")[2].removesuffix("]")
        if policy in _UNAUTHORIZED_POLICIES:
            return "unauthorized"
        if policy == OTHER_SERVICES_POLICY:
            return "no_route"
        return "address_refused"  # an IP rule of the route, or a ban
    if "no_route_found" in flags:
        return "no_route"
    return None


class DecisionLog:
    def __init__(
        self,
        *,
        per_second: float,
        on_suppressed: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = per_second
        self._tokens = per_second
        self._clock = clock
        self._last = clock()
        self._on_suppressed = on_suppressed

    def _allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def observe(self, req: Request) -> None:
        reason = refusal_reason(req)
        if reason is None:
            return
        if not self._allow():
            self._on_suppressed(1)
            return
        details = _visible(req.details, 120)
        route, request_id = _visible(req.route, 64), _visible(req.request_id, 64)
        log.info(
            "refused %s: %s %s by %s (%s)",
            reason,
            req.status,
            route or "-",
            client_of(req),
            request_id or "-",
            extra={
                "event": "refused",
                "reason": reason,
                "status": req.status,
                "route": route,
                "method": req.method,
                "client": client_of(req),
                "request_id": request_id,
                "details": details,
            },
        )


def _visible(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, anything but visible ASCII as ``?``: the text
    format writes it as it is (a request id can be the client's own ``x-request-id``)."""
    return "".join(c if " " < c <= "~" else "?" for c in text[:limit])
