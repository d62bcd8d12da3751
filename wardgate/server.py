"""The composition root of ``wardgate serve``: settings in, running services out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from typing import Any

import grpc
from aiohttp import web
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.exceptions import RedisError

from wardgate.domain.authz import Authorizer
from wardgate.domain.ratelimit import RateLimiter
from wardgate.domain.sessions import SessionService
from wardgate.domain.tokens import IssuerHolder
from wardgate.errors import StoreError
from wardgate.extproc.authz import AuthorizationService
from wardgate.extproc.ratelimit import RateLimitService
from wardgate.http.app import create_app
from wardgate.http.registry import add_registry_routes
from wardgate.metrics import Metrics, create_metrics
from wardgate.settings import Settings
from wardgate.store.cache import CachedApiKeyStore, CachedSessionStore, listen_for_revocations
from wardgate.store.keys import Keys
from wardgate.store.redis_client import connect
from wardgate.store.redis_store import (
    RedisApiKeyStore,
    RedisCounterStore,
    RedisLoginGuard,
    RedisRefusalLog,
    RedisSessionStore,
    RedisUserStore,
)
from wardgate.store.registry import RedisRegistryStore
from wardgate.xds.ads import AggregatedDiscoveryService
from wardgate.xds.listener import build_listener
from wardgate.xds.nodes import NodeRegistry
from wardgate.xds.snapshot import NodeGroup, SnapshotCache
from wardgate.xds.translate import TranslateOptions
from wardgate.xds.watcher import DocumentWatcher

log = logging.getLogger("wardgate")


def translate_options(settings: Settings) -> TranslateOptions:
    return TranslateOptions(
        http_host=settings.http_advertise_host,
        http_port=settings.advertised_http_port,
        ext_authz_timeout=settings.ext_authz_timeout,
        ratelimit_timeout=settings.ratelimit_timeout,
        authz_fail_open=settings.authz_failure_mode == "open",
        ratelimit_fail_closed=settings.ratelimit_failure_mode == "closed",
        trusted_proxy_hops=settings.trusted_proxy_hops,
        session_cookie=settings.session_cookie,
    )


NODE_REPORT_EVERY = 15.0  # seconds; `wardgate status` ignores reports older than 4x this


async def _report_nodes(nodes: NodeRegistry, redis: Any, keys: Keys, worker: str) -> None:
    """Copy what the connected Envoys ACKed/NACKed to Redis for ``wardgate status``: at once
    after a change, and every NODE_REPORT_EVERY seconds as a sign of life."""
    last = 0.0
    while True:
        await asyncio.sleep(0.5)
        if not nodes.dirty and time.monotonic() - last < NODE_REPORT_EVERY:
            continue
        nodes.dirty = False
        doc = json.dumps({"worker": worker, "time": time.time(), "nodes": nodes.snapshot()})
        try:
            await redis.hset(keys.nodes, worker, doc)
            last = time.monotonic()
        except RedisError as exc:
            nodes.dirty = True
            log.debug("node status not recorded: %s", exc)


async def _report_refusals(
    rls: RateLimitService, refusals: RedisRefusalLog, metrics: Metrics
) -> None:
    """Every 10 s: distinct clients refused this minute, for the rules that refused lately."""
    while True:
        await asyncio.sleep(10.0)
        now = time.time()
        for rule, last in list(rls.refused_rules.items()):
            if now - last > 120:
                del rls.refused_rules[rule]
                metrics.refused_clients.labels(rule).set(0)
        if not rls.refused_rules:
            continue
        try:
            counts = await refusals.count(list(rls.refused_rules), now=now)
        except StoreError:
            metrics.store_errors.labels("refusal_log").inc()
            continue
        for rule, n in counts.items():
            metrics.refused_clients.labels(rule).set(n)


async def serve(settings: Settings, *, metrics: Metrics | None = None) -> None:
    """Run until SIGINT/SIGTERM: gRPC (ADS, ext_authz, rate limit, health) and HTTP."""
    metrics = metrics or create_metrics()
    keys = Keys(settings.key_prefix)
    hot = connect(settings.redis_url, timeout=settings.redis_timeout, name="wardgate-hot")
    control = connect(
        settings.redis_url, timeout=max(5.0, settings.redis_timeout), name="wardgate-control"
    )

    users = RedisUserStore(redis=hot, keys=keys)
    # Sessions and API keys are cached per worker, invalidated at once by pub/sub.
    session_store = CachedSessionStore(RedisSessionStore(redis=hot, keys=keys))
    api_keys = CachedApiKeyStore(RedisApiKeyStore(redis=hot, keys=keys))
    sessions = SessionService(
        users=users,
        sessions=session_store,
        ttl_seconds=settings.session_ttl,
        idle_seconds=settings.session_idle_ttl,
        guard=RedisLoginGuard(redis=hot, keys=keys, limit=settings.login_failures_per_user),
    )
    issuers = IssuerHolder()
    authorizer = Authorizer(
        sessions=sessions,
        cookie_name=settings.session_cookie,
        api_keys=api_keys,
        issuers=issuers,
    )
    # Rate limiting has its own client: its commands give up sooner (Envoy waits 100 ms).
    counters = connect(
        settings.redis_url, timeout=settings.ratelimit_redis_timeout, name="wardgate-ratelimit"
    )
    limiter = RateLimiter(counters=RedisCounterStore(redis=counters), key_for=keys.counter)

    options = translate_options(settings)
    cache = SnapshotCache(
        listener_factory=lambda g: build_listener(g.listen_address, g.listen_port, options)
    )
    nodes = NodeRegistry()
    watcher = DocumentWatcher(
        redis=control,
        keys=keys,
        cache=cache,
        options=options,
        metrics=metrics,
        resync_interval=settings.resync_interval,
        issuers=issuers,
    )

    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_concurrent_streams", 1000),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ]
    )
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
        AggregatedDiscoveryService(
            cache=cache, nodes=nodes, metrics=metrics, default_listen_port=settings.listen_port
        ),
        server,
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationService(
            authorizer=authorizer, metrics=metrics, fail_open=settings.authz_failure_mode == "open"
        ),
        server,
    )
    refusals = RedisRefusalLog(redis=counters, keys=keys)
    rls = RateLimitService(
        limiter=limiter,
        metrics=metrics,
        fail_open=settings.ratelimit_failure_mode == "open",
        refusals=refusals,
    )
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(rls, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{settings.bind_host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address} (gRPC)")

    async def ready() -> tuple[bool, str]:
        if not cache.ready:
            return False, "no snapshot built yet"
        try:
            await hot.ping()
        except RedisError as exc:
            return False, f"redis: {exc}"
        return True, "ok"

    app = create_app(
        sessions=sessions,
        metrics=metrics,
        cookie_name=settings.session_cookie,
        cookie_secure=settings.cookie_secure,
        ready=ready,
    )
    registry = RedisRegistryStore(redis=hot, keys=keys)

    async def is_registry_service(name: str) -> bool:
        try:
            raw = await hot.hget(keys.services, name)
        except RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc
        try:
            return bool(raw) and json.loads(raw).get("discovery") == "registry"
        except (ValueError, AttributeError):
            return False

    add_registry_routes(
        app,
        registry=registry,
        is_registry_service=is_registry_service,
        token=settings.registry_token,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.bind_host, settings.http_port, reuse_port=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    await server.start()
    await site.start()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    tasks = [
        asyncio.create_task(watcher.run(), name="watcher"),
        asyncio.create_task(_report_nodes(nodes, control, keys, worker), name="node-status"),
        asyncio.create_task(_report_refusals(rls, refusals, metrics), name="refusals"),
        asyncio.create_task(
            listen_for_revocations(
                redis=control,
                keys=keys,
                caches={
                    keys.sessions_channel: session_store.cache,
                    keys.api_keys_channel: api_keys.cache,
                },
            ),
            name="revocations",
        ),
    ]
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "wardgate serving: gRPC %s, HTTP %s:%d, redis %s",
        address,
        settings.bind_host,
        settings.http_port,
        _redact(settings.redis_url),
    )
    try:
        await stop.wait()
    finally:
        log.info("wardgate stopping")
        await health_servicer.enter_graceful_shutdown()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await server.stop(grace=1.0)
        await runner.cleanup()
        with contextlib.suppress(RedisError, OSError):
            await control.hdel(keys.nodes, worker)
        await hot.aclose()
        await counters.aclose()
        await control.aclose()


def _redact(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


_ = NodeGroup
