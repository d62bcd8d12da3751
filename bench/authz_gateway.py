"""What wardgate costs per request, against baselines measured in the same run.

    python bench/authz_gateway.py [--duration 10] [--connections 32] [--threads 1]

Every case is one Envoy with one worker (``--concurrency 1``) on loopback, loaded by ``wrk``:

  a   bare Envoy: a static listener whose only route is a ``direct_response`` 200.
  b   the same, plus the ext_authz filter calling ``bench/noop_authz.py``, a Python
      ``grpc.aio`` servicer whose ``Check`` answers OK at once (the floor for any Python
      ext_authz service).
  c0  full wardgate (redis-server, ``wardgate serve`` with one worker, Envoy configured over
      ADS, the demo upstream): a public route, no auth, no limits. Envoy -> upstream alone.
  c   the same stack, a route with ``auth: {require: session}`` and one rate limit by IP,
      requested with a valid session cookie: ext_authz + rate limit callouts + upstream.

(a) and (b) answer from Envoy; (c0) and (c) go on to the upstream, so compare c with c0 for
what wardgate adds, and b with a for what any Python callout costs. Each case gets a warm-up
and one measured run. Figures are printed as ratios against (a); nothing is asserted.
Every process started here is stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis
import yaml
from _envoy import callouts, envoy_stats, start_static_envoy, static_envoy_config
from _procs import Procs, cpu_seconds, machine_cpu
from _report import Result, machine, report, run_bounded
from _wrk import parse_wrk, wrk

from wardgate import devstack

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "wg_session"
BENCH_USER = "bench-user"
BENCH_PASSWORD = "bench-password-0123456789"


def redis_commands(url: str) -> int:
    """Commands the redis-server has processed so far (wardgate's, plus this INFO)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


# --- HTTP helpers -------------------------------------------------------------------------


def http(
    method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def wait_status(url: str, status: int, *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = http("GET", url)[0]
            if last == status:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within {timeout}s (last: {last})")


# --- measuring ----------------------------------------------------------------------------


def measure(
    case: str,
    label: str,
    url: str,
    *,
    args: argparse.Namespace,
    procs: Procs,
    admin_port: int,
    headers: dict[str, str] | None = None,
    redis_url: str | None = None,
) -> Result:
    headers = headers or {}
    wrk(url, seconds=args.warmup, args=args, headers=headers)
    pids = procs.pids()
    before_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    before_machine = machine_cpu()
    before_calls = callouts(envoy_stats(admin_port))
    if redis_url:
        before_calls["redis"] = redis_commands(redis_url)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = wrk(url, seconds=args.duration, args=args, headers=headers)
    elapsed = time.monotonic() - started
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {name: (cpu_seconds(pid) - before_cpu[name]) / elapsed for name, pid in pids.items()}
    after_machine = machine_cpu()
    cpu["wrk"] = (
        after_children.ru_utime + after_children.ru_stime - children.ru_utime - children.ru_stime
    ) / elapsed
    after_calls = callouts(envoy_stats(admin_port))
    if redis_url:
        after_calls["redis"] = redis_commands(redis_url)
    rps, p99, total, non2xx, errors = parse_wrk(out)
    calls = {k: (after_calls[k] - before_calls[k]) / max(total, 1) for k in after_calls}
    busy = (after_machine[0] - before_machine[0]) / elapsed
    steal = (after_machine[1] - before_machine[1]) / elapsed
    result = Result(case, label, rps, p99, total, non2xx, errors, cpu, calls, busy, steal)
    print(
        f"  {case:<3} {rps:>9,.0f} req/s  p99 {p99:7.2f} ms  non-2xx {non2xx}  "
        f"callouts/req authz {calls['authz']:.2f} ratelimit {calls['ratelimit']:.2f}"
        + (f"  redis commands/req {calls['redis']:.2f}" if "redis" in calls else ""),
        flush=True,
    )
    return result


# --- the cases ----------------------------------------------------------------------------


def run_static(
    case: str, label: str, *, workdir: Path, args: argparse.Namespace, with_authz: bool
) -> Result:
    procs = Procs()
    try:
        authz_port = None
        if with_authz:
            authz_port = devstack.free_port()
            with open(workdir / "noop_authz.log", "ab") as out:
                noop = procs.add(
                    "noop_authz",
                    subprocess.Popen(
                        [sys.executable, str(HERE / "noop_authz.py"), "--port", str(authz_port)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    ),
                )
            devstack.wait_port(authz_port, proc=noop, what="noop_authz", timeout=20)
        listen_port, admin_port = devstack.free_port(), devstack.free_port()
        config = static_envoy_config(
            listen_port=listen_port, admin_port=admin_port, authz_port=authz_port
        )
        procs.add("envoy", start_static_envoy(workdir, case, config))
        url = f"http://127.0.0.1:{listen_port}/"
        wait_status(url, 200)
        return measure(case, label, url, args=args, procs=procs, admin_port=admin_port)
    finally:
        procs.stop_all()


def run_wardgate(*, workdir: Path, args: argparse.Namespace) -> list[Result]:
    procs = Procs()
    try:
        redis_port, upstream_port = devstack.free_port(), devstack.free_port()
        grpc_port, http_port = devstack.free_port(), devstack.free_port()
        listen_port, admin_port = devstack.free_port(), devstack.free_port()
        procs.add("redis", devstack.start_redis(redis_port, workdir / "redis"))
        procs.add(
            "upstream", devstack.start_upstream(upstream_port, "bench", workdir / "upstream.log")
        )
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "WARDGATE_KEY_PREFIX": "wardgate:",
            "WARDGATE_GRPC_PORT": str(grpc_port),
            "WARDGATE_HTTP_PORT": str(http_port),
            "WARDGATE_LISTEN_PORT": str(listen_port),
            "WARDGATE_LOG_LEVEL": "WARNING",
        }
        procs.add(
            "wardgate",
            devstack.start_wardgate(
                env=env, http_port=http_port, log=workdir / "wardgate.log", args=("--workers", "1")
            ),
        )
        procs.add(
            "envoy",
            devstack.start_envoy(
                workdir=workdir,
                node_id="bench",
                listen_port=listen_port,
                admin_port=admin_port,
                wardgate_port=grpc_port,
                concurrency=1,
            ),
        )

        def cli(*argv: str, stdin: str | None = None) -> None:
            done = subprocess.run(
                [sys.executable, "-m", "wardgate", *argv],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, **env},
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"wardgate {' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}"
                )

        docs = [
            {
                "kind": "Service",
                "name": "bench-echo",
                "endpoints": [{"address": "127.0.0.1", "port": upstream_port}],
            },
            {
                "kind": "Route",
                "name": "bench-public",
                "match": {"prefix": "/bench/public"},
                "backend": "bench-echo",
            },
            {
                "kind": "Route",
                "name": "bench-authz",
                "match": {"prefix": "/bench/authz"},
                "backend": "bench-echo",
                "auth": {"require": "session"},
                "rate_limits": [{"by": "ip", "requests": 100_000_000, "per": "hour"}],
            },
        ]
        (workdir / "routes.yaml").write_text(yaml.safe_dump_all(docs))
        cli("apply", "-f", str(workdir / "routes.yaml"))
        cli(
            "users",
            "add",
            BENCH_USER,
            "--role",
            "user",
            "--password-stdin",
            stdin=BENCH_PASSWORD + "\n",
        )
        base = f"http://127.0.0.1:{listen_port}"
        wait_status(f"{base}/bench/public/x", 200)
        wait_status(f"{base}/bench/authz/x", 401)

        status, headers, body = http(
            "POST", f"{base}/auth/login", body={"username": BENCH_USER, "password": BENCH_PASSWORD}
        )
        match = re.search(rf"{SESSION_COOKIE}=([^;]+)", headers.get("set-cookie", ""))
        if status != 200 or not match:
            raise RuntimeError(f"login failed: {status} {body[:200]!r}")
        cookie = {"cookie": f"{SESSION_COOKIE}={match.group(1)}"}
        status, _, body = http("GET", f"{base}/bench/authz/x", headers=cookie)
        seen = json.loads(body)["headers"] if status == 200 else {}
        if (
            status != 200
            or seen.get("x-user-id") != BENCH_USER
            or seen.get("x-auth-method") != "session"
        ):
            raise RuntimeError(f"check request: {status}, upstream saw {seen or body[:200]!r}")
        print(
            "  check: GET /bench/authz/x with the session cookie -> 200,"
            f" upstream saw x-user-id={seen['x-user-id']}"
        )

        return [
            measure(
                "c0",
                "wardgate stack, public route -> upstream",
                f"{base}/bench/public/x",
                args=args,
                procs=procs,
                admin_port=admin_port,
                redis_url=env["REDIS_URL"],
            ),
            measure(
                "c",
                "wardgate: session + rate limit -> upstream",
                f"{base}/bench/authz/x",
                args=args,
                procs=procs,
                admin_port=admin_port,
                headers=cookie,
                redis_url=env["REDIS_URL"],
            ),
        ]
    finally:
        procs.stop_all()


def _seconds(text: str) -> int:
    value = int(text)  # wrk takes whole seconds
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 second")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=_seconds, default=10, help="seconds measured per case (10)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument(
        "--threads", type=int, default=1, help="wrk threads (1: leaves a core to Envoy and Python)"
    )
    parser.add_argument(
        "--warmup", type=_seconds, default=2, help="seconds of load before each measured run (2)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, logs)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    def body(workdir: Path) -> None:
        info = machine()
        results = [
            run_static(
                "a", "bare Envoy, direct_response", workdir=workdir, args=args, with_authz=False
            ),
            run_static(
                "b",
                "+ ext_authz -> no-op grpc.aio servicer",
                workdir=workdir,
                args=args,
                with_authz=True,
            ),
            *run_wardgate(workdir=workdir, args=args),
        ]
        report(results, info, args)

    # Everything is bounded: per-step timeouts, and an alarm over the whole run.
    return run_bounded(
        body,
        budget=int(4 * (args.duration + args.warmup + 60) + 60),
        keep=args.keep,
        prefix="wardgate-bench-",
    )


if __name__ == "__main__":
    sys.exit(main())
