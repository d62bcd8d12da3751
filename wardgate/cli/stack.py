"""``wardgate up`` (the whole stack on one machine, for a first look and for development),
``wardgate serve`` (the service itself) and ``wardgate bootstrap`` (an Envoy bootstrap that
points at it)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import secrets
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
from wardgate.domain.documents import Document, Service
from wardgate.domain.passwords import hash_password
from wardgate.domain.ports import UserRecord
from wardgate.envoy_proc import render_bootstrap
from wardgate.errors import StoreError
from wardgate.store.documents import RedisDocumentStore
from wardgate.store.keys import Keys
from wardgate.store.redis_client import connect
from wardgate.store.redis_store import RedisUserStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_UPSTREAM_PORT = 8081
DEMO_GRPC_PORT = 8082
DEMO_USERS = {
    "alice": ("alice-password", ("user",)),
    "admin": ("admin-password", ("admin", "user")),
}


@dataclasses.dataclass(frozen=True)
class UpPorts:
    """The ports of one ``wardgate up``, ``--port-offset`` already added."""

    listen: int
    admin: int
    grpc: int
    http: int
    redis: int
    upstream: int
    grpc_upstream: int

    @property
    def compose(self) -> int:
        """Envoy's compose listener (composition parts), next to its admin port."""
        return self.admin + 1

    @classmethod
    def shifted(
        cls, offset: int, *, listen: int, admin: int, grpc: int, http: int, redis: int
    ) -> UpPorts:
        return cls(
            listen=listen + offset,
            admin=admin + offset,
            grpc=grpc + offset,
            http=http + offset,
            redis=redis + offset,
            upstream=DEMO_UPSTREAM_PORT + offset,
            grpc_upstream=DEMO_GRPC_PORT + offset,
        )

    def check_free(self, *, private_redis: bool) -> None:
        """Refuse to start when something already listens on one of the ports."""
        named = [
            ("listener", self.listen),
            ("Envoy admin", self.admin),
            ("Envoy compose listener", self.compose),
            ("gRPC", self.grpc),
            ("HTTP", self.http),
            ("demo upstream", self.upstream),
            ("demo gRPC upstream", self.grpc_upstream),
        ] + ([("redis", self.redis)] if private_redis else [])
        for name, port in named:
            if devstack.port_open(port):
                raise CliError(f"port {port} ({name}) is already in use; try --port-offset N")


