"""``POST /registry/heartbeat`` and ``POST /registry/deregister``: instances of
``discovery: registry`` services announce themselves (wardgate's HTTP port, not Envoy's)."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from wardgate.domain import jsontext
from wardgate.domain.registry import Heartbeat, Reserved, parse_heartbeat
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
    reserved: Reserved,
) -> None:
    """Both endpoints need ``authorization: Bearer <registry_token>``; with no token set
    they are off (403): an open registry lets anyone reaching the port add instances."""

    async def parse(request: web.Request) -> Heartbeat | web.Response:
        if not token:
            return _error(403, "forbidden", "registry heartbeats are off: set registry_token")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        # The header as bytes (aiohttp decodes it as Latin-1 / surrogate escapes): any value
        # compares, none raises.
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode()):
            return _error(401, "unauthenticated", "a valid registry token is required")
        try:
            beat = parse_heartbeat(
                jsontext.loads(await request.read() or b"null"), reserved=reserved
            )
        except (ValueError, UnicodeDecodeError) as exc:
            reason = str(exc) if not isinstance(exc, json.JSONDecodeError) else "not JSON"
            return _error(400, "bad_request", reason)
        try:
            if not await is_registry_service(beat.service):
                return _error(
                    404, "not_found", f"no service {beat.service!r} with discovery: registry"
                )
        except StoreError:
            return _error(503, "unavailable", "the registry is unavailable; retry shortly")
        return beat

    async def heartbeat(request: web.Request) -> web.Response:
        beat = await parse(request)
        if isinstance(beat, web.Response):
            return beat
        try:
            new = await registry.heartbeat(
                beat.service, beat.instance, ttl=beat.ttl, now=time.time()
            )
        except StoreError:
            return _error(503, "unavailable", "the registry is unavailable; retry shortly")
        return web.json_response({"service": beat.service, "new": new, "ttl": beat.ttl})

    async def deregister(request: web.Request) -> web.Response:
        beat = await parse(request)
        if isinstance(beat, web.Response):
            return beat
        try:
            removed = await registry.deregister(beat.service, beat.instance)
        except StoreError:
            return _error(503, "unavailable", "the registry is unavailable; retry shortly")
        return web.json_response({"service": beat.service, "removed": removed})

    app.router.add_post("/registry/heartbeat", heartbeat)
    app.router.add_post("/registry/deregister", deregister)
