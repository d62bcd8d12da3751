"""Fetching an Issuer's ``jwks_url``: one bounded HTTP GET.

The URL was checked when its document was validated (``domain/jwks.py`` ``check_jwks_url``:
https, or http to loopback). Here the fetch itself is bounded: a deadline for the whole
exchange, no redirects (a redirect could lead to plain http or anywhere else), status 200
only, at most ``MAX_JWKS_BYTES`` read, the server's certificate checked against the
``ca_file`` given (else the system's trust store) with its host name.
"""

from __future__ import annotations

import ssl

import aiohttp

MAX_JWKS_BYTES = 1 << 20


class JwksFetchError(Exception):
    """A fetch failed; the message says why (shown in ``wardgate status``)."""


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to its end or ``limit`` bytes, whichever comes first. (One
    ``content.read(n)`` answers with what has arrived so far: a body sent in pieces, chunked
    or in TLS records that come apart, would be cut at the first.)"""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        part = await content.read(limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


async def fetch_jwks(url: str, *, ca_file: str | None, timeout: float = 5.0) -> str:
    """The body of ``url`` as text; ``JwksFetchError`` saying why not."""
    try:
        context = tls_context(ca_file) if url.startswith("https://") else None
    except (OSError, ssl.SSLError) as exc:
        raise JwksFetchError(f"jwks_ca_file {ca_file}: {exc}") from None
    limits = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=limits, trust_env=False) as session,
            session.get(
                url,
                ssl=context if context is not None else False,
                allow_redirects=False,
                headers={"accept": "application/jwk-set+json, application/json"},
            ) as resp,
        ):
            if resp.status != 200:
                raise JwksFetchError(f"{url} answered HTTP {resp.status}")
            body = await _read_bounded(resp.content, MAX_JWKS_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
        raise JwksFetchError(f"{url}: {type(exc).__name__}: {exc}"[:500]) from None
    if len(body) > MAX_JWKS_BYTES:
        raise JwksFetchError(f"{url}: larger than {MAX_JWKS_BYTES} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise JwksFetchError(f"{url}: not UTF-8 text") from None
