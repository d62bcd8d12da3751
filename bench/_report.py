"""One case's figures, the machine they were measured on, and the printed report."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

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
