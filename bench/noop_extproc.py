"""A no-op ext_proc server: every message Envoy sends is answered "continue, unchanged".

The floor for any Python ``grpc.aio`` external processor: one bidirectional stream per
request, gRPC's framing, protobuf decoding and one asyncio event loop, nothing else. Run as
one process: ``python bench/noop_extproc.py --port 18600``. It uses uvloop when installed and
the same gRPC server options as ``wardgate serve``, so that the comparison is like for like.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import _noop  # bench/_noop.py, beside this file
import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

_ANSWERS = {
    "request_headers": ep.ProcessingResponse(request_headers=ep.HeadersResponse()),
    "response_headers": ep.ProcessingResponse(response_headers=ep.HeadersResponse()),
    "request_body": ep.ProcessingResponse(request_body=ep.BodyResponse()),
    "response_body": ep.ProcessingResponse(response_body=ep.BodyResponse()),
}


class NoopProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(
        self,
        request_iterator: AsyncIterator[ep.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ep.ProcessingResponse]:
        async for request in request_iterator:
            yield _ANSWERS.get(request.WhichOneof("request") or "", ep.ProcessingResponse())


def main() -> None:
    _noop.run(
        "noop_extproc",
        __doc__,
        lambda server: ep_grpc.add_ExternalProcessorServicer_to_server(NoopProcessor(), server),
    )


if __name__ == "__main__":
    main()
