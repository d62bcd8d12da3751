"""What both ADS variants share: reading a stream's requests while watching for new snapshots,
and registering the Envoy behind the stream."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from wardgate.metrics import Metrics
from wardgate.stats.tracing import xds_push_span
from wardgate.xds.nodes import NodeRegistry, NodeState
from wardgate.xds.ordering import Sequencer
from wardgate.xds.ports import ConfigWatcher
from wardgate.xds.snapshot import PUSH_ORDER, NodeGroup, Snapshot
from wardgate.xds.typeurls import short_name

log = logging.getLogger("wardgate.xds")
_stream_ids = itertools.count(1)


class HasNode(Protocol):
    @property
    def node(self) -> Any: ...


def node_group(node: Any, default_port: int) -> NodeGroup:
    """Where this Envoy's listener binds, from its node metadata (``listen_port``,
    ``listen_address``), else the configured default port on 0.0.0.0."""
    fields = node.metadata.fields
    port = default_port
    address = "0.0.0.0"
    if "listen_port" in fields:
        value = fields["listen_port"]
        try:
            port = int(value.number_value or value.string_value or default_port)
        except ValueError:
            port = default_port
        if not 0 < port < 65536:
            port = default_port
    if "listen_address" in fields and fields["listen_address"].string_value:
        address = fields["listen_address"].string_value
    compose_port = 0
    if "compose_port" in fields:  # where wardgate reaches it for composition parts
        value = fields["compose_port"]
        try:
            compose_port = int(value.number_value or value.string_value or 0)
        except ValueError:
            compose_port = 0
        if not 0 < compose_port < 65536 or compose_port == port:
            compose_port = 0
    compose_address = "127.0.0.1"
    if "compose_address" in fields and fields["compose_address"].string_value:
        compose_address = fields["compose_address"].string_value
        try:
            ipaddress.ip_address(compose_address)  # Envoy binds it, wardgate connects to it
        except ValueError:
            compose_port = 0
    return NodeGroup(address, port, compose_address, compose_port)


async def request_batches(
    request_iterator: AsyncIterator[Any], configs: ConfigWatcher
) -> AsyncIterator[list[Any]]:
    """Yield the requests that have arrived (an empty list when only the snapshot changed);
    end when the client closes the stream."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    done = object()

    async def read() -> None:
        try:
            async for req in request_iterator:
                await queue.put(req)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            await queue.put(done)

    reader = asyncio.create_task(read())
    pending: set[asyncio.Task[Any]] = set()
    # The generation the consumer has certainly seen: taken before handing it a batch, so a
    # snapshot published while it works on that batch wakes the next wait at once.
    generation = configs.generation
    try:
        while True:
            if queue.empty():
                waiter = asyncio.create_task(queue.get())
                changed = asyncio.create_task(configs.wait_changed(generation))
                pending = {waiter, changed}
                finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if waiter in finished:
                    batch = [waiter.result()]
                else:
                    waiter.cancel()
                    try:
                        await waiter
                    except asyncio.CancelledError:
                        # The waiter's own cancellation is expected; this stream's (the
                        # server stopping) must not be swallowed with it.
                        current = asyncio.current_task()
                        if current is not None and current.cancelling():
                            raise
                    batch = []
                pending = set()
            else:
                batch = [queue.get_nowait()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            generation = configs.generation
            if done in batch:
                yield [r for r in batch[: batch.index(done)]]
                return
            yield batch
    finally:
        for task in pending:
            task.cancel()
        reader.cancel()


def record_answer(
    state: NodeState,
    metrics: Metrics,
    seq: Sequencer,
    type_url: str,
    nonce: str,
    version: str,
    error: str | None,
) -> None:
    """The Envoy answered our response ``nonce`` (of ``version``): an ACK, or with ``error``
    a NACK, kept for ``wardgate status`` and counted."""
    seq.answered(type_url, nonce, accepted=error is None)
    ts = state.type(type_url)
    label = short_name(type_url)
    if error is not None:
        ts.nacked_version = version
        ts.nack_error = error[:2000]
        ts.nack_time = time.time()
        metrics.xds_nacks.labels(label).inc()
        log.warning(
            "envoy %s NACKed %s version %s: %s",
            state.node_id,
            label,
            version,
            error[:500],
            extra={"event": "xds_nack", "node": state.node_id, "type": label, "version": version},
        )
    else:
        ts.acked_version = version
        metrics.xds_acks.labels(label).inc()
        log.debug("envoy %s ACKed %s %s", state.node_id, label, version)


OnRequest = Callable[[Any, NodeState, Sequencer], None]
# (type_url, snapshot, next_nonce, sequencer) -> (response, version sent) or None
Respond = Callable[[str, Snapshot, Callable[[], str], Sequencer], tuple[Any, str] | None]


async def serve_stream(
    request_iterator: AsyncIterator[Any],
    *,
    configs: ConfigWatcher,
    nodes: NodeRegistry,
    metrics: Metrics,
    default_port: int,
    mode: str,
    on_request: OnRequest,
    respond: Respond,
) -> AsyncIterator[Any]:
    """The loop both ADS variants run: apply the requests that arrived, then offer each type,
    in make-before-break order, a chance to answer from the Envoy's snapshot."""
    session = StreamSession(nodes=nodes, metrics=metrics, mode=mode, default_port=default_port)
    nonces = itertools.count(1)
    seq = Sequencer()
    opened = time.monotonic()
    checked = False
    try:
        async for batch in request_batches(request_iterator, configs):
            for req in batch:
                on_request(req, session.see(req), seq)
            if session.group is None or session.state is None:
                continue
            if not checked:  # the first answer comes from a snapshot as new as the store
                checked = await configs.ensure_current(opened)
                if not checked and any(has_configuration(r) for r in batch):
                    raise CannotConfirmCurrent(
                        "this replica cannot read the store to confirm its configuration "
                        "is current; reconnect (maybe to another replica)"
                    )
                checked = True  # an Envoy with nothing gets what is here (better than none)
            snapshot = configs.snapshot_for(session.group)
            if snapshot is None:
                continue  # nothing built yet: requests stay outstanding
            for type_url in PUSH_ORDER:
                if seq.hold(type_url):
                    continue
                started = time.time_ns()
                answer = respond(type_url, snapshot, lambda: str(next(nonces)), seq)
                if answer is None:
                    continue
                response, version = answer
                session.state.type(type_url).sent_version = version
                nodes.touch()
                metrics.xds_pushes.labels(short_name(type_url)).inc()
                xds_push_span(short_name(type_url), session.state.node_id, version, started)
                log.debug("envoy %s: sending %s %s", session.state.node_id, type_url, version)
                yield response
    finally:
        session.close()


class CannotConfirmCurrent(Exception):
    """A reconnecting Envoy must not be answered: this replica's snapshot may be older than
    what it has, and the store cannot be read to check (the stream ends UNAVAILABLE)."""


def has_configuration(req: Any) -> bool:
    """Whether the Envoy says it already holds configuration (a reconnect): a state-of-the-
    world request with a version, or a delta request with initial resource versions."""
    return bool(getattr(req, "version_info", "")) or bool(
        getattr(req, "initial_resource_versions", None)
    )


class StreamSession:
    """Registers the Envoy of one stream on its first request, unregisters at the end."""

    def __init__(self, *, nodes: NodeRegistry, metrics: Metrics, mode: str, default_port: int):
        self.id = next(_stream_ids)
        self.state: NodeState | None = None
        self.group: NodeGroup | None = None
        self._nodes = nodes
        self._gauge = metrics.xds_connected.labels(mode)
        self._mode = mode
        self._default_port = default_port

    def see(self, req: HasNode) -> NodeState:
        if self.state is None:
            node = req.node
            self.group = node_group(node, self._default_port)
            self.state = NodeState(
                node_id=node.id or f"stream-{self.id}",
                cluster=node.cluster,
                stream=self.id,
                mode=self._mode,
            )
            self._nodes.connect(self.state)
            self._gauge.inc()
            log.info(
                "envoy %s connected (%s, stream %d, %s)",
                self.state.node_id,
                self._mode,
                self.id,
                self.group,
            )
        return self.state

    def close(self) -> None:
        if self.state is not None:
            self._gauge.dec()
            self._nodes.disconnect(self.id)
            log.info("envoy %s disconnected (stream %d)", self.state.node_id, self.id)
