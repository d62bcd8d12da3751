"""Composition parts over HTTP, through the asking Envoy's compose listener
(``domain/compose.py`` ``PartFetcher``).

Each part is a GET to ``http://<compose address><path>`` carrying ``x-wardgate-part:
<route>/<part>`` and the deployment's compose key (``x-wardgate-compose-key``, without which
the compose listener answers 404); Envoy's compose route for that header sends it to the
part's cluster with the part's timeout and the route's retries (``xds/extproc.py``). wardgate
only bounds what it reads (``max_bytes``) and how long it waits (the part's timeout and a
second for Envoy's own answer). The compose address comes from the Envoy's listener
configuration and must be an IP literal and a port: no names to resolve, nothing else to
reach.
"""

from __future__ import annotations

import asyncio
import ipaddress

import aiohttp
from yarl import URL

from wardgate.domain.compose import KEY_HEADER, ComposeKey, PartRequest, PartResponse

PART_HEADER = "x-wardgate-part"


def valid_via(via: str) -> bool:
    """``host:port`` with an IP literal host (IPv6 in brackets) and a port."""
    host, sep, port = via.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return False
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return host.startswith("[") == (":" in host)


class HttpPartFetcher:
    """One connection pool per process, opened on first use. Every part carries the
    deployment's compose key, without which Envoy's compose listener routes nothing."""

    def __init__(self, *, key: ComposeKey, max_connections: int = 256) -> None:
        self._key = key
        self._max = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max, force_close=False),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def fetch(self, via: str, request: PartRequest) -> PartResponse:
        if not valid_via(via) or not self._key.value:
            return PartResponse(error="unreachable")
        headers = {k: v for k, v in request.headers}
        headers[PART_HEADER] = f"{request.route}/{request.part}"
        headers[KEY_HEADER] = self._key.value
        url = URL(f"http://{via}{request.path}", encoded=True)
        timeout = aiohttp.ClientTimeout(total=request.timeout + 1.0)
        try:
            async with self._client().get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > request.max_bytes:
                        return PartResponse(error="too_large")
                    chunks.append(chunk)
                return PartResponse(status=response.status, body=b"".join(chunks))
        except TimeoutError:
            return PartResponse(error="timeout")
        except (aiohttp.ClientError, OSError, ValueError):
            return PartResponse(error="unreachable")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)
