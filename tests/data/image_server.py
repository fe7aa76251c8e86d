"""A real HTTP server on 127.0.0.1 that serves images and the ways image URLs fail.

Used by the internet datamodule tests instead of mocks: img2dataset really connects, times
out, follows redirects and decodes what comes back. The server counts every request (by path)
and every TCP connection, so a test can prove that a URL was never fetched.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Response:
    """What the server answers on one path."""

    status: int = 200
    body: bytes = b""
    content_type: str = "image/jpeg"
    location: str | None = None  # for redirects; "{port}" stands for the server's port
    delay: float = 0.0  # seconds to wait before answering (past the client's timeout)
    drip: float = 0.0  # seconds between 64-byte pieces of the body (each within the timeout)
    length: bool = True  # send Content-Length; False: the body ends when the connection does


class ImageServer:
    """``with ImageServer(routes) as server:`` serves ``routes`` on ``server.url(path)``.

    Unknown paths get a 404. Bounded: each connection times out after a few seconds and the
    serving thread is a daemon, stopped when the block exits.
    """

    def __init__(self, routes: dict[str, Response]) -> None:
        self.routes = routes
        self.requests: Counter[str] = Counter()
        self.connections = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a client that connects and says nothing is dropped

            def do_GET(self) -> None:
                with server._lock:
                    server.requests[self.path] += 1
                response = server.routes.get(self.path, Response(404, b"not found", "text/plain"))
                time.sleep(response.delay)
                try:
                    self.send_response(response.status)
                    self.send_header("Content-Type", response.content_type)
                    if response.length:
                        self.send_header("Content-Length", str(len(response.body)))
                    if response.location is not None:
                        self.send_header("Location", server.url(response.location))
                    self.end_headers()
                    if not response.drip:
                        self.wfile.write(response.body)
                    for start in range(0, len(response.body) if response.drip else 0, 64):
                        self.wfile.write(response.body[start : start + 64])
                        self.wfile.flush()
                        time.sleep(response.drip)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the slow route): expected

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        class Server(ThreadingHTTPServer):
            daemon_threads = True  # a sleeping handler must not hold up shutdown

            def verify_request(self, request, client_address) -> bool:  # type: ignore[override]
                with server._lock:
                    server.connections += 1
                return True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        path = path.replace("{port}", str(self.port))
        return path if "://" in path else f"http://127.0.0.1:{self.port}{path}"

    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
