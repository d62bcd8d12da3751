"""Every failure of the store reaches the domain as ``StoreError`` (store/errors.py)."""

from __future__ import annotations

import asyncio

import pytest

from wardgate import devstack
from wardgate.domain.quota import QuotaCheck
from wardgate.errors import StoreError
from wardgate.store.quota import RedisQuotaLedger
from wardgate.store.redis_client import connect


def test_a_cluster_without_a_reachable_node_is_a_store_error() -> None:
    """redis-py's cluster client raises RedisClusterException (no RedisError) when it reaches
    no node: it must not escape the mapping (the quota stream then fails, uncounted)."""

    async def settle() -> None:
        r = connect(f"redis+cluster://127.0.0.1:{devstack.free_port()}", timeout=0.5)
        try:
            check = QuotaCheck("k", 3, 60_000, 1, "holder", 1, 0, 120_000, 6)
            await RedisQuotaLedger(redis=r).settle([check], now_ms=1)
        finally:
            await r.aclose()

    with pytest.raises(StoreError):
        asyncio.run(settle())
