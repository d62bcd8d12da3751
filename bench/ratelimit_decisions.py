"""Rate-limit decisions per second of one wardgate worker against a no-op servicer, same run.

    python bench/ratelimit_decisions.py [--duration 10] [--connections 32] [--decisions 20000]

One static Envoy (``--concurrency 1``) per case, loaded by ``wrk``: one listener whose route
carries the rate-limit filter (domain ``wardgate``, timeout 1s, failure_mode_deny false) and
one rate limit as wardgate's translator writes it for ``{by: ip, requests: 10**9, per:
minute}``: a ``generic_key`` entry ``wg_rule=<encoded rule>``, then ``remote_address``. The
filter skips ``direct_response`` routes, so the route forwards to a second listener of the
same Envoy that answers 200 (the same extra hop in every case).

  floor  ShouldRateLimit -> ``bench/noop_rls.py`` (answers OK at once).
  w1     ShouldRateLimit -> ``wardgate serve`` (one worker, a private redis-server): every
         request is one counter decision in Redis. Redis commands per decision come from
         INFO commandstats before and after, divided by Envoy's ``ratelimit.ok``.

Then, in this process and on the same redis-server, the same fixed-window decision
(10**9 per minute, one client) ``--decisions`` times with wardgate's ``RateLimiter`` +
``RedisCounterStore`` (asyncio; one at a time, then 32 at once) and with the ``limits``
library's ``RedisStorage`` + ``FixedWindowRateLimiter`` (sync, one at a time; and its asyncio
storage on redis-py when it is there): a library-level comparison, no gRPC or Envoy.
Figures are printed as ratios against the floor of the same run; nothing is asserted.
Every process started here is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import redis
from _envoy import (
    callout_envoy_config,
    envoy_stats,
    grpc_cluster,
    ratelimit_filter,
    start_static_envoy,
)
from _procs import Procs
from _report import (
    Load,
    cpu_cell,
    machine,
    measure_load,
    print_header,
    redis_server_version,
    run_bounded,
    versions,
    warn_disturbed,
)
from authz_gateway import wait_status
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from wardgate import devstack
from wardgate.domain.ratelimit import LimitRequest, RateLimiter, encode_rule
from wardgate.store.keys import Keys
from wardgate.store.redis_client import connect
from wardgate.store.redis_store import RedisCounterStore

HERE = Path(__file__).resolve().parent
LIMIT, PERIOD = 10**9, 60
RULE = encode_rule("bench#0", LIMIT, PERIOD, "fixed_window", False)
STAT = "cluster.sink.ratelimit."


def command_calls(url: str) -> dict[str, int]:
    """Calls per command the redis-server has processed so far, INFO itself left out."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {
        k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"
    }


def per_decision(before: dict[str, int], after: dict[str, int], decisions: int) -> str:
    """Commands per decision, and the ones seen at least once per 200 decisions. Redis
    counts the commands a Lua script runs too: EVALSHA is the round trip, GET/INCR inside."""
    per = {k: (v - before.get(k, 0)) / max(decisions, 1) for k, v in after.items()}
    parts = ", ".join(
        f"{k.replace('|', ' ')} {v:.2f}" for k, v in sorted(per.items()) if v >= 0.005
    )
    return f"{sum(per.values()):.2f} ({parts})"


# --- decisions through Envoy --------------------------------------------------------------


