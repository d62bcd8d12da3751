"""What every ``wardgate`` command shares: the click group, ``CliError``, running an async
command, the settings and a Redis client for one command, and ``main``, which turns every error
into a one-line reason and an exit code (2 for bad usage, 1 otherwise, 130 when aborted).

The command modules import this module, never ``wardgate.cli`` itself (``stack`` also imports
``documents`` for its file reader); ``wardgate.cli`` imports them and adds their commands to
``cli``, so nothing here depends on a command module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import click
from redis.exceptions import RedisError

from wardgate.errors import WardgateError
from wardgate.settings import Settings, load_settings
from wardgate.store.keys import Keys
from wardgate.store.redis_client import AnyRedis, connect

T = TypeVar("T")


class CliError(WardgateError):
    """A one-line reason for the user."""


def run_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def settings_of(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj
    if obj is None or "settings" not in obj:
        root = ctx.find_root()
        obj = root.obj = root.obj or {}
        obj["settings"] = load_settings(config_file=obj.get("config"))
    return obj["settings"]  # type: ignore[no-any-return]


async def open_redis(settings: Settings) -> AnyRedis:
    client = connect(
        settings.redis_url, timeout=max(2.0, settings.redis_timeout), name="wardgate-cli"
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise CliError(f"cannot reach Redis at {settings.redis_url}: {exc}") from None
    return client


@contextlib.asynccontextmanager
async def redis_for(ctx: click.Context) -> AsyncIterator[tuple[AnyRedis, Keys]]:
    """A Redis client for one command (closed after it) and the key names in force."""
    settings = settings_of(ctx)
    redis = await open_redis(settings)
    try:
        yield redis, Keys(settings.key_prefix)
    finally:
        await redis.aclose()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML settings file.")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Wardgate: Envoy carries the traffic, wardgate decides and configures."""
    ctx.obj = {"config": config}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cli.main(args=argv, prog_name="wardgate", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        click.echo(f"error: {exc.format_message()} (see 'wardgate {_path(exc)}--help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except WardgateError as exc:
        for line in str(exc).splitlines() or ["failed"]:
            click.echo(f"error: {line}", err=True)
        sys.exit(1)
    except (RedisError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _path(exc: click.UsageError) -> str:
    ctx = exc.ctx
    if ctx is None or ctx.parent is None:
        return ""
    return ctx.command_path.removeprefix("wardgate").strip() + " "
