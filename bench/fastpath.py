"""Native fast paths (issue 14): a signed-in request that Envoy decides alone, against the same
route without auth and against bare Envoy, all to the same upstream, in one run.

    python bench/fastpath.py [--duration 10] [--rounds 1] [--no-c2] [--no-access-log]

One upstream, shared by every case: a static Envoy (its own process, one worker) answering
``direct_response`` 200 on every path, so that the gateway, not the upstream, is what is loaded.
Every case is one Envoy with one worker (``--concurrency 1``) in front of it, loaded by ``wrk``:

  a   bare Envoy (a static configuration, no filters) proxying to the upstream.
  b   the full wardgate stack (redis-server, ``wardgate serve`` with one worker, Envoy over
      ADS): a route with ``auth: none`` whose Service is the upstream.
  c   the same stack, a route with ``auth: {require: session, roles: [bench]}`` and a per-user
      ``enforce: quota`` limit far above the load, requested as a browser would after signing
      in: the ``wg_ticket`` cookie (minted right before the case) and the session cookie.
      Envoy verifies the ticket (jwt_authn, its cache), the gate skips ext_authz, RBAC checks
      the role and the quota filter counts the request against its lease: no callout.
  cn  the same as c on a route without the quota rule: what the quota costs Envoy.
  c2  (``--no-c2`` leaves it out) the same route with the session cookie alone: every request
      goes through ext_authz, which also mints a ticket for it: what the fast path saves.

The issue's targets are c/b >= 0.8 and c/a >= 0.5, with wardgate's CPU per request in (c)
near zero. Envoy's statistics and wardgate's metrics are read before and after every measured
run: ext_authz calls made and skipped, tickets verified and from jwt_authn's cache, the
exact-check calls, the quota reports wardgate answered, the requests the quota filter reported.
Checks that stop the run when they fail (the measurement would not be of the real
configuration): in (c) no ext_authz call and no wrk error; the route refuses a request without
credentials (401) and a user without the role (403, no callout); the quota is in force (after
the run, the reports account for every request of it; a second route with a limit of 5 refuses
past its lease, and wardgate counts the quota filter's refusals).

wardgate's CPU per request in (b) and (c) is mostly the access log it receives (on by default;
``--no-access-log`` runs the stack without it, to see what is left).

With ``--rounds N`` the cases alternate (a, b, c, cn, c2, a, b, ...) so that drift on a shared
machine hits all alike; ratios are per round, and their median is printed, by req/s and by the
CPU per request of the processes on the path (wrk included), the steadier of the two when
other work shares the cores. Every process
started here is stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from _envoy import callout_envoy_config, envoy_stats, start_static_envoy, static_envoy_config
from _procs import Procs
from _report import Load, machine, measure_load, print_header, redis_server_version, run_bounded
from _report import versions as package_versions

from wardgate import devstack

USER, NOROLE = "bench-user", "bench-norole"
PASSWORD = "bench-password-0123456789"
ROLE = "bench"
SESSION_COOKIE, TICKET_COOKIE = "wg_session", "wg_ticket"
TICKET_TTL = 60  # wardgate's default (and maximum) ticket life, seconds
BIG = 100_000_000  # the measured route's quota per user and minute: never reached
SMALL = 5  # the check route's quota per user and minute
ENVOY_COUNTERS = {
    # name in the report: Envoy's counter (the gateway's listener stats are "http.wardgate.")
    "authz_ok": "http.wardgate.ext_authz.ok",
    "authz_skipped": "http.wardgate.ext_authz.disabled",
    "jwt_allowed": "http.wardgate.jwt_authn.allowed",
    "jwt_cache_hit": "http.wardgate.jwt_authn.jwt_cache_hit",
    "jwt_cache_miss": "http.wardgate.jwt_authn.jwt_cache_miss",
    "gate_allowed": "http.wardgate.rbac.wardgate_native.shadow_allowed",
    "roles_allowed": "http.wardgate.rbac.wardgate_roles.allowed",
    "roles_denied": "http.wardgate.rbac.wardgate_roles.denied",
}
RULE_BIG, RULE_SMALL = "bench-session#0", "bench-small#0"
PATH = ("envoy", "wardgate", "redis", "upstream", "wrk")  # the processes a gateway case loads


# --- HTTP helpers -------------------------------------------------------------------------


def http(
    method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, list(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, list(exc.headers.items()), exc.read()


def wait_status(url: str, status: int, *, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 20
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = http("GET", url, headers=headers)[0]
            if last == status:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within 20s (last: {last})")


def metrics(http_port: int) -> dict[str, float]:
    """wardgate's Prometheus metrics, one entry per series (``name{labels}``)."""
    text = http("GET", f"http://127.0.0.1:{http_port}/metrics")[2].decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    total = 0.0
    for series, value in values.items():
        if series != name and not series.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += value
    return total


