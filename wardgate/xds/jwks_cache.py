"""The key sets of Issuers' ``jwks_url``: fetched in the background, kept, refreshed.

``JwksCache.text`` answers at once with the last good key set of a URL (its JSON text), and
starts a fetch in the background when the set is due (``jwks_refresh`` after the last good
fetch, or 30 s at most after a failed one). Only the first fetch of a URL is waited for, and
only ``first_wait`` seconds: a slow identity provider never holds up a snapshot build. An
answer replaces the kept set only when it holds a usable signing key, so a fetch that fails,
times out or returns garbage keeps the last keys (and is counted; its reason shows in
``wardgate status`` while no keys were ever fetched). A new key set calls ``on_change``
(the watcher loads the issuers again).

Keys live in each process's memory: every worker and replica fetches for itself, and one that
starts while the provider is down has no keys for that issuer until a fetch succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from wardgate.domain import jsontext
from wardgate.domain.jwks import keys_from_jwks
from wardgate.metrics import Metrics

log = logging.getLogger("wardgate.jwks")

Fetch = Callable[[str, str | None], Awaitable[str]]  # (url, ca_file) -> text
RETRY_AFTER_FAILURE = 30.0


@dataclasses.dataclass
class _Entry:
    text: str | None = None  # the last good key set
    error: str = ""  # why the last fetch failed ("" when it did not)
    due: float = 0.0  # when to fetch again (monotonic)
    fetching: asyncio.Task[None] | None = None


class JwksCache:
    def __init__(
        self,
        *,
        fetch: Fetch,
        metrics: Metrics,
        clock: Callable[[], float],
        first_wait: float = 2.0,
    ) -> None:
        self._fetch = fetch
        self._metrics = metrics
        self._clock = clock
        self._first_wait = first_wait
        self._entries: dict[tuple[str, str | None], _Entry] = {}
        self.on_change: Callable[[], None] = lambda: None

    async def text(self, url: str, ca_file: str | None, refresh: float) -> str:
        """The last good key set of ``url``; ``OSError`` saying why there is none yet."""
        entry = self._entries.setdefault((url, ca_file), _Entry())
        if entry.fetching is None and self._clock() >= entry.due:
            entry.fetching = asyncio.create_task(self._refresh(url, ca_file, refresh, entry))
        if entry.text is None and entry.fetching is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(entry.fetching), self._first_wait)
        if entry.text is None:
            raise OSError(entry.error or f"{url}: not fetched yet")
        return entry.text

    def forget_except(self, keep: set[tuple[str, str | None]]) -> None:
        """Drop the URLs no Issuer names any more."""
        for key in set(self._entries) - keep:
            entry = self._entries.pop(key)
            if entry.fetching is not None:
                entry.fetching.cancel()

    async def _refresh(self, url: str, ca_file: str | None, refresh: float, entry: _Entry) -> None:
        try:
            text = await self._fetch(url, ca_file)
            keys_from_jwks(jsontext.loads(text))  # ValueError: not usable, keep the last
        except ValueError as exc:
            self._failed(url, entry, refresh, f"{url}: {exc}", "unusable")
            return
        except Exception as exc:  # every failure of the fetch keeps the last keys
            self._failed(url, entry, refresh, str(exc) or type(exc).__name__, "failed")
            return
        finally:
            entry.fetching = None
        entry.error = ""
        entry.due = self._clock() + refresh
        if text == entry.text:
            self._metrics.jwks_fetches.labels("unchanged").inc()
            return
        first = entry.text is None
        entry.text = text
        self._metrics.jwks_fetches.labels("ok").inc()
        log.info("jwks %s: %s key set", url, "first" if first else "new")
        self.on_change()

    def _failed(self, url: str, entry: _Entry, refresh: float, why: str, result: str) -> None:
        entry.error = why[:500]
        entry.due = self._clock() + min(refresh, RETRY_AFTER_FAILURE)
        self._metrics.jwks_fetches.labels(result).inc()
        kept = "keeping the last keys" if entry.text is not None else "no keys yet"
        log.warning("jwks fetch failed (%s): %s", kept, entry.error)
