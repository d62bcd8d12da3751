"""gRPC-JSON transcoding: what a descriptor costs per push, and REST through the transcoder
against native gRPC through the same Envoy (issue 11).

1. Bytes per push, in process: a generated ~1 MiB descriptor set used by 50 routes (each
   transcoding one of its services). What wardgate sends: the transcoder's ECDS resource once,
   and the route tables; against what per-route configuration over RDS would send.
2. Requests per second through a real stack (Redis, wardgate, Envoy --concurrency 1, the demo
   gRPC Greeter): ``GET /v1/greeter/bench`` transcoded to ``SayHello``, and the same call as
   native gRPC, both over h2c with h2load (one load tool for both), one after the other.

    python bench/transcoding.py --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _procs import Procs, cpu_seconds, reap_children
from _report import machine, run_bounded

from wardgate import devstack
from wardgate._proto.wardgate.demo.v1 import greeter_pb2
from wardgate.cli.descriptors import compile_proto
from wardgate.domain.catalog import Catalog
from wardgate.xds.assemble import build_base
from wardgate.xds.transcoder import TRANSCODER
from wardgate.xds.translate import TranslateOptions

DEMO_PB = Path(__file__).resolve().parents[1] / "wardgate" / "_proto" / "demo.pb"
GREETER = "wardgate.demo.v1.Greeter"


def big_proto(services: int, methods: int, fields: int) -> str:
    """A .proto of ``services`` services, each method with request and response messages of
    ``fields`` fields: the shape of a large real API."""
    out = ['syntax = "proto3";', "package bench.big.v1;", 'import "google/api/annotations.proto";']
    for s in range(services):
        for m in range(methods):
            for kind in ("Request", "Response"):
                body = " ".join(
                    f"string field_number_{f}_of_{kind.lower()}_{s}_{m} = {f + 1};"
                    for f in range(fields)
                )
                out.append(f"message S{s}M{m}{kind} {{ {body} }}")
        rpcs = " ".join(
            f"rpc Method{m}(S{s}M{m}Request) returns (S{s}M{m}Response) {{ option "
            f'(google.api.http) = {{ get: "/s{s}/m{m}/{{field_number_0_of_request_{s}_{m}}}" }}; }}'
            for m in range(methods)
        )
        out.append(f"service Service{s} {{ {rpcs} }}")
    return "\n".join(out) + "\n"


def push_bytes(routes: int) -> dict[str, float]:
    """Section 1: the resources of a catalog with ``routes`` transcoding routes on one big
    descriptor, against the same routes without transcoding."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.proto"
        path.write_text(big_proto(routes, 10, 14))
        data = compile_proto(path)
    import base64

    grpc = {
        "kind": "Service",
        "name": "big",
        "protocol": "grpc",
        "endpoints": [{"address": "10.0.0.1", "port": 50051}],
    }
    descriptor = {
        "kind": "Descriptor",
        "name": "big",
        "descriptor_set": base64.b64encode(data).decode(),
    }

    def route(i: int, transcode: bool) -> str:
        doc: dict[str, object] = {
            "kind": "Route",
            "name": f"r{i}",
            "match": {"prefix": f"/s{i}"},
            "backend": "big",
        }
        if transcode:
            doc["transcode"] = {"descriptor": "big", "services": [f"bench.big.v1.Service{i}"]}
        return json.dumps(doc)

    opts = TranslateOptions(http_host="127.0.0.1")
    out: dict[str, float] = {"descriptor_bytes": len(data), "routes": routes}
    for transcode in (False, True):
        raw = {
            "Service": {"big": json.dumps(grpc)},
            "Descriptor": {"big": json.dumps(descriptor)},
            "Route": {f"r{i}": route(i, transcode) for i in range(routes)},
        }
        started = time.perf_counter()
        catalog = Catalog.from_raw(raw)
        base = build_base(catalog, opts)
        elapsed = time.perf_counter() - started
        if catalog.refused:
            raise RuntimeError(f"refused: {catalog.refused}")
        rds = sum(len(b) for _, b in base.route_bytes)
        ecds = sum(len(b) for name, b in base.extension_bytes if name == TRANSCODER)
        key = "transcoding" if transcode else "plain"
        out[f"{key}_rds_bytes"] = rds
        out[f"{key}_ecds_bytes"] = ecds
        out[f"{key}_build_s"] = elapsed
    return out


H2LOAD_RPS = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")
H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
H2LOAD_MEAN = re.compile(r"time for request:\s+\S+\s+\S+\s+(\S+)")


