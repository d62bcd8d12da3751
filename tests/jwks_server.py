"""A JWKS server for the tests: HTTP or HTTPS on a free loopback port, in a thread, whose
answer the test changes as it goes (``body``, ``status``)."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class JwksServer:
    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.status = 200
        self.location = ""  # with status 302: where it redirects
        self.hits = 0
        self.url = ""


@contextmanager
def jwks_server(*, cert: Path | None = None, key: Path | None = None) -> Iterator[JwksServer]:
    state = JwksServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits += 1
            self.send_response(state.status)
            if state.location:
                self.send_header("location", state.location)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if cert is not None and key is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
