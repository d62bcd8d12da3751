"""Checks per second of one wardgate worker against a no-op ext_authz servicer, same run.

    python bench/authz_check.py [--duration 10] [--connections 32] [--rate 1000]

One static Envoy (``--concurrency 1``) per case, loaded by ``wrk``: one listener, one
``direct_response`` 200 route behind the ext_authz filter (gRPC, timeout 1s, status_on_error
503) whose per-route ``context_extensions`` are ``{"route": "bench", "auth": "session"}``, as
wardgate's translator writes them for a route with ``auth: {require: session}``:

  floor  ext_authz -> ``bench/noop_authz.py`` (answers OK at once).
  w1     ext_authz -> ``wardgate serve`` (one worker, a private redis-server): every request
         carries a valid session cookie, so every check resolves a session (from Redis or
         from what wardgate caches; the Redis commands per check are printed).
  w2     the same with ``wardgate serve --workers 2``.

Envoy's gRPC cluster caps streams per connection (``--streams-per-connection``, 4) in every
case, so that Envoy opens several connections and SO_REUSEPORT can spread them over the
workers of w2; with one connection every check would reach the same worker.

Then the latency of the check alone at a fixed rate (``--rate`` checks/s, open loop: each call
is sent at its scheduled time whether or not the previous ones have answered, and its latency
is counted from that time) from an asyncio gRPC client straight to the no-op servicer and to
wardgate (one worker). Figures are printed as ratios against the floor of the same run;
nothing is asserted. Every process started here is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
from _envoy import (
    callout_envoy_config,
    direct_response,
    envoy_stats,
    ext_authz_filter,
    grpc_cluster,
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
from authz_gateway import http, redis_commands, wait_status
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

from wardgate import devstack
from wardgate.xds import typeurls as tu

HERE = Path(__file__).resolve().parent
CONTEXT = {"route": "bench", "auth": "session"}
USER, PASSWORD = "bench", "bench-password-0123456789"
COOKIE = "wg_session"


# --- the services under test --------------------------------------------------------------


def start_noop(procs: Procs, workdir: Path) -> tuple[int, subprocess.Popen[bytes]]:
    port = devstack.free_port()
    with open(workdir / "noop_authz.log", "ab") as out:
        proc = procs.add(
            "servicer",
            subprocess.Popen(
                [sys.executable, str(HERE / "noop_authz.py"), "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            ),
        )
    devstack.wait_port(port, proc=proc, what="noop_authz", timeout=20)
    return port, proc


def start_wardgate(
    procs: Procs, workdir: Path, redis_url: str, workers: int
) -> tuple[int, int, subprocess.Popen[bytes]]:
    grpc_port, http_port = devstack.free_port(), devstack.free_port()
    env = {
        "REDIS_URL": redis_url,
        "WARDGATE_GRPC_PORT": str(grpc_port),
        "WARDGATE_HTTP_PORT": str(http_port),
        "WARDGATE_LOG_LEVEL": "WARNING",
    }
    proc = procs.add(
        "servicer",
        devstack.start_wardgate(
            env=env,
            http_port=http_port,
            log=workdir / f"wardgate-w{workers}.log",
            args=("--workers", str(workers)),
        ),
    )
    devstack.wait_port(grpc_port, what="wardgate gRPC", timeout=20)
    return grpc_port, http_port, proc


def add_user_and_login(redis_url: str, http_port: int) -> str:
    """``wardgate users add`` and ``POST /auth/login``: the session cookie's value."""
    argv = ("users", "add", USER, "--role", "user", "--password-stdin")
    done = subprocess.run(
        [sys.executable, "-m", "wardgate", *argv],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "REDIS_URL": redis_url},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wardgate users add: {done.stderr.strip() or done.stdout.strip()}")
    status, headers, body = http(
        "POST",
        f"http://127.0.0.1:{http_port}/auth/login",
        body={"username": USER, "password": PASSWORD},
    )
    found = re.search(rf"{COOKIE}=([^;]+)", headers.get("set-cookie", ""))
    if status != 200 or not found:
        raise RuntimeError(f"login failed: {status} {body[:200]!r}")
    return found.group(1)


# --- throughput through Envoy -------------------------------------------------------------


