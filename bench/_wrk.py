"""Running ``wrk --latency`` and reading its report."""

from __future__ import annotations

import argparse
import re
import subprocess

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(text: str) -> tuple[float, float, int, int, int]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"^\s*99(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    total = re.search(r"(\d+) requests in", text)
    if not (rps and p99 and total):
        raise RuntimeError(f"cannot parse wrk output:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = sum(int(g) for g in sock.groups()) if sock else 0
    return (
        float(rps.group(1)),
        float(p99.group(1)) * _UNITS[p99.group(2)],
        int(total.group(1)),
        int(non2xx.group(1)) if non2xx else 0,
        errors,
    )


def wrk(url: str, *, seconds: int, args: argparse.Namespace, headers: dict[str, str]) -> str:
    cmd = [
        "wrk",
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{seconds}s",
        "--latency",
    ]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    done = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    return done.stdout
