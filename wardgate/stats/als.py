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
    meta = common.metadata.filter_metadata
    if AUTHZ_METADATA in meta:
        fields = meta[AUTHZ_METADATA].fields
        if "user" in fields:
            user = fields["user"].string_value
        if "api_key" in fields:
            api_key = fields["api_key"].string_value
    flags = tuple(f.name for f, _v in common.response_flags.ListFields())
    if common.HasField("duration"):
        duration = common.duration.seconds + common.duration.nanos / 1e9
    else:
        last = common.time_to_last_downstream_tx_byte
        duration = last.seconds + last.nanos / 1e9
    start = common.start_time.seconds + common.start_time.nanos / 1e9
    return Request(
        route=common.route_name,
        method=_METHODS.get(req.request_method, "OTHER"),
        status=resp.response_code.value,
        bytes_in=req.request_headers_bytes + req.request_body_bytes,
        bytes_out=resp.response_headers_bytes + resp.response_body_bytes,
        duration=duration,
        start=start,
        user=user,
        api_key=api_key,
        address=common.downstream_remote_address.socket_address.address,
        rate_limited="rate_limited" in flags,
        request_id=req.request_id,
        details=resp.response_code_details,
        flags=flags,
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
