"""The SDS secrets served: Secret documents beside the certificate wardgate publishes from
its files. A document of the same name never shadows the files' certificate."""

from __future__ import annotations

from wardgate.xds.listener_secrets import secret_bytes
from wardgate.xds.listener_tls import LISTENER_SECRET
from wardgate.xds.snapshot import NodeGroup, Snapshot, SnapshotCache, resources_from_bytes
from wardgate.xds.typeurls import TYPE_SECRET


def test_a_secret_document_named_like_the_listener_secret_does_not_replace_the_files() -> None:
    cache = SnapshotCache(listener_factory=lambda _g: [])
    from_files = secret_bytes(LISTENER_SECRET, "A" * 10, "A" * 10)
    for document in (secret_bytes(LISTENER_SECRET, "z" * 10, "z" * 10), b"\x00", b"\xff" * 64):
        # whichever sorts after the other: the files' bytes are what Envoy gets
        base = Snapshot(
            {TYPE_SECRET: resources_from_bytes(TYPE_SECRET, [(LISTENER_SECRET, document)])}
        )
        cache.set_base(base)
        cache.set_secret(LISTENER_SECRET, from_files)
        served = cache.snapshot_for(NodeGroup("0.0.0.0", 10000))
        assert served is not None
        assert served.get(TYPE_SECRET).raw[LISTENER_SECRET] == from_files
