"""Revoked sessions in Envoy: the RBAC filter ``wardgate.revocations``, whose configuration
comes over ECDS, so that a revocation reaches every Envoy within a second without touching
the listener (no drain) or the route tables.

Its enforced part is a hash map (``exact_match_map``) from a ticket's session id to DENY, keyed
by the header jwt_authn copies a verified ticket's ``sid`` to (``TICKET_SID_HEADER``; Envoy's
``DynamicMetadataInput`` yields a structured value that a string map cannot key). A refused
ticket is a 401 that clears it (``native_auth.local_replies``). Its shadow part is the gate
(``native_auth.gate_rules``), which decides nothing and only says whether ext_authz is needed.

``RevocationPublisher`` re-reads the list when the store's version changes (a revocation) or
an entry's time is up (a ticket's lifetime after it was revoked), and publishes it; until the
first configuration arrives, the filter's default refuses no one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

# Importing these registers the message types that "@type" below refers to.
from envoy.config.core.v3 import extension_pb2
from envoy.type.matcher.v3 import http_inputs_pb2  # noqa: F401

from wardgate.domain.tickets import TICKET_SID_HEADER, RevocationList
from wardgate.errors import StoreError
from wardgate.metrics import Metrics
from wardgate.xds import canonical
from wardgate.xds.native_auth import (
    F_REVOCATIONS,
    GATE_PREFIX,
    REVOKED_ACTION,
    REVOKED_PREFIX,
    T_RBAC_ACTION,
    gate_rules,
)
from wardgate.xds.typeurls import T_RBAC, of

log = logging.getLogger("wardgate.tickets")

MAX_REVOKED = 20_000  # sessions on the list at once: the latest revocations are kept
_SID_CHARS = frozenset("0123456789abcdef")


def _action(name: str, action: str) -> dict[str, Any]:
    return {
        "action": {
            "name": name,
            "typed_config": {"@type": T_RBAC_ACTION, "name": name, "action": action},
        }
    }


def revocations_config(sids: Iterable[str], *, cookie: str) -> dict[str, Any]:
    """The RBAC configuration refusing tickets of ``sids`` (any that is not a ticket sid,
    lower-case hex, is left out), with the gate as its shadow rules."""
    wanted = sorted({s for s in sids if s and len(s) <= 64 and set(s) <= _SID_CHARS})
    config: dict[str, Any] = {
        "@type": T_RBAC,
        "rules_stat_prefix": REVOKED_PREFIX,
        "shadow_rules_stat_prefix": GATE_PREFIX,
        "shadow_rules": gate_rules(cookie),
    }
    if not wanted:
        config["rules"] = {"action": "DENY"}  # no policy: refuses no one
        return config
    revoked = _action(REVOKED_ACTION, "DENY")
    config["matcher"] = {
        "matcher_tree": {
            "input": {
                "name": "ticket-session",
                "typed_config": {
                    "@type": of("envoy.type.matcher.v3.HttpRequestHeaderMatchInput"),
                    "header_name": TICKET_SID_HEADER,
                },
            },
            "exact_match_map": {"map": {sid: revoked for sid in wanted}},
        },
        "on_no_match": _action("not-revoked", "ALLOW"),
    }
    return config


def revocations_resource(sids: Iterable[str], *, cookie: str) -> bytes:
    """The ECDS resource, serialized deterministically."""
    resource = canonical.parse(
        {"name": F_REVOCATIONS, "typed_config": revocations_config(sids, cookie=cookie)},
        extension_pb2.TypedExtensionConfig(),
    )
    data: bytes = resource.SerializeToString(deterministic=True)
    return data


def revocations_filter(cookie: str) -> dict[str, Any]:
    """The listener's HTTP filter: its configuration discovered over ADS; the default (the
    gate, no one revoked) applies until it comes."""
    return {
        "name": F_REVOCATIONS,
        "config_discovery": {
            "config_source": {"ads": {}, "resource_api_version": "V3"},
            "default_config": revocations_config((), cookie=cookie),
            "apply_default_config_without_warming": True,
            "type_urls": [T_RBAC],
        },
    }


class RevocationPublisher:
    """Keeps the published list equal to the sessions revoked within ``hold`` seconds (a
    ticket's lifetime, Envoy's clock skew and some slack): it re-reads them when the store's
    version changes or the oldest entry's time is up."""

    def __init__(
        self,
        *,
        store: RevocationList,
        publish: Callable[[str, bytes], bool],
        metrics: Metrics,
        hold: float,
        cookie: str,
        every: float = 0.1,
        max_revoked: int = MAX_REVOKED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._publish = publish
        self._metrics = metrics
        self._hold = hold
        self._cookie = cookie
        self._every = every
        self._max = max_revoked
        self._clock = clock
        self._published: frozenset[str] | None = None
        self._version: int | None = None
        self._next_end = 0.0

    async def refresh(self) -> None:
        now = self._clock()
        try:
            version = await self._store.version()
            if version == self._version and now < self._next_end:
                return
            live = await self._store.live(since=now - self._hold)
        except StoreError:
            self._metrics.store_errors.labels("revocations").inc()
            return  # Envoy keeps the last list (entries end when the store is back)
        self._version = version
        kept = sorted(live, key=live.__getitem__, reverse=True)[: self._max]
        if len(live) > self._max:
            self._metrics.revocations_dropped.inc(len(live) - self._max)
            log.warning(
                "revocations: %d sessions, the %d latest kept; the others' tickets pass "
                "until they expire",
                len(live),
                self._max,
            )
        self._next_end = min((live[s] for s in kept), default=float("inf")) + self._hold
        sids = frozenset(kept)
        if sids == self._published:
            return
        resource = await asyncio.to_thread(revocations_resource, sids, cookie=self._cookie)
        self._publish(F_REVOCATIONS, resource)
        self._published = sids
        self._metrics.revoked_sessions.set(len(sids))

    async def run(self) -> None:
        await self.refresh()
        if self._published is None:  # the store is down: nothing known to refuse yet
            self._publish(F_REVOCATIONS, revocations_resource((), cookie=self._cookie))
            self._published = frozenset()
        while True:
            await self.refresh()
            await asyncio.sleep(self._every)
