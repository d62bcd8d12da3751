"""ADS, state of the world: one stream per Envoy, answered from the snapshots.

Protocol rules followed (Envoy's xds_protocol): a request whose nonce is not the last one we
sent on this stream is stale and ignored; a request with ``error_detail`` is a NACK and the
rejected version is never re-sent (we wait for a new version); we answer a type only when
the client has a request outstanding for it and the content or the names asked for changed;
LDS, CDS and SRDS responses carry the full set; RDS and EDS responses carry only the resources
this stream has not been sent in their current version (Envoy leaves the others as they are),
so one changed route configuration among many travels alone; types are pushed CDS, EDS, LDS,
SRDS, RDS.
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
class _Watch:
    names: set[str] | None = None  # None: wildcard
    waiting: bool = False  # a request is outstanding
    sent_version: str | None = None
    sent_nonce: str = ""
    sent_names: frozenset[str] | None = None
    sent_items: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> version


def _on_request(
    req: discovery_pb2.DiscoveryRequest,
    watches: dict[str, _Watch],
    state: NodeState,
    nodes: NodeRegistry,
    metrics: Metrics,
    seq: Sequencer,
) -> None:
    type_url = req.type_url
    watch = watches.setdefault(type_url, _Watch())
    if req.response_nonce and req.response_nonce != watch.sent_nonce:
        return  # stale: a newer response is on its way
    if req.response_nonce:
        error = req.error_detail.message if req.HasField("error_detail") else None
        version = (watch.sent_version or "") if error is not None else req.version_info
        record_answer(state, metrics, seq, type_url, req.response_nonce, version, error)
    nodes.touch()
    names = list(req.resource_names)
    if "*" in names or (not names and type_url in WILDCARD_TYPES and watch.names is None):
        watch.names = None
    else:
        watch.names = set(names)
    watch.waiting = True


def _respond(
    watches: dict[str, _Watch],
    type_url: str,
    snapshot: Snapshot,
    next_nonce: Callable[[], str],
    seq: Sequencer,
) -> tuple[discovery_pb2.DiscoveryResponse, str] | None:
    watch = watches.get(type_url)
    if watch is None or not watch.waiting:
        return None  # only ever answer a request
    res = snapshot.get(type_url)
    available, version = res.items, res.version
    if type_url == TYPE_CLUSTER:
        available, version = seq.clusters(snapshot)
    names = frozenset(watch.names) if watch.names is not None else None
    if watch.sent_version == version and watch.sent_names == names:
        return None
    if names is not None and not names:
        # The Envoy unsubscribed from everything of this type: it expects no answer, and
        # would never ACK one (which would hold routes forever).
        watch.waiting = False
        watch.sent_names = names
        return None
    if names is None:
        chosen = dict(available)
    elif type_url in WILDCARD_TYPES:
        chosen = {n: available[n] for n in sorted(names) if n in available}
    else:
        versions = res.versions
        # Forget what is no longer asked for: asked again, it is sent again.
        watch.sent_items = {n: v for n, v in watch.sent_items.items() if n in names}
        chosen = {
            n: available[n]
            for n in sorted(names)
            if n in available and watch.sent_items.get(n) != versions[n]
        }
        if not chosen and watch.sent_names == names:
            watch.sent_version = version  # nothing of what it asks for changed
            return None
        watch.sent_items.update((n, versions[n]) for n in chosen)
    nonce = next_nonce()
    watch.waiting = False
    watch.sent_version = version
    watch.sent_nonce = nonce
    watch.sent_names = names
    seq.sent(type_url, nonce, snapshot, chosen, chosen.keys())
    response = discovery_pb2.DiscoveryResponse(
        version_info=version, resources=list(chosen.values()), type_url=type_url, nonce=nonce
    )
    return response, version


def sotw_stream(
    request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
    *,
    configs: ConfigWatcher,
    nodes: NodeRegistry,
    metrics: Metrics,
    default_port: int,
) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
    watches: dict[str, _Watch] = {}
    return serve_stream(
        request_iterator,
        configs=configs,
        nodes=nodes,
        metrics=metrics,
        default_port=default_port,
        mode="sotw",
        on_request=lambda req, state, seq: _on_request(req, watches, state, nodes, metrics, seq),
        respond=functools.partial(_respond, watches),
    )
