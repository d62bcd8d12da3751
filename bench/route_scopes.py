"""What scoped routes cost Envoy per request, against one route table, in the same run.

    python bench/route_scopes.py [--duration 10] [--routes 10000]

Static Envoys (no wardgate, no upstream: every route is a ``direct_response`` 200), one worker
(``--concurrency 1``), loaded by ``wrk`` on one path:

  one-1       one route table holding one route (prefix /): the baseline.
  scoped-1    the same route in wardgate's scopes: the ``wardgate.scope`` Lua filter first,
              every scope (3 depths x BUCKETS), the route copied into each scope of depth 1.
  one-N       one table of N routes shaped like bench/xds_scale.py's (``/r/<i>``, methods
              GET and POST), requested on the route Envoy tries last: a full linear scan.
  scoped-N    the same N routes placed by ``wardgate.xds.scope_layout.Layout`` (here: the first
              segment ``r`` keyed by two segments, so every request makes two lookups).

Figures are printed as ratios against one-1; nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from _envoy import _addr, start_static_envoy
from _procs import Procs
from _report import Load, machine, measure_load, print_header, run_bounded, versions
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import json_format

from wardgate import devstack
from wardgate.xds import typeurls as tu
from wardgate.xds.assemble import placed_route
from wardgate.xds.scope_envoy import marker_route, scope_filter, scope_resources, scoped_routes
from wardgate.xds.scope_layout import Layout
from wardgate.xds.wire import route_configuration, route_field

OK = {"status": 200, "body": {"inline_string": "ok\n"}}
METHODS = {"name": ":method", "string_match": {"safe_regex": {"regex": "^(GET|POST)$"}}}
HEAD = {"name": "all", "domains": ["*"]}


def routes(n: int) -> list[dict[str, Any]]:
    if n == 1:
        return [{"name": "all", "match": {"prefix": "/"}, "direct_response": OK}]
    return [
        {
            "name": f"r{i}",
            "match": {"path_separated_prefix": f"/r/{i}", "headers": [METHODS]},
            "direct_response": OK,
        }
        for i in range(n)
    ]


def scoped_configs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What wardgate would send, as a static scoped_route_configurations_list."""
    head = json_format.ParseDict(HEAD, route_components_pb2.VirtualHost())
    head_bytes = head.SerializeToString(deterministic=True)

    def marker(segment: str, depth: int) -> bytes:
        return route_field(marker_route(segment, depth))

    def assemble(name: str, fields: list[bytes]) -> bytes:
        return route_configuration(name, head_bytes, fields)

    layout = Layout(marker, assemble)
    layout.apply(
        [], {e["name"]: placed_route(e, (0, 0, 0, 0, f"{i:08d}")) for i, e in enumerate(entries)}
    )
    by_name = dict(layout.configs())
    out = []
    for scope in scope_resources():
        config = route_pb2.RouteConfiguration.FromString(
            by_name[str(scope["route_configuration_name"])]
        )
        out.append(
            {
                "name": scope["name"],
                "key": scope["key"],
                "route_configuration": json_format.MessageToDict(config),
            }
        )
    return out


def envoy_config(
    listen_port: int, admin_port: int, entries: list[dict[str, Any]], scoped: bool
) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    hcm: dict[str, Any] = {
        "@type": tu.T_HCM,
        "stat_prefix": "bench",
        "codec_type": "AUTO",
    }
    if scoped:
        filters.append(scope_filter())
        hcm["scoped_routes"] = scoped_routes(inline=scoped_configs(entries))
    else:
        hcm["route_config"] = {"name": "one", "virtual_hosts": [{**HEAD, "routes": entries}]}
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": tu.T_ROUTER},
        }
    )
    hcm["http_filters"] = filters
    listener = {
        "name": "bench",
        "address": _addr(listen_port),
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
        "admin": {"address": _addr(admin_port)},
        "static_resources": {"listeners": [listener]},
    }


def bench(workdir: Path, args: argparse.Namespace) -> None:
    info = machine()
    loads: list[Load] = []
    many = routes(args.routes)
    last = many[-1]["match"]["path_separated_prefix"]
    cases = [
        ("one-1", "one table, 1 route", routes(1), False, "/r/1"),
        ("scoped-1", "scopes + scope filter, 1 route", routes(1), True, "/r/1"),
        (f"one-{args.routes}", f"one table, {args.routes:,} routes, the last", many, False, last),
        (f"scoped-{args.routes}", f"scopes, {args.routes:,} routes, the same", many, True, last),
    ]
    for case, label, entries, scoped, path in cases:
        procs = Procs()
        try:
            listen, admin = devstack.free_port(), devstack.free_port()
            config = envoy_config(listen, admin, entries, scoped)
            envoy = procs.add("envoy", start_static_envoy(workdir, case, config))
            devstack.wait_port(listen, proc=envoy, what="envoy listener", timeout=60)
            load = measure_load(
                case, label, f"http://127.0.0.1:{listen}{path}", args=args, procs=procs
            )
            loads.append(load)
            per = sum(load.cpu["envoy"]) / max(load.rps, 1) * 1e6
            print(
                f"  {case:<12} {load.rps:>9,.0f} req/s  p99 {load.p99_ms:6.2f} ms"
                f"  Envoy {per:5.1f} µs/req  bad {load.bad}",
                flush=True,
            )
        finally:
            procs.stop_all()
    base = loads[0]
    print()
    print_header(info, packages=versions("protobuf", "xds-protos"))
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s (after {args.warmup}s)")
    print()
    print("| case | what | req/s | p99 ms | Envoy CPU µs/req | req/s vs one-1 | bad |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in loads:
        per = sum(r.cpu["envoy"]) / max(r.rps, 1) * 1e6
        print(
            f"| {r.case} | {r.label} | {r.rps:,.0f} | {r.p99_ms:.2f} | {per:.1f} |"
            f" {r.rps / base.rps:.3f} | {r.bad} |"
        )
    by = {r.case: r for r in loads}
    n = args.routes
    print()
    print(f"scoped-1/one-1     {by['scoped-1'].rps / base.rps:.3f}")
    print(f"one-{n}/one-1  {by[f'one-{n}'].rps / base.rps:.3f}")
    print(f"scoped-{n}/one-{n}  {by[f'scoped-{n}'].rps / by[f'one-{n}'].rps:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds before each run (2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--routes", type=int, default=10_000, help="routes of the large table")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed", file=sys.stderr)
        return 2
    budget = 4 * (args.duration + args.warmup + 60) + 60
    return run_bounded(
        lambda workdir: bench(workdir, args),
        budget=budget,
        keep=args.keep,
        prefix="wardgate-route-scopes-",
    )


if __name__ == "__main__":
    sys.exit(main())
