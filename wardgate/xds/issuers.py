"""After each build: the authorizer's verifier for the current Issuer documents.

An issuer whose keys cannot be loaded (a missing file or env var, an unusable key set), or
that repeats another's ``iss``, is refused like a bad document: its refusal goes to
``wardgate status`` with the others. Key files change without their documents (key
rotation), so issuers with a ``jwks_file`` are loaded again at every idle re-read.

Key files are read in threads of their own (two; ``read_file``, normally
``files.read_bounded_file``) with a deadline: a path naming a FIFO, a device or a slow mount
refuses that issuer, never stalls the service. A read that does not finish keeps its thread,
and the path is not read again until it does, so a stuck mount cannot take every thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable, Mapping

from wardgate.domain.documents import Issuer
from wardgate.domain.durations import parse_duration
from wardgate.domain.tokens import IssuerHolder, JwtVerifier, TrustedIssuer, trusted_issuer
from wardgate.xds.jwks_cache import JwksCache


class IssuerLoader:
    def __init__(
        self,
        *,
        holder: IssuerHolder,
        environ: Mapping[str, str],
        read_file: Callable[[str], str],
        read_timeout: float = 2.0,
        jwks_urls: JwksCache | None = None,
    ) -> None:
        self._jwks_urls = jwks_urls
        self._holder = holder
        self._environ = environ
        self._read_file = read_file
        self._read_timeout = read_timeout
        self._threads = concurrent.futures.ThreadPoolExecutor(2, "wardgate-key-files")
        self._reading: dict[str, concurrent.futures.Future[str]] = {}
        self._docs: dict[str, Issuer] = {}
        self.refused: dict[str, str] = {}  # "Issuer/name" -> reason, from the last load

    @property
    def has_key_files(self) -> bool:
        """Whether keys may change without their documents (files, URLs): re-load often."""
        return any(doc.jwks_file or doc.jwks_url for doc in self._docs.values())

    async def load(self, issuers: Mapping[str, Issuer], *, force: bool = False) -> dict[str, str]:
        """Give the holder a verifier for ``issuers``; returns the issuers refused and why.
        Unchanged documents are not loaded again, unless ``force`` or one was refused
        (its env var or file may be there now)."""
        if not force and not self.refused and dict(issuers) == self._docs:
            return self.refused
        files = await self._read_files(d.jwks_file for d in issuers.values() if d.jwks_file)
        urls = await self._fetched(d for d in issuers.values() if d.jwks_url)

        def read_text(path: str) -> str:
            found = files[path]
            if isinstance(found, Exception):
                raise found
            return found

        def read_url(url: str) -> str:
            found = urls[url]
            if isinstance(found, Exception):
                raise found
            return found

        trusted: list[TrustedIssuer] = []
        by_iss: dict[str, str] = {}
        refused: dict[str, str] = {}
        for name, doc in sorted(issuers.items()):
            if doc.issuer in by_iss:
                refused[f"Issuer/{name}"] = (
                    f"iss {doc.issuer} is already trusted through issuer {by_iss[doc.issuer]}"
                )
                continue
            try:
                trusted.append(
                    trusted_issuer(
                        doc, environ=self._environ, read_text=read_text, read_url=read_url
                    )
                )
                by_iss[doc.issuer] = name
            except ValueError as exc:
                refused[f"Issuer/{name}"] = str(exc)
        self._holder.verifier = JwtVerifier(trusted)
        self._docs = dict(issuers)
        self.refused = refused
        return refused

    async def _fetched(self, docs: Iterable[Issuer]) -> dict[str, str | Exception]:
        """Every ``jwks_url``'s last good key set (``jwks_cache.py``), or why there is none."""
        out: dict[str, str | Exception] = {}
        wanted: set[tuple[str, str | None]] = set()
        for doc in docs:
            assert doc.jwks_url is not None
            if self._jwks_urls is None:
                out[doc.jwks_url] = OSError("key sets from URLs are not fetched here")
                continue
            wanted.add((doc.jwks_url, doc.jwks_ca_file))
            refresh = parse_duration(doc.jwks_refresh)
            try:
                out[doc.jwks_url] = await self._jwks_urls.text(
                    doc.jwks_url, doc.jwks_ca_file, refresh
                )
            except OSError as exc:
                out[doc.jwks_url] = exc
        if self._jwks_urls is not None:
            self._jwks_urls.forget_except(wanted)
        return out

    async def _read_files(self, paths: Iterable[str]) -> dict[str, str | Exception]:
        """Every key file's text, or why it could not be read."""
        unique = sorted(set(paths))
        reads = [self._read(p) for p in unique]
        return dict(zip(unique, await asyncio.gather(*reads), strict=True))

    async def _read(self, path: str) -> str | Exception:
        earlier = self._reading.get(path)
        if earlier is not None and not earlier.done():
            return OSError("still not read (the read started earlier has not finished)")
        future = self._threads.submit(self._read_file, path)
        self._reading[path] = future
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self._read_timeout)
        except TimeoutError:
            return OSError(f"not read within {self._read_timeout:g} s")
        except (OSError, ValueError) as exc:
            return exc