# --- the processes ------------------------------------------------------------------------


def start_upstream(workdir: Path, procs: Procs) -> int:
    listen, admin = devstack.free_port(), devstack.free_port()
    config = static_envoy_config(listen_port=listen, admin_port=admin, authz_port=None)
    procs.add("upstream", start_static_envoy(workdir, "upstream", config))
    wait_status(f"http://127.0.0.1:{listen}/any/path", 200)
    return listen


def start_bare_proxy(workdir: Path, procs: Procs, upstream: int) -> str:
    listen, admin = devstack.free_port(), devstack.free_port()
    cluster = {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": "127.0.0.1",
                                        "port_value": upstream,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    config = callout_envoy_config(
        listen_port=listen,
        admin_port=admin,
        http_filters=[],
        clusters=[cluster],
        route={"route": {"cluster": "upstream"}},
    )
    procs.add("envoy-a", start_static_envoy(workdir, "bare-proxy", config))
    url = f"http://127.0.0.1:{listen}/bench/x"
    wait_status(url, 200)
    return url


class Stack:
    """redis-server, ``wardgate serve --workers 1`` and an Envoy over ADS (one worker)."""

    def __init__(self, workdir: Path, procs: Procs, upstream: int, *, access_log: bool) -> None:
        self.workdir = workdir
        self.reads: list[dict[str, int]] = []
        redis_port = devstack.free_port()
        self.grpc, self.http = devstack.free_port(), devstack.free_port()
        self.listen, self.admin = devstack.free_port(), devstack.free_port()
        self.env = {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "WARDGATE_KEY_PREFIX": "wardgate:",
            "WARDGATE_GRPC_PORT": str(self.grpc),
            "WARDGATE_HTTP_PORT": str(self.http),
            "WARDGATE_LISTEN_PORT": str(self.listen),
            "WARDGATE_ENVOY_ADMIN_PORT": str(self.admin),
            "WARDGATE_LOG_LEVEL": "WARNING",
            "WARDGATE_ACCESS_LOG": "true" if access_log else "false",
        }
        procs.add("redis", devstack.start_redis(redis_port, workdir / "redis"))
        procs.add(
            "wardgate",
            devstack.start_wardgate(
                env=self.env,
                http_port=self.http,
                log=workdir / "wardgate.log",
                args=("--workers", "1"),
            ),
        )
        procs.add(
            "envoy",
            devstack.start_envoy(
                workdir=workdir,
                node_id="bench",
                listen_port=self.listen,
                admin_port=self.admin,
                wardgate_port=self.grpc,
                concurrency=1,
            ),
        )
        self.base = f"http://127.0.0.1:{self.listen}"
        signed_in = {"require": "session", "roles": [ROLE]}

        def quota(requests: int) -> list[dict[str, Any]]:
            return [{"by": "user", "requests": requests, "per": "minute", "enforce": "quota"}]

        docs = [
            {
                "kind": "Service",
                "name": "upstream",
                "endpoints": [{"address": "127.0.0.1", "port": upstream}],
            },
            {"kind": "Route", "name": "bench-open", "match": {"prefix": "/bench/open"}}
            | {"backend": "upstream", "auth": {"require": "none"}},
            {"kind": "Route", "name": "bench-session", "match": {"prefix": "/bench/session"}}
            | {"backend": "upstream", "auth": signed_in, "rate_limits": quota(BIG)},
            {"kind": "Route", "name": "bench-noquota", "match": {"prefix": "/bench/noquota"}}
            | {"backend": "upstream", "auth": signed_in},
            {"kind": "Route", "name": "bench-small", "match": {"prefix": "/bench/small"}}
            | {"backend": "upstream", "auth": signed_in, "rate_limits": quota(SMALL)},
        ]
        (workdir / "routes.yaml").write_text(yaml.safe_dump_all(docs))
        self.cli("apply", "-f", str(workdir / "routes.yaml"))
        for name, role in ((USER, ROLE), (NOROLE, "other")):
            self.cli("users", "add", name, "--role", role, "--password-stdin", stdin=PASSWORD)
        wait_status(f"{self.base}/bench/open/x", 200)
        wait_status(f"{self.base}/bench/session/x", 401)
        # A process's first key signs only once every Envoy has it (WARDGATE_TICKET_KEY_LEAD,
        # 5 s): until then a login gets the session cookie alone.
        deadline = time.monotonic() + 30
        while TICKET_COOKIE not in self.login(strict=False):
            if time.monotonic() > deadline:
                raise TimeoutError("no login got a ticket within 30 s")
            time.sleep(1)

    def cli(self, *argv: str, stdin: str | None = None) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "wardgate", *argv],
            input=None if stdin is None else stdin + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.env},
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"wardgate {' '.join(argv)}: {done.stderr or done.stdout}")

    def login(self, user: str = USER, *, strict: bool = True) -> dict[str, str]:
        """A new session through Envoy, as a browser signs in: its two cookies."""
        body = f'{{"username": "{user}", "password": "{PASSWORD}"}}'.encode()
        status, headers, text = http(
            "POST",
            f"{self.base}/auth/login",
            data=body,
            headers={"content-type": "application/json"},
        )
        cookies = {}
        for key, value in headers:
            if key.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                cookies[name] = rest.split(";", 1)[0]
        wanted = {SESSION_COOKIE, TICKET_COOKIE} if strict else {SESSION_COOKIE}
        if status != 200 or not wanted <= set(cookies):
            raise RuntimeError(f"login of {user}: {status} {text[:200]!r}, cookies {set(cookies)}")
        return cookies

    def counters(self) -> dict[str, int]:
        """Envoy's and wardgate's counters now; the last two reads are kept (``reads``)."""
        stats = envoy_stats(self.admin)
        out = {k: stats.get(name, 0) for k, name in ENVOY_COUNTERS.items()}
        out["ratelimit_calls"] = sum(
            v
            for k, v in stats.items()
            if re.fullmatch(r"cluster\..+\.ratelimit\.(ok|over_limit)", k)
        )
        m = metrics(self.http)
        out["wg_authz"] = int(metric(m, "wardgate_authz_decisions_total"))
        out["wg_quota_reports"] = int(metric(m, "wardgate_quota_leases_total", rule=RULE_BIG))
        out["wg_quota_allowed"] = int(
            metric(m, "wardgate_quota_requests_total", rule=RULE_BIG, decision="allowed")
        )
        self.reads = [*self.reads[-1:], out]
        return out


