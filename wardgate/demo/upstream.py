"""A demo REST upstream: answers every request with what it received, as JSON.

``python -m wardgate.demo.upstream --port 8081 --name users``. ``/healthz`` answers 200;
``/status/NNN`` answers that status; ``/delay/SECONDS`` waits first.

``headers`` maps each lower-case name to its value, the values of a header sent more than once
joined with ", " (nothing is hidden: two ``Cookie`` headers show as one value holding both);
``header_list`` is every header line as received, in order, ``[name, value]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterable

from aiohttp import web


def _combined(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in items:
        name = key.lower()
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def create_app(name: str) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        status = 200
        if path.startswith("/status/") and path[8:].isdigit():
            status = int(path[8:])
        if path.startswith("/delay/"):
            with contextlib.suppress(ValueError):
                await asyncio.sleep(min(float(path[7:]), 30.0))
        return web.json_response(
            {
                "service": name,
                "method": request.method,
                "path": request.path_qs,
                "headers": _combined(request.headers.items()),
                "header_list": [[k.lower(), v] for k, v in request.headers.items()],
                "body_bytes": len(body),
            },
            status=status,
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": name})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="demo")
    args = parser.parse_args()
    web.run_app(create_app(args.name), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
