"""Copies what the connected Envoys ACKed and NACKed to the status store, for
``wardgate status``: at once after a change, and every ``every`` seconds as a sign of life
(``wardgate status`` ignores a worker whose last report is older than 60 s)."""

from __future__ import annotations

import asyncio
import logging
import time

from wardgate.errors import StoreError
from wardgate.xds.nodes import NodeRegistry
from wardgate.xds.ports import StatusStore

log = logging.getLogger("wardgate.xds")

NODE_REPORT_EVERY = 15.0  # seconds


async def report_nodes(
    nodes: NodeRegistry, status: StatusStore, worker: str, *, every: float = NODE_REPORT_EVERY
) -> None:
    last = 0.0
    while True:
        await asyncio.sleep(0.5)
        if not nodes.dirty and time.monotonic() - last < every:
            continue
        nodes.dirty = False
        report = {"worker": worker, "time": time.time(), "nodes": nodes.snapshot()}
        try:
            await status.save_nodes(worker, report)
            last = time.monotonic()
        except StoreError as exc:
            nodes.dirty = True
            log.debug("node status not recorded: %s", exc)
