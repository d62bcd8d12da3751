"""ADS, incremental (delta): per-resource versions, subscriptions, removals.

Rules followed (Envoy's xds_protocol): subscription changes are honoured even when they come
with a stale nonce (only the ACK/NACK meaning of a stale nonce is ignored); a resource newly
subscribed is sent even if the client claims to have it (``initial_resource_versions`` only
tells us what it holds, so that we can announce removals); a NACKed version is not re-sent
until the resource changes; ``removed_resources`` says a resource is gone.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Callable

from envoy.service.discovery.v3 import discovery_pb2

from wardgate.metrics import Metrics
from wardgate.xds.nodes import NodeRegistry, NodeState
from wardgate.xds.ordering import Sequencer
from wardgate.xds.ports import ConfigWatcher
from wardgate.xds.snapshot import WILDCARD_TYPES, Snapshot
from wardgate.xds.stream import record_answer, serve_stream
from wardgate.xds.typeurls import TYPE_CLUSTER

log = logging.getLogger("wardgate.xds")


@dataclasses.dataclass
class _DeltaWatch:
    wildcard: bool = False
    names: set[str] = dataclasses.field(default_factory=set)
    known: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> version it has
    nonce: str = ""
    nonce_version: str = ""


def _on_request(
    req: discovery_pb2.DeltaDiscoveryRequest,
    watches: dict[str, _DeltaWatch],
    state: NodeState,
    nodes: NodeRegistry,
    metrics: Metrics,
    seq: Sequencer,
) -> None:
    type_url = req.type_url
    first = type_url not in watches
    watch = watches.setdefault(type_url, _DeltaWatch())
    subscribe = list(req.resource_names_subscribe)
    if first:
        if not subscribe and type_url in WILDCARD_TYPES:
            watch.wildcard = True  # the legacy wildcard: an empty first subscription
        # What the client already holds (a reconnect): remembered only so that we can tell
        # it what has been removed meanwhile; everything it wants is sent again.
        for name in req.initial_resource_versions:
            watch.known[name] = ""
    for name in subscribe:
        if name == "*":
            watch.wildcard = True
        else:
            watch.names.add(name)
            watch.known.pop(name, None)  # newly subscribed: send it even if it has it
    for name in req.resource_names_unsubscribe:
        if name == "*":
            watch.wildcard = False
        else:
            watch.names.discard(name)
            watch.known.pop(name, None)
    if req.response_nonce and req.response_nonce == watch.nonce:
        error = req.error_detail.message if req.HasField("error_detail") else None
        record_answer(state, metrics, seq, type_url, req.response_nonce, watch.nonce_version, error)
        nodes.touch()


def _response(
    watches: dict[str, _DeltaWatch],
    type_url: str,
    snapshot: Snapshot,
    next_nonce: Callable[[], str],
    seq: Sequencer,
) -> tuple[discovery_pb2.DeltaDiscoveryResponse, str] | None:
    watch = watches.get(type_url)
    if watch is None:
        return None
    res = snapshot.get(type_url)
    items, versions = res.items, res.versions
    if type_url == TYPE_CLUSTER:
        items, _ = seq.clusters(snapshot)
        # A removed cluster still routed to keeps the version the client has: not resent,
        # not removed, until routes that no longer use it are accepted.
        versions = {**versions, **{n: watch.known.get(n, "") for n in items if n not in versions}}
    wanted = versions.keys() if watch.wildcard else watch.names & versions.keys()
    send = sorted(n for n in wanted if watch.known.get(n) != versions[n])
    removed = sorted(
        n for n in watch.known if n not in versions and (watch.wildcard or n in watch.names)
    )
    # Names the client holds but no longer wants (and never asked for) are forgotten quietly.
    for name in [n for n in watch.known if not watch.wildcard and n not in watch.names]:
        del watch.known[name]
    if not send and not removed:
        return None
    nonce = next_nonce()
    response = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=res.version,
        type_url=type_url,
        nonce=nonce,
        removed_resources=removed,
    )
    for name in send:
        response.resources.add(name=name, version=versions[name], resource=items[name])
        watch.known[name] = versions[name]
    for name in removed:
        del watch.known[name]
    watch.nonce = nonce
    watch.nonce_version = res.version
    seq.sent(type_url, nonce, snapshot, items, send)
    return response, res.version


def delta_stream(
    request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
    *,
    configs: ConfigWatcher,
    nodes: NodeRegistry,
    metrics: Metrics,
    default_port: int,
) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
    watches: dict[str, _DeltaWatch] = {}
    return serve_stream(
        request_iterator,
        configs=configs,
        nodes=nodes,
        metrics=metrics,
        default_port=default_port,
        mode="delta",
        on_request=lambda req, state, seq: _on_request(req, watches, state, nodes, metrics, seq),
        respond=functools.partial(_response, watches),
    )
