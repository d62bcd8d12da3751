"""After each build: the authorizer's verifier for the current Issuer documents.

An issuer whose keys cannot be loaded (a missing file or env var, an unusable key set), or
that repeats another's ``iss``, is refused like a bad document: its refusal goes to
``wardgate status`` with the others. Key files change without their documents (key
rotation), so issuers with a ``jwks_file`` are loaded again at every idle re-read.

Key files are read in a thread with a deadline (``read_file``, normally
``files.read_bounded_file``): a path naming a FIFO, a device or a slow mount refuses that
issuer, never stalls the service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

from wardgate.domain.documents import Issuer
from wardgate.domain.tokens import IssuerHolder, JwtVerifier, TrustedIssuer, trusted_issuer


class IssuerLoader:
    def __init__(
        self,
        *,
        holder: IssuerHolder,
        environ: Mapping[str, str],
        read_file: Callable[[str], str],
        read_timeout: float = 2.0,
    ) -> None:
        self._holder = holder
        self._environ = environ
        self._read_file = read_file
        self._read_timeout = read_timeout
        self._docs: dict[str, Issuer] = {}
        self.refused: dict[str, str] = {}  # "Issuer/name" -> reason, from the last load

    @property
    def has_key_files(self) -> bool:
        return any(doc.jwks_file for doc in self._docs.values())

    async def load(self, issuers: Mapping[str, Issuer], *, force: bool = False) -> dict[str, str]:
        """Give the holder a verifier for ``issuers``; returns the issuers refused and why.
        Unchanged documents are not loaded again, unless ``force`` or one was refused
        (its env var or file may be there now)."""
        if not force and not self.refused and dict(issuers) == self._docs:
            return self.refused
        files = await self._read_files(d.jwks_file for d in issuers.values() if d.jwks_file)

        def read_text(path: str) -> str:
            found = files[path]
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
                trusted.append(trusted_issuer(doc, environ=self._environ, read_text=read_text))
                by_iss[doc.issuer] = name
            except ValueError as exc:
                refused[f"Issuer/{name}"] = str(exc)
        self._holder.verifier = JwtVerifier(trusted)
        self._docs = dict(issuers)
        self.refused = refused
        return refused

    async def _read_files(self, paths: Iterable[str]) -> dict[str, str | Exception]:
        """Every key file's text, or why it could not be read, each in a thread."""
        unique = sorted(set(paths))
        results = await asyncio.gather(
            *(
                asyncio.wait_for(asyncio.to_thread(self._read_file, p), self._read_timeout)
                for p in unique
            ),
            return_exceptions=True,
        )
        out: dict[str, str | Exception] = {}
        for path, result in zip(unique, results, strict=True):
            if isinstance(result, TimeoutError):
                result = OSError(f"not read within {self._read_timeout:g} s")
            elif isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            out[path] = result
        return out
