"""``fetch_jwks`` against a loopback server that answers the way real servers do: a body in
pieces (chunked, or TLS records and TCP segments arriving apart)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from wardgate.jwks_fetch import MAX_JWKS_BYTES, JwksFetchError, fetch_jwks

KEYS = json.dumps({"keys": [{"kty": "EC", "kid": f"k{i}", "x": "A" * 43} for i in range(200)]})

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(answer: Answer) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/jwks.json"


def _fetch(answer: Answer) -> str:
    async def main() -> str:
        server, url = await _serve(answer)
        async with server:
            return await fetch_jwks(url, ca_file=None)

    return asyncio.run(main())


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_in_pieces_is_read_whole(chunked: bool) -> None:
    body = KEYS.encode()
    half = len(body) // 2

    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % len(body)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + framing + b"\r\n\r\n")
        for piece in (body[:half], body[half:]):
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await w.drain()
            await asyncio.sleep(0.05)
        if chunked:
            w.write(b"0\r\n\r\n")
        await w.drain()

    assert _fetch(answer) == KEYS


def test_a_body_over_the_limit_in_pieces_is_refused() -> None:
    piece = b" " * 65536

    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(MAX_JWKS_BYTES // len(piece) + 2):
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await w.drain()
        w.write(b"0\r\n\r\n")
        await w.drain()

    with pytest.raises(JwksFetchError, match="larger than"):
        _fetch(answer)
