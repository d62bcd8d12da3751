"""What both no-op servicers share: the same gRPC server options as ``wardgate serve``,
uvloop when installed, and a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

import grpc


async def _serve(
    name: str, host: str, port: int, register: Callable[[grpc.aio.Server], None]
) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_concurrent_streams", 1000),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ]
    )
    register(server)
    address = f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"{name}: cannot listen on {address}")
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(grace=1)


def run(name: str, description: str | None, register: Callable[[grpc.aio.Server], None]) -> None:
    """Parse ``--host``/``--port`` and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(name, args.host, args.port, register))
