"""ext_authz ``Check``: protobuf in, ``Authorizer`` decision out, protobuf back."""

from __future__ import annotations

import logging
import time

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from wardgate.domain.authz import Allow, Authorizer, Deny, RequestFacts, RoutePolicy
from wardgate.domain.sessions import IDENTITY_HEADERS
from wardgate.errors import StoreError
from wardgate.extproc.responses import error_body
from wardgate.metrics import Metrics

log = logging.getLogger("wardgate.authz")
OVERWRITE = base_pb2.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
_GRPC_CODE = {401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED}


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=OVERWRITE
    )


_CHALLENGES = {
    "session": 'Cookie realm="wardgate"',
    "jwt": 'Bearer realm="wardgate"',
    "any": 'Bearer realm="wardgate"',
}


def denied(
    status: int, code: str, message: str, request_id: str, require: str = "session"
) -> external_auth_pb2.CheckResponse:
    headers = [_header("content-type", "application/json"), _header("cache-control", "no-store")]
    challenge = _CHALLENGES.get(require)
    if status == 401 and challenge:
        if code == "invalid_token":
            challenge += ', error="invalid_token"'
        headers.append(_header("www-authenticate", challenge))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=_GRPC_CODE.get(status, code_pb2.UNAVAILABLE), message=code),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=headers,
            body=error_body(code, message, request_id),
        ),
    )


def allowed(decision: Allow) -> external_auth_pb2.CheckResponse:
    ok = external_auth_pb2.OkHttpResponse()
    meta = None
    if decision.identity is not None:
        ident = decision.identity
        ok.headers.extend(
            [
                _header("x-user-id", ident.user),
                _header("x-user-roles", ",".join(ident.roles)),
                _header("x-auth-method", ident.method),
            ]
        )
        meta = struct_pb2.Struct()
        fields = {"user": ident.user, "auth_method": ident.method}
        if ident.method == "api_key":
            fields |= {"api_key": ident.user, "tier": ident.tier or "default"}
        meta.update(fields)
    else:
        ok.headers_to_remove.extend(IDENTITY_HEADERS)
    if decision.cookie is not None:
        if decision.cookie:
            ok.headers.append(_header("cookie", decision.cookie))
        else:
            ok.headers_to_remove.append("cookie")
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK), ok_response=ok, dynamic_metadata=meta
    )


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, *, authorizer: Authorizer, metrics: Metrics, fail_open: bool) -> None:
        self._authorizer = authorizer
        self._metrics = metrics
        self._fail_open = fail_open
        self._policies: dict[tuple[tuple[str, str], ...], RoutePolicy] = {}

    def _policy(self, ext: dict[str, str]) -> RoutePolicy:
        key = tuple(sorted(ext.items()))
        policy = self._policies.get(key)
        if policy is None:
            policy = RoutePolicy.from_context(ext)
            if len(self._policies) < 10_000:
                self._policies[key] = policy
        return policy

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
        http = request.attributes.request.http
        headers = http.headers
        request_id = headers.get("x-request-id", http.id)
        policy = self._policy(dict(request.attributes.context_extensions))
        facts = RequestFacts(
            method=http.method, host=http.host, path=http.path, headers=headers, scheme=http.scheme
        )
        try:
            decision = await self._authorizer.decide(policy, facts)
        except StoreError as exc:
            self._metrics.store_errors.labels("authz").inc()
            log.warning(
                "authz: store unavailable: %s",
                exc,
                extra={"event": "store_error", "component": "authz", "request_id": request_id},
            )
            if self._fail_open:
                self._metrics.authz_decisions.labels("allow", "none", "store_error").inc()
                return allowed(Allow(None))
            self._metrics.authz_decisions.labels("error", "none", "store_error").inc()
            return denied(
                503, "unavailable", "authorization is unavailable; retry shortly", request_id
            )
        finally:
            self._metrics.authz_seconds.observe(time.perf_counter() - started)
        if isinstance(decision, Deny):
            self._metrics.authz_decisions.labels("deny", policy.require, decision.code).inc()
            return denied(
                decision.status, decision.code, decision.message, request_id, policy.require
            )
        method = decision.identity.method if decision.identity else "none"
        self._metrics.authz_decisions.labels("allow", method, "ok").inc()
        return allowed(decision)
