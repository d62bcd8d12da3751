"""``wardgate cache purge ROUTE [--path PATH]``: drop a route's cached answers (all of them,
or those of one path, every query and every user included) from the response cache."""

from __future__ import annotations

import re

import click
from redis.exceptions import RedisError

from wardgate.cli.base import CliError, open_redis, run_async, settings_of
from wardgate.domain.doc_base import NAME_RE
from wardgate.errors import StoreError
from wardgate.store.keys import Keys
from wardgate.store.redis_client import connect
from wardgate.store.response_cache import RedisCacheStore

_PATH = re.compile(r"/[!-~]*")


@click.group()
def cache() -> None:
    """The shared response cache (routes with cache)."""


@cache.command("purge")
@click.argument("route")
@click.option(
    "--path",
    default=None,
    help="Only this path (as the client requests it, without the query: every query of it).",
)
@click.pass_context
@run_async
async def purge(ctx: click.Context, route: str, path: str | None) -> None:
    """Remove ROUTE's cached answers; answers being fetched now are not stored."""
    if not re.fullmatch(NAME_RE, route):
        raise CliError(f"{route!r} is not a route name")
    if path is not None and (not _PATH.fullmatch(path) or "?" in path):
        raise CliError(
            f"--path {path!r}: a path starts with '/', holds visible ASCII only and no query"
        )
    settings = settings_of(ctx)
    url = settings.cache_redis_url or settings.redis_url
    redis = connect(url, timeout=max(5.0, settings.redis_timeout), name="wardgate-cli")
    try:
        keys = Keys(settings.key_prefix)
        try:
            removed = await RedisCacheStore(redis=redis, keys=keys).purge(route, path)
        except StoreError as exc:
            raise CliError(f"cannot reach the cache's Redis at {url}: {exc}") from None
    except RedisError as exc:
        raise CliError(f"cannot reach the cache's Redis at {url}: {exc}") from None
    finally:
        await redis.aclose()
    # Every wardgate process drops what it keeps in memory (it listens on the main Redis).
    main = await open_redis(settings)
    try:
        await main.publish(keys.cache_purged_channel, route)
    finally:
        await main.aclose()
    what = f"route {route}" + (f", path {path}" if path else "")
    click.echo(f"purged {removed} cached answer{'s' if removed != 1 else ''} of {what}")
