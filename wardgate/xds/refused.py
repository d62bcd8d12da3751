"""After each build: the documents refused, logged once and recorded for ``wardgate status``.

A refusal is logged when it first appears. The whole set is written to the status store when
it changed, or when the last write failed (the store may have been restarted empty).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from wardgate.errors import StoreError
from wardgate.metrics import Metrics
from wardgate.xds.ports import StatusStore

log = logging.getLogger("wardgate.watcher")


class RefusedReport:
    def __init__(self, *, status: StatusStore, metrics: Metrics) -> None:
        self._status = status
        self._metrics = metrics
        self.refused: dict[str, str] = {}  # "Kind/name" -> reason, as last reported
        self._saved = False  # whether the store holds ``refused`` as it is now

    def forget_saved(self) -> None:
        """The store may have lost what we wrote (a reconnect): write it again next time."""
        self._saved = False

    async def report(self, refused: Mapping[str, str]) -> None:
        self._metrics.documents_refused.set(len(refused))
        if refused == self.refused and self._saved:
            return
        for key in sorted(set(refused) - set(self.refused)):
            log.error("refused %s: %s", key, refused[key])
        self.refused = dict(refused)
        self._saved = False
        try:
            await self._status.save_refused(self.refused)
            self._saved = True
        except StoreError as exc:
            self._metrics.store_errors.labels("status").inc()
            log.warning("could not record refused documents: %s", exc)
