"""The state-of-the-world ADS servicer on a real grpc.aio server, driven by a scripted client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format
from google.rpc import status_pb2

from wardgate import devstack
from wardgate.metrics import create_metrics
from wardgate.xds.ads import AggregatedDiscoveryService
from wardgate.xds.listener import build_listener
from wardgate.xds.nodes import NodeRegistry
from wardgate.xds.snapshot import Resources, Snapshot, SnapshotCache
from wardgate.xds.translate import TranslateOptions
from wardgate.xds.typeurls import TYPE_CLUSTER, TYPE_LISTENER, TYPE_ROUTE

pytestmark = pytest.mark.integration


def clusters(*names: str) -> Resources:
    msgs = [
        json_format.ParseDict(
            {"name": n, "type": "STATIC", "connect_timeout": "1s"}, cluster_pb2.Cluster()
        )
        for n in names
    ]
    return Resources.of(msgs, lambda m: m.name)


def routes(name: str, prefix: str) -> Resources:
    msg = json_format.ParseDict(
        {
            "name": name,
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": prefix}, "direct_response": {"status": 200}}],
                }
            ],
        },
        route_pb2.RouteConfiguration(),
    )
    return Resources.of([msg], lambda m: m.name)


class Client:
    def __init__(self, stub: Any) -> None:
        self.queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        self.call = stub.StreamAggregatedResources(self._requests())
        self.responses: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for resp in self.call:
            await self.responses.put(resp)

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await self.queue.get()

    async def send(
        self,
        type_url: str,
        *,
        names: tuple[str, ...] = (),
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            version_info=version,
            response_nonce=nonce,
            node=base_pb2.Node(id="test-node"),
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.queue.put(req)

    async def recv(self, timeout: float = 2.0) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def nothing(self, timeout: float = 0.3) -> bool:
        try:
            await asyncio.wait_for(self.responses.get(), timeout)
        except TimeoutError:
            return True
        return False


async def with_server(test: Any) -> None:
    cache = SnapshotCache(
        listener_factory=lambda g: build_listener(
            g.listen_address, g.listen_port, TranslateOptions()
        )
    )
    nodes = NodeRegistry()
    metrics = create_metrics()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
        AggregatedDiscoveryService(
            configs=cache, nodes=nodes, metrics=metrics, default_listen_port=10000
        ),
        server,
    )
    port = devstack.free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = Client(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel))
            try:
                await test(client, cache, nodes, metrics)
            finally:
                client.call.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await client.reader
    finally:
        await server.stop(None)


def test_push_ack_and_push_only_on_change() -> None:
    async def test(c: Client, cache: SnapshotCache, nodes: NodeRegistry, metrics: Any) -> None:
        await c.send(TYPE_CLUSTER)
        assert await c.nothing()  # no snapshot yet: the request waits
        cache.set_base(Snapshot({TYPE_CLUSTER: clusters("a"), TYPE_ROUTE: routes("rc", "/")}))
        first = await c.recv()
        assert [r.type_url for r in first.resources] == [TYPE_CLUSTER]
        await c.send(TYPE_CLUSTER, version=first.version_info, nonce=first.nonce)
        assert await c.nothing()  # ACK of the current version: nothing to send
        cache.set_base(Snapshot({TYPE_CLUSTER: clusters("a"), TYPE_ROUTE: routes("rc", "/")}))
        assert await c.nothing()  # same content, same version: not pushed again
        cache.set_base(Snapshot({TYPE_CLUSTER: clusters("a", "b"), TYPE_ROUTE: routes("rc", "/")}))
        second = await c.recv()
        assert second.version_info != first.version_info and len(second.resources) == 2
        assert second.nonce != first.nonce
        assert len(nodes) == 1 and nodes.snapshot()[0]["node"] == "test-node"

    asyncio.run(with_server(test))


def test_nack_is_recorded_and_the_rejected_version_is_not_resent() -> None:
    async def test(c: Client, cache: SnapshotCache, nodes: NodeRegistry, metrics: Any) -> None:
        cache.set_base(Snapshot({TYPE_CLUSTER: clusters("a")}))
        await c.send(TYPE_CLUSTER)
        first = await c.recv()
        await c.send(TYPE_CLUSTER, version="", nonce=first.nonce, error="bad cluster a")
        assert await c.nothing(0.5)
        state = nodes.snapshot()[0]["types"]["Cluster"]
        assert (
            state["nack_error"] == "bad cluster a" and state["nacked_version"] == first.version_info
        )
        assert metrics.xds_nacks.labels("Cluster")._value.get() == 1
        cache.set_base(Snapshot({TYPE_CLUSTER: clusters("fixed")}))
        fixed = await c.recv()
        assert fixed.resources[0].value != first.resources[0].value

    asyncio.run(with_server(test))


def test_stale_nonce_is_ignored() -> None:
    async def test(c: Client, cache: SnapshotCache, nodes: NodeRegistry, metrics: Any) -> None:
        cache.set_base(Snapshot({TYPE_CLUSTER: clusters("a")}))
        await c.send(TYPE_CLUSTER)
        first = await c.recv()
        cache.set_base(Snapshot({TYPE_CLUSTER: clusters("a", "b")}))
        await c.send(TYPE_CLUSTER, version=first.version_info, nonce=first.nonce)
        second = await c.recv()
        # A late request answering the first response: stale, must not trigger anything.
        await c.send(TYPE_CLUSTER, version=first.version_info, nonce=first.nonce, error="late")
        assert await c.nothing()
        assert nodes.snapshot()[0]["types"]["Cluster"]["nack_error"] == ""
        await c.send(TYPE_CLUSTER, version=second.version_info, nonce=second.nonce)
        assert await c.nothing()

    asyncio.run(with_server(test))


def test_named_resources_that_appear_later_are_pushed() -> None:
    async def test(c: Client, cache: SnapshotCache, nodes: NodeRegistry, metrics: Any) -> None:
        cache.set_base(Snapshot({TYPE_ROUTE: routes("other", "/")}))
        await c.send(TYPE_ROUTE, names=("wanted",))
        empty = await c.recv()
        assert list(empty.resources) == []
        await c.send(TYPE_ROUTE, names=("wanted",), version=empty.version_info, nonce=empty.nonce)
        cache.set_base(
            Snapshot(
                {
                    TYPE_ROUTE: Resources(
                        {**routes("other", "/").items, **routes("wanted", "/w").items}, "v2"
                    )
                }
            )
        )
        got = await c.recv()
        assert len(got.resources) == 1
        msg = route_pb2.RouteConfiguration()
        got.resources[0].Unpack(msg)
        assert msg.name == "wanted"

    asyncio.run(with_server(test))


def test_listener_follows_the_node_metadata_port() -> None:
    async def test(c: Client, cache: SnapshotCache, nodes: NodeRegistry, metrics: Any) -> None:
        cache.set_base(Snapshot({TYPE_CLUSTER: clusters("a")}))
        req = discovery_pb2.DiscoveryRequest(type_url=TYPE_LISTENER, node=base_pb2.Node(id="n"))
        req.node.metadata.update({"listen_port": 12345})
        await c.queue.put(req)
        resp = await c.recv()
        from envoy.config.listener.v3 import listener_pb2

        listener = listener_pb2.Listener()
        resp.resources[0].Unpack(listener)
        assert listener.address.socket_address.port_value == 12345

    asyncio.run(with_server(test))


def _routes_to(name: str, cluster: str) -> Resources:
    msg = json_format.ParseDict(
        {
            "name": name,
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                }
            ],
        },
        route_pb2.RouteConfiguration(),
    )
    return Resources.of([msg], lambda m: m.name)


def _snap(cluster: str) -> Snapshot:
    return Snapshot(
        {TYPE_CLUSTER: clusters(cluster), TYPE_ROUTE: _routes_to("rc", cluster)},
        route_clusters=frozenset({cluster}),
    )


def _names(resp: discovery_pb2.DiscoveryResponse) -> set[str]:
    out = set()
    for r in resp.resources:
        msg = (
            cluster_pb2.Cluster() if r.type_url == TYPE_CLUSTER else route_pb2.RouteConfiguration()
        )
        r.Unpack(msg)
        out.add(msg.name)
    return out


def test_routes_wait_for_clusters_and_clusters_outlive_their_routes() -> None:
    async def test(c: Client, cache: SnapshotCache, nodes: NodeRegistry, metrics: Any) -> None:
        cache.set_base(_snap("old"))
        await c.send(TYPE_CLUSTER)
        cds = await c.recv()
        await c.send(TYPE_ROUTE, names=("rc",))
        assert await c.nothing()  # routes wait: the clusters are not accepted yet
        await c.send(TYPE_CLUSTER, version=cds.version_info, nonce=cds.nonce)
        rds = await c.recv()
        assert rds.type_url == TYPE_ROUTE
        await c.send(TYPE_ROUTE, names=("rc",), version=rds.version_info, nonce=rds.nonce)

        # Switch every route from "old" to "new": add "new", keep "old" while routed to.
        cache.set_base(_snap("new"))
        cds2 = await c.recv()
        assert cds2.type_url == TYPE_CLUSTER and _names(cds2) == {"old", "new"}
        assert await c.nothing()  # the new routes wait for that CDS to be accepted
        await c.send(TYPE_CLUSTER, version=cds2.version_info, nonce=cds2.nonce)
        rds2 = await c.recv()
        assert rds2.type_url == TYPE_ROUTE
        await c.send(TYPE_ROUTE, names=("rc",), version=rds2.version_info, nonce=rds2.nonce)
        # Routes to "old" are gone from the Envoy: now "old" itself goes.
        cds3 = await c.recv()
        assert cds3.type_url == TYPE_CLUSTER and _names(cds3) == {"new"}

    asyncio.run(with_server(test))


def test_unsubscribing_from_all_endpoints_never_holds_routes() -> None:
    """Envoy unsubscribes from EDS when its last EDS cluster goes and never ACKs an answer
    to that; routes must not wait for one."""
    from wardgate.xds.snapshot import TYPE_ENDPOINT

    async def test(c: Client, cache: SnapshotCache, nodes: NodeRegistry, metrics: Any) -> None:
        cache.set_base(_snap("a"))
        await c.send(TYPE_CLUSTER)
        cds = await c.recv()
        await c.send(TYPE_CLUSTER, version=cds.version_info, nonce=cds.nonce)
        await c.send(TYPE_ENDPOINT, names=("a",))
        eds = await c.recv()
        await c.send(TYPE_ENDPOINT, names=("a",), version=eds.version_info, nonce=eds.nonce)
        await c.send(TYPE_ROUTE, names=("rc",))
        rds = await c.recv()
        assert rds.type_url == TYPE_ROUTE
        await c.send(TYPE_ROUTE, names=("rc",), version=rds.version_info, nonce=rds.nonce)
        # The last EDS cluster went away: Envoy drops its EDS watch (an empty name list).
        await c.send(TYPE_ENDPOINT, names=(), version=eds.version_info, nonce=eds.nonce)
        assert await c.nothing()  # nothing to answer
        cache.set_base(Snapshot({TYPE_CLUSTER: clusters("a"), TYPE_ROUTE: routes("rc", "/other")}))
        changed = await c.recv()  # the new routes are not held
        assert changed.type_url == TYPE_ROUTE

    asyncio.run(with_server(test))


def test_a_replica_that_cannot_check_the_store_refuses_a_reconnecting_envoy() -> None:
    """An Envoy that already holds configuration (a version in its first request) is sent
    away UNAVAILABLE when the snapshot cannot be checked against the store: what it has may
    be newer than what this replica holds. An Envoy with nothing gets what is here."""

    async def test(c: Client, cache: SnapshotCache, nodes: NodeRegistry, metrics: Any) -> None:
        async def cannot_check(since: float) -> bool:
            return False

        cache.freshness = cannot_check
        cache.set_base(Snapshot({TYPE_CLUSTER: clusters("a")}))
        await c.send(TYPE_CLUSTER, version="some-version-from-another-replica")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.call.wait_for_connection()
            await c.reader
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "confirm" in (refused.value.details() or "")

    async def fresh_envoy(
        c: Client, cache: SnapshotCache, nodes: NodeRegistry, metrics: Any
    ) -> None:
        async def cannot_check(since: float) -> bool:
            return False

        cache.freshness = cannot_check
        cache.set_base(Snapshot({TYPE_CLUSTER: clusters("a")}))
        await c.send(TYPE_CLUSTER)
        assert len((await c.recv()).resources) == 1

    asyncio.run(with_server(test))
    asyncio.run(with_server(fresh_envoy))