def cookie_header(cookies: dict[str, str], *names: str) -> dict[str, str]:
    return {"cookie": "; ".join(f"{n}={cookies[n]}" for n in names)}


# --- checks -------------------------------------------------------------------------------


def check_route(stack: Stack) -> None:
    """The measured route as configured: credentials required, the role checked by Envoy."""
    url = f"{stack.base}/bench/session/x"
    status = http("GET", url)[0]
    if status != 401:
        raise RuntimeError(f"{url} without credentials answered {status}, not 401")
    other = stack.login(NOROLE)
    before = stack.counters()
    status = http("GET", url, headers=cookie_header(other, TICKET_COOKIE, SESSION_COOKIE))[0]
    after = stack.counters()
    if status != 403 or after["roles_denied"] <= before["roles_denied"]:
        raise RuntimeError(f"a user without the role: {status}, not 403 from Envoy's RBAC")
    if after["authz_ok"] != before["authz_ok"]:
        raise RuntimeError("a ticket without the role went to ext_authz")
    print(f"  check: {url} answers 401 without credentials, 403 (RBAC, no callout) without role")


def check_quota(stack: Stack) -> None:
    """A route with the same settings and a quota of SMALL per minute: once its lease has come
    back, the quota filter refuses what the lease does not cover, and wardgate hears of it."""
    url = f"{stack.base}/bench/small/x"
    headers = cookie_header(stack.login(), TICKET_COOKIE, SESSION_COOKIE)
    if http("GET", url, headers=headers)[0] != 200:  # creates the bucket; its report asks
        raise RuntimeError(f"{url}: the first request was refused")
    wait_for(lambda: metric(metrics(stack.http), "wardgate_quota_leases_total", rule=RULE_SMALL))
    statuses = [http("GET", url, headers=headers)[0] for _ in range(4 * SMALL)]
    allowed, refused = statuses.count(200), statuses.count(429)
    if allowed + refused != len(statuses) or allowed + 1 > SMALL + 1 or refused == 0:
        raise RuntimeError(f"quota of {SMALL}: {statuses}")

    def denied() -> float:
        return metric(
            metrics(stack.http), "wardgate_quota_requests_total", rule=RULE_SMALL, decision="denied"
        )

    wait_for(denied, timeout=15)  # the next report (every 5 s)
    print(
        f"  check: quota {SMALL}/min: {allowed + 1} admitted, {refused} refused (429);"
        f" wardgate counted {denied():.0f} refused by the quota filter"
    )


