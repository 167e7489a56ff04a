"""A small OTLP/HTTP receiver for tests: counts the POSTs to each signal's path.

A real HTTP server on a loopback port (the standard library's, in its own thread), so agents
send to it exactly as they would to a collector: ``/v1/metrics``, ``/v1/traces``, ``/v1/logs``.
It answers 200 with an empty body (an empty ``Export*ServiceResponse`` is zero bytes).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Receiver:
    url: str  # base URL, e.g. http://127.0.0.1:43123
    posts: Counter[str] = field(default_factory=Counter)  # path -> POSTs received
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> last headers
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str) -> int:
        with self.lock:
            return self.posts[path]


@contextlib.contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    receiver: Receiver | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            assert receiver is not None
            with receiver.lock:
                receiver.posts[self.path] += 1
                receiver.headers[self.path] = {k.lower(): v for k, v in self.headers.items()}
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
