"""A no-op rate-limit server: ``ShouldRateLimit`` answers OK to everything, touching nothing.

The floor for any Python ``grpc.aio`` rate-limit service: what Envoy's callout, gRPC's
framing, the request's protobuf decoding and one asyncio event loop cost on their own. It
answers one OK status per descriptor (with a limit, as wardgate does, so that Envoy has the
same response to read). Run as one process: ``python bench/noop_rls.py --port 18501``. It
uses uvloop when installed, as ``wardgate serve`` does, and the same gRPC server options, so
that the comparison with wardgate is like for like.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2

_OK = rls_pb2.RateLimitResponse.Code.OK
_STATUS = rls_pb2.RateLimitResponse.DescriptorStatus(
    code=_OK,
    current_limit=rls_pb2.RateLimitResponse.RateLimit(
        requests_per_unit=1_000_000_000, unit=rls_pb2.RateLimitResponse.RateLimit.Unit.MINUTE
    ),
    limit_remaining=999_999_999,
    duration_until_reset=duration_pb2.Duration(seconds=60),
)


class NoopRateLimit(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        response = rls_pb2.RateLimitResponse(overall_code=_OK)
        for _ in request.descriptors:
            response.statuses.append(_STATUS)
        return response


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_concurrent_streams", 1000),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ]
    )
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(NoopRateLimit(), server)
    address = f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"noop_rls: cannot listen on {address}")
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
