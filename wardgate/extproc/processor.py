"""ext_proc ``Process``: one gRPC stream per request, one answer per message Envoy sends.

Protobuf in, ``domain/exchange.py`` out, protobuf back. The route's policy arrives in the
stream's initial metadata (``x-wardgate-extproc``, per route), the address of the asking
Envoy's compose listener in ``x-wardgate-compose`` (per listener; ``peer:<port>``: at the
address the Envoy connects from). A phase that may outlast
Envoy's per-message deadline (a composition, a cache miss waiting for another request's
answer) first extends it (``override_message_timeout``), and only when it has not finished
within a fraction of that deadline. An error in here ends the stream with a gRPC error, and
Envoy applies the route's failure mode (docs/TRANSFORMS.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2, struct_pb2, wrappers_pb2

from wardgate.domain.compose import Composer
from wardgate.domain.exchange import Action, Continue, Exchange, Respond, Slow
from wardgate.domain.extproc_policy import Policy, PolicyError, decode_policy
from wardgate.domain.response_cache import ResponseCache
from wardgate.metrics import Metrics

log = logging.getLogger("wardgate.extproc")
POLICY_HEADER = "x-wardgate-extproc"
COMPOSE_HEADER = "x-wardgate-compose"
PEER = "peer"  # x-wardgate-compose: peer:<port> (xds/extproc.py ComposeAddress)
OWN_NAMESPACE = "wardgate.extproc"  # dynamic metadata: the local reply keeps our JSON body
AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
OVERWRITE = base_pb2.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
_TRUE = wrappers_pb2.BoolValue(value=True)
_MODE = processing_mode_pb2.ProcessingMode
_OWN_BODY = struct_pb2.Struct()
_OWN_BODY.update({OWN_NAMESPACE: {"own_body": True}})


def _headers(header_map: Any) -> list[tuple[str, str]]:
    return [
        (h.key, h.raw_value.decode("latin-1") if h.raw_value else h.value)
        for h in header_map.headers
    ]


def _mutation(sets: tuple[tuple[str, str], ...], removes: tuple[str, ...]) -> ep.HeaderMutation:
    """Each name's first value replaces what is there, its further values are added (an
    answer from the cache with two ``link`` headers keeps both). Added with the deprecated
    ``append``: ``APPEND_IF_EXISTS_OR_ADD`` is ``append_action``'s zero, which ext_proc
    cannot tell from unset, and it then overwrites."""
    seen: set[str] = set()
    options = []
    for k, v in sets:
        name = k.lower()
        header = base_pb2.HeaderValue(key=k, raw_value=v.encode("latin-1"))
        if name in seen:
            options.append(base_pb2.HeaderValueOption(header=header, append=_TRUE))
        else:
            options.append(base_pb2.HeaderValueOption(header=header, append_action=OVERWRITE))
        seen.add(name)
    return ep.HeaderMutation(set_headers=options, remove_headers=list(removes))


def _common(action: Continue) -> ep.CommonResponse:
    common = ep.CommonResponse()
    if action.headers.set or action.headers.remove:
        common.header_mutation.CopyFrom(_mutation(action.headers.set, action.headers.remove))
    if action.body is not None:
        common.body_mutation.body = action.body
    return common


def _mode(response_phases: tuple[bool, bool]) -> processing_mode_pb2.ProcessingMode:
    headers, body = response_phases
    return _MODE(
        request_header_mode=_MODE.SEND,
        response_header_mode=_MODE.SEND if headers else _MODE.SKIP,
        request_body_mode=_MODE.NONE,
        response_body_mode=_MODE.BUFFERED_PARTIAL if body else _MODE.NONE,
        request_trailer_mode=_MODE.SKIP,
        response_trailer_mode=_MODE.SKIP,
    )


def immediate(answer: Respond) -> ep.ProcessingResponse:
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=answer.status),
            headers=_mutation(answer.headers, ()),
            body=answer.body,
        ),
        dynamic_metadata=_OWN_BODY,
    )


def _answer(kind: str, action: Action) -> ep.ProcessingResponse:
    if isinstance(action, Respond):
        return immediate(action)
    response = ep.ProcessingResponse()
    if kind == "request_headers":
        response.request_headers.response.CopyFrom(_common(action))
    elif kind == "response_headers":
        response.response_headers.response.CopyFrom(_common(action))
    else:
        response.response_body.response.CopyFrom(_common(action))
    if action.response_phases is not None:
        response.mode_override.CopyFrom(_mode(action.response_phases))
    return response


class ProcessingService(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        cache: ResponseCache | None,
        composer: Composer | None,
        metrics: Metrics,
        max_body: int,
        message_timeout: float,
        max_message_timeout: float,
    ) -> None:
        self._cache = cache
        self._composer = composer
        self._metrics = metrics
        self._max_body = max_body
        self._max_wait = max_message_timeout
        self._policies: dict[str, Policy] = {}
        self._recorder = _MetricsRecorder(metrics)
        self._by_phase: dict[str, tuple[Any, Any]] = {}

    def _policy(self, text: str) -> Policy:
        policy = self._policies.get(text)
        if policy is None:
            policy = decode_policy(text)
            if len(self._policies) >= 10_000:
                self._policies.clear()
            self._policies[text] = policy
        return policy

    async def Process(
        self,
        request_iterator: AsyncIterator[ep.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ep.ProcessingResponse]:
        metadata = dict(context.invocation_metadata() or ())
        try:
            policy = self._policy(str(metadata.get(POLICY_HEADER, "")))
        except PolicyError as exc:
            self._metrics.extproc_errors.labels("bad_policy").inc()
            log.warning("ext_proc: a stream without a usable policy: %s", exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no usable route policy")
            return
        exchange: Exchange | None = None
        try:
            async for request in request_iterator:
                kind = request.WhichOneof("request")
                started = time.perf_counter()
                if exchange is None:
                    exchange = Exchange(
                        policy=policy,
                        cache=self._cache,
                        composer=self._composer,
                        via=compose_via(str(metadata.get(COMPOSE_HEADER, "")), context.peer()),
                        tier=_tier(request),
                        max_body=self._max_body,
                        recorder=self._recorder,
                    )
                if kind == "request_headers":
                    action = await exchange.request_headers(
                        _headers(request.request_headers.headers)
                    )
                    if isinstance(action, Slow):
                        yield self._extend(exchange.slow_budget)
                        action = await action.run()
                elif kind == "response_headers":
                    msg = request.response_headers
                    action = await exchange.response_headers(
                        _headers(msg.headers), msg.end_of_stream
                    )
                elif kind == "response_body":
                    msg = request.response_body
                    action = await exchange.response_body(msg.body, msg.end_of_stream)
                else:  # a phase no route asks for: let it pass
                    yield _passthrough(kind)
                    continue
                counted, timed = self._phase_metrics(kind)
                counted.inc()
                timed.observe(time.perf_counter() - started)
                yield _answer(kind, action)
                if isinstance(action, Respond):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            self._metrics.extproc_errors.labels("internal").inc()
            log.exception("ext_proc: failed on route %s", policy.route)
            raise
        finally:
            if exchange is not None:
                await exchange.close()

    def _phase_metrics(self, kind: str) -> tuple[Any, Any]:
        found = self._by_phase.get(kind)
        if found is None:
            found = self._by_phase[kind] = (
                self._metrics.extproc_messages.labels(kind),
                self._metrics.extproc_seconds.labels(kind),
            )
        return found

    def _extend(self, budget: float) -> ep.ProcessingResponse:
        """A phase that may be slow has not finished within the grace: Envoy's deadline for
        this message becomes what it may take (capped by the listener's
        ``max_message_timeout``)."""
        wait = min(budget + 1.0, self._max_wait)
        seconds = int(wait)
        return ep.ProcessingResponse(
            override_message_timeout=duration_pb2.Duration(
                seconds=seconds, nanos=int((wait - seconds) * 1e9)
            )
        )


def compose_via(via: str, peer: str) -> str:
    """Where this stream's Envoy has its compose listener: ``via`` as its listener
    configuration says, where ``peer:<port>`` (a listener bound to every address) means the
    address the Envoy's gRPC connection comes from (``ipv4:10.1.2.3:5678``, ``ipv6:[..]:5678``,
    as gRPC names it): an Envoy in another container or pod. "" when that is no IP."""
    if not via.startswith(PEER + ":"):
        return via
    kind, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0].removeprefix("[").removesuffix("]")
    if kind not in ("ipv4", "ipv6"):
        return ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 Envoy on a dual-stack wardgate socket
    port = via.removeprefix(PEER + ":")
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _tier(request: ep.ProcessingRequest) -> str:
    fields = request.metadata_context.filter_metadata.get(AUTHZ_NAMESPACE)
    if fields is None:
        return ""
    value = fields.fields.get("tier")
    return value.string_value if value is not None else ""


def _passthrough(kind: str | None) -> ep.ProcessingResponse:
    response = ep.ProcessingResponse()
    if kind == "request_body":
        response.request_body.SetInParent()
    elif kind == "request_trailers":
        response.request_trailers.SetInParent()
    elif kind == "response_trailers":
        response.response_trailers.SetInParent()
    return response


class _MetricsRecorder:
    """The exchange's counts, each labelled counter looked up once (``labels`` costs more
    than the increment)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._children: dict[tuple[str, str, str], Any] = {}

    def count(self, what: str, route: str, value: str) -> None:
        child = self._children.get((what, route, value))
        if child is None:
            if len(self._children) > 100_000:
                self._children.clear()
            child = self._children[(what, route, value)] = self._child(what, route, value)
        child.inc()

    def _child(self, what: str, route: str, value: str) -> Any:
        m = self._m
        if what == "cache":
            return m.cache_requests.labels(route, value)
        if what == "cache_bypass":
            return m.cache_bypass.labels(route, value)
        if what == "cache_store":
            return m.cache_stores.labels(route, value)
        if what == "transform":
            return m.transform_results.labels(route, value)
        if what == "compose":
            return m.compose_answers.labels(route, value)
        name, _, part = route.rpartition("/")
        result = "status_5xx" if value.startswith("status_5") else value
        result = "status_4xx" if value.startswith("status_4") else result
        return m.compose_parts.labels(name, part, result)
