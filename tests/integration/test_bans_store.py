"""Bans in a real Redis: strikes within the window start one ban; bans end by time."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import with_redis
from wardgate.domain.bans import BanPolicy
from wardgate.store.bans import RedisBanStore
from wardgate.store.keys import Keys

pytestmark = pytest.mark.integration


def test_strikes_ban_once_and_bans_expire(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)

    async def body(r: Any) -> None:
        store = RedisBanStore(redis=r, keys=keys)
        policy = BanPolicy(refusals=3, window=60, duration=10)
        started = [await store.strike("10.0.0.1/32", policy, now=1000.0) for _ in range(4)]
        assert started == [False, False, True, False]  # the fourth starts counting again
        assert await store.live(now=1005.0) == {"10.0.0.1/32": 1010.0}
        assert await store.live(now=1010.5) == {}
        assert await r.zcard(keys.bans) == 0  # ended bans are removed
        assert 0 < await r.pttl(keys.strikes("10.0.0.1/32")) <= 60_000
        await store.ban("10.0.0.2/32", until=2000.0)
        assert await store.unban("10.0.0.2/32") is True
        assert await store.unban("10.0.0.2/32") is False

    with_redis(redis_url, body)
