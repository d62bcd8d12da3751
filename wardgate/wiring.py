"""The parts ``wardgate serve`` is made of, each wired from the settings and the parts
before it: Redis clients, the request path (authorization, rate limits), the control plane
(snapshot cache, document watcher, ban list), the gRPC and HTTP servers, readiness, and the
background tasks. ``server.serve`` puts them together; nothing else in wardgate reads
settings.
"""

from __future__ import annotations

import dataclasses
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc
from aiohttp import web
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.rate_limit_quota.v3 import rlqs_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from grpc_health.v1 import health, health_pb2_grpc

from wardgate.domain.authz import Authorizer
from wardgate.domain.bans import AbuseMonitor, BanPolicy
from wardgate.domain.quota import QuotaService
from wardgate.domain.ratelimit import ClientBudget, RateLimiter
from wardgate.domain.registry import Reserved
from wardgate.domain.sessions import SessionService
from wardgate.domain.tokens import IssuerHolder
from wardgate.errors import StoreError
from wardgate.extproc.authz import AuthorizationService
from wardgate.extproc.quota import RateLimitQuotaService
from wardgate.extproc.ratelimit import RateLimitService
from wardgate.extproc.refusal_report import report_refused_clients
from wardgate.files import read_bounded_file
from wardgate.http.app import create_app
from wardgate.http.registry import add_registry_routes
from wardgate.metrics import Metrics
from wardgate.settings import Settings
from wardgate.store.bans import RedisBanStore
from wardgate.store.cache import CachedApiKeyStore, CachedSessionStore, listen_for_revocations
from wardgate.store.document_source import RedisDocumentSource
from wardgate.store.errors import redis_errors
from wardgate.store.eviction import EvictionWatch
from wardgate.store.keys import Keys
from wardgate.store.quota import RedisQuotaLedger
from wardgate.store.redis_client import AnyRedis, connect
from wardgate.store.redis_store import (
    RedisApiKeyStore,
    RedisCounterStore,
    RedisLoginGuard,
    RedisRefusalLog,
    RedisSessionStore,
    RedisUserStore,
)
from wardgate.store.registry import RedisRegistryStore
from wardgate.store.status import RedisStatusStore
from wardgate.xds.ads import AggregatedDiscoveryService
from wardgate.xds.bans import BanPublisher
from wardgate.xds.build import SnapshotBuilder
from wardgate.xds.issuers import IssuerLoader
from wardgate.xds.listener import build_listener
from wardgate.xds.local_guard import GuardOptions
from wardgate.xds.node_report import report_nodes
from wardgate.xds.nodes import NodeRegistry
from wardgate.xds.ports import StatusStore
from wardgate.xds.refused import RefusedReport
from wardgate.xds.snapshot import SnapshotCache
from wardgate.xds.translate import TranslateOptions
from wardgate.xds.watcher import DocumentWatcher


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
        guard=GuardOptions(
            burst=settings.ratelimit_guard_burst, clients=settings.ratelimit_guard_clients
        ),
    )


@dataclasses.dataclass(frozen=True)
class RedisClients:
    """One client per kind of work, each with the deadline that work can afford."""

    hot: AnyRedis  # the request path: users, sessions, API keys
    control: AnyRedis  # the control plane: documents, status, pub/sub
    # Rate-limit counters (maybe a Redis of their own): gives up sooner (Envoy waits 100 ms).
    counters: AnyRedis
    # Quota budgets, in the counters' Redis: off the request path (Envoys report every 5 s).
    quota: AnyRedis

    @classmethod
    def connect(cls, settings: Settings) -> RedisClients:
        url, timeout = settings.redis_url, settings.redis_timeout
        return cls(
            hot=connect(url, timeout=timeout, name="wardgate-hot"),
            control=connect(url, timeout=max(5.0, timeout), name="wardgate-control"),
            counters=connect(
                settings.ratelimit_redis_url or url,
                timeout=settings.ratelimit_redis_timeout,
                name="wardgate-ratelimit",
            ),
            quota=connect(
                settings.ratelimit_redis_url or url,
                timeout=max(1.0, timeout),
                name="wardgate-quota",
            ),
        )

    async def aclose(self) -> None:
        for client in (self.hot, self.counters, self.quota, self.control):
            await client.aclose()


