"""Test helpers: a real redis-server, a real wardgate, a real Envoy, on free ports."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from wardgate import devstack

REGISTRY_TOKEN = "test-registry-token"


@dataclasses.dataclass
class Stack:
    workdir: Path
    redis_url: str
    prefix: str
    grpc_port: int
    http_port: int
    listen_port: int
    admin_port: int
    upstream_port: int
    procs: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis_url,
            "WARDGATE_KEY_PREFIX": self.prefix,
            "WARDGATE_GRPC_PORT": str(self.grpc_port),
            "WARDGATE_HTTP_PORT": str(self.http_port),
            "WARDGATE_LISTEN_PORT": str(self.listen_port),
            "WARDGATE_ENVOY_ADMIN_PORT": str(self.admin_port),
            "WARDGATE_RESYNC_INTERVAL": "2s",
            # Generous deadlines: these tests check decisions, not how a loaded 2-core CI
            # machine meets the production ones (tests/e2e/test_failure_modes.py does that).
            "WARDGATE_RATELIMIT_TIMEOUT": "2s",
            "WARDGATE_RATELIMIT_REDIS_TIMEOUT": "1s",
            "WARDGATE_EXTPROC_TIMEOUT": "2s",
            "WARDGATE_LOG_LEVEL": "INFO",
            "WARDGATE_REGISTRY_TOKEN": REGISTRY_TOKEN,
            # Every test client is 127.0.0.1: an automatic ban would end every later test.
            # tests/e2e/test_bans.py turns bans on where it tests them.
            "WARDGATE_BAN_AFTER": "0",
            # Usage figures reach Redis (and the rate-limited clients /metrics) within a second.
            "WARDGATE_USAGE_FLUSH_INTERVAL": "1s",
        }

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=5.0, **kwargs)

    def cli(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wardgate", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.env, **(env or {})},
        )

    def apply(self, *docs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        path = self.workdir / f"apply-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump_all(list(docs)))
        result = self.cli("apply", "-f", str(path))
        assert result.returncode == 0, result.stderr
        return result

    def admin(self, path: str) -> str:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5).text

    def start_wardgate(self, *args: str, extra_env: dict[str, str] | None = None) -> None:
        self.procs["wardgate"] = devstack.start_wardgate(
            env={**self.env, **(extra_env or {})},
            http_port=self.http_port,
            log=self.workdir / "wardgate.log",
            args=args,
        )

    def start_envoy(self, node_id: str = "envoy-test", **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = devstack.start_envoy(
            workdir=self.workdir,
            node_id=node_id,
            listen_port=self.listen_port,
            admin_port=self.admin_port,
            wardgate_port=self.grpc_port,
            **kwargs,
        )
        self.procs[node_id] = proc
        return proc

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            devstack.stop(self.procs.pop(name))


def new_stack(workdir: Path, redis_url: str, prefix: str) -> Stack:
    return Stack(
        workdir=workdir,
        redis_url=redis_url,
        prefix=prefix,
        grpc_port=devstack.free_port(),
        http_port=devstack.free_port(),
        listen_port=devstack.free_port(),
        admin_port=devstack.free_port(),
        upstream_port=devstack.free_port(),
    )


def eventually(check: Callable[[], Any], *, timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Call ``check`` until it returns a truthy value (returned) or raises no AssertionError."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, httpx.HTTPError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {last}")
        time.sleep(interval)


def service(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "Service",
        "name": name,
        "endpoints": [{"address": "127.0.0.1", "port": port}],
        **extra,
    }


def route(name: str, prefix: str, backend: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "Route", "name": name, "match": {"prefix": prefix}, "backend": backend, **extra}


def echo(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


_ = json


def with_redis(redis_url: str, body: Callable[[Any], Any]) -> Any:
    """Run ``await body(client)`` with an asyncio wardgate Redis client, closed afterwards."""
    import asyncio

    from wardgate.store.redis_client import connect

    async def main() -> Any:
        r = connect(redis_url, timeout=2.0)
        try:
            return await body(r)
        finally:
            await r.aclose()

    return asyncio.run(main())
