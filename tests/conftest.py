from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Stack, new_stack, service
from wardgate import devstack

_prefixes = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=os.environ.get("WARDGATE_TEST_REDIS_URL"),
        help="Use this Redis instead of starting a private redis-server.",
    )


@pytest.fixture(scope="session")
def redis_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    given = request.config.getoption("--redis-url")
    if given:
        yield given
        return
    port = devstack.free_port()
    proc = devstack.start_redis(port, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        devstack.stop(proc)


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own per test, so tests sharing a Redis never see each other."""
    return f"wgtest{os.getpid()}-{next(_prefixes)}:"


def _start_stack(
    workdir: Path, redis_url: str, prefix: str, extra_env: dict[str, str] | None = None
) -> Stack:
    stack = new_stack(workdir, redis_url, prefix)
    try:
        stack.procs["upstream"] = devstack.start_upstream(
            stack.upstream_port, "echo", workdir / "upstream.log"
        )
        stack.start_wardgate(extra_env=extra_env)
        stack.start_envoy()
        stack.apply(service("echo", stack.upstream_port))
    except BaseException:
        stack.stop_all()
        raise
    return stack


@pytest.fixture(scope="session")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One Envoy + wardgate + demo upstream shared by the end-to-end tests (prefix of its own)."""
    s = _start_stack(tmp_path_factory.mktemp("stack"), redis_url, f"wge2e{os.getpid()}:")
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack with a redis-server of its own, for tests that stop or break parts of it."""
    port = devstack.free_port()
    redis_proc = devstack.start_redis(port, tmp_path / "redis")
    try:
        s = _start_stack(tmp_path, f"redis://127.0.0.1:{port}/0", "wardgate:")
        s.procs = {"redis-server": redis_proc, **s.procs}
    except BaseException:
        devstack.stop(redis_proc)
        raise
    try:
        yield s
    finally:
        s.stop_all()
