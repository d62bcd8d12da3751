"""The same documents give the same snapshot versions in every process (every worker and
replica): Envoy moving between them must not be sent a "changed" listener or route table.
Python randomizes hashing per process, and with it the order of protobuf map entries that
are serialized inside ``Any`` payloads unless they are packed deterministically."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_BUILD = r"""
import json
from wardgate.xds.build import SnapshotBuilder
from wardgate.xds.listener import build_listener
from wardgate.xds.translate import TranslateOptions

def doc(d): return json.dumps(d)
svc = {"kind": "Service", "name": "s", "endpoints": [{"address": "10.0.0.1", "port": 80}],
       "protocol": "http2", "health_check": {"path": "/h", "interval": "5s"}}
ring = {**svc, "name": "ring", "lb": "ring_hash"}
routes = {}
for i in range(20):
    routes[f"r{i}"] = doc({
        "kind": "Route", "name": f"r{i}", "match": {"prefix": f"/r{i}", "methods": ["GET", "POST"]},
        "backend": "ring" if i % 2 else "s",
        "auth": {"require": "session", "roles": ["a", "b", "c"]},
        "cors": {"allow_origins": ["https://a.example", "https://b.example"]},
        "rate_limits": [{"by": ["ip", "user"], "requests": 5, "per": "minute"}],
    })
docs = {"Issuer": {}, "Service": {"s": doc(svc), "ring": doc(ring)}, "Route": routes}
builder = SnapshotBuilder(TranslateOptions())
snapshot = builder.build(builder.parse(docs, {}), {}, revision=1)
out = {t: r.version for t, r in snapshot.resources.items()}
listener = build_listener("0.0.0.0", 10000, TranslateOptions())
import hashlib
out["listener"] = hashlib.sha256(listener.SerializeToString(deterministic=True)).hexdigest()
print(json.dumps(out))
"""


def _versions(seed: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run(
        [sys.executable, "-c", _BUILD], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    versions: dict[str, str] = json.loads(done.stdout)
    return versions


def test_versions_do_not_depend_on_the_process() -> None:
    first, second = _versions("1"), _versions("2")
    assert len(first) == 7  # six resource types (transcoder config, secrets) and the listener
    assert first == second
