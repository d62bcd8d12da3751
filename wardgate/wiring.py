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
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.service.rate_limit_quota.v3 import rlqs_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from wardgate.domain.authz import Authorizer
from wardgate.domain.bans import AbuseMonitor, BanPolicy
from wardgate.domain.compose import ComposeKey, Composer
from wardgate.domain.extproc_policy import MAX_COMPOSE_TIMEOUT
from wardgate.domain.quota import QuotaService
from wardgate.domain.ratelimit import ClientBudget, RateLimiter
from wardgate.domain.registry import Reserved
from wardgate.domain.response_cache import LocalEntries, ResponseCache
from wardgate.domain.sessions import SessionService
from wardgate.domain.tickets import TicketPolicy, TicketSigner
from wardgate.domain.tokens import IssuerHolder
from wardgate.errors import StoreError
from wardgate.extproc.authz import AuthorizationService, TicketRenewal
from wardgate.extproc.compose_client import HttpPartFetcher
from wardgate.extproc.processor import ProcessingService
from wardgate.extproc.quota import RateLimitQuotaService
from wardgate.extproc.ratelimit import RateLimitService
from wardgate.extproc.refusal_report import report_refused_clients
from wardgate.files import read_bounded_file
from wardgate.http.app import create_app
from wardgate.http.registry import add_registry_routes
from wardgate.jwks_fetch import fetch_jwks
from wardgate.metrics import Metrics, StatsMetrics, create_stats_metrics
from wardgate.settings import Settings
from wardgate.stats.als import AccessLogService
from wardgate.stats.decision_log import DecisionLog
from wardgate.stats.flusher import UsageFlusher
from wardgate.stats.limited import LimitedClients
from wardgate.stats.records import RouteLabels
from wardgate.stats.route_metrics import RouteMetrics
from wardgate.stats.sink import StatsSink
from wardgate.stats.tracing import TracingInterceptor, setup_tracing
from wardgate.stats.usage import UsageMeter
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
from wardgate.store.response_cache import RedisCacheStore
from wardgate.store.status import RedisStatusStore
from wardgate.store.tickets import RedisRevocationList, RedisTicketKeyStore
from wardgate.store.usage import RedisUsageStore
from wardgate.xds.access_log import AccessLogOptions
from wardgate.xds.ads import AggregatedDiscoveryService
from wardgate.xds.bans import BanPublisher
from wardgate.xds.build import SnapshotBuilder
from wardgate.xds.extproc import ComposeAddress, compose_listener
from wardgate.xds.issuers import IssuerLoader
from wardgate.xds.jwks_cache import JwksCache
from wardgate.xds.listener import build_listener
from wardgate.xds.listener_secrets import ListenerCertificate
from wardgate.xds.listener_tls import LISTENER_SECRET, ListenerTls
from wardgate.xds.local_guard import GuardOptions
from wardgate.xds.native_jwt import JwtConfigPublisher
from wardgate.xds.node_report import report_nodes
from wardgate.xds.nodes import NodeRegistry
from wardgate.xds.ports import StatusStore
from wardgate.xds.refused import RefusedReport
from wardgate.xds.revocations import RevocationPublisher
from wardgate.xds.snapshot import NodeGroup, SnapshotCache
from wardgate.xds.tracing import TracingOptions
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
        extproc_timeout=settings.extproc_timeout,
        ticket_cookie=settings.ticket_cookie,
        guard=GuardOptions(
            burst=settings.ratelimit_guard_burst, clients=settings.ratelimit_guard_clients
        ),
        access_log=AccessLogOptions(
            flush_interval=settings.access_log_flush_interval,
            buffer_bytes=settings.access_log_buffer_bytes,
        )
        if settings.access_log
        else None,
        tracing=TracingOptions(endpoint=settings.otlp_endpoint, sampling=settings.trace_sampling)
        if settings.otlp_endpoint
        else None,
        tls=ListenerTls(
            redirect_http=settings.tls_redirect_http,
            secret=settings.tls_secret or LISTENER_SECRET,
        )
        if settings.listener_tls
        else None,
    )


