"""A no-op ext_authz server: ``Check`` answers OK to everything, touching nothing.

The floor for any Python ``grpc.aio`` ext_authz service: what Envoy's callout, gRPC's
framing, the request's protobuf decoding and one asyncio event loop cost on their own.
Run as one process: ``python bench/noop_authz.py --port 18500``. It uses uvloop when
installed, as ``wardgate serve`` does, and the same gRPC server options, so that the
comparison with wardgate is like for like.
"""

from __future__ import annotations

import _noop  # bench/_noop.py, beside this file
import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2

_OK = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=code_pb2.OK),
    ok_response=external_auth_pb2.OkHttpResponse(),
)


class NoopAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        return _OK


def main() -> None:
    _noop.run(
        "noop_authz",
        __doc__,
        lambda server: external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            NoopAuthorization(), server
        ),
    )


if __name__ == "__main__":
    main()