def through_envoy(
    case: str,
    label: str,
    port: int,
    *,
    watch: dict[str, subprocess.Popen[bytes]],
    cookie: str | None,
    args: argparse.Namespace,
    redis_url: str | None = None,
) -> Load:
    workdir = args.workdir
    listen_port, admin_port = devstack.free_port(), devstack.free_port()
    route = {
        **direct_response(),
        "typed_per_filter_config": {
            "envoy.filters.http.ext_authz": {
                "@type": tu.T_EXT_AUTHZ_ROUTE,
                "check_settings": {"context_extensions": CONTEXT},
            }
        },
    }
    config = callout_envoy_config(
        listen_port=listen_port,
        admin_port=admin_port,
        http_filters=[ext_authz_filter("authz", timeout="1s")],
        clusters=[grpc_cluster("authz", port, max_streams=args.streams_per_connection)],
        route=route,
    )
    envoy_procs = Procs()
    try:
        envoy = envoy_procs.add("envoy", start_static_envoy(workdir, case, config))
        url = f"http://127.0.0.1:{listen_port}/"
        headers = {"cookie": f"{COOKIE}={cookie}"} if cookie else {}
        if cookie:
            wait_status(url, 401)  # no cookie: refused by wardgate, not by an error (503)
            status = http("GET", url, headers=headers)[0]
            if status != 200:
                raise RuntimeError(f"GET / with the session cookie through Envoy answered {status}")
            print(f"  {case}: GET / without the cookie -> 401, with it -> 200", flush=True)
        else:
            wait_status(url, 200)

        def counters() -> dict[str, int]:
            stats = envoy_stats(admin_port)
            out = {"checks": stats.get("http.bench.ext_authz.ok", 0)}
            if redis_url:
                out["redis"] = redis_commands(redis_url) - 1  # less this INFO
            return out

        view = Procs()  # what to count CPU for; stopped by their owners
        for name, proc in {**watch, "envoy": envoy}.items():
            view.add(name, proc)
        load = measure_load(
            case, label, url, args=args, procs=view, headers=headers, counters=counters
        )
        cx = envoy_stats(admin_port).get("cluster.authz.upstream_cx_active", 0)
    finally:
        envoy_procs.stop_all()
    print(
        f"  {case:<5} {load.rps:>8,.0f} req/s  p99 {load.p99_ms:7.2f} ms  bad {load.bad}"
        f"  checks/req {load.counters['checks'] / max(load.requests, 1):.2f}"
        f"  servicer cores {cpu_cell(load.cpu['servicer'])}  Envoy->servicer connections {cx}"
        + (f"  redis commands/check {redis_per_check(load):.2f}" if redis_url else ""),
        flush=True,
    )
    return load


def redis_per_check(load: Load) -> float:
    return load.counters.get("redis", 0) / max(load.counters["checks"], 1)


# --- latency at a fixed rate, straight to the servicer ------------------------------------


def check_request(cookie: str | None) -> external_auth_pb2.CheckRequest:
    """A CheckRequest like the one Envoy sends for ``GET /`` with the session cookie."""
    req = external_auth_pb2.CheckRequest()
    attrs = req.attributes
    for peer, port in ((attrs.source, 40000), (attrs.destination, 10000)):
        peer.address.socket_address.address = "127.0.0.1"
        peer.address.socket_address.port_value = port
    h = attrs.request.http
    h.id, h.method, h.host, h.path = "1", "GET", "127.0.0.1:10000", "/"
    h.scheme, h.protocol = "http", "HTTP/1.1"
    headers = {":authority": h.host, ":method": "GET", ":path": "/", ":scheme": "http"}
    headers |= {"user-agent": "wrk", "x-forwarded-proto": "http", "x-request-id": "0" * 32}
    if cookie:
        headers["cookie"] = f"{COOKIE}={cookie}"
    h.headers.update(headers)
    attrs.context_extensions.update(CONTEXT)
    return req