@dataclasses.dataclass(frozen=True)
class RedisClients:
    """One client per kind of work, each with the deadline that work can afford."""

    hot: AnyRedis  # the request path: users, sessions, API keys
    control: AnyRedis  # the control plane: documents, status, pub/sub
    # Rate-limit counters (maybe a Redis of their own): gives up sooner (Envoy waits 100 ms).
    counters: AnyRedis
    # The response cache (maybe a Redis of its own): bytes, a short deadline, then bypassed.
    cache: AnyRedis
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
            cache=connect(
                settings.cache_redis_url or url,
                timeout=settings.cache_redis_timeout,
                name="wardgate-cache",
                decode=False,
            ),
            quota=connect(
                settings.ratelimit_redis_url or url,
                timeout=max(1.0, timeout),
                name="wardgate-quota",
            ),
        )

    async def aclose(self) -> None:
        for client in (self.hot, self.counters, self.quota, self.control, self.cache):
            await client.aclose()


def ticket_policy(settings: Settings) -> TicketPolicy:
    return TicketPolicy(
        ttl=settings.ticket_ttl,
        skew=settings.ticket_clock_skew,
        rotation=settings.ticket_key_rotation,
        lead=settings.ticket_key_lead,
        cookie=settings.ticket_cookie,
    )


@dataclasses.dataclass(frozen=True)
class AuthParts:
    sessions: SessionService
    authorizer: Authorizer
    issuers: IssuerHolder
    session_store: CachedSessionStore
    api_keys: CachedApiKeyStore
    tickets: TicketSigner | None = None  # None: tickets are off


def wire_auth(
    settings: Settings, redis: RedisClients, keys: Keys, metrics: Metrics | None = None
) -> AuthParts:
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
        sessions=sessions,
        cookie_name=settings.session_cookie,
        api_keys=api_keys,
        issuers=issuers,
        ticket_cookie=settings.ticket_cookie,
    )
    tickets = None
    if settings.tickets:  # this process's signing keys; their public halves go to Redis
        tickets = TicketSigner(
            store=RedisTicketKeyStore(redis=redis.control, keys=keys),
            policy=ticket_policy(settings),
            on_store_error=(
                (lambda: metrics.store_errors.labels("ticket_keys").inc()) if metrics else None
            ),
        )
    return AuthParts(sessions, authorizer, issuers, session_store, api_keys, tickets)


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
    listener_cert: ListenerCertificate | None = None  # TLS on the listener, from files
    tls_secret: str = ""  # ... or from this Secret document
    jwt: JwtConfigPublisher | None = None  # what Envoy's jwt_authn verifies (ECDS)
    revocations: RevocationPublisher | None = None  # revoked sessions' tickets (ECDS)


def wire_control_plane(
    settings: Settings,
    redis: RedisClients,
    keys: Keys,
    metrics: Metrics,
    issuers: IssuerHolder,
    compose_key: ComposeKey | None = None,
) -> ControlPlane:
    """Documents in Redis -> watcher -> snapshot cache -> ADS (``xds/watcher.py``). The
    document source also reads the deployment's compose key into ``compose_key``, which the
    processor's part fetcher sends (``wire_processing``)."""
    options = translate_options(settings)
    cache = SnapshotCache(listener_factory=lambda g: listeners(g, options))
    status = RedisStatusStore(redis=redis.control, keys=keys)
    jwks_urls = JwksCache(
        fetch=lambda url, ca_file: fetch_jwks(url, ca_file=ca_file),
        metrics=metrics,
        clock=time.monotonic,
    )
    watcher = DocumentWatcher(
        source=RedisDocumentSource(redis=redis.control, keys=keys, compose_key=compose_key),
        builder=SnapshotBuilder(options),
        publisher=cache,
        refused=RefusedReport(status=status, metrics=metrics),
        issuers=IssuerLoader(
            holder=issuers,
            environ=os.environ,
            read_file=read_bounded_file,
            jwks_urls=jwks_urls,
        ),
        metrics=metrics,
        resync_interval=settings.resync_interval,
    )
    jwks_urls.on_change = watcher.wake  # new keys: load the issuers again at once
    cache.freshness = watcher.ensure_current  # replicas: a new stream never goes back
    bans = BanPublisher(
        store=RedisBanStore(redis=redis.control, keys=keys),
        publish=cache.set_extension,
        metrics=metrics,
    )
    listener_cert = None
    if settings.tls_cert_file:
        listener_cert = ListenerCertificate(
            name=LISTENER_SECRET,
            cert_file=settings.tls_cert_file,
            key_file=settings.tls_key_file,
            publish=cache.set_secret,
            read_file=read_bounded_file,
            metrics=metrics,
            interval=settings.resync_interval,
        )
    policy = ticket_policy(settings)
    jwt = JwtConfigPublisher(
        keys=RedisTicketKeyStore(redis=redis.control, keys=keys) if settings.tickets else None,
        issuers=issuers if settings.native_jwt else None,
        publish=cache.set_extension,
        metrics=metrics,
        policy=policy,
    )
    revocations = RevocationPublisher(
        store=RedisRevocationList(redis=redis.control, keys=keys),
        publish=cache.set_extension,
        metrics=metrics,
        hold=policy.hold,
        cookie=policy.cookie,
    )
    return ControlPlane(
        cache,
        NodeRegistry(),
        watcher,
        status,
        bans,
        listener_cert,
        settings.tls_secret,
        jwt,
        revocations,
    )