def wait_for(value: Callable[[], float], *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value() > 0:
            return
        time.sleep(0.25)
    raise TimeoutError(f"nothing within {timeout}s")


# --- measuring ----------------------------------------------------------------------------


def measure(
    case: str,
    label: str,
    url: str,
    *,
    args: argparse.Namespace,
    procs: Procs,
    stack: Stack | None,
    headers: dict[str, str] | None = None,
) -> Load:
    load = measure_load(
        case,
        label,
        url,
        args=args,
        procs=procs,
        headers=headers,
        counters=stack.counters if stack else dict,
    )
    c = load.counters
    print(
        f"  {case:<3} {load.rps:>9,.0f} req/s  p99 {load.p99_ms:7.2f} ms  bad {load.bad}"
        + (
            f"  ext_authz {c['authz_ok']:,} (skipped {c['authz_skipped']:,})"
            f"  jwt_authn allowed {c['jwt_allowed']:,} (cache hits {c['jwt_cache_hit']:,})"
            f"  wardgate authz {c['wg_authz']:,}"
            if stack
            else ""
        ),
        flush=True,
    )
    return load


def run(workdir: Path, args: argparse.Namespace) -> list[dict[str, Load]]:
    procs = Procs()
    try:
        upstream = start_upstream(workdir, procs)
        bare = start_bare_proxy(workdir, procs, upstream)
        stack = Stack(workdir, procs, upstream, access_log=args.access_log)
        check_route(stack)
        check_quota(stack)
        session = f"{stack.base}/bench/session/x"
        rounds: list[dict[str, Load]] = []
        for i in range(args.rounds):
            if args.rounds > 1:
                print(f"round {i + 1}", flush=True)
            got: dict[str, Load] = {}
            got["a"] = measure(
                "a", "bare Envoy -> upstream", bare, args=args, procs=procs, stack=None
            )
            got["b"] = measure(
                "b",
                "wardgate, auth: none -> upstream",
                f"{stack.base}/bench/open/x",
                args=args,
                procs=procs,
                stack=stack,
            )
            cookies = stack.login()  # a fresh ticket: it lives TICKET_TTL s
            got["c"] = measure(
                "c",
                f"wardgate, session + roles + quota, ticket ({TICKET_COOKIE} + {SESSION_COOKIE})",
                session,
                args=args,
                procs=procs,
                stack=stack,
                headers=cookie_header(cookies, SESSION_COOKIE, TICKET_COOKIE),
            )
            verify_fast(got["c"], stack)
            got["cn"] = measure(
                "cn",
                "the same route without the quota rule, ticket",
                f"{stack.base}/bench/noquota/x",
                args=args,
                procs=procs,
                stack=stack,
                headers=cookie_header(cookies, SESSION_COOKIE, TICKET_COOKIE),
            )
            if got["cn"].bad or got["cn"].counters["authz_ok"]:
                raise RuntimeError("case cn: not the fast path throughout")
            if args.c2:
                got["c2"] = measure(
                    "c2",
                    "the same, session cookie alone (ext_authz every request)",
                    session,
                    args=args,
                    procs=procs,
                    stack=stack,
                    headers=cookie_header(stack.login(), SESSION_COOKIE),
                )
            rounds.append(got)
        return rounds
    finally:
        procs.stop_all()


def verify_fast(c: Load, stack: Stack) -> None:
    """(c) was the fast path throughout, and its quota counted every request."""
    k = c.counters
    if c.bad or k["authz_ok"] or k["wg_authz"]:
        raise RuntimeError(
            f"case c: {c.bad} bad responses, {k['authz_ok']} ext_authz calls"
            f" ({k['wg_authz']} at wardgate): not the fast path throughout"
        )
    if k["jwt_allowed"] < c.requests or k["gate_allowed"] < c.requests:
        raise RuntimeError(f"case c: {c.requests} requests, counters {k}")
    # The quota filter reports every 5 s: wait for the reports covering the run's end. They
    # also carry the end of the warm-up: at least the run's requests, never fewer.
    started = stack.reads[-2]["wg_quota_allowed"]  # as measure_load read them before the run

    def reported() -> float:
        return float(stack.counters()["wg_quota_allowed"] - started >= c.requests)

    wait_for(reported, timeout=15)
    k["quota_reported"] = stack.reads[-1]["wg_quota_allowed"] - started


# --- the report ---------------------------------------------------------------------------


def path_us(r: Load) -> float:
    """CPU µs per request of every process on the request's path, wrk included: on a machine
    whose cores are all busy, throughputs go as the inverse of this (a steadier figure)."""
    names = ("envoy-a", "upstream", "wrk") if r.case == "a" else PATH
    return sum(sum(r.cpu.get(n, [0.0])) for n in names) / r.rps * 1e6


def report(rounds: list[dict[str, Load]], args: argparse.Namespace) -> None:
    print()
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency"
        f" (after a {args.warmup}s warm-up), {args.rounds} round(s),"
        f" access log {'on' if args.access_log else 'off'}"
    )
    print()
    print(
        "| round | case | what | req/s | p99 ms | Envoy CPU µs/req | wardgate CPU µs/req"
        " | upstream CPU µs/req | redis CPU µs/req | path CPU µs/req | ext_authz calls"
        " | jwt cache hits | bad |"
    )
    print("| --- | --- | --- |" + " ---: |" * 10)
    for i, got in enumerate(rounds, 1):
        for r in got.values():
            envoy = "envoy-a" if r.case == "a" else "envoy"

            def us(name: str, r: Load = r) -> str:
                return f"{sum(r.cpu[name]) / r.rps * 1e6:,.1f}" if name in r.cpu else "-"

            k = r.counters
            print(
                f"| {i} | {r.case} | {r.label} | {r.rps:,.0f} | {r.p99_ms:.2f} | {us(envoy)}"
                f" | {us('wardgate') if r.case != 'a' else '-'} | {us('upstream')}"
                f" | {us('redis') if r.case != 'a' else '-'} | {path_us(r):,.1f}"
                f" | {k.get('authz_ok', '-')} | {k.get('jwt_cache_hit', '-')} | {r.bad} |"
            )
    print()
    pairs = {"c/b": ("c", "b"), "c/a": ("c", "a"), "b/a": ("b", "a"), "c/cn": ("c", "cn")}
    if args.c2:
        pairs["c2/b"] = ("c2", "b")
        pairs["c/c2"] = ("c", "c2")
    print("ratio  by req/s (each round)  |  by path CPU per request (each round)")

    def cell(values: list[float]) -> str:
        each = ", ".join(f"{x:.3f}" for x in values)
        return f"{statistics.median(values):.3f}" + (f" ({each})" if len(values) > 1 else "")

    for name, (num, den) in pairs.items():
        ratios = [got[num].rps / got[den].rps for got in rounds]
        by_cpu = [path_us(got[den]) / path_us(got[num]) for got in rounds]
        print(f"{name:<5}  {cell(ratios)}  |  {cell(by_cpu)}")
    print("targets: c/b >= 0.8, c/a >= 0.5")
    print()
    for i, got in enumerate(rounds, 1):
        c = got["c"].counters
        print(
            f"round {i}, case c: ext_authz calls {c['authz_ok']} (skipped {c['authz_skipped']:,}),"
            f" at wardgate {c['wg_authz']}; tickets verified {c['jwt_allowed']:,}"
            f" (cache hits {c['jwt_cache_hit']:,}, misses {c['jwt_cache_miss']:,});"
            f" gate allowed {c['gate_allowed']:,}; roles allowed {c['roles_allowed']:,};"
            f" exact-check calls {c['ratelimit_calls']}; quota reports answered during the run"
            f" {c['wg_quota_reports']}; requests the quota filter reported from the run's start"
            f" until its next report {c['quota_reported']:,} (wrk completed"
            f" {got['c'].requests:,} in the run)"
        )
    print()
    for got in rounds:
        for r in got.values():
            if r.others > 0.15:
                print(
                    f"WARNING: case {r.case}: other processes kept {r.others:.2f} cores busy"
                    " during the run; its figures may be low"
                )
            if r.steal > 0.05:
                print(f"WARNING: case {r.case}: the hypervisor stole {r.steal:.2f} cores")
            if r.bad:
                print(f"WARNING: case {r.case}: {r.bad} non-2xx responses or socket errors")


def _seconds(text: str) -> int:
    value = int(text)  # wrk takes whole seconds
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 second")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=_seconds, default=10, help="seconds measured (10)")
    parser.add_argument("--warmup", type=_seconds, default=2, help="seconds of load before (2)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all cases (1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--no-c2", dest="c2", action="store_false", help="leave out case c2")
    parser.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="run wardgate with WARDGATE_ACCESS_LOG=false (default: on, as deployed)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.warmup + args.duration > TICKET_TTL - 15:
        parser.error(f"warm-up + duration must stay under {TICKET_TTL - 15} s: a ticket lives 60")
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    def body(workdir: Path) -> None:
        info = machine()
        print_header(
            info, packages=package_versions("grpcio", "protobuf"), redis=redis_server_version()
        )
        report(run(workdir, args), args)

    cases = 5 if args.c2 else 4
    return run_bounded(
        body,
        budget=int(args.rounds * cases * (args.duration + args.warmup + 25) + 180),
        keep=args.keep,
        prefix="wardgate-bench-",
    )


if __name__ == "__main__":
    sys.exit(main())
