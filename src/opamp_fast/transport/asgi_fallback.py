"""OpAMP requests that arrive on a connection already handed to the ASGI server.

The front serves the OpAMP path itself, but a keep-alive connection whose first request was
for the REST API belongs to the ASGI server from then on; an OpAMP POST that follows on it
(HTTP client pools do this) lands here. It is served by the very same sans-IO code: the request
is replayed into a fresh :class:`~.connection.OpAMPConnection` and its response is relayed.
A WebSocket upgrade cannot be relayed this way and gets a clear 400: agents open their
WebSocket on a connection of its own, which the front serves.
"""

from __future__ import annotations

import time
from typing import Any

from ._http11 import GZIP_SLACK, plain_response
from .connection import CLOSED, HEAD, Limits, OpAMPConnection

__all__ = ["OpAMPFallback"]


class OpAMPFallback:
    """ASGI app for the OpAMP path on handed-over connections (plain-HTTP POST only)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        if any(k.lower() == "upgrade" for k, _ in headers):
            await _relay(
                send,
                plain_response(
                    400,
                    "open the OpAMP WebSocket on a connection of its own (this one already "
                    "served other requests)",
                ),
            )
            return
        body = await _read_body(receive, self.limits.max_message_bytes + GZIP_SLACK + 1)
        client = scope.get("client")
        remote = f"{client[0]}:{client[1]}" if client else ""
        out: list[bytes] = []
        conn = OpAMPConnection(self.limits, remote, out.append, time.monotonic())
        head = [f"{scope['method']} {self.limits.path} HTTP/1.1"]
        head.extend(f"{k}: {v}" for k, v in headers if k.lower() not in _FRAMING)
        head.append(f"content-length: {len(body)}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        conn.receive_data(request, time.monotonic())
        if conn.state not in (HEAD, CLOSED):  # cannot happen with a complete request
            out.append(plain_response(500, "incomplete OpAMP request"))
        await _relay(send, b"".join(out))


_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "expect"})


async def _read_body(receive: Any, cap: int) -> bytes:
    """The whole body, but never more than ``cap`` bytes (the connection answers 413)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        if size < cap:
            chunks.append(chunk[: cap - size])
        size += len(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _relay(send: Any, response: bytes) -> None:
    """Send a raw HTTP/1.1 response produced by the sans-IO code through ASGI."""
    if response.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
        response = response[25:]
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    out_headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.lower() != b"connection":
            out_headers.append((name.strip().lower(), value.strip()))
    await send({"type": "http.response.start", "status": status, "headers": out_headers})
    await send({"type": "http.response.body", "body": body})
