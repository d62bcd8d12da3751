"""One case's figures, the machine they were measured on, and the printed report."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _procs import Procs, cpu_seconds, machine_cpu, reap_children
from _wrk import parse_wrk, wrk

import wardgate
from wardgate.envoy_proc import find_envoy


@dataclasses.dataclass
class Result:
    case: str
    label: str
    rps: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    cpu: dict[str, float]  # cores used during the measured run, per process
    calls_per_request: dict[str, float]
    machine_busy: float  # cores busy on the whole machine, every process counted
    steal: float  # cores the hypervisor took away


def wardgate_source() -> str:
    """Where the measured wardgate comes from, with its git commit when it is a checkout."""
    root = Path(wardgate.__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return str(root)
    return f"{root} at {head}{' with uncommitted changes' if dirty else ''}"


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    envoy = subprocess.run(
        [find_envoy(), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    version = re.search(r"version: \S+", envoy.stdout)
    wrk_version = subprocess.run(
        ["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    return {
        "wardgate": wardgate_source(),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "envoy": version.group(0).split("/")[1] if version else envoy.stdout.strip(),
        "python": platform.python_version(),
        "wrk": (wrk_version.stdout or wrk_version.stderr).split("[")[0].strip(),
    }


def report(results: list[Result], info: dict[str, str], args: argparse.Namespace) -> None:
    by = {r.case: r for r in results}
    base = by["a"].rps
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
    print("| case | what | req/s | p99 ms | req/s vs (a) | non-2xx |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        bad = r.non_2xx + r.socket_errors
        print(
            f"| {r.case} | {r.label} | {r.rps:,.0f} | {r.p99_ms:.2f} | {r.rps / base:.3f} | {bad} |"
        )
    print()
    for name, (num, den) in {
        "b/a": ("b", "a"),
        "c/a": ("c", "a"),
        "c/c0": ("c", "c0"),
        "c/b": ("c", "b"),
    }.items():
        print(f"{name:<5} {by[num].rps / by[den].rps:.3f}")
    print()
    print(
        f"CPU used during each measured run, per process: cores busy (of {info['nproc']})"
        " / CPU µs per request"
    )
    names = sorted({n for r in results for n in r.cpu}, key=lambda n: (n == "wrk", n))
    print(
        "| case | " + " | ".join(names) + " | all ours | machine | steal | callouts per request |"
    )
    print("| --- |" + " ---: |" * (len(names) + 3) + " --- |")
    for r in results:
        cells = [
            f"{r.cpu[n]:.2f} / {r.cpu[n] / r.rps * 1e6:,.0f}" if n in r.cpu else "-" for n in names
        ]
        total = sum(r.cpu.values())
        cells.append(f"{total:.2f} / {total / r.rps * 1e6:,.0f}")
        cells += [f"{r.machine_busy:.2f}", f"{r.steal:.2f}"]
        calls = ", ".join(f"{k} {v:.2f}" for k, v in r.calls_per_request.items())
        print(f"| {r.case} | " + " | ".join(cells) + f" | {calls} |")
    print()
    for r in results:
        others = r.machine_busy - sum(r.cpu.values())
        if others > 0.15:
            print(
                f"WARNING: case {r.case}: other processes kept {others:.2f} cores busy during the"
                " run; its figures may be low"
            )
        if r.steal > 0.05:
            print(f"WARNING: case {r.case}: the hypervisor stole {r.steal:.2f} cores")
        if r.non_2xx or r.socket_errors:
            print(
                f"WARNING: case {r.case}: {r.non_2xx} non-2xx responses,"
                f" {r.socket_errors} socket errors"
            )


def versions(*packages: str) -> str:
    """``name version`` of each installed Python distribution, ``name -`` when missing."""
    out = []
    for name in packages:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} -")
    return ", ".join(out)


def redis_server_version() -> str:
    done = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    found = re.search(r"v=(\S+)", done.stdout)
    return found.group(1) if found else "unknown"


def print_header(info: dict[str, str], *, packages: str, redis: str | None = None) -> None:
    """Date, machine, versions and the command that ran: the lines above every report."""
    print(f"date    {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}")
    print(f"machine {info['nproc']} CPUs, {info['cpu']}, Linux {info['kernel']}")
    print(f"wardgate {info['wardgate']}")
    print(f"envoy {info['envoy']}, Python {info['python']}, {info['wrk']}")
    print(packages + (f", redis-server {redis}" if redis else ""))
    print("command " + shlex.join(["python", *sys.argv]))


# --- shared by authz_check.py and ratelimit_decisions.py ----------------------------------


@dataclasses.dataclass
class Load:
    """One wrk run against Envoy: throughput, latency, CPU and counter deltas."""

    case: str
    label: str
    rps: float
    p99_ms: float
    requests: int
    bad: int  # non-2xx responses + socket errors
    cpu: dict[str, list[float]]  # cores busy per started process: its tree, largest first
    others: float  # cores busy on the machine outside the processes started and wrk
    steal: float
    counters: dict[str, int]  # deltas of what ``counters()`` returned


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``wardgate serve --workers N`` runs N children)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def measure_load(
    case: str,
    label: str,
    url: str,
    *,
    args: argparse.Namespace,
    procs: Procs,
    headers: dict[str, str] | None = None,
    counters: Callable[[], dict[str, int]] = dict,
) -> Load:
    """A warm-up, then one measured wrk run; CPU of every process tree in ``procs``."""
    headers = headers or {}
    wrk(url, seconds=args.warmup, args=args, headers=headers)
    trees = {name: _tree(pid) for name, pid in procs.pids().items()}
    before_cpu = {n: [cpu_seconds(p) for p in pids] for n, pids in trees.items()}
    before_machine = machine_cpu()
    before = counters()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = wrk(url, seconds=args.duration, args=args, headers=headers)
    elapsed = time.monotonic() - started
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    after_machine = machine_cpu()
    after = counters()
    cpu = {
        n: sorted(
            ((cpu_seconds(p) - b) / elapsed for p, b in zip(pids, before_cpu[n], strict=True)),
            reverse=True,
        )
        for n, pids in trees.items()
    }
    wrk_cores = (
        after_children.ru_utime + after_children.ru_stime - children.ru_utime - children.ru_stime
    ) / elapsed
    busy = (after_machine[0] - before_machine[0]) / elapsed
    steal = (after_machine[1] - before_machine[1]) / elapsed
    ours = sum(sum(v) for v in cpu.values()) + wrk_cores
    cpu["wrk"] = [wrk_cores]
    rps, p99, total, non2xx, errors = parse_wrk(out)
    deltas = {k: after[k] - before.get(k, 0) for k in after}
    return Load(
        case, label, rps, p99, total, non2xx + errors, cpu, max(0.0, busy - ours), steal, deltas
    )


def cpu_cell(cores: list[float]) -> str:
    """``0.95`` for one process, ``1.62 (0.83+0.79)`` for a tree with busy children."""
    busy = [c for c in cores if c >= 0.01]
    total = f"{sum(cores):.2f}"
    return total if len(busy) <= 1 else f"{total} ({'+'.join(f'{c:.2f}' for c in busy)})"


def warn_disturbed(loads: list[Load]) -> None:
    for r in loads:
        if r.others > 0.15:
            print(
                f"WARNING: case {r.case}: other processes kept {r.others:.2f} cores busy during"
                " the run; its figures may be low"
            )
        if r.steal > 0.05:
            print(f"WARNING: case {r.case}: the hypervisor stole {r.steal:.2f} cores")
        if r.bad:
            print(f"WARNING: case {r.case}: {r.bad} non-2xx responses or socket errors")


class BenchTimeout(Exception):
    pass


def run_bounded(body: Callable[[Path], None], *, budget: int, keep: bool, prefix: str) -> int:
    """Run ``body(workdir)`` under an alarm of ``budget`` seconds; on any exit (error, Ctrl-C,
    SIGTERM, the alarm) stop every child process still running. Returns the exit status."""

    def on_alarm(_sig: int, _frame: object) -> None:
        raise BenchTimeout(f"the benchmark did not finish within {budget}s")

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started ignoring it
    signal.alarm(budget)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    ok = False
    try:
        print(f"work directory {workdir}", flush=True)
        body(workdir)
        ok = True
        return 0
    except KeyboardInterrupt:
        print("interrupted: stopping every process started", file=sys.stderr)
        return 130
    except BenchTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        # Clean-up is bounded by its own timeouts; a second Ctrl-C must not cut it short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        reap_children()
        if ok and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs and configs kept in {workdir}", file=sys.stderr)
