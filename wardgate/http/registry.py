"""``POST /registry/heartbeat`` and ``POST /registry/deregister``: instances of
``discovery: registry`` services announce themselves (wardgate's HTTP port, not Envoy's)."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from wardgate.domain.registry import Instance, validate_instance
from wardgate.errors import StoreError
from wardgate.extproc.responses import error_body
from wardgate.store.registry import RedisRegistryStore

IsRegistryService = Callable[[str], Awaitable[bool]]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status, text=error_body(code, message, ""), content_type="application/json"
    )


def add_registry_routes(
    app: web.Application,
    *,
    registry: RedisRegistryStore,
    is_registry_service: IsRegistryService,
    token: str,
) -> None:
    async def parse(request: web.Request) -> tuple[str, Instance, float] | web.Response:
        if token:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _error(401, "unauthenticated", "a valid registry token is required")
        try:
            body: Any = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("service"), str):
            return _error(400, "bad_request", 'send JSON {"service", "address", "port"}')
        try:
            instance = validate_instance(
                str(body.get("address", "")),
                int(body.get("port", 0)),
                int(body.get("weight", 1)),
                float(body.get("ttl", 10)),
            )
        except (TypeError, ValueError) as exc:
            return _error(400, "bad_request", str(exc))
        try:
            if not await is_registry_service(body["service"]):
                return _error(
                    404, "not_found", f"no service {body['service']!r} with discovery: registry"
                )
        except StoreError:
            return _error(503, "unavailable", "the registry is unavailable; retry shortly")
        return body["service"], instance, float(body.get("ttl", 10))

    async def heartbeat(request: web.Request) -> web.Response:
        parsed = await parse(request)
        if isinstance(parsed, web.Response):
            return parsed
        service, instance, ttl = parsed
        try:
            new = await registry.heartbeat(service, instance, ttl=ttl, now=time.time())
        except StoreError:
            return _error(503, "unavailable", "the registry is unavailable; retry shortly")
        return web.json_response({"service": service, "new": new, "ttl": ttl})

    async def deregister(request: web.Request) -> web.Response:
        parsed = await parse(request)
        if isinstance(parsed, web.Response):
            return parsed
        service, instance, _ttl = parsed
        try:
            removed = await registry.deregister(service, instance)
        except StoreError:
            return _error(503, "unavailable", "the registry is unavailable; retry shortly")
        return web.json_response({"service": service, "removed": removed})

    app.router.add_post("/registry/heartbeat", heartbeat)
    app.router.add_post("/registry/deregister", deregister)
