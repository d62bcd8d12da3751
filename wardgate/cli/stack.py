"""``wardgate up`` (the whole stack on one machine, for a first look and for development),
``wardgate serve`` (the service itself) and ``wardgate bootstrap`` (an Envoy bootstrap that
points at it)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from wardgate import devstack
from wardgate.cli.base import CliError, settings_of
from wardgate.cli.documents import read_documents
from wardgate.domain.catalog import plan_apply
from wardgate.domain.documents import Service
from wardgate.domain.passwords import hash_password
from wardgate.domain.ports import UserRecord
from wardgate.envoy_proc import render_bootstrap
from wardgate.store.documents import RedisDocumentStore
from wardgate.store.keys import Keys
from wardgate.store.redis_client import connect
from wardgate.store.redis_store import RedisUserStore
from wardgate.workers import run_workers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_UPSTREAM_PORT = 8081
DEMO_GRPC_PORT = 8082
DEMO_USERS = {
    "alice": ("alice-password", ("user",)),
    "admin": ("admin-password", ("admin", "user")),
}


async def _seed(redis_url: str, examples: Path, offset: int, upstream_port: int) -> None:
    docs = read_documents((str(examples),))
    shifted = []
    for d in docs:
        if isinstance(d, Service) and d.endpoints:
            moved = {DEMO_UPSTREAM_PORT: upstream_port, DEMO_GRPC_PORT: DEMO_GRPC_PORT + offset}
            eps = [e.model_copy(update={"port": moved.get(e.port, e.port)}) for e in d.endpoints]
            d = d.model_copy(update={"endpoints": eps})
        shifted.append(d)
    redis = connect(redis_url, timeout=5.0, name="wardgate-up")
    try:
        store = RedisDocumentStore(
            redis=redis, keys=Keys(os.environ.get("WARDGATE_KEY_PREFIX", "wardgate:"))
        )
        await store.commit(lambda current: plan_apply(current, shifted))
        users = RedisUserStore(
            redis=redis, keys=Keys(os.environ.get("WARDGATE_KEY_PREFIX", "wardgate:"))
        )
        for name, (password, roles) in DEMO_USERS.items():
            if await users.get_user(name) is None:
                digest = await asyncio.to_thread(hash_password, password)
                await users.put_user(UserRecord(name, digest, roles))
    finally:
        await redis.aclose()


_F = TypeVar("_F", bound=Callable[..., Any])


def _port(flag: str, default: int, help: str | None = None) -> Callable[[_F], _F]:
    """A port option, also read from WARDGATE_<FLAG> (``--grpc-port``: WARDGATE_GRPC_PORT)."""
    env = "WARDGATE_" + flag.removeprefix("--").replace("-", "_").upper()
    return click.option(
        flag,
        type=click.IntRange(1, 65535),
        default=default,
        show_default=True,
        help=help,
        envvar=env,
    )


@click.command()
@_port("--listen-port", 10000)
@_port("--admin-port", 9901)
@_port("--grpc-port", 18000)
@_port("--http-port", 18080)
@_port("--redis-port", 16379, "Port of the private redis-server (when REDIS_URL is not set).")
@click.option(
    "--port-offset",
    type=click.IntRange(0, 1000),
    default=0,
    show_default=True,
    help="Added to every port.",
    envvar="WARDGATE_PORT_OFFSET",
)
@click.option(
    "--examples", type=click.Path(file_okay=False), default=str(EXAMPLES), show_default=True
)
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Logs and configs.")
def up(
    listen_port: int,
    admin_port: int,
    grpc_port: int,
    http_port: int,
    redis_port: int,
    port_offset: int,
    examples: str,
    workdir: str | None,
) -> None:
    """Run Redis, wardgate, Envoy and a demo upstream with the demo routes; Ctrl-C stops all."""
    o = port_offset
    listen_port, admin_port, grpc_port, http_port, redis_port = (
        listen_port + o,
        admin_port + o,
        grpc_port + o,
        http_port + o,
        redis_port + o,
    )
    upstream_port = DEMO_UPSTREAM_PORT + o
    for name, port in [
        ("listener", listen_port),
        ("Envoy admin", admin_port),
        ("gRPC", grpc_port),
        ("HTTP", http_port),
        ("demo upstream", upstream_port),
        ("demo gRPC upstream", DEMO_GRPC_PORT + o),
    ] + ([] if os.environ.get("REDIS_URL") else [("redis", redis_port)]):
        if devstack.port_open(port):
            raise CliError(f"port {port} ({name}) is already in use; try --port-offset N")
    work = Path(workdir or tempfile.mkdtemp(prefix="wardgate-up-"))
    work.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            click.echo(f"starting redis-server on 127.0.0.1:{redis_port}")
            procs.append(("redis-server", devstack.start_redis(redis_port, work / "redis")))
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        click.echo(
            f"starting the demo upstreams on 127.0.0.1:{upstream_port} (REST) and "
            f"127.0.0.1:{DEMO_GRPC_PORT + o} (gRPC)"
        )
        procs.append(
            ("upstream", devstack.start_upstream(upstream_port, "echo", work / "upstream.log"))
        )
        procs.append(
            (
                "grpc-upstream",
                devstack.start_upstream(
                    DEMO_GRPC_PORT + o, "greeter", work / "grpc-upstream.log", grpc=True
                ),
            )
        )
        asyncio.run(_seed(redis_url, Path(examples), o, upstream_port))
        click.echo(f"starting wardgate (gRPC {grpc_port}, HTTP {http_port})")
        env = {
            "REDIS_URL": redis_url,
            "WARDGATE_GRPC_PORT": str(grpc_port),
            "WARDGATE_HTTP_PORT": str(http_port),
            "WARDGATE_LISTEN_PORT": str(listen_port),
        }
        procs.append(
            (
                "wardgate",
                devstack.start_wardgate(env=env, http_port=http_port, log=work / "wardgate.log"),
            )
        )
        click.echo(f"starting envoy (listener {listen_port}, admin {admin_port})")
        procs.append(
            (
                "envoy",
                devstack.start_envoy(
                    workdir=work,
                    node_id="envoy-up",
                    listen_port=listen_port,
                    admin_port=admin_port,
                    wardgate_port=grpc_port,
                    concurrency=2,
                ),
            )
        )
        devstack.wait_http(f"http://127.0.0.1:{listen_port}/public", timeout=30)
        _tour(listen_port, admin_port, http_port, work, redis_url)
        while not stopping:
            for name, p in procs:
                if p.poll() is not None:
                    click.echo(
                        f"{name} exited with {p.returncode}; stopping (logs in {work})", err=True
                    )
                    stopping = True
            time.sleep(0.3)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        click.echo("stopping ...")
        for _name, p in reversed(procs):
            devstack.stop(p)
        click.echo("stopped")
    sys.exit(0)


def _tour(listen: int, admin: int, http: int, work: Path, redis_url: str) -> None:
    base = f"http://127.0.0.1:{listen}"
    click.echo(
        f"""