class _Processes:
    """The processes ``up`` started, in start order. SIGINT or SIGTERM (``ask_to_stop``), or
    one of them exiting, ends ``watch``; ``stop_all`` stops them in reverse order."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def add(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.started.append((name, proc))

    def ask_to_stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def watch(self) -> None:
        while not self.stopping:
            for name, p in self.started:
                if p.poll() is not None:
                    click.echo(
                        f"{name} exited with {p.returncode}; stopping (logs in {self.work})",
                        err=True,
                    )
                    self.stopping = True
            time.sleep(0.3)

    def stop_all(self) -> None:
        for _name, p in reversed(self.started):
            devstack.stop(p)


Moves = dict[int, tuple[str, int]]  # demo port -> (address, port) it really is at


def _demo_documents(examples: Path, moves: Moves) -> list[Document]:
    """The documents in ``examples``, the demo services moved to where the demo upstreams
    really are (``moves``: by the port written in ``examples``)."""
    shifted: list[Document] = []
    for d in read_documents((str(examples),)):
        if isinstance(d, Service) and d.endpoints:
            eps = [
                e.model_copy(update=dict(zip(("address", "port"), moves[e.port], strict=True)))
                if e.port in moves
                else e
                for e in d.endpoints
            ]
            d = d.model_copy(update={"endpoints": eps})
        shifted.append(d)
    return shifted


def _moves(ports: UpPorts) -> Moves:
    return {
        DEMO_UPSTREAM_PORT: ("127.0.0.1", ports.upstream),
        DEMO_GRPC_PORT: ("127.0.0.1", ports.grpc_upstream),
    }


async def _seed(redis_url: str, examples: Path, moves: Moves) -> None:
    """Apply the demo documents and create the demo users that do not exist yet."""
    docs = _demo_documents(examples, moves)
    redis = connect(redis_url, timeout=5.0, name="wardgate-up")
    try:
        keys = Keys(os.environ.get("WARDGATE_KEY_PREFIX", "wardgate:"))
        store = RedisDocumentStore(redis=redis, keys=keys)
        await store.commit(lambda current: plan_apply(current, docs))
        users = RedisUserStore(redis=redis, keys=keys)
        for name, (password, roles) in DEMO_USERS.items():
            if await users.get_user(name) is None:
                digest = await asyncio.to_thread(hash_password, password)
                await users.put_user(UserRecord(name, digest, roles))
    finally:
        await redis.aclose()


def _start_redis(procs: _Processes, ports: UpPorts) -> str:
    click.echo(f"starting redis-server on 127.0.0.1:{ports.redis}")
    procs.add("redis-server", devstack.start_redis(ports.redis, procs.work / "redis"))
    return f"redis://127.0.0.1:{ports.redis}/0"


def _start_upstreams(procs: _Processes, ports: UpPorts) -> None:
    click.echo(
        f"starting the demo upstreams on 127.0.0.1:{ports.upstream} (REST) and "
        f"127.0.0.1:{ports.grpc_upstream} (gRPC)"
    )
    work = procs.work
    procs.add("upstream", devstack.start_upstream(ports.upstream, "echo", work / "upstream.log"))
    procs.add(
        "grpc-upstream",
        devstack.start_upstream(
            ports.grpc_upstream, "greeter", work / "grpc-upstream.log", grpc=True
        ),
    )


def _start_wardgate(procs: _Processes, ports: UpPorts, redis_url: str, registry_token: str) -> None:
    click.echo(f"starting wardgate (gRPC {ports.grpc}, HTTP {ports.http})")
    env = {
        "REDIS_URL": redis_url,
        "WARDGATE_GRPC_PORT": str(ports.grpc),
        "WARDGATE_HTTP_PORT": str(ports.http),
        "WARDGATE_LISTEN_PORT": str(ports.listen),
        "WARDGATE_ENVOY_ADMIN_PORT": str(ports.admin),
        "WARDGATE_REGISTRY_TOKEN": registry_token,
    }
    log = procs.work / "wardgate.log"
    procs.add("wardgate", devstack.start_wardgate(env=env, http_port=ports.http, log=log))


def _start_envoy(procs: _Processes, ports: UpPorts) -> None:
    click.echo(f"starting envoy (listener {ports.listen}, admin {ports.admin})")
    envoy = devstack.start_envoy(
        workdir=procs.work,
        node_id="envoy-up",
        listen_port=ports.listen,
        admin_port=ports.admin,
        wardgate_port=ports.grpc,
        concurrency=2,
        compose_port=ports.compose,
    )
    procs.add("envoy", envoy)


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
    ports = UpPorts.shifted(
        port_offset,
        listen=listen_port,
        admin=admin_port,
        grpc=grpc_port,
        http=http_port,
        redis=redis_port,
    )
    given_redis_url = os.environ.get("REDIS_URL")
    ports.check_free(private_redis=not given_redis_url)
    work = Path(workdir or tempfile.mkdtemp(prefix="wardgate-up-"))
    work.mkdir(parents=True, exist_ok=True)
    procs = _Processes(work)
    signal.signal(signal.SIGINT, procs.ask_to_stop)
    signal.signal(signal.SIGTERM, procs.ask_to_stop)
    try:
        redis_url = given_redis_url or _start_redis(procs, ports)
        _start_upstreams(procs, ports)
        asyncio.run(_seed(redis_url, Path(examples), _moves(ports)))
        # The registry's heartbeats need a token: one for this run, printed below.
        registry_token = os.environ.get("WARDGATE_REGISTRY_TOKEN") or secrets.token_urlsafe(24)
        _start_wardgate(procs, ports, redis_url, registry_token)
        _start_envoy(procs, ports)
        devstack.wait_http(f"http://127.0.0.1:{ports.listen}/public", timeout=30)
        _tour(ports, work, redis_url, registry_token)
        procs.watch()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        click.echo("stopping ...")
        procs.stop_all()
        click.echo("stopped")
    sys.exit(0)


def _tour(ports: UpPorts, work: Path, redis_url: str, registry_token: str) -> None:
    listen, admin, http = ports.listen, ports.admin, ports.http
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
  curl -i -b /tmp/wg.jar {base}/api/profile         # x-tenant: alice; x-cache MISS, then HIT
  curl -s -b /tmp/wg.jar {base}/bff/dashboard       # one JSON answer from two calls (compose)
  curl -i {base}/nowhere                            # 404 with a JSON body
  python -m wardgate.demo.grpc_upstream --call 127.0.0.1:{listen} --name you   # gRPC route
  curl -s {base}/v1/greeter/you                     # the same service over REST/JSON

  REDIS_URL={redis_url} wardgate get routes
  metrics: http://127.0.0.1:{http}/metrics   envoy admin: http://127.0.0.1:{admin}/
  registry heartbeats: POST http://127.0.0.1:{http}/registry/heartbeat
      with authorization: Bearer {registry_token}
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
@click.option(
    "--compose-port",
    default=9902,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Envoy's compose listener (composition parts); 0: none.",
)
@click.option(
    "--compose-address",
    default="127.0.0.1",
    show_default=True,
    callback=lambda _c, _p, v: _ip_address(v),
    help="Where the compose listener binds: 0.0.0.0 when wardgate is in another container or "
    "pod (it then reaches the Envoy at the address the Envoy connects from).",
)
@click.option(
    "--admin-address",
    default="127.0.0.1",
    show_default=True,
    callback=lambda _c, _p, v: _ip_address(v),
    help="Where Envoy's admin port binds (it can stop Envoy: never a public address).",
)
@click.option("--delta", is_flag=True, help="Incremental xDS (DELTA_GRPC).")
def bootstrap(
    node_id: str,
    listen_port: int,
    admin_port: int,
    wardgate_host: str,
    wardgate_port: int,
    compose_port: int,
    compose_address: str,
    admin_address: str,
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
            admin_address=admin_address,
            delta=delta,
            compose_port=compose_port,
            compose_address=compose_address,
        )
    )


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IP address") from None


@click.command("seed-demo")
@click.option(
    "--upstream",
    default=f"127.0.0.1:{DEMO_UPSTREAM_PORT}",
    show_default=True,
    help="HOST:PORT of the demo REST upstream.",
)
@click.option(
    "--grpc-upstream",
    default=f"127.0.0.1:{DEMO_GRPC_PORT}",
    show_default=True,
    help="HOST:PORT of the demo gRPC upstream.",
)
@click.option(
    "--examples", type=click.Path(file_okay=False), default=str(EXAMPLES), show_default=True
)
@click.pass_context
def seed_demo(ctx: click.Context, upstream: str, grpc_upstream: str, examples: str) -> None:
    """Apply the demo documents (the demo services at --upstream and --grpc-upstream) and
    create the demo users that do not exist yet, as `wardgate up` does."""
    moves = {
        DEMO_UPSTREAM_PORT: _host_port(upstream, "--upstream"),
        DEMO_GRPC_PORT: _host_port(grpc_upstream, "--grpc-upstream"),
    }
    settings = settings_of(ctx)
    try:
        asyncio.run(_seed(settings.redis_url, Path(examples), moves))
    except StoreError as exc:
        raise CliError(str(exc)) from None
    click.echo(f"demo documents applied; demo users: {', '.join(DEMO_USERS)}")


def _host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"{flag}: {value!r} is not HOST:PORT")
    return host, int(port)


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
    # Imported here: the service (grpc servers, every servicer) is not what the other
    # commands need, and importing it costs each CLI run ~0.4 s.
    from wardgate.workers import run_workers

    run_workers(settings)
