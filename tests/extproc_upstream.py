"""An upstream for the external-processing tests: answers shaped by the query, and a count of
the requests it received per path and query (``/__count``, ``/__reset``).

``python -m tests.extproc_upstream --port N``. Query parameters of any other path:
``cc`` (cache-control), ``vary``, ``cookie=1`` (set-cookie), ``status``, ``delay`` (seconds),
``gzip=1`` / ``encoding=NAME`` (content-encoding), ``size`` (a padding field of that many
bytes), ``ctype`` (content-type), ``malformed=1`` (a body that is not JSON), ``age``,
``links=1`` (two ``link`` headers), ``late`` (seconds between the headers and the body),
``empty=1`` (no body); a ``range: bytes=A-B`` header is answered 206 with those bytes.
The JSON answer holds the caller's identity headers and a field per kind of secret.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import json

from aiohttp import web


def create_app() -> web.Application:
    counts: collections.Counter[str] = collections.Counter()

    async def count(_request: web.Request) -> web.Response:
        return web.json_response(dict(counts))

    async def reset(_request: web.Request) -> web.Response:
        counts.clear()
        return web.json_response({})

    async def answer(request: web.Request) -> web.Response:
        counts[request.path_qs] += 1
        q = request.query
        if "delay" in q:
            await asyncio.sleep(min(float(q["delay"]), 10.0))
        doc = {
            "id": 7,
            "name": "widget",
            "password": "hunter2",
            "path": request.path_qs,
            "user": request.headers.get("x-user-id"),
            "roles": request.headers.get("x-user-roles"),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "profile": {"email": "a@example.com", "phone": "555"},
            "items": [{"id": 1, "secret": "s1"}, {"id": 2, "secret": "s2"}],
            "internal": {"a": 1, "b": 2},
            "n": counts[request.path_qs],
        }
        if "size" in q:
            doc["padding"] = "x" * int(q["size"])
        body = b"{not json" if "malformed" in q else json.dumps(doc).encode()
        if "empty" in q:
            body = b""
        headers = {"x-powered-by": "tests", "content-type": q.get("ctype", "application/json")}
        if "cc" in q:
            headers["cache-control"] = q["cc"]
        if "vary" in q:
            headers["vary"] = q["vary"]
        if "cookie" in q:
            headers["set-cookie"] = "upstream=1"
        if "age" in q:
            headers["age"] = q["age"]
        if "gzip" in q:
            body = gzip.compress(body)
            headers["content-encoding"] = "gzip"
        elif "encoding" in q:
            headers["content-encoding"] = q["encoding"]
        if "late" in q:  # the headers now, the body later (chunked)
            streamed = web.StreamResponse(status=int(q.get("status", "200")), headers=headers)
            await streamed.prepare(request)
            await asyncio.sleep(min(float(q["late"]), 10.0))
            await streamed.write(body)
            await streamed.write_eof()
            return streamed
        wanted = request.headers.get("range", "").removeprefix("bytes=").split("-")
        if len(wanted) == 2 and wanted[0].isdigit() and wanted[1].isdigit():  # as files do
            part = body[int(wanted[0]) : int(wanted[1]) + 1]
            headers["content-range"] = f"bytes {wanted[0]}-{wanted[1]}/{len(body)}"
            return web.Response(body=part, status=206, headers=headers)
        response = web.Response(body=body, status=int(q.get("status", "200")), headers=headers)
        if "links" in q:
            response.headers.add("link", "</a.css>; rel=preload")
            response.headers.add("link", "</b.js>; rel=preload")
        return response

    app = web.Application()
    app.router.add_get("/__count", count)
    app.router.add_post("/__reset", reset)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
