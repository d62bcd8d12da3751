"""``wardgate bans``: the client networks every Envoy refuses for a while (``domain/bans.py``).
Automatic bans come from repeated rate-limit refusals; operators list, add and lift them."""

from __future__ import annotations

import json
import time

import click

from wardgate.cli.base import CliError, redis_for, run_async
from wardgate.domain.bans import network_of
from wardgate.domain.durations import parse_duration
from wardgate.store.bans import RedisBanStore


def _network(address: str) -> str:
    network = network_of(address)
    if network is None:
        raise CliError(
            f"{address!r} is not an IP address or a network of at most a /8 (IPv6: /32), "
            "such as 203.0.113.7"
        )
    return network


@click.group()
def bans() -> None:
    """Client networks refused by every Envoy for a while."""


@bans.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
@run_async
async def bans_list(ctx: click.Context, output: str) -> None:
    """Networks banned now, and for how much longer."""
    now = time.time()
    async with redis_for(ctx) as (redis, keys):
        live = await RedisBanStore(redis=redis, keys=keys).live(now=now)
    rows = sorted(live.items(), key=lambda item: item[1])
    if output == "json":
        click.echo(json.dumps([{"network": n, "until": u} for n, u in rows], indent=2))
        return
    for network, until in rows:
        click.echo(f"{network}  {int(until - now)} s left")
    if not rows:
        click.echo("no bans")


@bans.command("add")
@click.argument("address")
@click.option("--for", "duration", default="1h", show_default=True, help="How long, e.g. 30m.")
@click.pass_context
@run_async
async def bans_add(ctx: click.Context, address: str, duration: str) -> None:
    """Ban ADDRESS (an IP address or network; IPv6 counts as its /64)."""
    network = _network(address)
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise CliError(f"--for {duration!r}: {exc}") from None
    async with redis_for(ctx) as (redis, keys):
        await RedisBanStore(redis=redis, keys=keys).ban(network, until=time.time() + seconds)
    click.echo(f"{network} banned for {duration}")


@bans.command("remove")
@click.argument("address")
@click.pass_context
@run_async
async def bans_remove(ctx: click.Context, address: str) -> None:
    """Lift the ban on ADDRESS."""
    network = _network(address)
    async with redis_for(ctx) as (redis, keys):
        removed = await RedisBanStore(redis=redis, keys=keys).unban(network)
    if not removed:
        raise CliError(f"{network} is not banned")
    click.echo(f"{network} no longer banned")
