"""The listener's certificate: read from files by wardgate, served to Envoy over SDS.

``ListenerCertificate`` reads the certificate chain and key files (bounded reads in a thread:
``files.read_bounded_file``), checks the pair (``domain/tls_material.py``) and publishes it
as the SDS secret the TLS filter chain names (``listener_tls.py``). It reads them again every
``interval``: a renewed certificate (cert-manager, certbot, a rotated Kubernetes Secret) is
served by every Envoy within that interval, with no restart and no dropped connection. A pair
that cannot be read or is not usable is refused with its reason (logged, counted in
``wardgate_tls_certificate_loads_total``); the last good pair stays. Until a first pair is
good, wardgate is not ready and Envoy keeps its TLS listener warming.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from wardgate.domain.tls_material import CertInfo, check_pair
from wardgate.metrics import Metrics
from wardgate.xds import canonical

log = logging.getLogger("wardgate.tls")


def secret_bytes(name: str, chain_pem: str, key_pem: str) -> bytes:
    """A serialized, deterministic SDS ``Secret`` holding the pair inline."""
    secret = {
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"inline_bytes": base64.b64encode(chain_pem.encode()).decode()},
            "private_key": {"inline_bytes": base64.b64encode(key_pem.encode()).decode()},
        },
    }
    message = canonical.parse(secret, secret_pb2.Secret())
    return bytes(message.SerializeToString(deterministic=True))


class ListenerCertificate:
    def __init__(
        self,
        *,
        name: str,
        cert_file: str,
        key_file: str,
        publish: Callable[[str, bytes], bool],
        read_file: Callable[[str], str],
        metrics: Metrics,
        interval: float,
    ) -> None:
        self._name = name
        self._files = (cert_file, key_file)
        self._publish = publish
        self._read_file = read_file
        self._metrics = metrics
        self._interval = interval
        self.served: CertInfo | None = None
        self.problem = "no certificate loaded yet"

    async def load(self) -> bool:
        """Read and check the pair; publish it if it changed. Returns whether it did."""
        try:
            chain, key = await asyncio.wait_for(
                asyncio.gather(*(asyncio.to_thread(self._read_file, f) for f in self._files)),
                5.0,
            )
            info = check_pair(chain, key)
        except (OSError, ValueError, TimeoutError) as exc:
            why = f"{self._files[0]}, {self._files[1]}: {exc or type(exc).__name__}"
            self._metrics.tls_certificate_loads.labels("refused").inc()
            if self.served is None:
                self.problem = f"no usable TLS certificate: {why}"
            log.warning("listener certificate refused (%s): %s", self._kept(), why)
            return False
        self.problem = ""
        changed = self._publish(self._name, secret_bytes(self._name, chain, key))
        self._metrics.tls_certificate_loads.labels("changed" if changed else "unchanged").inc()
        if changed:
            log.info(
                "listener certificate: %s, serial %x, valid until %s",
                info.subject,
                info.serial,
                info.not_after.isoformat(),
            )
        self.served = info
        return changed

    def _kept(self) -> str:
        return "keeping the last good one" if self.served is not None else "none served yet"

    async def run(self) -> None:
        while True:
            await self.load()
            await asyncio.sleep(self._interval)