def h2load(url: str, seconds: int, args: argparse.Namespace, extra: list[str]) -> dict[str, float]:
    cmd = ["h2load", "-c", str(args.connections), "-m", str(args.streams), "-D", str(seconds)]
    done = subprocess.run(
        [*cmd, *extra, url], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    rps, status = H2LOAD_RPS.search(done.stdout), H2LOAD_STATUS.search(done.stdout)
    mean = H2LOAD_MEAN.search(done.stdout)
    if done.returncode != 0 or not rps or not status or not mean:
        raise RuntimeError(f"h2load failed: {done.stdout[-2000:]}{done.stderr[-500:]}")
    unit = mean.group(1)
    mean_ms = float(unit.rstrip("ums")) * (1e-3 if unit.endswith("us") else 1.0)
    if unit.endswith("s") and not unit.endswith(("ms", "us")):
        mean_ms = float(unit[:-1]) * 1e3
    ok = int(status.group(1))
    bad = sum(int(status.group(i)) for i in (2, 3, 4))
    return {"rps": float(rps.group(1)), "mean_ms": mean_ms, "ok": ok, "bad": bad}


def measure(
    label: str, url: str, extra: list[str], procs: Procs, args: argparse.Namespace
) -> dict[str, object]:
    h2load(url, args.warmup, args, extra)
    pids = procs.pids()
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    result = h2load(url, args.duration, args, extra)
    cpu = {n: cpu_seconds(p) - before[n] for n, p in pids.items()}
    requests = max(1.0, result["ok"] + result["bad"])
    return {
        "case": label,
        **result,
        "us_per_request": {n: round(1e6 * c / requests) for n, c in cpu.items()},
    }


def live(workdir: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    procs = Procs()
    try:
        ports = {
            k: devstack.free_port() for k in ("redis", "grpc", "http", "listen", "admin", "up")
        }
        procs.add("redis", devstack.start_redis(ports["redis"], workdir / "redis"))
        procs.add(
            "upstream",
            devstack.start_upstream(ports["up"], "greeter", workdir / "up.log", grpc=True),
        )
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
            "WARDGATE_GRPC_PORT": str(ports["grpc"]),
            "WARDGATE_HTTP_PORT": str(ports["http"]),
            "WARDGATE_LISTEN_PORT": str(ports["listen"]),
            "WARDGATE_ENVOY_ADMIN_PORT": str(ports["admin"]),
            "WARDGATE_LOG_LEVEL": "WARNING",
        }
        procs.add(
            "wardgate",
            devstack.start_wardgate(
                env=env,
                http_port=ports["http"],
                log=workdir / "wardgate.log",
                args=("--workers", "1"),
            ),
        )
        procs.add(
            "envoy",
            devstack.start_envoy(
                workdir=workdir,
                node_id="bench",
                listen_port=ports["listen"],
                admin_port=ports["admin"],
                wardgate_port=ports["grpc"],
                concurrency=1,
            ),
        )

        def cli(*argv: str) -> None:
            subprocess.run(
                [sys.executable, "-m", "wardgate", *argv],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, **env},
                check=True,
            )

        cli("descriptors", "put", "demo", str(DEMO_PB))
        transcode = {"descriptor": "demo", "services": [GREETER]}
        docs = [
            {
                "kind": "Service",
                "name": "greeter",
                "protocol": "grpc",
                "endpoints": [{"address": "127.0.0.1", "port": ports["up"]}],
            },
            {
                "kind": "Route",
                "name": "rest",
                "match": {"prefix": "/v1"},
                "backend": "greeter",
                "transcode": transcode,
            },
            {
                "kind": "Route",
                "name": "native",
                "match": {"prefix": f"/{GREETER}/"},
                "backend": "greeter",
            },
        ]
        (workdir / "docs.yaml").write_text(yaml.safe_dump_all(docs))
        cli("apply", "-f", str(workdir / "docs.yaml"))
        base = f"http://127.0.0.1:{ports['listen']}"
        message = greeter_pb2.HelloRequest(name="bench").SerializeToString()
        frame = workdir / "hello.grpc"
        frame.write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
        grpc_args = ["-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers"]
        deadline = time.monotonic() + 30
        while True:  # both paths answer before anything is measured
            try:
                h2load(f"{base}/v1/greeter/bench", 1, args, [])
                h2load(f"{base}/{GREETER}/SayHello", 1, args, grpc_args)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        return [
            measure(
                "native gRPC through Envoy", f"{base}/{GREETER}/SayHello", grpc_args, procs, args
            ),
            measure("REST/JSON, transcoded", f"{base}/v1/greeter/bench", [], procs, args),
        ]
    finally:
        procs.stop_all()
        reap_children()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per case")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each case")
    parser.add_argument("--connections", type=int, default=8, help="h2load connections")
    parser.add_argument("--streams", type=int, default=4, help="h2load streams per connection")
    parser.add_argument("--routes", type=int, default=50, help="routes on the big descriptor")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("h2load is not installed (apt-get install nghttp2-client)", file=sys.stderr)
        return 2

    def body(workdir: Path) -> None:
        print(json.dumps(machine()))
        sizes = push_bytes(args.routes)
        print(json.dumps({"push": sizes}))
        per_route = sizes["descriptor_bytes"] * sizes["routes"]
        print(
            f"descriptor {sizes['descriptor_bytes'] / 2**20:.2f} MiB, {args.routes} routes: "
            f"ECDS {sizes['transcoding_ecds_bytes'] / 2**20:.2f} MiB once; route tables "
            f"{sizes['plain_rds_bytes'] / 1024:.0f} KiB without transcoding, "
            f"{sizes['transcoding_rds_bytes'] / 1024:.0f} KiB with; per-route configuration "
            f"would carry {per_route / 2**20:.0f} MiB"
        )
        results = live(workdir, args)
        base_rps = float(results[0]["rps"])  # type: ignore[arg-type]
        for r in results:
            print(json.dumps(r))
        for r in results:
            print(
                f"{r['case']:28s} {r['rps']:8.0f} req/s  ratio {float(r['rps']) / base_rps:.2f}"  # type: ignore[arg-type]
                f"  mean {r['mean_ms']:.2f} ms  CPU us/request {r['us_per_request']}"
            )

    return run_bounded(body, budget=300 + 2 * args.duration, keep=args.keep, prefix="wg-bench-tc-")


if __name__ == "__main__":
    sys.exit(main())