@dataclasses.dataclass(frozen=True)
class AuthParts:
    sessions: SessionService
    authorizer: Authorizer
    issuers: IssuerHolder
    session_store: CachedSessionStore
    api_keys: CachedApiKeyStore


def wire_auth(settings: Settings, redis: RedisClients, keys: Keys) -> AuthParts:
    """Sessions, API keys and JWT issuers behind one authorizer. Sessions and API keys are
    cached per worker, invalidated at once by pub/sub (``store/cache.py``)."""
    hot = redis.hot
    session_store = CachedSessionStore(RedisSessionStore(redis=hot, keys=keys))
    api_keys = CachedApiKeyStore(RedisApiKeyStore(redis=hot, keys=keys))
    sessions = SessionService(
        users=RedisUserStore(redis=hot, keys=keys),
        sessions=session_store,
        ttl_seconds=settings.session_ttl,
        idle_seconds=settings.session_idle_ttl,
        guard=RedisLoginGuard(redis=hot, keys=keys, limit=settings.login_failures_per_user),
    )
    issuers = IssuerHolder()
    authorizer = Authorizer(
        sessions=sessions, cookie_name=settings.session_cookie, api_keys=api_keys, issuers=issuers
    )
    return AuthParts(sessions, authorizer, issuers, session_store, api_keys)


@dataclasses.dataclass(frozen=True)
class LimitParts:
    service: RateLimitService
    refusals: RedisRefusalLog
    quota: RateLimitQuotaService


def wire_limits(
    settings: Settings, redis: RedisClients, keys: Keys, metrics: Metrics
) -> LimitParts:
    budget = ClientBudget(
        limit=settings.ratelimit_max_clients,
        on_overflow=lambda rule: metrics.ratelimit_overflow.labels(rule).inc(),
    )
    limiter = RateLimiter(
        counters=RedisCounterStore(redis=redis.counters), key_for=keys.counter, budget=budget
    )
    refusals = RedisRefusalLog(redis=redis.counters, keys=keys)
    abuse = AbuseMonitor(
        store=RedisBanStore(redis=redis.hot, keys=keys),
        policy=BanPolicy(settings.ban_after, settings.ban_window, settings.ban_duration),
        clock=time.time,
        on_ban=lambda _network: metrics.bans.inc(),
    )
    service = RateLimitService(
        limiter=limiter,
        metrics=metrics,
        fail_open=settings.ratelimit_failure_mode == "open",
        refusals=refusals,
        abuse=abuse,
    )
    # enforce: quota: budgets next to the exact check's counters (their Redis may evict: a
    # lost budget starts full again, as a lost counter starts at zero).
    quota = RateLimitQuotaService(
        quota=QuotaService(ledger=RedisQuotaLedger(redis=redis.quota), key_for=keys.quota),
        metrics=metrics,
    )
    return LimitParts(service, refusals, quota)


@dataclasses.dataclass(frozen=True)
class ControlPlane:
    cache: SnapshotCache
    nodes: NodeRegistry
    watcher: DocumentWatcher
    status: StatusStore
    bans: BanPublisher


def wire_control_plane(
    settings: Settings, redis: RedisClients, keys: Keys, metrics: Metrics, issuers: IssuerHolder
) -> ControlPlane:
    """Documents in Redis -> watcher -> snapshot cache -> ADS (``xds/watcher.py``)."""
    options = translate_options(settings)
    cache = SnapshotCache(
        listener_factory=lambda g: build_listener(g.listen_address, g.listen_port, options)
    )
    status = RedisStatusStore(redis=redis.control, keys=keys)
    watcher = DocumentWatcher(
        source=RedisDocumentSource(redis=redis.control, keys=keys),
        builder=SnapshotBuilder(options),
        publisher=cache,
        refused=RefusedReport(status=status, metrics=metrics),
        issuers=IssuerLoader(holder=issuers, environ=os.environ, read_file=read_bounded_file),
        metrics=metrics,
        resync_interval=settings.resync_interval,
    )
    bans = BanPublisher(
        store=RedisBanStore(redis=redis.control, keys=keys),
        publish=cache.set_extension,
        metrics=metrics,
    )
    return ControlPlane(cache, NodeRegistry(), watcher, status, bans)


