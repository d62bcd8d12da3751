"""``AccessLogService/StreamAccessLogs``: Envoy's access-log entries in, ``records.Request``
out to the sink, one message (a batch of entries Envoy buffered) at a time.

Envoy opens a stream per worker thread and sends a message every ``buffer_flush_interval`` or
``buffer_size_bytes``, off the request path (``xds/access_log.py``); wardgate answers only
when the stream ends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import struct_pb2

from wardgate.metrics import StatsMetrics
from wardgate.stats.records import Request
from wardgate.xds.native_auth import (
    EXT_AUTHZ_NS,
    GATE_RESULT,
    IDENTITY_NS,
    JWT_NS,
    RBAC_NS,
    REVOKED_ACTION,
    TICKET_PAYLOAD,
)

log = logging.getLogger("wardgate.access_log")
AUTHZ_METADATA = EXT_AUTHZ_NS  # where ext_authz's dynamic metadata lands
Metadata = Mapping[str, struct_pb2.Struct]  # dynamic metadata by namespace
_METHODS = {
    v.number: v.name for v in base_pb2.RequestMethod.DESCRIPTOR.values if v.number
}  # 0 (unspecified) is OTHER
# Envoy's details of its refusal of a revoked ticket (xds/native_auth.py local_replies).
REVOKED_DETAILS = f"rbac_access_denied_matched_policy[{REVOKED_ACTION}]"


def _string(meta: Metadata, namespace: str, key: str) -> str:
    if namespace not in meta:
        return ""
    fields = meta[namespace].fields
    return fields[key].string_value if key in fields else ""


def identity_of(meta: Metadata) -> tuple[str, str]:
    """(user, API key name) of a request, from what the filters that decided it wrote to its
    dynamic metadata (never from a header), in this order:

    1. ext_authz, when it ran and allowed: the user, or the API key's name (and the key);
    2. when Envoy decided alone (the gate of ``xds/native_auth.py`` allowed, so ext_authz was
       skipped): the Issuer JWT's user as the identity script accepted it, else the verified
       ticket's ``sub`` (jwt_authn's payload);
    3. nobody: ext_authz refused, or the route is public (the client is its address).

    A verified ticket that did not decide (beside another credential, on a write: ext_authz
    ran) names nobody: what ext_authz said stands. (A revoked ticket's refusal names nobody
    either: ``request_of`` reads that from the response's details.)"""
    user = _string(meta, AUTHZ_METADATA, "user")
    if user:
        return user, _string(meta, AUTHZ_METADATA, "api_key")
    if _string(meta, RBAC_NS, GATE_RESULT) != "allowed":
        return "", ""
    user = _string(meta, IDENTITY_NS, "user")
    if user:
        return user, ""
    payload = meta[JWT_NS].fields.get(TICKET_PAYLOAD) if JWT_NS in meta else None
    if payload is not None and payload.HasField("struct_value"):
        sub = payload.struct_value.fields.get("sub")
        if sub is not None:
            return sub.string_value, ""
    return "", ""


def request_of(entry: accesslog_pb2.HTTPAccessLogEntry) -> Request:
    common = entry.common_properties
    req = entry.request
    resp = entry.response
    user = api_key = ""
    if common.HasField("metadata"):  # the common case (a public route) skips the lookups
        user, api_key = identity_of(common.metadata.filter_metadata)
        if resp.response_code_details == REVOKED_DETAILS:
            # A revoked ticket still passed the gate (its payload and verdict are there), but
            # it speaks for nobody any more: its 401 counts as ext_authz's refusals do.
            user = api_key = ""
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