def listeners(group: NodeGroup, options: TranslateOptions) -> list[Message]:
    """An Envoy's listeners: the gateway's, and the compose listener when it has a port."""
    compose = None
    if group.compose_port:
        compose = ComposeAddress(group.compose_address, group.compose_port)
    main = build_listener(group.listen_address, group.listen_port, options, compose)
    return [main, compose_listener(compose)] if compose else [main]


@dataclasses.dataclass(frozen=True)
class ProcessingParts:
    service: ProcessingService
    fetcher: HttpPartFetcher
    memory: LocalEntries  # cached answers kept in this process, cleared by purges


def wire_processing(
    settings: Settings,
    redis: RedisClients,
    keys: Keys,
    metrics: Metrics,
    compose_key: ComposeKey | None = None,
) -> ProcessingParts:
    """ext_proc: transform, the response cache, composition (``extproc/processor.py``); the
    parts carry ``compose_key``, the control plane's (``wire_control_plane``)."""
    fetcher = HttpPartFetcher(key=compose_key or ComposeKey())
    memory = LocalEntries(max_bytes=settings.cache_memory_bytes)
    service = ProcessingService(
        cache=ResponseCache(
            store=RedisCacheStore(redis=redis.cache, keys=keys),
            wait=settings.cache_lock_wait,
            memory=memory,
        ),
        composer=Composer(fetcher=fetcher, max_bytes=settings.extproc_max_body_bytes),
        metrics=metrics,
        max_body=settings.extproc_max_body_bytes,
        message_timeout=settings.extproc_timeout,
        max_message_timeout=MAX_COMPOSE_TIMEOUT + 1,
    )
    return ProcessingParts(service, fetcher, memory)


