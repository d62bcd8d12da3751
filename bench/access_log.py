"""What the access log costs: gateway req/s with it on and off, in one run, and wardgate's CPU
per logged request.

    python bench/access_log.py [--duration 10] [--rounds 2] [--connections 32] [--threads 1]

One redis-server, one upstream (a static Envoy answering ``direct_response`` 200, so the
gateway, not the upstream, is what is loaded) and two gateways, each wardgate
(``--workers 1``) + Envoy (``--concurrency 1``) over ADS with the same public route to that
upstream: ``off`` with ``WARDGATE_ACCESS_LOG=false``, ``on`` with the access log streamed to
wardgate (per-route metrics, usage metering, the refusal log). The cases alternate
(off, on, off, on, ...) so that drift on a shared machine hits both alike; each case gets a
warm-up and a measured ``wrk`` run per round. Printed: req/s and p99 per run, the median
ratio on/off, wardgate's CPU (cores, and µs per logged request, from the entries it counted),
and the Redis commands per second its usage flushes cost. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from _envoy import start_static_envoy, static_envoy_config
from _procs import Procs, cpu_seconds, reap_children
from _wrk import parse_wrk, wrk

from wardgate import devstack


def metric(http_port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read()
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def redis_commands(port: int) -> int:
    import redis

    client = redis.Redis(port=port, socket_timeout=5)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


class Gateway:
    def __init__(self, name: str, *, access_log: bool, redis_port: int, upstream: int, work: Path):
        self.name = name
        self.grpc, self.http = devstack.free_port(), devstack.free_port()
        self.listen, self.admin = devstack.free_port(), devstack.free_port()
        self.env = {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "WARDGATE_KEY_PREFIX": f"{name}:",
            "WARDGATE_GRPC_PORT": str(self.grpc),
            "WARDGATE_HTTP_PORT": str(self.http),
            "WARDGATE_LISTEN_PORT": str(self.listen),
            "WARDGATE_ENVOY_ADMIN_PORT": str(self.admin),
            "WARDGATE_LOG_LEVEL": "WARNING",
            "WARDGATE_ACCESS_LOG": "true" if access_log else "false",
            "WARDGATE_BAN_AFTER": "0",
        }
        self.upstream = upstream
        self.work = work

    def start(self, procs: Procs) -> None:
        self.wardgate = procs.add(
            f"wardgate-{self.name}",
            devstack.start_wardgate(
                env=self.env, http_port=self.http, log=self.work / f"wardgate-{self.name}.log"
            ),
        )
        procs.add(
            f"envoy-{self.name}",
            devstack.start_envoy(
                workdir=self.work,
                node_id=f"bench-{self.name}",
                listen_port=self.listen,
                admin_port=self.admin,
                wardgate_port=self.grpc,
                concurrency=1,
            ),
        )
        docs = [
            {
                "kind": "Service",
                "name": "upstream",
                "endpoints": [{"address": "127.0.0.1", "port": self.upstream}],
            },
            {
                "kind": "Route",
                "name": "bench",
                "match": {"prefix": "/bench"},
                "backend": "upstream",
            },
        ]
        path = self.work / f"routes-{self.name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        subprocess.run(
            [sys.executable, "-m", "wardgate", "apply", "-f", str(path)],
            env={**os.environ, **self.env},
            check=True,
            capture_output=True,
            timeout=60,
        )
        devstack.wait_http(f"{self.url}", timeout=20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen}/bench/x"


def measure(gw: Gateway, args: argparse.Namespace, redis_port: int) -> dict[str, float]:
    wrk(gw.url, seconds=args.warmup, args=args, headers={})
    time.sleep(1.5)  # the warm-up's entries arrive (Envoy flushes every second)
    cpu0 = cpu_seconds(gw.wardgate.pid)
    entries0 = metric(gw.http, "wardgate_access_log_entries_total")
    redis0 = redis_commands(redis_port)
    started = time.monotonic()
    out = wrk(gw.url, seconds=args.duration, args=args, headers={})
    elapsed = time.monotonic() - started
    time.sleep(1.5)  # the last entries arrive and are counted, CPU included
    cpu = cpu_seconds(gw.wardgate.pid) - cpu0
    entries = metric(gw.http, "wardgate_access_log_entries_total") - entries0
    redis_rate = (redis_commands(redis_port) - redis0) / (elapsed + 1.5)
    rps, p99, total, non2xx, errors = parse_wrk(out)
    row = {
        "rps": rps,
        "p99": p99,
        "total": total,
        "bad": non2xx + errors,
        "cores": cpu / (elapsed + 1.5),
        "entries": entries,
        "us_per_entry": cpu / entries * 1e6 if entries else 0.0,
        "redis_per_s": redis_rate,
    }
    print(
        f"  {gw.name:<3} {rps:>9,.0f} req/s  p99 {p99:6.2f} ms  non-2xx/errors {row['bad']:.0f}"
        f"  wardgate {row['cores']:.2f} cores  entries {entries:,.0f}"
        + (f" ({row['us_per_entry']:.1f} µs CPU each)" if entries else "")
        + f"  redis {redis_rate:.1f} cmd/s",
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="wardgate-bench-") as tmp:
        work = Path(tmp)
        try:
            redis_port = devstack.free_port()
            procs.add("redis", devstack.start_redis(redis_port, work / "redis"))
            up_listen, up_admin = devstack.free_port(), devstack.free_port()
            procs.add(
                "upstream",
                start_static_envoy(
                    work,
                    "upstream",
                    static_envoy_config(
                        listen_port=up_listen, admin_port=up_admin, authz_port=None
                    ),
                ),
            )
            off = Gateway(
                "off", access_log=False, redis_port=redis_port, upstream=up_listen, work=work
            )
            on = Gateway(
                "on", access_log=True, redis_port=redis_port, upstream=up_listen, work=work
            )
            off.start(procs)
            on.start(procs)
            print(
                f"access log off vs on: wrk -t{args.threads} -c{args.connections} "
                f"-d{args.duration}s, {args.rounds} rounds, cores {os.cpu_count()}",
                flush=True,
            )
            runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
            for _ in range(args.rounds):
                for gw in (off, on):
                    runs[gw.name].append(measure(gw, args, redis_port))
            ratios = [b["rps"] / a["rps"] for a, b in zip(runs["off"], runs["on"], strict=True)]
            rps_off = statistics.median(r["rps"] for r in runs["off"])
            rps_on = statistics.median(r["rps"] for r in runs["on"])
            us = statistics.median(r["us_per_entry"] for r in runs["on"])
            logged = sum(r["entries"] for r in runs["on"])
            sent = sum(r["total"] for r in runs["on"])
            print(
                f"\nmedian req/s: off {rps_off:,.0f}, on {rps_on:,.0f}; on/off per round "
                f"{', '.join(f'{x:.3f}' for x in ratios)} (median {statistics.median(ratios):.3f})"
            )
            print(
                f"wardgate CPU per logged request: {us:.1f} µs (median); entries counted "
                f"{logged:,.0f} of {sent:,} requests wrk completed (plus warm-ups: counted apart)"
            )
        finally:
            procs.stop_all()
            reap_children()
    return 0


if __name__ == "__main__":
    sys.exit(main())