def wire_grpc(
    settings: Settings,
    metrics: Metrics,
    auth: AuthParts,
    limits: LimitParts,
    control: ControlPlane,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """ADS, ext_authz, rate limit and health on one port, shared by the workers."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_concurrent_streams", 1000),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ]
    )
    ads = AggregatedDiscoveryService(
        configs=control.cache,
        nodes=control.nodes,
        metrics=metrics,
        default_listen_port=settings.listen_port,
    )
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    authz = AuthorizationService(
        authorizer=auth.authorizer,
        metrics=metrics,
        fail_open=settings.authz_failure_mode == "open",
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(authz, server)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(limits.service, server)
    rlqs_pb2_grpc.add_RateLimitQuotaServiceServicer_to_server(limits.quota, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{settings.bind_host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address} (gRPC)")
    return server, health_servicer


Readiness = Callable[[], Awaitable[tuple[bool, str]]]


def readiness(
    control: ControlPlane,
    ping: Callable[[], Awaitable[object]],
    eviction: EvictionWatch | None = None,
) -> Readiness:
    """Ready when a snapshot is built, configuration changes still come through, the request
    path's Redis answers and cannot evict wardgate's data; else not ready, with the reason."""

    async def ready() -> tuple[bool, str]:
        if not control.cache.ready:
            return False, "no snapshot built yet"
        if control.watcher.last_error:  # serving a snapshot that may be stale
            return False, f"configuration not updating: {control.watcher.last_error}"
        if eviction is not None and eviction.problem:
            return False, eviction.problem
        try:
            with redis_errors():
                await ping()
        except StoreError as exc:
            return False, str(exc)
        return True, "ok"

    return ready


def own_endpoints(settings: Settings) -> Reserved:
    """The gateway's own endpoints, which no registered instance may name: its Redis servers
    (data and counters), wardgate's gRPC and HTTP ports and Envoy's listener and admin ports
    on loopback and on the addresses wardgate binds and advertises; wardgate's ports on every
    address when it binds all of them."""
    endpoints: list[tuple[str, int]] = []
    for url in (settings.redis_url, settings.ratelimit_redis_url):
        redis = urllib.parse.urlsplit(url.replace("+cluster", "", 1))
        if redis.hostname:
            endpoints.append((redis.hostname, redis.port or 6379))
    own = (settings.grpc_port, settings.http_port, settings.advertised_http_port)
    envoy = (settings.listen_port, settings.envoy_admin_port)
    for host in {"127.0.0.1", settings.bind_host, settings.http_advertise_host}:
        for port in (*own, *envoy):
            endpoints.append((host, port))
    everywhere = own if settings.bind_host in ("0.0.0.0", "::") else ()
    return Reserved.of(endpoints, everywhere)


def wire_http(
    settings: Settings,
    metrics: Metrics,
    auth: AuthParts,
    redis: RedisClients,
    keys: Keys,
    control: ControlPlane,
    eviction: EvictionWatch,
) -> web.Application:
    """/auth/*, /registry/*, /metrics, /healthz, /readyz."""
    app = create_app(
        sessions=auth.sessions,
        metrics=metrics,
        cookie_name=settings.session_cookie,
        cookie_secure=settings.cookie_secure,
        ready=readiness(control, redis.hot.ping, eviction),
    )
    registry = RedisRegistryStore(redis=redis.hot, keys=keys)
    add_registry_routes(
        app,
        registry=registry,
        is_registry_service=registry.is_registry_service,
        token=settings.registry_token,
        reserved=own_endpoints(settings),
    )
    return app


def background_tasks(
    *,
    redis: RedisClients,
    keys: Keys,
    metrics: Metrics,
    auth: AuthParts,
    limits: LimitParts,
    control: ControlPlane,
    eviction: EvictionWatch,
    worker: str,
) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
    """What runs beside the servers, by name: each a way to start it (again)."""
    revoked: dict[str, Any] = {
        keys.sessions_channel: auth.session_store.cache,
        keys.api_keys_channel: auth.api_keys.cache,
    }
    return {
        "eviction": eviction.run,
        "watcher": control.watcher.run,
        "bans": control.bans.run,
        "node-status": lambda: report_nodes(control.nodes, control.status, worker),
        "refusals": lambda: report_refused_clients(limits.service, limits.refusals, metrics),
        "revocations": lambda: listen_for_revocations(
            redis=redis.control, keys=keys, caches=revoked, metrics=metrics
        ),
    }