def wire_grpc(
    settings: Settings,
    metrics: Metrics,
    auth: AuthParts,
    limits: LimitParts,
    control: ControlPlane,
    stats: StatsParts | None = None,
    processing: ProcessingParts | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """ADS, ext_authz, rate limit, access log and health on one port, shared by the workers."""
    server = grpc.aio.server(
        interceptors=stats.interceptors() if stats is not None else None,
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_concurrent_streams", 1000),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ],
    )
    ads = AggregatedDiscoveryService(
        configs=control.cache,
        nodes=control.nodes,
        metrics=metrics,
        default_listen_port=settings.listen_port,
    )
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    renewal = None
    if auth.tickets is not None:
        renewal = TicketRenewal(
            signer=auth.tickets, metrics=metrics, cookie_secure=settings.cookie_secure
        )
    authz = AuthorizationService(
        authorizer=auth.authorizer,
        metrics=metrics,
        fail_open=settings.authz_failure_mode == "open",
        tickets=renewal,
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(authz, server)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(limits.service, server)
    rlqs_pb2_grpc.add_RateLimitQuotaServiceServicer_to_server(limits.quota, server)
    if stats is not None:
        stats.add_to(server)
    if processing is not None:
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(
            processing.service, server
        )
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
        if control.listener_cert is not None and control.listener_cert.problem:
            return False, control.listener_cert.problem
        if control.tls_secret and not control.cache.has_secret(control.tls_secret):
            return False, f"no valid Secret document {control.tls_secret} for the listener"
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
    for url in (settings.redis_url, settings.ratelimit_redis_url, settings.cache_redis_url):
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
        tickets=auth.tickets,
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
    processing: ProcessingParts | None = None,
) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
    """What runs beside the servers, by name: each a way to start it (again)."""
    revoked: dict[str, Any] = {
        keys.sessions_channel: auth.session_store.cache,
        keys.api_keys_channel: auth.api_keys.cache,
    }
    if processing is not None:
        revoked[keys.cache_purged_channel] = processing.memory
    tasks: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
        "eviction": eviction.run,
        "watcher": control.watcher.run,
        "bans": control.bans.run,
        **({"listener-tls": control.listener_cert.run} if control.listener_cert else {}),
        "node-status": lambda: report_nodes(control.nodes, control.status, worker),
        "refusals": lambda: report_refused_clients(limits.service, limits.refusals, metrics),
        "revocations": lambda: listen_for_revocations(
            redis=redis.control, keys=keys, caches=revoked, metrics=metrics
        ),
    }
    # Session tickets: this process's keys, and what Envoy verifies and refuses.
    if auth.tickets is not None:
        tasks["ticket-keys"] = auth.tickets.run
    if control.jwt is not None:
        tasks["jwt-config"] = control.jwt.run
    if control.revocations is not None:
        tasks["revoked-sessions"] = control.revocations.run
    return tasks


@dataclasses.dataclass
class StatsParts:
    """Request statistics from Envoy's access log, usage metering, tracing (wardgate/stats/)."""

    access_log: AccessLogService | None
    flusher: UsageFlusher
    limited: LimitedClients
    metrics: StatsMetrics
    tracer: TracerProvider | None

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [TracingInterceptor()] if self.tracer is not None else []

    def add_to(self, server: grpc.aio.Server) -> None:
        if self.access_log is not None:
            als_pb2_grpc.add_AccessLogServiceServicer_to_server(self.access_log, server)

    def tasks(self, metrics: Metrics) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        def limited_error() -> None:
            metrics.store_errors.labels("usage").inc()

        return {
            "usage-flush": self.flusher.run,
            "limited-clients": lambda: self.limited.run(self.flusher.interval, limited_error),
        }

    async def close(self) -> None:
        """After the gRPC server stopped: the last usage batch out, the last spans sent."""
        await self.flusher.close()
        if self.tracer is not None:
            self.tracer.shutdown()


def wire_stats(settings: Settings, redis: RedisClients, keys: Keys, metrics: Metrics) -> StatsParts:
    """Access log -> per-route metrics, usage batches, refusal log; Redis -> limited clients."""
    sm = create_stats_metrics(metrics.registry)
    store = RedisUsageStore(redis=redis.control, keys=keys, retention=settings.usage_retention)
    meter = UsageMeter(
        max_keys=settings.usage_max_keys,
        on_overflow=lambda: sm.label_overflow.labels("usage").inc(),
    )
    flusher = UsageFlusher(
        meter=meter,
        store=store,
        interval=settings.usage_flush_interval,
        on_flush=lambda result: sm.usage_flushes.labels(result).inc(),
    )
    limited = LimitedClients(store=store, top=settings.top_clients)
    metrics.registry.register(limited)
    metrics.collectors.append(limited)
    decisions = None
    if settings.decision_logs_per_second > 0:
        decisions = DecisionLog(
            per_second=settings.decision_logs_per_second,
            on_suppressed=sm.decision_logs_suppressed.inc,
        )
    sink = StatsSink(
        routes=RouteMetrics(metrics=sm, routes=RouteLabels(settings.stats_max_routes)),
        meter=meter,
        decisions=decisions,
    )
    service = AccessLogService(observe=sink.observe, metrics=sm) if settings.access_log else None
    tracer = None
    if settings.otlp_endpoint:
        tracer = setup_tracing(
            settings.otlp_endpoint,
            service_name="wardgate",
            on_export=lambda result: sm.trace_exports.labels(result).inc(),
        )
    return StatsParts(service, flusher, limited, sm, tracer)
