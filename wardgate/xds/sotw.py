"""ADS, state of the world: one stream per Envoy, answered from the snapshot cache.

Protocol rules followed (Envoy's xds_protocol): a request whose nonce is not the last one we
sent on this stream is stale and ignored; a request with ``error_detail`` is a NACK and the
rejected version is never re-sent (we wait for a new version); we answer a type only when
the client has a request outstanding for it and the content or the names asked for changed;
LDS and CDS responses carry the full set; types are pushed CDS, EDS, LDS, RDS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from wardgate.metrics import Metrics, type_label
from wardgate.xds.nodes import NodeRegistry, NodeState
from wardgate.xds.snapshot import PUSH_ORDER, WILDCARD_TYPES, NodeGroup, SnapshotCache

log = logging.getLogger("wardgate.xds")
_stream_ids = itertools.count(1)


def node_group(node: discovery_pb2.DiscoveryRequest, default_port: int) -> NodeGroup:
    fields = node.node.metadata.fields
    port = default_port
    address = "0.0.0.0"
    if "listen_port" in fields:
        value = fields["listen_port"]
        port = int(value.number_value or value.string_value or default_port)
    if "listen_address" in fields and fields["listen_address"].string_value:
        address = fields["listen_address"].string_value
    return NodeGroup(address, port)


@dataclasses.dataclass
class _Watch:
    names: set[str] | None = None  # None: wildcard
    waiting: bool = False  # a request is outstanding
    sent_version: str | None = None
    sent_nonce: str = ""
    sent_names: frozenset[str] | None = None


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        cache: SnapshotCache,
        nodes: NodeRegistry,
        metrics: Metrics,
        default_listen_port: int,
        delta: object | None = None,
    ) -> None:
        self._cache = cache
        self._nodes = nodes
        self._metrics = metrics
        self._default_port = default_listen_port
        self._delta = delta

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream_id = next(_stream_ids)
        requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for req in request_iterator:
                    await requests.put(req)
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass
            finally:
                await requests.put(None)

        reader = asyncio.create_task(read())
        watches: dict[str, _Watch] = {}
        nonces = itertools.count(1)
        state: NodeState | None = None
        group: NodeGroup | None = None
        gauge = self._metrics.xds_connected.labels("sotw")
        try:
            while True:
                # Apply every request that has arrived.
                generation = self._cache.generation
                get = requests.get_nowait if not requests.empty() else None
                if get is None:
                    waiter = asyncio.create_task(requests.get())
                    changed = asyncio.create_task(self._cache.wait_changed(generation))
                    done, _ = await asyncio.wait(
                        {waiter, changed}, return_when=asyncio.FIRST_COMPLETED
                    )
                    changed.cancel()
                    if waiter in done:
                        batch = [waiter.result()]
                    else:
                        waiter.cancel()
                        batch = []
                else:
                    batch = [get()]
                while not requests.empty():
                    batch.append(requests.get_nowait())
                for req in batch:
                    if req is None:
                        return
                    if state is None:
                        group = node_group(req, self._default_port)
                        state = NodeState(
                            node_id=req.node.id or f"stream-{stream_id}",
                            cluster=req.node.cluster,
                            stream=stream_id,
                            mode="sotw",
                        )
                        self._nodes.connect(state)
                        gauge.inc()
                        log.info(
                            "envoy %s connected (stream %d, %s)", state.node_id, stream_id, group
                        )
                    self._on_request(req, watches, state)
                if group is None:
                    continue
                snapshot = self._cache.snapshot_for(group)
                if snapshot is None:
                    continue  # nothing built yet: requests stay outstanding
                for type_url in PUSH_ORDER:
                    watch = watches.get(type_url)
                    if watch is None or not watch.waiting:
                        continue
                    res = snapshot.get(type_url)
                    names = frozenset(watch.names) if watch.names is not None else None
                    if watch.sent_version == res.version and watch.sent_names == names:
                        continue
                    if names is None:
                        items = list(res.items.values())
                    else:
                        items = [res.items[n] for n in sorted(names) if n in res.items]
                    nonce = str(next(nonces))
                    watch.waiting = False
                    watch.sent_version = res.version
                    watch.sent_nonce = nonce
                    watch.sent_names = names
                    assert state is not None
                    state.type(type_url).sent_version = res.version
                    self._nodes.touch()
                    self._metrics.xds_pushes.labels(type_label(type_url)).inc()
                    yield discovery_pb2.DiscoveryResponse(
                        version_info=res.version, resources=items, type_url=type_url, nonce=nonce
                    )
        finally:
            reader.cancel()
            if state is not None:
                gauge.dec()
                self._nodes.disconnect(stream_id)
                log.info("envoy %s disconnected (stream %d)", state.node_id, stream_id)

    def _on_request(
        self, req: discovery_pb2.DiscoveryRequest, watches: dict[str, _Watch], state: NodeState
    ) -> None:
        type_url = req.type_url
        watch = watches.setdefault(type_url, _Watch())
        if req.response_nonce and req.response_nonce != watch.sent_nonce:
            return  # stale: a newer response is on its way
        ts = state.type(type_url)
        label = type_label(type_url)
        if req.HasField("error_detail"):
            ts.nacked_version = watch.sent_version or ""
            ts.nack_error = req.error_detail.message[:2000]
            ts.nack_time = time.time()
            self._metrics.xds_nacks.labels(label).inc()
            log.warning(
                "envoy %s NACKed %s version %s: %s",
                state.node_id,
                label,
                watch.sent_version,
                req.error_detail.message[:500],
            )
        elif req.response_nonce:
            ts.acked_version = req.version_info
            self._metrics.xds_acks.labels(label).inc()
        self._nodes.touch()
        names = list(req.resource_names)
        if "*" in names or (not names and type_url in WILDCARD_TYPES and watch.names is None):
            watch.names = None
        else:
            watch.names = set(names)
        watch.waiting = True
