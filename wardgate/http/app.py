"""wardgate's HTTP side: /metrics, /healthz, /readyz and the /auth/* endpoints Envoy routes to.

``Endpoints`` holds what the handlers need (the session service, the metrics, the cookie
settings, the readiness check) and has one method per endpoint; ``create_app`` wires them to
their routes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from wardgate.domain import jsontext
from wardgate.domain.cookies import read_cookie
from wardgate.domain.origins import CSRF_CODE, CSRF_MESSAGE, request_scheme, source_allowed
from wardgate.domain.sessions import Identity, SessionService
from wardgate.domain.tickets import TicketSigner
from wardgate.errors import StoreError, TooManyAttempts
from wardgate.extproc.responses import error_body
from wardgate.metrics import Metrics, exposition

log = logging.getLogger("wardgate.http")
MAX_LOGIN_BODY = 16 * 1024
ReadyCheck = Callable[[], Awaitable[tuple[bool, str]]]


def _error(status: int, code: str, message: str, request: web.Request) -> web.Response:
    rid = request.headers.get("x-request-id") or str(uuid.uuid4())
    return web.Response(
        status=status,
        text=error_body(code, message, rid),
        content_type="application/json",
        headers={"cache-control": "no-store"},
    )


def _header(request: web.Request, name: str) -> str | None:
    """Every value of header ``name`` joined with ",", as Envoy hands them to ext_authz, so
    that this side reads a request as ext_authz does; ``None`` when there is none."""
    values = request.headers.getall(name, [])
    return ",".join(values) if values else None


def _scheme(request: web.Request) -> str:
    """The scheme the client used, read as ext_authz reads it (x-forwarded-proto, set by Envoy)."""
    return request_scheme(_header(request, "x-forwarded-proto"), request.scheme)


def _identity_response(ident: Identity) -> web.Response:
    return web.json_response(
        {"user": ident.user, "roles": list(ident.roles), "expires_at": int(ident.expires_at)},
        headers={"cache-control": "no-store"},
    )


class Endpoints:
    """The request handlers, one method per endpoint."""

    def __init__(
        self,
        *,
        sessions: SessionService,
        metrics: Metrics,
        cookie_name: str,
        cookie_secure: bool,
        ready: ReadyCheck,
        tickets: TicketSigner | None = None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._cookie_name = cookie_name
        self._cookie_secure = cookie_secure
        self._ready = ready
        self._tickets = tickets

    def _secure(self, request: web.Request) -> bool:
        return self._cookie_secure or _scheme(request) == "https"

    def _session_id(self, request: web.Request) -> str | None:
        return read_cookie(_header(request, "cookie"), self._cookie_name)

    def _from_own_origin(self, request: web.Request) -> bool:
        """The CSRF rule of ext_authz (domain/origins.py), for wardgate's own endpoints: the
        gateway's own origin only (the built-in routes have no CORS policy)."""
        return source_allowed(
            origin=_header(request, "origin"),
            referer=_header(request, "referer"),
            authority=request.host,
            scheme=_scheme(request),
        )

    def _bad_login(
        self, status: int, code: str, message: str, request: web.Request
    ) -> web.Response:
        self._metrics.logins.labels("bad_request").inc()
        return _error(status, code, message, request)

    async def _credentials(self, request: web.Request) -> tuple[str, str] | web.Response:
        """The username and password of a login body, or the error response to send."""
        if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
            return _error(413, "payload_too_large", "the login body is too large", request)
        if request.content_type != "application/json":
            # A cross-site HTML form can post text/plain that happens to be JSON, and log the
            # victim's browser into the attacker's account; it cannot send application/json.
            return self._bad_login(
                415, "unsupported_media_type", "send the credentials as application/json", request
            )
        try:
            body = jsontext.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError):
            return self._bad_login(
                400, "bad_request", 'send JSON {"username": ..., "password": ...}', request
            )
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("username", "password")
        ):
            return self._bad_login(
                400, "bad_request", "username and password must be strings", request
            )
        return body["username"], body["password"]

    async def login(self, request: web.Request) -> web.Response:
        credentials = await self._credentials(request)
        if isinstance(credentials, web.Response):
            return credentials
        try:
            result = await self._sessions.login(*credentials)
        except TooManyAttempts as exc:
            self._metrics.logins.labels("throttled").inc()
            response = _error(429, exc.code, str(exc), request)
            response.headers["retry-after"] = str(exc.retry_after)
            return response
        except StoreError as exc:
            self._metrics.store_errors.labels("login").inc()
            log.warning("login: store unavailable: %s", exc)
            return _error(503, "unavailable", "sign-in is unavailable; retry shortly", request)
        if result is None:
            self._metrics.logins.labels("refused").inc()
            return _error(401, "invalid_credentials", "wrong username or password", request)
        self._metrics.logins.labels("ok").inc()
        response = _identity_response(result.identity)
        response.set_cookie(
            self._cookie_name,
            result.session_id,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self._secure(request),
            max_age=max(1, int(result.identity.expires_at - time.time())),
        )
        self._set_ticket(response, result.identity, secure=self._secure(request))
        return response

    def _set_ticket(self, response: web.Response, ident: Identity, *, secure: bool) -> None:
        """The session's first ticket, beside the session cookie. While this process has no
        key that signs yet (ext_authz sets one on a later request) the answer clears the
        ticket cookie instead: a ticket of the browser's previous session (another user who
        did not sign out) would otherwise speak for this one until it expires."""
        if self._tickets is None:
            return
        ticket = self._tickets.mint(
            user=ident.user,
            roles=ident.roles,
            session_hash=ident.session,
            session_expires=ident.expires_at,
        )
        if ticket is None:
            response.del_cookie(
                self._tickets.policy.cookie,
                path="/",
                secure=secure,
                httponly=True,
                samesite="Lax",
            )
            return
        response.set_cookie(
            self._tickets.policy.cookie,
            ticket.value,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=secure,
            max_age=max(1, ticket.expires_at - int(time.time())),
        )
        self._metrics.tickets_issued.labels("login").inc()

    async def logout(self, request: web.Request) -> web.Response:
        # The CSRF rule, whether or not the request carries the session cookie: the answer
        # clears the cookie, so a foreign page could end a browser's session without sending
        # it (a SameSite=Lax cookie is not sent on a cross-site POST).
        if not self._from_own_origin(request):
            self._metrics.logouts.labels(CSRF_CODE).inc()
            return _error(403, CSRF_CODE, CSRF_MESSAGE, request)
        try:
            await self._sessions.logout(self._session_id(request))
        except StoreError:
            self._metrics.store_errors.labels("logout").inc()
            return _error(503, "unavailable", "sign-out is unavailable; retry shortly", request)
        self._metrics.logouts.labels("ok").inc()
        response = web.Response(status=204)
        response.del_cookie(
            self._cookie_name,
            path="/",
            secure=self._secure(request),
            httponly=True,
            samesite="Lax",
        )
        if self._tickets is not None:  # the session is revoked: its tickets are refused too
            response.del_cookie(
                self._tickets.policy.cookie,
                path="/",
                secure=self._secure(request),
                httponly=True,
                samesite="Lax",
            )
        return response

    async def session(self, request: web.Request) -> web.Response:
        try:
            ident = await self._sessions.resolve(self._session_id(request))
        except StoreError:
            self._metrics.store_errors.labels("session").inc()
            return _error(503, "unavailable", "sessions are unavailable; retry shortly", request)
        if ident is None:
            return _error(401, "unauthenticated", "no valid session", request)
        return _identity_response(ident)

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        ok, detail = await self._ready()
        return web.json_response(
            {"status": "ready" if ok else "not_ready", "detail": detail}, status=200 if ok else 503
        )

    async def prometheus(self, _request: web.Request) -> web.Response:
        body = exposition(self._metrics)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


def create_app(
    *,
    sessions: SessionService,
    metrics: Metrics,
    cookie_name: str,
    cookie_secure: bool,
    ready: ReadyCheck,
    tickets: TicketSigner | None = None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_LOGIN_BODY)
    endpoints = Endpoints(
        sessions=sessions,
        metrics=metrics,
        cookie_name=cookie_name,
        cookie_secure=cookie_secure,
        ready=ready,
        tickets=tickets,
    )
    app.router.add_post("/auth/login", endpoints.login)
    app.router.add_post("/auth/logout", endpoints.logout)
    app.router.add_get("/auth/session", endpoints.session)
    app.router.add_get("/healthz", endpoints.healthz)
    app.router.add_get("/readyz", endpoints.readyz)
    app.router.add_get("/metrics", endpoints.prometheus)
    return app
