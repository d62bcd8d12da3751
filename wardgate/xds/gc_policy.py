"""When the process's cyclic garbage collector may run, around snapshot builds.

With ten thousand routes in memory a full collection took ~100 ms, paid by whichever change
or check was running then. So what a build keeps is frozen out of the collector's passes
(documents hold no cycles: reference counts free them). Freezing covers the whole process,
so cyclic garbage among frozen objects waits for a thaw: at an idle re-read once 50 builds
have passed and nothing changed for 30 s, and at the latest every 500 builds or 10 minutes
even under a steady stream of changes.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator


class GcPolicy:
    THAW_EVERY_BUILDS = 500
    THAW_EVERY_SECONDS = 600.0
    IDLE_AFTER_BUILDS = 50
    IDLE_QUIET_SECONDS = 30.0

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        freeze: Callable[[], None] = gc.freeze,
        thaw: Callable[[], None] = gc.unfreeze,
        collect: Callable[[], object] = gc.collect,
    ) -> None:
        self._clock = clock
        self._freeze = freeze
        self._unfreeze = thaw
        self._collect = collect
        self._builds = 0
        self._last_build = clock()
        self._thawed_at = clock()

    def after_build(self) -> None:
        self._builds += 1
        self._last_build = self._clock()
        if (
            self._builds >= self.THAW_EVERY_BUILDS
            or self._last_build - self._thawed_at > self.THAW_EVERY_SECONDS
        ):
            self._thaw()
        self._freeze()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No collection while the block runs: a whole parse and build of 100,000 routes
        allocates millions of objects, and the collector's passes over the growing heap took
        a fifth of its time. What the block keeps is frozen after it (``after_build``)."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if enabled:
                gc.enable()

    def idle(self) -> None:
        """A re-read found nothing new: collect now if it is due, not mid-burst."""
        if (
            self._builds >= self.IDLE_AFTER_BUILDS
            and self._clock() - self._last_build > self.IDLE_QUIET_SECONDS
        ):
            self._thaw()
            self._freeze()

    def _thaw(self) -> None:
        self._builds = 0
        self._thawed_at = self._clock()
        self._unfreeze()
        self._collect()
