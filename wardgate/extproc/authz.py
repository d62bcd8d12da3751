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
from wardgate.domain.origins import request_scheme
from wardgate.domain.sessions import IDENTITY_HEADERS
from wardgate.domain.tickets import TicketSigner, cookie_header, ticket_sid
from wardgate.errors import StoreError
from wardgate.extproc.responses import error_body
from wardgate.metrics import Metrics

log = logging.getLogger("wardgate.authz")
OVERWRITE = base_pb2.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
APPEND = base_pb2.HeaderValueOption.HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
JWT_NS = "envoy.filters.http.jwt_authn"  # native_auth.JWT_NS: the verified ticket, if any
TICKET_PAYLOAD = "wg_ticket"  # native_auth.TICKET_PAYLOAD
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
        # roles as ",a,b,": the routes' role check (RBAC, native_auth.py) looks for ",role,".
        fields = {
            "user": ident.user,
            "auth_method": ident.method,
            "roles": "," + ",".join(ident.roles) + ",",
        }
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


class TicketRenewal:
    """A fresh session ticket on the answer to a request that its session authorized, unless
    the request's own ticket (verified by Envoy, seen in the metadata) is for the same
    session and has more than half its life left. When none can be minted, a ticket of
    another session on the request is cleared."""

    def __init__(self, *, signer: TicketSigner, metrics: Metrics, cookie_secure: bool) -> None:
        self._signer = signer
        self._metrics = metrics
        self._secure = cookie_secure
        self._policy = signer.policy

    @staticmethod
    def _current(request: external_auth_pb2.CheckRequest) -> tuple[str, float] | None:
        """The (sid, exp) of the ticket Envoy verified on this request, if any."""
        namespaces = request.attributes.metadata_context.filter_metadata
        if JWT_NS not in namespaces:
            return None
        fields = namespaces[JWT_NS].fields
        if TICKET_PAYLOAD not in fields:
            return None
        ticket = fields[TICKET_PAYLOAD].struct_value.fields
        exp = ticket["exp"].number_value if "exp" in ticket else 0.0
        return (ticket["sid"].string_value if "sid" in ticket else "", exp)

    def headers(
        self, request: external_auth_pb2.CheckRequest, decision: Allow
    ) -> list[base_pb2.HeaderValueOption]:
        ident = decision.identity
        if ident is None or ident.method != "session" or not ident.session:
            return []
        current = self._current(request)
        same = current is not None and current[0] == ticket_sid(ident.session)
        if same and current is not None and current[1] - time.time() > self._policy.ttl / 2:
            return []
        ticket = self._signer.mint(
            user=ident.user,
            roles=ident.roles,
            session_hash=ident.session,
            session_expires=ident.expires_at,
        )
        http = request.attributes.request.http
        secure = self._secure or (
            request_scheme(http.headers.get("x-forwarded-proto"), http.scheme) == "https"
        )
        if ticket is None:
            if current is None or same:
                return []
            # The request carries a ticket of another session (the browser's previous user)
            # and no fresh one can be set: clear it, or it would go on speaking for this
            # browser on every read until it expires.
            value = cookie_header(self._policy.cookie, "", max_age=0, secure=secure)
        else:
            value = cookie_header(
                self._policy.cookie,
                ticket.value,
                max_age=ticket.expires_at - int(time.time()),
                secure=secure,
            )
            self._metrics.tickets_issued.labels("authz").inc()
        return [
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="set-cookie", value=value), append_action=APPEND
            )
        ]


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        authorizer: Authorizer,
        metrics: Metrics,
        fail_open: bool,
        tickets: TicketRenewal | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._metrics = metrics
        self._fail_open = fail_open
        self._tickets = tickets
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
        response = allowed(decision)
        if self._tickets is not None:
            response.ok_response.response_headers_to_add.extend(
                self._tickets.headers(request, decision)
            )
        return response
