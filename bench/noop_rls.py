"""A no-op rate-limit server: ``ShouldRateLimit`` answers OK to everything, touching nothing.

The floor for any Python ``grpc.aio`` rate-limit service: what Envoy's callout, gRPC's
framing, the request's protobuf decoding and one asyncio event loop cost on their own. It
answers one OK status per descriptor (with a limit, as wardgate does, so that Envoy has the
same response to read). Run as one process: ``python bench/noop_rls.py --port 18501``. It
uses uvloop when installed, as ``wardgate serve`` does, and the same gRPC server options, so
that the comparison with wardgate is like for like.
"""

from __future__ import annotations

import _noop  # bench/_noop.py, beside this file
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


def main() -> None:
    _noop.run(
        "noop_rls",
        __doc__,
        lambda server: rls_pb2_grpc.add_RateLimitServiceServicer_to_server(NoopRateLimit(), server),
    )


if __name__ == "__main__":
    main()