def start_service(
    procs: Procs, workdir: Path, redis_url: str | None
) -> tuple[int, subprocess.Popen[bytes]]:
    port = devstack.free_port()
    if redis_url is None:
        with open(workdir / "noop_rls.log", "ab") as out:
            proc = procs.add(
                "servicer",
                subprocess.Popen(
                    [sys.executable, str(HERE / "noop_rls.py"), "--port", str(port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                ),
            )
    else:
        http_port = devstack.free_port()
        env = {
            "REDIS_URL": redis_url,
            "WARDGATE_GRPC_PORT": str(port),
            "WARDGATE_HTTP_PORT": str(http_port),
            "WARDGATE_LOG_LEVEL": "WARNING",
        }
        log = workdir / "wardgate.log"
        proc = procs.add(
            "servicer",
            devstack.start_wardgate(env=env, http_port=http_port, log=log, args=("--workers", "1")),
        )
    devstack.wait_port(port, proc=proc, what="rate-limit service", timeout=20)
    return port, proc


def prove_it_limits(port: int) -> None:
    """wardgate refuses the second request of a 1-per-minute rule: it really decides."""
    rule = encode_rule(f"bench-proof-{time.time_ns()}#0", 1, PERIOD, "fixed_window", False)
    entries = [ratelimit_pb2.RateLimitDescriptor.Entry(key="wg_rule", value=rule)]
    entries.append(ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value="127.0.0.9"))
    req = rls_pb2.RateLimitRequest(
        domain="wardgate", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=entries)]
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        codes = [stub.ShouldRateLimit(req, timeout=5).overall_code for _ in range(2)]
    if codes != [rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT]:
        raise RuntimeError(f"wardgate did not limit a 1-per-minute rule: {codes}")


def through_envoy(
    case: str,
    label: str,
    port: int,
    *,
    watch: dict[str, subprocess.Popen[bytes]],
    redis_url: str | None,
    args: argparse.Namespace,
) -> tuple[Load, str]:
    listen_port, admin_port = devstack.free_port(), devstack.free_port()
    actions = [
        {"generic_key": {"descriptor_key": "wg_rule", "descriptor_value": RULE}},
        {"remote_address": {}},
    ]
    config = callout_envoy_config(
        listen_port=listen_port,
        admin_port=admin_port,
        http_filters=[ratelimit_filter("rls", domain="wardgate", timeout="1s")],
        clusters=[grpc_cluster("rls", port, max_streams=args.streams_per_connection)],
        route={"route": {"cluster": "sink", "rate_limits": [{"actions": actions}]}},
        sink_port=devstack.free_port(),
    )
    envoy_procs = Procs()
    try:
        envoy = envoy_procs.add("envoy", start_static_envoy(args.workdir, case, config))
        url = f"http://127.0.0.1:{listen_port}/"
        wait_status(url, 200)
        if envoy_stats(admin_port).get(STAT + "ok", 0) < 1:
            raise RuntimeError(f"{case}: a request through Envoy made no rate-limit decision")
        if redis_url:
            client = redis.Redis.from_url(redis_url, socket_timeout=5)
            try:
                keys = client.keys("*rl:*bench#0|remote_address=*")
            finally:
                client.close()
            if not keys:
                raise RuntimeError(f"{case}: no counter in Redis after one request")
            print(f"  {case}: GET / -> 200, counter {keys[0]!r} in Redis", flush=True)

        def counters() -> dict[str, int]:
            stats = envoy_stats(admin_port)
            out = {k: stats.get(STAT + k, 0) for k in ("ok", "over_limit", "error")}
            out["failure_mode_allowed"] = stats.get(STAT + "failure_mode_allowed", 0)
            if redis_url:
                out |= {"redis:" + k: v for k, v in command_calls(redis_url).items()}
            return out

        view = Procs()  # what to count CPU for; stopped by their owners
        for name, proc in {**watch, "envoy": envoy}.items():
            view.add(name, proc)
        load = measure_load(case, label, url, args=args, procs=view, counters=counters)
    finally:
        envoy_procs.stop_all()
    c = load.counters
    decisions = c["ok"] + c["over_limit"]
    load.bad += c["error"] + c["failure_mode_allowed"] + c["over_limit"]
    cmds = {k[6:]: v for k, v in c.items() if k.startswith("redis:") and v}
    redis_per = per_decision({}, cmds, decisions) if redis_url else "-"
    print(
        f"  {case:<5} {load.rps:>8,.0f} req/s  p99 {load.p99_ms:7.2f} ms  decisions/req "
        f"{decisions / max(load.requests, 1):.2f}  errors {c['error']}  over {c['over_limit']}"
        f"  servicer cores {cpu_cell(load.cpu['servicer'])}  redis commands/decision {redis_per}",
        flush=True,
    )
    return load, redis_per


