"""Connecting to Redis: ``redis://``, ``rediss://`` (TLS) and ``redis+cluster://`` URLs."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from wardgate.errors import SettingsError

AnyRedis = Any  # aioredis.Redis | RedisCluster; both speak the commands wardgate uses


def connect(
    url: str,
    *,
    timeout: float,
    name: str = "wardgate",
    max_connections: int = 64,
    decode: bool = True,
) -> AnyRedis:
    """A client for ``url`` whose every command gives up after ``timeout`` seconds. Replies
    are text unless ``decode`` is False (bytes, e.g. cached response bodies).

    At most ``max_connections`` connections; a command that finds them all busy waits for
    one up to ``timeout`` instead of failing at once (redis-py's default pool raises).
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": decode,
        "client_name": name,
    }
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        return RedisCluster.from_url(
            url.replace("+cluster", "", 1), max_connections=max_connections, **kwargs
        )
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(
            f"REDIS_URL {url!r}: use redis://host:port/db, rediss://... or redis+cluster://host:port"
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **kwargs
    )
    return aioredis.Redis.from_pool(pool)  # closing the client closes the pool
