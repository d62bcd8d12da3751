"""The ADS servicer: both variants on one server, chosen by each Envoy's bootstrap
(``api_type: GRPC`` or ``DELTA_GRPC``). It reads only snapshots, through a ``ConfigWatcher``
(``ports.py``): where they come from is the watcher's business."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from wardgate.metrics import Metrics
from wardgate.xds.delta import delta_stream
from wardgate.xds.nodes import NodeRegistry
from wardgate.xds.ports import ConfigWatcher
from wardgate.xds.sotw import sotw_stream
from wardgate.xds.stream import CannotConfirmCurrent


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        configs: ConfigWatcher,
        nodes: NodeRegistry,
        metrics: Metrics,
        default_listen_port: int,
    ) -> None:
        self._kw = {
            "configs": configs,
            "nodes": nodes,
            "metrics": metrics,
            "default_port": default_listen_port,
        }

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        try:
            async for response in sotw_stream(request_iterator, **self._kw):  # type: ignore[arg-type]
                yield response
        except CannotConfirmCurrent as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        try:
            async for response in delta_stream(request_iterator, **self._kw):  # type: ignore[arg-type]
                yield response
        except CannotConfirmCurrent as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
