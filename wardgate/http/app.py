"""wardgate's HTTP side: /metrics, /healthz, /readyz and the /auth/* endpoints Envoy routes to."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from wardgate.domain.sessions import SessionService, parse_cookies
from wardgate.errors import StoreError, TooManyAttempts
from wardgate.extproc.responses import error_body
from wardgate.metrics import Metrics, exposition

log = logging.getLogger("wardgate.http")
MAX_LOGIN_BODY = 16 * 1024


def _error(status: int, code: str, message: str, request: web.Request) -> web.Response:
    rid = request.headers.get("x-request-id") or str(uuid.uuid4())
    return web.Response(
        status=status,
        text=error_body(code, message, rid),
        content_type="application/json",
        headers={"cache-control": "no-store"},
    )


def create_app(
    *,
    sessions: SessionService,
    metrics: Metrics,
    cookie_name: str,
    cookie_secure: bool,
    ready: Callable[[], Awaitable[tuple[bool, str]]],
) -> web.Application:
    app = web.Application(client_max_size=MAX_LOGIN_BODY)

    def secure(request: web.Request) -> bool:
        return cookie_secure or request.headers.get("x-forwarded-proto", "") == "https"

    async def login(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
            return _error(413, "payload_too_large", "the login body is too large", request)
        if request.content_type != "application/json":
            # A cross-site HTML form can post text/plain that happens to be JSON, and log the
            # victim's browser into the attacker's account; it cannot send application/json.
            metrics.logins.labels("bad_request").inc()
            return _error(
                415, "unsupported_media_type", "send the credentials as application/json", request
            )
        try:
            body = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError):
            metrics.logins.labels("bad_request").inc()
            return _error(
                400, "bad_request", 'send JSON {"username": ..., "password": ...}', request
            )
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("username", "password")
        ):
            metrics.logins.labels("bad_request").inc()
            return _error(400, "bad_request", "username and password must be strings", request)
        try:
            result = await sessions.login(body["username"], body["password"])
        except TooManyAttempts as exc:
            metrics.logins.labels("throttled").inc()
            response = _error(429, exc.code, str(exc), request)
            response.headers["retry-after"] = str(exc.retry_after)
            return response
        except StoreError as exc:
            metrics.store_errors.labels("login").inc()
            log.warning("login: store unavailable: %s", exc)
            return _error(503, "unavailable", "sign-in is unavailable; retry shortly", request)
        if result is None:
            metrics.logins.labels("refused").inc()
            return _error(401, "invalid_credentials", "wrong username or password", request)
        metrics.logins.labels("ok").inc()
        ident = result.identity
        response = web.json_response(
            {"user": ident.user, "roles": list(ident.roles), "expires_at": int(ident.expires_at)},
            headers={"cache-control": "no-store"},
        )
        response.set_cookie(
            cookie_name,
            result.session_id,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=secure(request),
            max_age=max(1, int(ident.expires_at - time.time())),
        )
        return response

    async def logout(request: web.Request) -> web.Response:
        session_id = parse_cookies(request.headers.get("cookie")).get(cookie_name)
        try:
            await sessions.logout(session_id)
        except StoreError:
            metrics.store_errors.labels("logout").inc()
            return _error(503, "unavailable", "sign-out is unavailable; retry shortly", request)
        response = web.Response(status=204)
        response.del_cookie(
            cookie_name, path="/", secure=secure(request), httponly=True, samesite="Lax"
        )
        return response

    async def session(request: web.Request) -> web.Response:
        session_id = parse_cookies(request.headers.get("cookie")).get(cookie_name)
        try:
            ident = await sessions.resolve(session_id)
        except StoreError:
            metrics.store_errors.labels("session").inc()
            return _error(503, "unavailable", "sessions are unavailable; retry shortly", request)
        if ident is None:
            return _error(401, "unauthenticated", "no valid session", request)
        return web.json_response(
            {"user": ident.user, "roles": list(ident.roles), "expires_at": int(ident.expires_at)},
            headers={"cache-control": "no-store"},
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        ok, detail = await ready()
        return web.json_response(
            {"status": "ready" if ok else "not_ready", "detail": detail}, status=200 if ok else 503
        )

    async def prometheus(_request: web.Request) -> web.Response:
        body = exposition(metrics)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    app.router.add_post("/auth/login", login)
    app.router.add_post("/auth/logout", logout)
    app.router.add_get("/auth/session", session)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app
