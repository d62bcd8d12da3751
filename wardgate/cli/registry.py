"""``wardgate register``: keep an instance of a ``discovery: registry`` service alive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time

import click

from wardgate.cli.base import CliError, redis_for, run_async
from wardgate.domain.durations import parse_duration
from wardgate.domain.registry import validate_instance
from wardgate.store.registry import RedisRegistryStore


@click.command()
@click.argument("service")
@click.option("--address", required=True, help="The instance's IP address.")
@click.option("--port", required=True, type=int)
@click.option("--weight", default=1, show_default=True, type=int)
@click.option("--ttl", default="10s", show_default=True, help="Gone this long after the last beat.")
@click.option("--once", is_flag=True, help="One heartbeat, then exit (for a cron or a script).")
@click.pass_context
@run_async
async def register(
    ctx: click.Context, service: str, address: str, port: int, weight: int, ttl: str, once: bool
) -> None:
    """Register an instance of SERVICE and heartbeat until Ctrl-C (then deregister)."""
    try:
        ttl_s = parse_duration(ttl)
        instance = validate_instance(address, port, weight, ttl_s)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    async with redis_for(ctx) as (redis, keys):
        raw = await redis.hget(keys.services, service)
        if not raw or json.loads(raw).get("discovery") != "registry":
            raise CliError(f"service/{service} does not exist with discovery: registry")
        store = RedisRegistryStore(redis=redis, keys=keys)
        await store.heartbeat(service, instance, ttl=ttl_s, now=time.time())
        click.echo(f"{service}: {address}:{port} registered (ttl {ttl})")
        if once:
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ttl_s / 3)
            if not stop.is_set():
                await store.heartbeat(service, instance, ttl=ttl_s, now=time.time())
        await store.deregister(service, instance)
        click.echo(f"{service}: {address}:{port} deregistered")