wardgate is up. Try:

  curl -i {base}/public/hello                       # public route: 200, rate limited per IP
  curl -i {base}/api/me                             # protected: 401 without a session
  curl -i -c /tmp/wg.jar -H 'content-type: application/json' \\
       -d '{{"username":"alice","password":"alice-password"}}' {base}/auth/login
  curl -i -b /tmp/wg.jar {base}/api/me              # 200, upstream sees x-user-id: alice
  curl -i -b /tmp/wg.jar {base}/api/admin           # 403: alice lacks role admin
  curl -i {base}/nowhere                            # 404 with a JSON body
  python -m wardgate.demo.grpc_upstream --call 127.0.0.1:{listen} --name you   # gRPC route

  REDIS_URL={redis_url} wardgate get routes
  metrics: http://127.0.0.1:{http}/metrics   envoy admin: http://127.0.0.1:{admin}/
  logs: {work}

Ctrl-C stops everything.
"""
    )


@click.command()
@click.option("--node-id", default="envoy-1", show_default=True)
@click.option("--listen-port", default=10000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--admin-port", default=9901, show_default=True, type=click.IntRange(1, 65535))
@click.option("--wardgate-host", default="127.0.0.1", show_default=True)
@click.option("--wardgate-port", default=18000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--delta", is_flag=True, help="Incremental xDS (DELTA_GRPC).")
def bootstrap(
    node_id: str,
    listen_port: int,
    admin_port: int,
    wardgate_host: str,
    wardgate_port: int,
    delta: bool,
) -> None:
    """Print an Envoy bootstrap that takes its configuration from wardgate."""
    click.echo(
        render_bootstrap(
            node_id=node_id,
            listen_port=listen_port,
            admin_port=admin_port,
            wardgate_port=wardgate_port,
            wardgate_host=wardgate_host,
            delta=delta,
        )
    )


@click.command()
@click.option(
    "--workers", type=click.IntRange(1, 64), default=None, help="Processes (SO_REUSEPORT)."
)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=None)
@click.option("--http-port", type=click.IntRange(1, 65535), default=None)
@click.option("--bind", "bind_host", default=None, help="Address to listen on.")
@click.pass_context
def serve(
    ctx: click.Context,
    workers: int | None,
    grpc_port: int | None,
    http_port: int | None,
    bind_host: str | None,
) -> None:
    """Run the wardgate service (ADS, ext_authz, rate limit, HTTP) until SIGINT/SIGTERM."""
    settings = settings_of(ctx).with_overrides(
        **{
            k: v
            for k, v in {
                "workers": workers,
                "grpc_port": grpc_port,
                "http_port": http_port,
                "bind_host": bind_host,
            }.items()
            if v is not None
        }
    )
    run_workers(settings)
