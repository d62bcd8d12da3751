"""Make before break, per stream: the order in which an Envoy is given changes.

- Listeners and routes wait while a cluster or endpoint response is unanswered: a route is
  never sent before the cluster it names has been accepted (and its endpoints sent).
- A cluster that the Envoy's accepted routes still use is kept in what we send until the
  Envoy has accepted routes that no longer use it: routes are removed before their clusters.
- Route responses carry only the route configurations that changed. After one is refused
  (NACK), the Envoy keeps older versions of those configurations, so until it has accepted
  new versions of all of them, what its routes use only grows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from google.protobuf import any_pb2

from wardgate.xds.snapshot import Snapshot
from wardgate.xds.typeurls import TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE

_AHEAD = (TYPE_CLUSTER, TYPE_ENDPOINT)
_BEHIND = (TYPE_LISTENER, TYPE_ROUTE)


class Sequencer:
    def __init__(self) -> None:
        self._pending: dict[str, str] = {}  # type -> nonce sent and not yet answered
        self._route_uses: dict[str, frozenset[str]] = {}  # RDS nonce -> clusters it used
        self._route_names: dict[str, frozenset[str]] = {}  # RDS nonce -> configurations in it
        self._refused_routes: set[str] = set()  # configurations whose last version was NACKed
        self.routes_in_use: frozenset[str] = frozenset()  # clusters of the accepted routes
        self.sent_clusters: Mapping[str, any_pb2.Any] = {}

    def hold(self, type_url: str) -> bool:
        """Whether a response of ``type_url`` must wait for an answer to an earlier one."""
        return type_url in _BEHIND and any(t in self._pending for t in _AHEAD)

    def in_use(self) -> frozenset[str]:
        """Clusters the Envoy's routes may use: those of the routes it accepted, and of any
        routes sent and not answered yet (it may be about to accept them)."""
        pending = frozenset().union(*self._route_uses.values()) if self._route_uses else frozenset()
        return self.routes_in_use | pending

    def clusters(self, snapshot: Snapshot) -> tuple[Mapping[str, any_pb2.Any], str]:
        """The clusters to send: the snapshot's, plus any removed one still routed to."""
        res = snapshot.get(TYPE_CLUSTER)
        keep = sorted(n for n in self.in_use() if n not in res.items and n in self.sent_clusters)
        if not keep:
            return res.items, res.version
        items = dict(res.items)
        for name in keep:
            items[name] = self.sent_clusters[name]
        tag = hashlib.sha256("\0".join(keep).encode()).hexdigest()[:8]
        return items, f"{res.version}+{tag}"

    def sent(
        self,
        type_url: str,
        nonce: str,
        snapshot: Snapshot,
        clusters: Mapping[str, any_pb2.Any],
        names: Iterable[str] = (),
    ) -> None:
        """A response went out; ``names``: the route configurations it carries."""
        # Routes wait only for answers that surely come: a response that carries resources.
        if clusters or type_url not in _AHEAD:
            self._pending[type_url] = nonce
        else:
            self._pending.pop(type_url, None)
        if type_url == TYPE_CLUSTER:
            self.sent_clusters = clusters  # never changed: a snapshot's, or a fresh dict
        elif type_url == TYPE_ROUTE:
            self._route_uses[nonce] = snapshot.route_clusters
            self._route_names[nonce] = frozenset(names)

    def answered(self, type_url: str, nonce: str, *, accepted: bool) -> None:
        if self._pending.get(type_url) == nonce:
            del self._pending[type_url]
        if type_url == TYPE_ROUTE:
            uses = self._route_uses.pop(nonce, None)
            names = self._route_names.pop(nonce, frozenset())
            if not accepted:
                self._refused_routes |= names
            elif uses is not None:
                self._refused_routes -= names
                # With a refused configuration still held at an older version, the accepted
                # snapshot is not all the Envoy routes by: keep what it used before too.
                self.routes_in_use = uses if not self._refused_routes else self.routes_in_use | uses
            self._route_uses = {n: u for n, u in self._route_uses.items() if int(n) > int(nonce)}
            self._route_names = {n: u for n, u in self._route_names.items() if int(n) > int(nonce)}
