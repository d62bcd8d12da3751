"""OpenTelemetry tracing: with ``WARDGATE_OTLP_ENDPOINT`` set, wardgate's spans go to that
OTLP/gRPC receiver, joined to Envoy's traces.

- ``setup_tracing``: the process's tracer provider; spans are batched and exported off the
  event loop (the SDK's ``BatchSpanProcessor`` thread) by ``OtlpExporter``.
- ``TracingInterceptor``: a span for each ``Check``, ``ShouldRateLimit`` and ext_proc
  ``Process`` call, the child of the span whose context Envoy put in the call's
  ``traceparent`` metadata, so it carries Envoy's trace id.
- ``xds_push_span``: a span per xDS response sent (a trace of its own).

The exporter speaks OTLP's ``TraceService/Export`` with the message classes that
``xds-protos`` already ships (``opentelemetry.proto``), through grpcio: no second copy of
those generated modules (DECISIONS 33). Without an endpoint nothing is installed, and the
API's no-op tracer makes ``xds_push_span`` cost next to nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("wardgate.tracing")
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# The calls that get a span, by gRPC method, with the span's name.
TRACED = {
    "/envoy.service.auth.v3.Authorization/Check": "wardgate.authz.Check",
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit": (
        "wardgate.ratelimit.ShouldRateLimit"
    ),
    "/envoy.service.ext_proc.v3.ExternalProcessor/Process": "wardgate.ext_proc.Process",
}
_PROPAGATOR = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("wardgate")


def _value(v: Any) -> common_pb2.AnyValue:
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, int):
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    return common_pb2.AnyValue(string_value=str(v))


def _attributes(attrs: Any) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=_value(v)) for k, v in (attrs or {}).items()]


def otlp_request(spans: Sequence[ReadableSpan]) -> trace_service_pb2.ExportTraceServiceRequest:
    """The OTLP message for ``spans`` (one resource: this process)."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    by_resource: dict[int, trace_pb2.ResourceSpans] = {}
    for span in spans:
        ctx = span.context
        if ctx is None:
            continue
        resource = span.resource
        rs = by_resource.get(id(resource))
        if rs is None:
            rs = request.resource_spans.add(
                resource=resource_pb2.Resource(attributes=_attributes(resource.attributes))
            )
            # xds-protos ships an older OTLP: instrumentation_library_spans (field 2) and
            # InstrumentationLibrary are on the wire what scope_spans and InstrumentationScope
            # are in today's OTLP, which every receiver reads.
            rs.instrumentation_library_spans.add(
                instrumentation_library=common_pb2.InstrumentationLibrary(name="wardgate")
            )
            by_resource[id(resource)] = rs
        out = rs.instrumentation_library_spans[0].spans.add(
            trace_id=ctx.trace_id.to_bytes(16, "big"),
            span_id=ctx.span_id.to_bytes(8, "big"),
            name=span.name,
            kind=span.kind.value + 1,  # the SDK counts from INTERNAL = 0, OTLP from 1
            start_time_unix_nano=span.start_time or 0,
            end_time_unix_nano=span.end_time or 0,
            attributes=_attributes(span.attributes),
        )
        if span.parent is not None:
            out.parent_span_id = span.parent.span_id.to_bytes(8, "big")
        out.status.code = span.status.status_code.value
        if span.status.description:
            out.status.message = span.status.description
    return request


class OtlpExporter(SpanExporter):
    """Spans to an OTLP/gRPC receiver, from the batch processor's thread."""

    def __init__(self, endpoint: str, *, on_export: Callable[[str], None]) -> None:
        self._channel = grpc.insecure_channel(endpoint)
        self._export = self._channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
        self._on_export = on_export

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self._export(otlp_request(spans), timeout=5.0)
        except grpc.RpcError as exc:
            self._on_export("error")
            log.warning("tracing: export of %d spans failed: %s", len(spans), exc.code())
            return SpanExportResult.FAILURE
        self._on_export("ok")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._channel.close()


def setup_tracing(
    endpoint: str, *, service_name: str, on_export: Callable[[str], None]
) -> TracerProvider:
    """This process's tracer provider, exporting to ``endpoint``; shut it down on exit."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(
        BatchSpanProcessor(OtlpExporter(endpoint, on_export=on_export), schedule_delay_millis=1000)
    )
    trace.set_tracer_provider(provider)
    global _tracer
    _tracer = provider.get_tracer("wardgate")
    return provider


def xds_push_span(type_name: str, node: str, version: str, started_ns: int) -> None:
    """A span for one xDS response, from ``started_ns`` (``time.time_ns()``) to now."""
    span = _tracer.start_span(
        f"wardgate.xds.push {type_name}",
        start_time=started_ns,
        attributes={"xds.type": type_name, "xds.node": node, "xds.version": version},
    )
    span.end()


def _annotate(span: trace.Span, request: Any, response: Any) -> None:
    """What a span says about its call: the request id and route of a Check, decisions."""
    try:
        if hasattr(request, "attributes"):  # CheckRequest
            http = request.attributes.request.http
            span.set_attribute("http.request.method", http.method)
            span.set_attribute("wardgate.request_id", http.headers.get("x-request-id", http.id))
            route = request.attributes.context_extensions.get("route")
            if route:
                span.set_attribute("wardgate.route", route)
            if response is not None:
                denied = response.HasField("denied_response")
                span.set_attribute("wardgate.decision", "deny" if denied else "allow")
                if denied:
                    status = response.denied_response.status.code
                    span.set_attribute("http.response.status_code", status)
        elif hasattr(response, "overall_code"):  # RateLimitResponse
            span.set_attribute(
                "wardgate.decision", "over_limit" if response.overall_code == 2 else "ok"
            )
    except (AttributeError, ValueError, TypeError):  # a message of another shape: no details
        pass


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        name = TRACED.get(details.method)
        if handler is None or name is None:
            return handler
        carrier = {k: v for k, v in details.invocation_metadata or () if isinstance(v, str)}
        parent = _PROPAGATOR.extract(carrier=carrier, context=otel_context.Context())
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with _tracer.start_as_current_span(
                    name, context=parent, kind=trace.SpanKind.SERVER
                ) as span:
                    response = await inner(request, context)
                    _annotate(span, request, response)
                    return response

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            inner_stream = handler.stream_stream

            async def streaming(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                # Not made current: a generator resumes in whatever context its caller has.
                span = _tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER)
                try:
                    async for response in inner_stream(requests, context):
                        yield response
                finally:
                    span.end()

            return grpc.stream_stream_rpc_method_handler(
                streaming,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