# --- the same decisions in-process: wardgate's limiter and the limits library -------------


async def timed_async(n: int, concurrency: int, one: Callable[[], Awaitable[Any]]) -> float:
    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    for _ in range(min(n, 200)):  # warm-up: connections, script load
        await one()
    started = time.perf_counter()
    share = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
    await asyncio.gather(*(worker(k) for k in share))
    return n / (time.perf_counter() - started)


def library_rows(url: str, n: int) -> list[tuple[str, float, str]]:
    """(what, decisions/s, Redis commands per decision) for each library and mode."""
    rows: list[tuple[str, float, str]] = []

    def measured(what: str, run: Callable[[], float]) -> None:
        before = command_calls(url)
        rate = run()
        after = command_calls(url)
        rows.append((what, rate, per_decision(before, after, n + min(n, 200))))
        print(f"  {what:<48} {rate:>9,.0f} decisions/s  redis/decision {rows[-1][2]}", flush=True)

    request = LimitRequest("bench#0", LIMIT, PERIOD, "fixed_window", False, "library=wardgate")

    async def wardgate_rate(concurrency: int) -> float:
        client = connect(url, timeout=5, name="bench", max_connections=64)
        limiter = RateLimiter(counters=RedisCounterStore(redis=client), key_for=Keys().counter)
        try:
            return await timed_async(n, concurrency, lambda: limiter.decide([request]))
        finally:
            await client.aclose()

    measured("wardgate RateLimiter, one at a time", lambda: asyncio.run(wardgate_rate(1)))
    measured("wardgate RateLimiter, 32 concurrent", lambda: asyncio.run(wardgate_rate(32)))
    try:
        from limits import RateLimitItemPerMinute
        from limits.storage import RedisStorage
        from limits.strategies import FixedWindowRateLimiter
    except ImportError:
        print("  limits is not installed (pip install 'limits[redis]'): skipped", flush=True)
        return rows
    item = RateLimitItemPerMinute(LIMIT)
    storage = RedisStorage(url)
    limits_sync = FixedWindowRateLimiter(storage)

    def limits_rate() -> float:
        for _ in range(min(n, 200)):
            limits_sync.hit(item, "bench", "library-sync")
        started = time.perf_counter()
        for _ in range(n):
            limits_sync.hit(item, "bench", "library-sync")
        return n / (time.perf_counter() - started)

    measured("limits RedisStorage (sync), one at a time", limits_rate)
    try:
        from limits.aio.storage import RedisStorage as AsyncRedisStorage
        from limits.aio.strategies import FixedWindowRateLimiter as AsyncFixedWindow
    except ImportError:
        return rows

    async def limits_async(concurrency: int) -> float:
        storage = AsyncRedisStorage("async+" + url, implementation="redispy")
        limiter = AsyncFixedWindow(storage)
        return await timed_async(
            n, concurrency, lambda: limiter.hit(item, "bench", "library-async")
        )

    measured(
        "limits aio RedisStorage (redispy), one at a time", lambda: asyncio.run(limits_async(1))
    )
    measured(
        "limits aio RedisStorage (redispy), 32 concurrent", lambda: asyncio.run(limits_async(32))
    )
    return rows


# --- the run ------------------------------------------------------------------------------