async def fixed_rate(
    port: int, request: external_auth_pb2.CheckRequest, *, rate: int, seconds: int
) -> tuple[list[float], int, int, float]:
    """(latencies in ms, non-OK answers, errors, worst send lag in ms), after 1 s of warm-up."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    denied = errors = 0
    lag = 0.0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        first = await stub.Check(request, timeout=5)
        if first.status.code != code_pb2.OK:
            raise RuntimeError(f"the check was refused: {first.status}")
        start = loop.time() + 0.05
        measured_from = start + 1.0

        async def one(at: float) -> None:
            nonlocal denied, errors
            try:
                resp = await stub.Check(request, timeout=2)
            except grpc.aio.AioRpcError:
                errors += 1
                return
            took = loop.time() - at
            if at >= measured_from:
                latencies.append(took * 1e3)
                denied += resp.status.code != code_pb2.OK

        tasks: set[asyncio.Task[None]] = set()
        for i in range(rate * (seconds + 1)):
            at = start + i / rate
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if at >= measured_from:
                lag = max(lag, loop.time() - at)
            task = asyncio.create_task(one(at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
    return latencies, denied, errors, lag * 1e3


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def latency(name: str, port: int, cookie: str | None, args: argparse.Namespace) -> dict[str, float]:
    lat, denied, errors, lag = asyncio.run(
        fixed_rate(port, check_request(cookie), rate=args.rate, seconds=args.duration)
    )
    out = {"p50": quantile(lat, 0.5), "p99": quantile(lat, 0.99), "n": len(lat)}
    out["max"] = max(lat, default=float("nan"))
    print(
        f"  {name:<5} {args.rate}/s x {args.duration}s: {len(lat):,} answered, p50 "
        f"{out['p50']:.2f} ms, p99 {out['p99']:.2f} ms, max {out['max']:.1f} ms; "
        f"non-OK {denied}, errors {errors}, worst send lag {lag:.1f} ms",
        flush=True,
    )
    if denied or errors:
        print(f"WARNING: {name}: {denied} non-OK answers, {errors} errors")
    if lag > 5:
        print(f"WARNING: {name}: the client fell {lag:.1f} ms behind its schedule")
    return out


# --- the run ------------------------------------------------------------------------------


def bench(workdir: Path, args: argparse.Namespace) -> None:
    args.workdir = workdir
    info = machine()
    loads: list[Load] = []
    lat: dict[str, dict[str, float]] = {}
    print("throughput through Envoy (wrk):", flush=True)
    procs = Procs()
    try:
        port, noop = start_noop(procs, workdir)
        label = "ext_authz -> no-op grpc.aio servicer"
        loads.append(
            through_envoy("floor", label, port, watch={"servicer": noop}, cookie=None, args=args)
        )
        lat["floor"] = latency("floor", port, None, args)
    finally:
        procs.stop_all()

    procs = Procs()
    try:
        redis_port = devstack.free_port()
        redis = procs.add("redis", devstack.start_redis(redis_port, workdir / "redis"))
        url = f"redis://127.0.0.1:{redis_port}/0"
        cookie = ""
        for workers in (1, 2):
            case = f"w{workers}"
            wardgate = Procs()
            try:
                grpc_port, http_port, proc = start_wardgate(wardgate, workdir, url, workers)
                cookie = cookie or add_user_and_login(url, http_port)
                label = f"ext_authz -> wardgate serve --workers {workers}, session check"
                watch = {"servicer": proc, "redis": redis}
                loads.append(
                    through_envoy(
                        case, label, grpc_port, watch=watch, cookie=cookie, args=args, redis_url=url
                    )
                )
                if workers == 1:
                    lat["w1"] = latency("w1", grpc_port, cookie, args)
            finally:
                wardgate.stop_all()
    finally:
        procs.stop_all()

    by = {r.case: r for r in loads}
    floor = by["floor"].rps
    print()
    print_header(
        info,
        packages=versions("grpcio", "protobuf", "xds-protos", "redis", "uvloop"),
        redis=redis_server_version(),
    )
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency (after a "
        f"{args.warmup}s warm-up); Envoy --concurrency 1, {args.streams_per_connection} streams"
        " per connection to the servicer"
    )
    print()
    print(
        "| case | what | req/s | p99 ms | req/s vs floor | cores: servicer | Envoy | redis"
        " | servicer CPU µs/check | Redis commands/check | bad |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in loads:
        redis_cores = f"{sum(r.cpu['redis']):.2f}" if "redis" in r.cpu else "-"
        per_check = sum(r.cpu["servicer"]) / max(r.rps, 1) * 1e6
        redis_cmds = f"{redis_per_check(r):.2f}" if "redis" in r.counters else "-"
        print(
            f"| {r.case} | {r.label} | {r.rps:,.0f} | {r.p99_ms:.2f} | {r.rps / floor:.3f} |"
            f" {cpu_cell(r.cpu['servicer'])} | {sum(r.cpu['envoy']):.2f} | {redis_cores} |"
            f" {per_check:,.0f} | {redis_cmds} | {r.bad} |"
        )
    print()
    print(f"w1/floor {by['w1'].rps / floor:.3f}")
    print(f"w2/floor {by['w2'].rps / floor:.3f}")
    print(f"w2/w1    {by['w2'].rps / by['w1'].rps:.3f}")
    print()
    print(
        f"Check latency at a fixed {args.rate:,} checks/s for {args.duration}s (open loop, one"
        " grpc.aio client, straight to the servicer, no Envoy):"
    )
    print("| case | p50 ms | p99 ms | max ms | calls | p50 vs floor | p99 vs floor |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, v in lat.items():
        print(
            f"| {name} | {v['p50']:.2f} | {v['p99']:.2f} | {v['max']:.1f} | {v['n']:,.0f} |"
            f" {v['p50'] / lat['floor']['p50']:.2f} | {v['p99'] / lat['floor']['p99']:.2f} |"
        )
    print()
    warn_disturbed(loads)


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
    parser.add_argument("--rate", type=int, default=1000, help="checks/s of the latency run")
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
    budget = 3 * (args.duration + args.warmup + 60) + 2 * (args.duration + 20) + 60
    return run_bounded(
        lambda workdir: bench(workdir, args),
        budget=budget,
        keep=args.keep,
        prefix="wardgate-authz-check-",
    )


if __name__ == "__main__":
    sys.exit(main())
