"""The composition root of ``wardgate serve``: settings in, running services out.

``serve`` reads top to bottom: Redis clients, the request path (authorization, rate limits),
the control plane (snapshot cache, document watcher, ADS), the gRPC and HTTP servers, the
background tasks (each part wired in ``wiring.py``); then it waits for SIGINT/SIGTERM and
takes everything down in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from grpc_health.v1 import health_pb2

from wardgate.domain.compose import ComposeKey
from wardgate.errors import StoreError
from wardgate.metrics import Metrics, create_metrics
from wardgate.settings import Settings
from wardgate.store.eviction import EvictionWatch
from wardgate.store.keys import Keys
from wardgate.wiring import (
    RedisClients,
    background_tasks,
    wire_auth,
    wire_control_plane,
    wire_grpc,
    wire_http,
    wire_limits,
    wire_processing,
    wire_stats,
)

log = logging.getLogger("wardgate")


async def serve(settings: Settings, *, metrics: Metrics | None = None) -> None:
    """Run until SIGINT/SIGTERM: gRPC (ADS, ext_authz, rate limit, health) and HTTP."""
    metrics = metrics or create_metrics()
    keys = Keys(settings.key_prefix)
    redis = RedisClients.connect(settings)
    auth = wire_auth(settings, redis, keys, metrics)
    limits = wire_limits(settings, redis, keys, metrics)
    compose_key = ComposeKey()  # read with the documents, sent with every composition part
    control = wire_control_plane(settings, redis, keys, metrics, auth.issuers, compose_key)
    stats = wire_stats(settings, redis, keys, metrics)
    processing = wire_processing(settings, redis, keys, metrics, compose_key)
    server, health_servicer = wire_grpc(
        settings, metrics, auth, limits, control, stats=stats, processing=processing
    )
    eviction = EvictionWatch(redis=redis.hot, metrics=metrics, allow=settings.redis_allow_eviction)
    app = wire_http(settings, metrics, auth, redis, keys, control, eviction)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.bind_host, settings.http_port, reuse_port=True)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await site.start()
    tasks = [
        asyncio.create_task(supervised(name, start, metrics), name=name)
        for name, start in background_tasks(
            redis=redis,
            keys=keys,
            metrics=metrics,
            auth=auth,
            limits=limits,
            control=control,
            eviction=eviction,
            worker=worker,
            processing=processing,
        ).items()
    ] + [
        asyncio.create_task(supervised(name, start, metrics), name=name)
        for name, start in stats.tasks(metrics).items()
    ]
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "wardgate serving: gRPC %s:%d, HTTP %s:%d, redis %s",
        settings.bind_host,
        settings.grpc_port,
        settings.bind_host,
        settings.http_port,
        redact(settings.redis_url),
    )
    try:
        await stop.wait()
    finally:
        log.info("wardgate stopping")
        await health_servicer.enter_graceful_shutdown()
        await _cancel(tasks)
        await server.stop(grace=1.0)
        await stats.close()  # after the server: every access-log entry received is counted
        await runner.cleanup()
        await processing.fetcher.aclose()
        if auth.tickets is not None:  # its keys stay published only as long as tickets need
            await auth.tickets.retire()
        with contextlib.suppress(StoreError):
            await control.status.drop_nodes(worker)
        await redis.aclose()


async def supervised(
    name: str, start: Callable[[], Coroutine[Any, Any, None]], metrics: Metrics
) -> None:
    """Run a background task forever: one that fails (a bug; each task handles the store's
    failures itself) is logged, counted and started again a second later, never lost."""
    while True:
        try:
            await start()
            log.error("background task %s ended; starting it again", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s failed; starting it again", name)
            metrics.task_restarts.labels(name).inc()
        await asyncio.sleep(1.0)


CANCEL_WAIT = 2.0  # seconds the background tasks get to end when the worker stops


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the background tasks and wait for them, ``CANCEL_WAIT`` seconds at most: one
    that does not end must not hold up the rest of the stop (the gRPC server's, and the last
    usage flush), or the stop runs into a kill and loses the figures. Named in the log."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=CANCEL_WAIT)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: a task that failed while stopping is not an error
    if pending:
        log.warning(
            "stopping: background tasks still running after %.0f s: %s",
            CANCEL_WAIT,
            ", ".join(sorted(t.get_name() for t in pending)),
        )


def redact(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
