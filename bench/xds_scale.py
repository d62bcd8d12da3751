"""xDS at scale: 10,000 routes over 1,000 services (or 100,000 over 10,000).

    python bench/xds_scale.py [--routes 10000] [--services 1000] [--changes 50]
                              [--shape one-prefix|per-service] [--write cli|raw]
                              [--envoys together|apart]

Measures, in one run:
1. in process: the time to build the full snapshot cold (parse, validate, translate,
   serialize and hash every document) and the process's peak RSS, and the time to rebuild it
   after one route changed with the builder's memories (parse memo, per-document translator),
   told which document changed, as the watcher is after a change by the CLI;
2. end to end: with a real redis-server, one wardgate worker and two Envoys (one state of the
   world, one delta), the time from one changed route written to Redis until each Envoy
   serves it, p50/p99 over N changes. ``--write cli`` (the default) writes as the CLI does
   (``RedisDocumentStore.commit``: a transaction with its history entry, then the
   announcement; timed from the transaction), ``raw`` with one HSET (seen by keyspace
   notification; the watcher then reads every document). ``--envoys together`` (the
   default) connects both Envoys at once; ``apart`` measures each alone.
The baseline for (2) is the same measurement with 10 routes, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from wardgate import devstack
from wardgate.domain.catalog import Change
from wardgate.store.documents import RedisDocumentStore
from wardgate.store.keys import Keys
from wardgate.xds.build import SnapshotBuilder
from wardgate.xds.translate import TranslateOptions
from wardgate.xds.typeurls import TYPE_ROUTE

SHAPE = "one-prefix"  # or "per-service" (--shape)


def route_path(i: int, services: int) -> str:
    """``/r/<i>`` (every route under one first segment, which then is keyed by two) or
    ``/s<service>/r<i>`` (each service's routes under their own first segment)."""
    return f"/r/{i}" if SHAPE == "one-prefix" else f"/s{i % services}/r{i}"


def documents(routes: int, services: int, upstream_port: int) -> dict[str, dict[str, str]]:
    svcs = {
        f"s{i}": json.dumps(
            {
                "kind": "Service",
                "name": f"s{i}",
                "endpoints": [{"address": "127.0.0.1", "port": upstream_port}],
            }
        )
        for i in range(services)
    }
    rts = {
        f"r{i}": json.dumps(
            {
                "kind": "Route",
                "name": f"r{i}",
                "match": {"prefix": route_path(i, services), "methods": ["GET", "POST"]},
                "backend": f"s{i % services}",
                "timeout": "5s",
                "auth": {"require": "none"},
                "rate_limits": [{"by": "ip", "requests": 1000, "per": "minute"}],
            }
        )
        for i in range(routes)
    }
    return {"Route": rts, "Service": svcs}


def in_process(routes: int, services: int) -> dict[str, float]:
    """The watcher's build (``SnapshotBuilder``: parse, validate, translate, serialize,
    hash), cold and then after one changed route, with its memories."""
    raw = documents(routes, services, 8081)
    opts = TranslateOptions()
    t0 = time.perf_counter()
    builder = SnapshotBuilder(opts)
    parsed = builder.parse(raw, {})
    parse = time.perf_counter() - t0
    builder.build(parsed, {}, revision=0)
    cold = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    warm = []
    for k in range(20):
        doc = json.loads(raw["Route"]["r7"])
        doc["match"]["prefix"] = f"/changed/{k}"
        t0 = time.perf_counter()
        parsed = builder.parse_changes({("Route", "r7"): json.dumps(doc)}, {})
        snapshot = builder.build(parsed, {}, revision=k)
        _ = snapshot.get(TYPE_ROUTE).versions  # what delta sends by
        warm.append(time.perf_counter() - t0)
    return {
        "parse_s": parse,
        "cold_s": cold,
        "peak_rss_mib": peak,
        "warm_p50_s": statistics.median(warm),
        "warm_max_s": max(warm),
    }


class Poller(threading.Thread):
    """Asks one Envoy for a path until it answers 200; records how long that took."""

    def __init__(self, port: int, path: str, started: float, timeout: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.started, self.timeout = port, path, started, timeout
        self.elapsed: float | None = None

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        deadline = self.started + self.timeout
        while time.monotonic() < deadline:
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.elapsed = time.monotonic() - self.started
                    return
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            time.sleep(0.002)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Writer:
    """Writes one route as the CLI does (``RedisDocumentStore.commit``), from a process of
    its own: the CLI first reads every document, and freeing 100,000 of them afterwards
    would hold this process's lock while its pollers should be timing. ``write`` returns
    when the transaction was sent (the read before it is not what is timed), on the
    machine's monotonic clock."""

    def __init__(self, url: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_writer_main, args=(url, child), daemon=True)
        self._proc.start()

    def write(self, name: str, text: str) -> float:
        self._conn.send((name, text))
        started: float = self._conn.recv()
        return started

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join(timeout=10)


def _writer_main(url: str, conn: Any) -> None:
    async def commit(store: RedisDocumentStore, name: str, text: str) -> float:
        started = 0.0

        def plan(current: dict[str, dict[str, str]]) -> list[Change]:
            nonlocal started
            started = time.monotonic()
            return [Change("Route", name, "configured", text, current["Route"].get(name))]

        await store.commit(plan)
        return started

    async def serve() -> None:
        r = redis.asyncio.Redis.from_url(url, decode_responses=True)
        store = RedisDocumentStore(redis=r, keys=Keys("wardgate:"))
        while (job := conn.recv()) is not None:
            conn.send(await commit(store, *job))
        await r.aclose()

    asyncio.run(serve())


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _envoy_allocated_mib(admin_port: int) -> float:
    """What Envoy's allocator holds (admin ``/memory``): its configuration, mostly."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    conn.request("GET", "/memory")
    return int(json.loads(conn.getresponse().read())["allocated"]) / 2**20


def propagation(
    routes: int,
    services: int,
    changes: int,
    work: Path,
    modes: tuple[str, ...],
    write: str = "cli",
) -> dict[str, object]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        rport = devstack.free_port()
        procs.append(devstack.start_redis(rport, work / "redis"))
        url = f"redis://127.0.0.1:{rport}/0"
        up_port = devstack.free_port()
        procs.append(devstack.start_upstream(up_port, "echo", work / "upstream.log"))
        r = redis.Redis.from_url(url, decode_responses=True)
        raw = documents(routes, services, up_port)
        pipe = r.pipeline(transaction=False)
        for kind, key in (("Service", "wardgate:services"), ("Route", "wardgate:routes")):
            items = list(raw[kind].items())
            for i in range(0, len(items), 1000):
                pipe.hset(key, mapping=dict(items[i : i + 1000]))
        pipe.execute()
        grpc_port, http_port = devstack.free_port(), devstack.free_port()
        env = {
            "REDIS_URL": url,
            "WARDGATE_GRPC_PORT": str(grpc_port),
            "WARDGATE_HTTP_PORT": str(http_port),
            "WARDGATE_LOG_LEVEL": os.environ.get("BENCH_WARDGATE_LOG_LEVEL", "WARNING"),
        }
        wg = devstack.start_wardgate(env=env, http_port=http_port, log=work / "wardgate.log")
        procs.append(wg)
        ports, admins = {}, {}
        for mode in modes:
            listen, admin = devstack.free_port(), devstack.free_port()
            admins[mode] = admin
            procs.append(
                devstack.start_envoy(
                    workdir=work,
                    node_id=f"envoy-{mode}",
                    listen_port=listen,
                    admin_port=admin,
                    wardgate_port=grpc_port,
                    delta=mode == "delta",
                )
            )
            ports[mode] = listen
        t0 = time.monotonic()
        last = route_path(routes - 1, services)
        first = {m: Poller(p, last, t0, timeout=120) for m, p in ports.items()}
        for t in first.values():
            t.start()
        for t in first.values():
            t.join()
        initial = {m: t.elapsed for m, t in first.items()}
        times: dict[str, list[float]] = {m: [] for m in modes}
        writer = Writer(url) if write == "cli" else None
        for k in range(changes):
            name = f"r{(k * 7919) % routes}"
            doc = json.loads(raw["Route"][name])
            doc["match"]["prefix"] = f"/changed/{k}"
            raw["Route"][name] = json.dumps(doc)
            if writer is not None:
                started = writer.write(name, raw["Route"][name])
            else:
                started = time.monotonic()
                r.hset("wardgate:routes", name, raw["Route"][name])
            pollers = {m: Poller(p, f"/changed/{k}", started) for m, p in ports.items()}
            for t in pollers.values():
                t.start()
            for m, t in pollers.items():
                t.join()
                if t.elapsed is None:
                    raise RuntimeError(f"change {k} never reached the {m} Envoy")
                times[m].append(t.elapsed)
        rss = _rss_mib(wg.pid)
        envoy_mib = {m: _envoy_allocated_mib(a) for m, a in admins.items()}
        if writer is not None:
            writer.close()
        r.close()
        return {
            "initial_s": initial,
            "times": times,
            "wardgate_rss_mib": rss,
            "envoy_allocated_mib": envoy_mib,
        }
    finally:
        for p in reversed(procs):
            devstack.stop(p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=1_000)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument(
        "--shape",
        choices=("one-prefix", "per-service"),
        default="one-prefix",
        help="route paths: /r/<i> (default) or /s<service>/r<i>",
    )
    parser.add_argument("--write", choices=("cli", "raw"), default="cli")
    parser.add_argument("--envoys", choices=("together", "apart"), default="together")
    args = parser.parse_args()
    global SHAPE
    SHAPE = args.shape
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    envoy = (
        subprocess.run(
            [devstack.find_envoy(), "--version"], capture_output=True, text=True, check=False
        )
        .stdout.split("version:")[-1]
        .strip()
    )
    print(
        f"machine: {os.cpu_count()} cores, {cpu}; Python {platform.python_version()}; Envoy {envoy}"
    )
    print(
        f"documents: {args.routes} routes over {args.services} services, paths"
        f" {route_path(0, args.services)}...; {args.changes} changes"
    )
    built = in_process(args.routes, args.services)
    print(
        f"snapshot build in process, cold: {built['cold_s']:.1f} s (parse {built['parse_s']:.1f}"
        f" s), peak RSS {built['peak_rss_mib']:.0f} MiB; after one changed route: p50"
        f" {built['warm_p50_s'] * 1000:.1f} ms, max {built['warm_max_s'] * 1000:.1f} ms"
    )
    keep = os.environ.get("BENCH_WORKDIR")
    runs: list[tuple[str, tuple[str, ...], dict[str, object]]] = []
    groups = [("sotw", "delta")] if args.envoys == "together" else [("sotw",), ("delta",)]
    with tempfile.TemporaryDirectory(prefix="wardgate-bench-") as tmp:
        work = Path(keep or tmp)
        for modes in groups:
            for label, n_routes, n_services in (
                ("10 routes", 10, 10),
                (f"{args.routes} routes", args.routes, args.services),
            ):
                result = propagation(
                    n_routes,
                    n_services,
                    args.changes,
                    work / f"{'-'.join(modes)}-{n_routes}",
                    modes,
                    write=args.write,
                )
                runs.append((label, modes, result))
    for label, _modes, result in runs:
        first = result["initial_s"]
        envoy = result["envoy_allocated_mib"]
        assert isinstance(first, dict) and isinstance(envoy, dict)
        initial = ", ".join(f"{m} {t:.1f} s" for m, t in first.items())
        held = ", ".join(f"{m} {v:.0f} MiB" for m, v in envoy.items())
        rss = result["wardgate_rss_mib"]
        print(f"{label}: first served after {initial}; wardgate RSS {rss:.0f} MiB;")
        print(f"{'':>{len(label)}}  Envoy's allocated memory {held}")
    print(f"\nchange ({args.write}) -> served (ms)      p50      p99      max")
    for label, modes, result in runs:
        for mode in modes:
            ms = [v * 1000 for v in result["times"][mode]]  # type: ignore[index]
            slowest = sorted(range(len(ms)), key=lambda i: -ms[i])[:3]
            worst = ", ".join(f"#{i} {ms[i]:.0f}" for i in slowest)
            print(
                f"  {label:>14} {mode:<6} {pct(ms, 50):8.1f} {pct(ms, 99):8.1f} {max(ms):8.1f}"
                f"   slowest: {worst}"
            )


if __name__ == "__main__":
    sys.exit(main())
