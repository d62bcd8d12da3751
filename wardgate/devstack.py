"""Starting and stopping the processes of a development stack (used by ``wardgate up``,
the tests and the benchmarks): a private redis-server, wardgate, Envoy, demo upstreams."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from wardgate.envoy_proc import find_envoy, render_bootstrap
from wardgate.errors import SettingsError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_port(
    port: int, *, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{what or proc.args!r} exited with {proc.returncode} before listening on {port}"
            )
        time.sleep(0.05)
    raise TimeoutError(f"{what or 'process'} did not listen on port {port} within {timeout}s")


def wait_http(url: str, *, timeout: float = 15.0, ok: tuple[int, ...] = (200,)) -> int:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status in ok:
                    return int(resp.status)
                last = resp.status
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return int(exc.code)
            last = exc.code
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer {ok} within {timeout}s (last: {last})")


def _started(proc: subprocess.Popen[bytes], ready: Callable[[], object]) -> None:
    """Wait until ``proc`` is ready; if it never is, stop it before raising."""
    try:
        ready()
    except BaseException:
        stop(proc)
        raise


def ensure_redis_server() -> str:
    """The redis-server binary, installed with apt-get when missing and we are root."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(
            "redis-server is missing: installing it with apt-get ...", file=sys.stderr, flush=True
        )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-server"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        found = shutil.which("redis-server")
        if found:
            return found
    raise SettingsError(
        "redis-server is not installed (apt-get install redis-server), or set REDIS_URL"
    )


def start_redis(port: int, workdir: Path, *, log: Path | None = None) -> subprocess.Popen[bytes]:
    binary = ensure_redis_server()
    workdir.mkdir(parents=True, exist_ok=True)
    with open(log or workdir / "redis.log", "ab") as out:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--protected-mode",
                "yes",
                "--notify-keyspace-events",
                "Khg",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _started(proc, lambda: wait_port(port, proc=proc, what="redis-server"))
    return proc


def start_wardgate(
    *, env: Mapping[str, str], http_port: int, log: Path, args: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wardgate", "serve", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _started(proc, lambda: wait_http(f"http://127.0.0.1:{http_port}/healthz", timeout=20))
    return proc


def start_envoy(
    *,
    workdir: Path,
    node_id: str,
    listen_port: int,
    admin_port: int,
    wardgate_port: int,
    delta: bool = False,
    concurrency: int = 1,
    log_level: str = "warning",
    compose_port: int | None = None,
    compose_address: str = "127.0.0.1",
) -> subprocess.Popen[bytes]:
    """Envoy with a bootstrap pointing at wardgate; its compose listener on ``compose_port``
    (None: a free port; 0: none) at ``compose_address``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"envoy-{node_id}.yaml"
    config.write_text(
        render_bootstrap(
            node_id=node_id,
            listen_port=listen_port,
            admin_port=admin_port,
            wardgate_port=wardgate_port,
            delta=delta,
            compose_port=free_port() if compose_port is None else compose_port,
            compose_address=compose_address,
        )
    )
    with open(workdir / f"envoy-{node_id}.log", "ab") as out:
        proc = subprocess.Popen(
            [
                find_envoy(),
                "-c",
                str(config),
                "--use-dynamic-base-id",
                "--concurrency",
                str(concurrency),
                "--log-level",
                log_level,
                "--drain-time-s",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _started(proc, lambda: wait_port(admin_port, proc=proc, what="envoy", timeout=30))
    return proc


def start_upstream(
    port: int, name: str, log: Path, *, grpc: bool = False
) -> subprocess.Popen[bytes]:
    """The demo REST upstream (echo), or with ``grpc`` the demo gRPC Greeter."""
    if grpc:
        args = [sys.executable, "-m", "wardgate.demo.grpc_upstream", "--port", str(port)]
    else:
        args = [sys.executable, "-m", "wardgate.demo.upstream", "--port", str(port), "--name", name]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    _started(proc, lambda: wait_port(port, proc=proc, what=f"upstream {name}"))
    return proc


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
