"""``wardgate status`` prints what other processes wrote: an Envoy's node id and NACK text
come from whoever opened an ADS stream, and reach the operator's terminal only as visible
text."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.test_secret_redaction import cli
from tests.support import with_redis
from wardgate.store.keys import Keys
from wardgate.store.status import RedisStatusStore

pytestmark = pytest.mark.integration

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x9b31m\r\nrevision: 999"


def test_status_never_prints_a_control_character(redis_url: str, prefix: str) -> None:
    async def body(r: Any) -> None:
        store = RedisStatusStore(redis=r, keys=Keys(prefix))
        node = {
            "node": "envoy" + ESCAPES,
            "cluster": "c",
            "mode": "sotw" + ESCAPES,
            "connected_at": time.time(),
            "types": {
                "Listener" + ESCAPES: {
                    "sent_version": "v1" + ESCAPES,
                    "acked_version": "",
                    "nacked_version": "v1" + ESCAPES,
                    "nack_error": "bad" + ESCAPES,
                }
            },
        }
        await store.save_nodes(
            "w" + ESCAPES, {"worker": "w" + ESCAPES, "time": time.time(), "nodes": [node]}
        )
        await store.save_refused({"Route/x" + ESCAPES: "why" + ESCAPES})

    with_redis(redis_url, body)
    out = cli(redis_url, prefix, "status")
    assert "envoy\\x1b]0;owned\\x07" in out
    assert not any(c in out for c in "\x1b\x07\x9b\r")
    assert "revision: 999" not in out.replace("\\nrevision: 999", "")
