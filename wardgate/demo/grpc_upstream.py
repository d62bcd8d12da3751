"""A demo gRPC upstream: ``wardgate.demo.v1.Greeter`` plus gRPC health. Its methods cover
what REST/JSON transcoding does (protos/wardgate/demo/v1/greeter.proto): a path template and
a query parameter, a whole-message and a one-field body, a one-field response body, server
streaming, errors on demand, and a method without a REST binding.

``python -m wardgate.demo.grpc_upstream --port 8082`` serves it;
``python -m wardgate.demo.grpc_upstream --call 127.0.0.1:10000 --name you`` calls it
(through the gateway at that address).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import grpc
from google.api import httpbody_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from wardgate._proto.wardgate.demo.v1 import greeter_pb2, greeter_pb2_grpc


class Greeter(greeter_pb2_grpc.GreeterServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self._notes: dict[str, greeter_pb2.NoteReply] = {}

    async def SayHello(
        self, request: greeter_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> greeter_pb2.HelloReply:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        greeting = request.greeting or "hello"
        return greeter_pb2.HelloReply(
            message=f"{greeting}, {request.name or 'world'}", metadata=metadata
        )

    async def SayHellos(
        self, request: greeter_pb2.HellosRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[greeter_pb2.HelloReply]:
        for i in range(max(0, min(request.count or 3, 100))):
            yield greeter_pb2.HelloReply(message=f"hello #{i + 1}, {request.name or 'world'}")
            if request.name == "fail-midway":  # a stream that breaks after its first message
                await context.abort(grpc.StatusCode.INTERNAL, "failing midway as asked")

    async def PutNote(
        self, request: greeter_pb2.PutNoteRequest, context: grpc.aio.ServicerContext
    ) -> greeter_pb2.NoteReply:
        if not request.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a note needs an id")
        author = dict(context.invocation_metadata()).get("x-user-id", "")
        reply = greeter_pb2.NoteReply(id=request.id, note=request.note, author=str(author))
        self._notes[request.id] = reply
        return reply

    async def GetNote(
        self, request: greeter_pb2.GetNoteRequest, context: grpc.aio.ServicerContext
    ) -> greeter_pb2.NoteReply:
        reply = self._notes.get(request.id)
        if reply is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no note {request.id!r}")
            raise AssertionError("unreachable")  # abort raises
        return reply

    async def GetNoteText(
        self, request: greeter_pb2.GetNoteRequest, context: grpc.aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        reply = await self.GetNote(request, context)
        return httpbody_pb2.HttpBody(
            content_type="text/plain; charset=utf-8", data=reply.note.text.encode()
        )

    async def Fail(
        self, request: greeter_pb2.FailRequest, context: grpc.aio.ServicerContext
    ) -> greeter_pb2.HelloReply:
        code = getattr(grpc.StatusCode, request.code.upper(), grpc.StatusCode.UNKNOWN)
        if code == grpc.StatusCode.OK:
            return greeter_pb2.HelloReply(message="no failure")
        await context.abort(code, f"failing with {code.name} as asked")
        raise AssertionError("unreachable")  # abort raises

    async def Ping(
        self, request: greeter_pb2.PingRequest, context: grpc.aio.ServicerContext
    ) -> greeter_pb2.PingReply:
        return greeter_pb2.PingReply(payload=request.payload)


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    greeter_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


async def call(target: str, name: str) -> greeter_pb2.HelloReply:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        reply: greeter_pb2.HelloReply = await stub.SayHello(
            greeter_pb2.HelloRequest(name=name), timeout=5
        )
        return reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--call", metavar="HOST:PORT", help="Call SayHello there and print it.")
    parser.add_argument("--name", default="world")
    args = parser.parse_args()
    if args.call:
        print(asyncio.run(call(args.call, args.name)))
        return
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
