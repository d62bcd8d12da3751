"""What external processing costs per request, against baselines measured in the same run.

    python bench/extproc_gateway.py [--duration 10] [--connections 32] [--threads 1]

Every case is one Envoy with one worker (``--concurrency 1``) on loopback, loaded by ``wrk``,
in front of the demo upstream (``wardgate/demo/upstream.py``):

  s0  a static Envoy proxying to the upstream, no filters.
  sn  the same Envoy plus an ext_proc filter sending each request's headers to
      ``bench/noop_extproc.py``, which answers "continue" at once: one no-op ext_proc call.
  p   the full wardgate stack (redis-server, ``wardgate serve`` with one worker, Envoy over
      ADS): a public route to the upstream, no transform, no cache: ext_proc never called.
  t   the same stack, the same kind of route with a header-only transform: a request header
      from placeholders ({request_id}, {header:user-agent}: one ext_proc call, request
      headers only), a constant response header and a removal (Envoy's own, no call).
  c   the same stack, a route with ``cache``, every request a hit: wardgate answers from Redis
      and the upstream is never asked.
  p20, c20  as p and c, for an upstream that takes 20 ms to answer (``/delay/0.02``).

Each case also runs once at light load (``--light-connections``, 2) for the latency
one request sees when nothing queues.

What a transform adds is t against p; what one no-op ext_proc call adds is sn against s0 (the
issue's target: the first at most 1.25 times the second). What a hit costs against the trip
it replaces is c against p. Figures are per request, from the measured throughput (service
time) and from each process's CPU time; nothing is asserted. Every process started here is
stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from _envoy import grpc_cluster, start_static_envoy
from _procs import Procs, cpu_seconds, machine_cpu
from _report import machine, run_bounded
from _wrk import parse_wrk, wrk

from wardgate import devstack
from wardgate.xds import typeurls as tu

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass
class Case:
    case: str
    label: str
    rps: float
    p99_ms: float
    bad: int
    cpu: dict[str, float]  # cores busy during the run, per process
    machine_busy: float
    light: tuple[float, float] = (0.0, 0.0)  # p50 and p99 ms at light load

    def cpu_us(self, name: str) -> float:
        """CPU µs per request of one process."""
        return self.cpu.get(name, 0.0) / self.rps * 1e6

    @property
    def service_us(self) -> float:
        """Wall-clock µs per request at this throughput (closed loop, one Envoy worker)."""
        return 1e6 / self.rps


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def wait_ok(url: str, *, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if get(url)[0] == 200:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s (last: {last})")


def light_latency(url: str, args: argparse.Namespace) -> tuple[float, float]:
    """p50 and p99 (ms) with ``--light-connections`` connections: nothing queues."""
    light = argparse.Namespace(**{**vars(args), "connections": args.light_connections})
    out = wrk(url, seconds=args.duration, args=light, headers={})
    p50 = re.search(r"^\s*50(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return (float(p50.group(1)) * scale[p50.group(2)] if p50 else 0.0, parse_wrk(out)[1])


def measure(case: str, label: str, url: str, *, args: argparse.Namespace, procs: Procs) -> Case:
    wrk(url, seconds=args.warmup, args=args, headers={})
    pids = procs.pids()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    before_machine = machine_cpu()[0]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = wrk(url, seconds=args.duration, args=args, headers={})
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}
    cpu["wrk"] = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) / elapsed
    rps, p99, _total, non2xx, errors = parse_wrk(out)
    result = Case(
        case, label, rps, p99, non2xx + errors, cpu, (machine_cpu()[0] - before_machine) / elapsed
    )
    print(f"  {case:<3} {rps:>9,.0f} req/s  p99 {p99:7.2f} ms  bad {result.bad}", flush=True)
    return result


# --- the static pair: the cost of one no-op ext_proc call --------------------------------


def static_config(listen: int, admin: int, upstream: int, noop: int | None) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    clusters = [
        {
            "name": "upstream",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "upstream",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(upstream)}}]}],
            },
        }
    ]
    if noop is not None:
        # As wardgate's listener sets it (xds/extproc.py), with the request headers sent.
        filters.append(
            {
                "name": "wardgate.extproc",
                "typed_config": {
                    "@type": tu.of("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"),
                    "grpc_service": {"envoy_grpc": {"cluster_name": "noop_extproc"}},
                    "failure_mode_allow": True,
                    "processing_mode": {
                        "request_header_mode": "SEND",
                        "response_header_mode": "SKIP",
                        "request_body_mode": "NONE",
                        "response_body_mode": "NONE",
                        "request_trailer_mode": "SKIP",
                        "response_trailer_mode": "SKIP",
                    },
                    "message_timeout": "0.2s",
                },
            }
        )
        clusters.append(grpc_cluster("noop_extproc", noop))
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": tu.T_ROUTER}})
    hcm = {
        "@type": tu.T_HCM,
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "route_config": {
            "name": "bench",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                }
            ],
        },
        "http_filters": filters,
    }
    listener = {
        "name": "bench",
        "address": _addr(listen),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    return {
        "node": {"id": "bench", "cluster": "bench"},
        "admin": {"address": _addr(admin)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def run_static(
    case: str, label: str, *, workdir: Path, args: argparse.Namespace, noop: bool
) -> Case:
    procs = Procs()
    try:
        upstream = devstack.free_port()
        procs.add(
            "upstream", devstack.start_upstream(upstream, "bench", workdir / f"up-{case}.log")
        )
        noop_port = None
        if noop:
            noop_port = devstack.free_port()
            with open(workdir / "noop_extproc.log", "ab") as out:
                proc = procs.add(
                    "noop_extproc",
                    subprocess.Popen(
                        [sys.executable, str(HERE / "noop_extproc.py"), "--port", str(noop_port)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    ),
                )
            devstack.wait_port(noop_port, proc=proc, what="noop_extproc", timeout=20)
        listen, admin = devstack.free_port(), devstack.free_port()
        procs.add(
            "envoy",
            start_static_envoy(workdir, case, static_config(listen, admin, upstream, noop_port)),
        )
        url = f"http://127.0.0.1:{listen}/bench/x"
        wait_ok(url)
        result = measure(case, label, url, args=args, procs=procs)
        result.light = light_latency(url, args)
        print(f"      light load: p50 {result.light[0]:.2f} ms, p99 {result.light[1]:.2f} ms")
        return result
    finally:
        procs.stop_all()


# --- the wardgate stack -------------------------------------------------------------------


def run_wardgate(*, workdir: Path, args: argparse.Namespace) -> list[Case]:
    procs = Procs()
    try:
        redis_port, upstream = devstack.free_port(), devstack.free_port()
        grpc_port, http_port = devstack.free_port(), devstack.free_port()
        listen, admin = devstack.free_port(), devstack.free_port()
        procs.add("redis", devstack.start_redis(redis_port, workdir / "redis"))
        procs.add("upstream", devstack.start_upstream(upstream, "bench", workdir / "upstream.log"))
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "WARDGATE_GRPC_PORT": str(grpc_port),
            "WARDGATE_HTTP_PORT": str(http_port),
            "WARDGATE_LISTEN_PORT": str(listen),
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
                listen_port=listen,
                admin_port=admin,
                wardgate_port=grpc_port,
                concurrency=1,
            ),
        )
        docs: list[dict[str, Any]] = [
            {
                "kind": "Service",
                "name": "bench-echo",
                "endpoints": [{"address": "127.0.0.1", "port": upstream}],
            },
            {
                "kind": "Route",
                "name": "bench-plain",
                "match": {"prefix": "/bench/plain"},
                "backend": "bench-echo",
            },
            {
                "kind": "Route",
                "name": "bench-xform",
                "match": {"prefix": "/bench/xform"},
                "backend": "bench-echo",
                "transform": {
                    "request_headers": {
                        "set": {"x-request": "{request_id}", "x-client": "{header:user-agent}"},
                        "remove": ["x-debug"],
                    },
                    "response_headers": {
                        "set": {"x-frame-options": "DENY"},
                        "remove": ["x-powered-by"],
                    },
                },
            },
            {
                "kind": "Route",
                "name": "bench-cache",
                "match": {"prefix": "/bench/cache"},
                "backend": "bench-echo",
                "cache": {"ttl": "1h"},
            },
            {
                "kind": "Route",
                "name": "bench-slow",
                "match": {"prefix": "/bench/slow"},
                "backend": "bench-echo",
                "rewrite_prefix": "/delay/0.02",
            },
            {
                "kind": "Route",
                "name": "bench-slow-cache",
                "match": {"prefix": "/bench/slowcache"},
                "backend": "bench-echo",
                "rewrite_prefix": "/delay/0.02",
                "cache": {"ttl": "1h"},
            },
        ]
        (workdir / "routes.yaml").write_text(yaml.safe_dump_all(docs))
        done = subprocess.run(
            [sys.executable, "-m", "wardgate", "apply", "-f", str(workdir / "routes.yaml")],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"wardgate apply: {done.stderr.strip()}")
        base = f"http://127.0.0.1:{listen}"
        for path in ("/bench/plain/x", "/bench/xform/x", "/bench/cache/x", "/bench/slowcache"):
            wait_ok(base + path)
        _, headers, body = get(base + "/bench/xform/x", {"user-agent": "bench-check"})
        seen = json.loads(body)["headers"]
        if seen.get("x-client") != "bench-check" or headers.get("x-frame-options") != "DENY":
            raise RuntimeError(f"transform check failed: upstream saw {seen}, answer {headers}")
        hit = get(base + "/bench/cache/x")[1].get("x-cache")
        if hit != "HIT":
            raise RuntimeError(f"cache check failed: x-cache {hit}")
        print("  check: the transform sets x-client and x-frame-options; /bench/cache/x is a HIT")
        cases = [
            ("p", "wardgate, public route -> upstream (no ext_proc)", "/bench/plain/x"),
            ("t", "wardgate, header-only transform -> upstream", "/bench/xform/x"),
            ("c", "wardgate, cached route, every request a hit", "/bench/cache/x"),
            ("p20", "wardgate, public route -> a 20 ms upstream", "/bench/slow"),
            ("c20", "wardgate, the same cached, every request a hit", "/bench/slowcache"),
        ]
        out = []
        for case, label, path in cases:
            result = measure(case, label, base + path, args=args, procs=procs)
            result.light = light_latency(base + path, args)
            print(f"      light load: p50 {result.light[0]:.2f} ms, p99 {result.light[1]:.2f} ms")
            out.append(result)
        return out
    finally:
        procs.stop_all()


def report(results: list[Case], info: dict[str, str], args: argparse.Namespace) -> None:
    by = {r.case: r for r in results}
    print()
    print(f"date    {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}")
    print(f"machine {info['nproc']} CPUs, {info['cpu']}, Linux {info['kernel']}")
    print(f"wardgate {info['wardgate']}")
    print(f"envoy {info['envoy']}, Python {info['python']}, {info['wrk']}")
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency"
        f" (after a {args.warmup}s warm-up)"
    )
    print()
    names = sorted({n for r in results for n in r.cpu}, key=lambda n: (n == "wrk", n))
    print(
        "| case | what | req/s | p99 ms | light p50 / p99 ms | "
        + " | ".join(f"{n} CPU µs/req" for n in names)
        + " | bad |"
    )
    print("| --- | --- | ---: | ---: | ---: |" + " ---: |" * len(names) + " ---: |")
    for r in results:
        cells = [f"{r.cpu_us(n):,.0f}" if n in r.cpu else "-" for n in names]
        light = f"{r.light[0]:.2f} / {r.light[1]:.2f}" if r.light[0] else "-"
        print(
            f"| {r.case} | {r.label} | {r.rps:,.0f} | {r.p99_ms:.2f} | {light} | "
            + " | ".join(cells)
            + f" | {r.bad} |"
        )
    print()
    s0, sn, p, t, c = (by[k] for k in ("s0", "sn", "p", "t", "c"))
    noop_us = sn.service_us - s0.service_us
    xform_us = t.service_us - p.service_us
    print("per request, from throughput (µs of the closed loop's service time):")
    print(f"  one no-op ext_proc call (sn - s0): {noop_us:,.0f} µs")
    print(f"  the header-only transform (t - p): {xform_us:,.0f} µs")
    print(f"  transform / no-op call: {xform_us / noop_us:.2f} (target: at most 1.25)")
    print(
        f"  at light load, p50 added: no-op call {sn.light[0] - s0.light[0]:.2f} ms,"
        f" transform {t.light[0] - p.light[0]:.2f} ms"
    )
    print("per request, CPU of the processor (µs):")
    print(
        f"  no-op servicer (sn): {sn.cpu_us('noop_extproc'):,.0f}"
        f"   wardgate (t): {t.cpu_us('wardgate'):,.0f}"
        f"   wardgate (p, no call): {p.cpu_us('wardgate'):,.0f}"
    )
    ratio = (t.cpu_us("wardgate") - p.cpu_us("wardgate")) / max(sn.cpu_us("noop_extproc"), 1e-9)
    print(f"  transform / no-op call: {ratio:.2f} (target: at most 1.25)")
    print("a hit against the trip it replaces (c against p):")
    print(f"  req/s {c.rps / p.rps:.2f}x, p99 {c.p99_ms:.2f} ms against {p.p99_ms:.2f} ms")
    hit_cpu = sum(c.cpu_us(n) for n in ("envoy", "wardgate", "redis"))
    trip_cpu = sum(p.cpu_us(n) for n in ("envoy", "wardgate", "redis", "upstream"))
    print(f"  CPU µs/req, every process but wrk: hit {hit_cpu:,.0f}, trip {trip_cpu:,.0f}")
    p20, c20 = by["p20"], by["c20"]
    print("the same against an upstream that takes 20 ms (c20 against p20):")
    print(f"  req/s {c20.rps / p20.rps:.2f}x, p99 {c20.p99_ms:.2f} ms against {p20.p99_ms:.2f} ms")
    print(
        f"  light load: p50 {c20.light[0]:.2f} ms against {p20.light[0]:.2f} ms,"
        f" p99 {c20.light[1]:.2f} ms against {p20.light[1]:.2f} ms"
    )
    for r in results:
        others = r.machine_busy - sum(r.cpu.values())
        if others > 0.15:
            print(
                f"WARNING: case {r.case}: other processes kept {others:.2f} cores busy;"
                " figures may be low"
            )
        if r.bad:
            print(f"WARNING: case {r.case}: {r.bad} non-2xx answers or socket errors")


def _seconds(text: str) -> int:
    value = int(text)
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
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument(
        "--warmup", type=_seconds, default=2, help="seconds of load before each run (2)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--light-connections", type=int, default=2, help="wrk connections at light load (2)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    def body(workdir: Path) -> None:
        info = machine()
        results = [
            run_static("s0", "static Envoy -> upstream", workdir=workdir, args=args, noop=False),
            run_static("sn", "+ ext_proc -> no-op servicer", workdir=workdir, args=args, noop=True),
            *run_wardgate(workdir=workdir, args=args),
        ]
        report(results, info, args)

    return run_bounded(
        body,
        budget=int(12 * (args.duration + args.warmup + 30) + 60),
        keep=args.keep,
        prefix="wardgate-bench-",
    )


if __name__ == "__main__":
    sys.exit(main())