def bench(workdir: Path, args: argparse.Namespace) -> None:
    args.workdir = workdir
    info = machine()
    loads: list[tuple[Load, str]] = []
    print("decisions through Envoy (wrk):", flush=True)
    procs = Procs()
    try:
        port, noop = start_service(procs, workdir, None)
        label = "ratelimit -> no-op grpc.aio servicer"
        watch = {"servicer": noop}
        loads.append(through_envoy("floor", label, port, watch=watch, redis_url=None, args=args))
    finally:
        procs.stop_all()
    procs = Procs()
    try:
        redis_port = devstack.free_port()
        redis_proc = procs.add("redis", devstack.start_redis(redis_port, workdir / "redis"))
        url = f"redis://127.0.0.1:{redis_port}/0"
        service = Procs()
        try:
            port, proc = start_service(service, workdir, url)
            prove_it_limits(port)
            label = "ratelimit -> wardgate serve --workers 1, fixed window"
            watch = {"servicer": proc, "redis": redis_proc}
            loads.append(through_envoy("w1", label, port, watch=watch, redis_url=url, args=args))
        finally:
            service.stop_all()
        print(f"the same decision, in this process, {args.decisions:,} times:", flush=True)
        rows = library_rows(url, args.decisions)
    finally:
        procs.stop_all()

    def per_s(r: Load) -> float:
        return r.rps * r.counters["ok"] / max(r.requests, 1)

    floor, w1 = per_s(loads[0][0]), per_s(loads[1][0])
    print()
    print_header(
        info,
        packages=versions("grpcio", "protobuf", "xds-protos", "redis", "limits", "uvloop"),
        redis=redis_server_version(),
    )
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency (after a "
        f"{args.warmup}s warm-up); Envoy --concurrency 1, {args.streams_per_connection} streams"
        " per connection to the servicer"
    )
    print()
    print(
        "| case | what | decisions/s | p99 ms | vs floor | cores: servicer | Envoy | redis"
        " | servicer CPU µs/decision | Redis commands/decision (script's own included) | bad |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r, redis_per in loads:
        redis_cores = f"{sum(r.cpu['redis']):.2f}" if "redis" in r.cpu else "-"
        per = sum(r.cpu["servicer"]) / max(per_s(r), 1) * 1e6
        print(
            f"| {r.case} | {r.label} | {per_s(r):,.0f} | {r.p99_ms:.2f} | {per_s(r) / floor:.3f} |"
            f" {cpu_cell(r.cpu['servicer'])} | {sum(r.cpu['envoy']):.2f} | {redis_cores} |"
            f" {per:,.0f} | {redis_per} | {r.bad} |"
        )
    print()
    print(f"w1/floor {w1 / floor:.3f}")
    print()
    print(f"Library level: {args.decisions:,} decisions in one Python process, same redis-server")
    print("| library, mode | decisions/s | vs wardgate one at a time | Redis commands/decision |")
    print("| --- | ---: | ---: | --- |")
    for what, rate, redis_per in rows:
        print(f"| {what} | {rate:,.0f} | {rate / rows[0][1]:.3f} | {redis_per} |")
    sync = [rate for what, rate, _ in rows if what.startswith("limits RedisStorage (sync)")]
    if sync:
        print()
        print(f"wardgate/limits (both one at a time) {rows[0][1] / sync[0]:.3f}")
    print()
    warn_disturbed([load for load, _ in loads])


def _seconds(text: str) -> int:
    value = int(text)  # wrk takes whole seconds
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 second")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=_seconds, default=10, help="seconds per run (10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--warmup", type=_seconds, default=2, help="seconds before each run (2)")
    parser.add_argument(
        "--decisions", type=int, default=20_000, help="decisions per library-level run (20000)"
    )
    parser.add_argument(
        "--streams-per-connection",
        type=int,
        default=4,
        help="max concurrent streams per Envoy->servicer connection (4; 0: no cap)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    # The library runs go at >= 1,000 decisions/s on any machine this is meant for.
    budget = 2 * (args.duration + args.warmup + 60) + 5 * (args.decisions // 1000 + 10) + 60
    return run_bounded(
        lambda workdir: bench(workdir, args),
        budget=budget,
        keep=args.keep,
        prefix="wardgate-ratelimit-",
    )


if __name__ == "__main__":
    sys.exit(main())
