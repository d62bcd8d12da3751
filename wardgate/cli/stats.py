"""``wardgate usage`` (usage per user, API key and route, from Redis) and ``wardgate top`` (a
live view of wardgate's ``/metrics``)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import cast

import click
from rich.console import Console
from rich.live import Live

from wardgate.cli.base import CliError, redis_for, run_async, settings_of
from wardgate.domain.durations import parse_duration
from wardgate.stats.top_view import Scrape, render
from wardgate.stats.usage import DIMENSIONS, Dimension, hours_since
from wardgate.store.usage import RedisUsageStore

MAX_SPAN = 400 * 86400.0


@click.command()
@click.option(
    "--by",
    "by",
    type=click.Choice(list(DIMENSIONS)),
    help="One dimension (default: user, api_key and route).",
)
@click.option("--since", default="24h", show_default=True, help="How far back, e.g. 1h, 7d.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
@run_async
async def usage(ctx: click.Context, by: str | None, since: str, output: str) -> None:
    """Requests, bytes in and bytes out per user, API key and route.

    Usage is kept in hourly buckets: the span covers every hour that overlaps it."""
    try:
        span = parse_duration(since)
    except ValueError as exc:
        raise CliError(f"--since {since!r}: {exc}") from None
    if not 0 < span <= MAX_SPAN:
        raise CliError(f"--since {since!r}: must be more than 0 and at most 400d")
    dims = [cast(Dimension, by)] if by else list(DIMENSIONS)
    settings = settings_of(ctx)
    async with redis_for(ctx) as (redis, keys):
        store = RedisUsageStore(redis=redis, keys=keys, retention=settings.usage_retention)
        totals = await store.totals(dims, hours_since(time.time(), span))
    order = {d: i for i, d in enumerate(DIMENSIONS)}
    entries = sorted(totals.items(), key=lambda kv: (order[kv[0][0]], -kv[1].requests, kv[0][1]))
    if output == "json":
        out = [
            {
                "by": d,
                "key": key,
                "requests": t.requests,
                "bytes_in": t.bytes_in,
                "bytes_out": t.bytes_out,
            }
            for (d, key), t in entries
        ]
        click.echo(json.dumps(out, indent=2))
        return
    if not entries:
        click.echo(f"no usage in the last {since}")
        return
    click.echo(f"{'BY':<8} {'KEY':<32} {'REQUESTS':>10} {'BYTES IN':>14} {'BYTES OUT':>14}")
    for (d, key), t in entries:
        shown = key if key.isprintable() else repr(key)
        click.echo(f"{d:<8} {shown:<32} {t.requests:>10} {t.bytes_in:>14} {t.bytes_out:>14}")


def _scrape(url: str) -> Scrape:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except (OSError, urllib.error.URLError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {url}: {exc}") from None
    return Scrape.parse(text, time.monotonic())


@click.command()
@click.option("--url", help="wardgate's /metrics (default: this machine, WARDGATE_HTTP_PORT).")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one view (two scrapes) and exit.")
@click.pass_context
def top(ctx: click.Context, url: str | None, interval: float, once: bool) -> None:
    """A live view: requests/s per route, status mix, p50/p99, the most limited clients."""
    if not 0.2 <= interval <= 3600:
        raise CliError("--interval must be from 0.2 to 3600 seconds")
    if url is None:
        url = f"http://127.0.0.1:{settings_of(ctx).http_port}/metrics"
    prev = _scrape(url)
    if once:
        time.sleep(interval)
        Console(width=120).print(render(prev, _scrape(url), source=url))
        return
    with Live(render(prev, prev, source=url), auto_refresh=False, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                cur = _scrape(url)
                live.update(render(prev, cur, source=url), refresh=True)
                prev = cur
        except KeyboardInterrupt:
            return
