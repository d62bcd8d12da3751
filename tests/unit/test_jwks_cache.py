"""The jwks_url key sets: fetched in the background, refreshed when due, and a failing or
garbage answer never replaces the last good keys."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from wardgate.domain.documents import parse_document
from wardgate.errors import DocumentError
from wardgate.metrics import create_metrics
from wardgate.xds.jwks_cache import JwksCache


def _jwks(kid: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key)), "kid": kid, "use": "sig"}
    return json.dumps({"keys": [jwk]})


class FakeIdp:
    def __init__(self) -> None:
        self.answers: list[Any] = []
        self.calls = 0

    async def fetch(self, url: str, ca_file: str | None) -> str:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return str(answer)


def _count(metrics: Any, result: str) -> float:
    return float(metrics.jwks_fetches.labels(result)._value.get())


def test_keys_are_kept_through_failures_and_garbage_and_replaced_by_new_good_ones() -> None:
    async def main() -> None:
        now = [0.0]
        idp = FakeIdp()
        metrics = create_metrics()
        cache = JwksCache(fetch=idp.fetch, metrics=metrics, clock=lambda: now[0])
        changes: list[int] = []
        cache.on_change = lambda: changes.append(1)
        first, second = _jwks("k1"), _jwks("k2")
        idp.answers = [first]
        assert await cache.text("https://idp/jwks", None, 60) == first  # waits for the first
        assert changes == [1]
        # Not due yet: no fetch at all.
        await cache.text("https://idp/jwks", None, 60)
        assert idp.calls == 1
        for bad in (OSError("connection refused"), "not json", '{"keys": []}', "{}" * 10):
            now[0] += 61
            idp.answers = [bad]
            assert await cache.text("https://idp/jwks", None, 60) == first  # answers at once
            await asyncio.sleep(0.01)  # the background fetch fails
            assert await cache.text("https://idp/jwks", None, 60) == first
        assert _count(metrics, "failed") == 1
        assert _count(metrics, "unusable") == 3
        now[0] += 61
        idp.answers = [second]
        await cache.text("https://idp/jwks", None, 60)
        await asyncio.sleep(0.01)
        assert await cache.text("https://idp/jwks", None, 60) == second
        assert changes == [1, 1]

    asyncio.run(main())


def test_no_keys_ever_fetched_says_why_and_retries_sooner_than_the_refresh() -> None:
    async def main() -> None:
        now = [0.0]
        idp = FakeIdp()
        cache = JwksCache(fetch=idp.fetch, metrics=create_metrics(), clock=lambda: now[0])
        idp.answers = [OSError("HTTP 500")]
        with pytest.raises(OSError, match="HTTP 500"):
            await cache.text("https://idp/jwks", None, 3600)
        now[0] += 31  # a failure is retried after 30 s, not after the hour
        idp.answers = [_jwks("k")]
        assert "keys" in await cache.text("https://idp/jwks", None, 3600)

    asyncio.run(main())


def test_a_slow_first_fetch_is_waited_for_briefly_only() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def slow(url: str, ca: str | None) -> str:
            started.set()
            await asyncio.sleep(30)
            return ""

        cache = JwksCache(fetch=slow, metrics=create_metrics(), clock=lambda: 0.0, first_wait=0.05)
        with pytest.raises(OSError, match="not fetched yet"):
            await cache.text("https://idp/jwks", None, 60)
        assert started.is_set()
        cache.forget_except(set())  # cancels the fetch

    asyncio.run(main())


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com/jwks",  # plain http off loopback
        "file:///etc/passwd",
        "https://user:pw@idp.example.com/jwks",
        "https://idp.example.com/jwks#x",
        "https://idp.example.com/\r\nx",
        "https://idp.example.com/ jwks",
        "gopher://idp.example.com/",
        "https:///jwks",
    ],
)
def test_unsafe_jwks_urls_are_refused(url: str) -> None:
    doc = {"kind": "Issuer", "name": "i", "issuer": "x", "audiences": ["a"], "jwks_url": url}
    with pytest.raises(DocumentError, match="jwks_url"):
        parse_document(doc)


def test_jwks_url_fields_go_together() -> None:
    base = {"kind": "Issuer", "name": "i", "issuer": "x", "audiences": ["a"]}
    parse_document({**base, "jwks_url": "https://idp.example.com/jwks", "jwks_refresh": "1s"})
    parse_document({**base, "jwks_url": "http://127.0.0.1:9/jwks", "jwks_ca_file": "/ca.pem"})
    for bad in (
        {"jwks_url": "https://idp.example.com/j", "jwks_file": "/k.json"},
        {"jwks_file": "/k.json", "jwks_ca_file": "/ca.pem"},
        {"jwks_url": "https://idp.example.com/j", "jwks_refresh": "500ms"},
        {"jwks_url": "https://idp.example.com/j", "jwks_refresh": "2d"},
    ):
        with pytest.raises(DocumentError):
            parse_document({**base, **bad})
