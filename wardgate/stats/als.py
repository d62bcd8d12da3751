"""``AccessLogService/StreamAccessLogs``: Envoy's access-log entries in, ``records.Request``
out to the sink, one message (a batch of entries Envoy buffered) at a time.

Envoy opens a stream per worker thread and sends a message every ``buffer_flush_interval`` or
``buffer_size_bytes``, off the request path (``xds/access_log.py``); wardgate answers only
when the stream ends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from wardgate.metrics import StatsMetrics
from wardgate.stats.records import Request

log = logging.getLogger("wardgate.access_log")
AUTHZ_METADATA = "envoy.filters.http.ext_authz"  # where ext_authz's dynamic metadata lands
_METHODS = {
    v.number: v.name for v in base_pb2.RequestMethod.DESCRIPTOR.values if v.number
}  # 0 (unspecified) is OTHER


def request_of(entry: accesslog_pb2.HTTPAccessLogEntry) -> Request:
    common = entry.common_properties
    req = entry.request
    resp = entry.response
    user = api_key = ""
    if common.HasField("metadata"):  # the common case (a public route) skips the lookups
        meta = common.metadata.filter_metadata
        if AUTHZ_METADATA in meta:
            fields = meta[AUTHZ_METADATA].fields
            if "user" in fields:
                user = fields["user"].string_value
            if "api_key" in fields:
                api_key = fields["api_key"].string_value
    flags: tuple[str, ...] = ()
    if common.HasField("response_flags"):
        flags = tuple(f.name for f, _v in common.response_flags.ListFields())
    d = common.duration if common.HasField("duration") else common.time_to_last_downstream_tx_byte
    start = common.start_time
    return Request(
        common.route_name,
        _METHODS.get(req.request_method, "OTHER"),
        resp.response_code.value,
        req.request_headers_bytes + req.request_body_bytes,
        resp.response_headers_bytes + resp.response_body_bytes,
        d.seconds + d.nanos / 1e9,
        start.seconds + start.nanos / 1e9,
        user,
        api_key,
        common.downstream_remote_address.socket_address.address,
        "rate_limited" in flags,
        req.request_id,
        resp.response_code_details,
        flags,
    )


class AccessLogService(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    def __init__(
        self, *, observe: Callable[[Sequence[Request]], None], metrics: StatsMetrics
    ) -> None:
        self._observe = observe
        self._metrics = metrics

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        streams = self._metrics.access_log_streams
        streams.inc()
        node = ""
        try:
            async for message in request_iterator:
                if message.HasField("identifier"):
                    node = message.identifier.node.id
                    log.info("envoy %s streams its access log", node or "?")
                entries = message.http_logs.log_entry
                if entries:
                    self._observe([request_of(e) for e in entries])
        finally:
            streams.dec()
        return als_pb2.StreamAccessLogsResponse()
