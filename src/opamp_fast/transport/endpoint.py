"""The OpAMP endpoint: one ASGI callable that serves both transports on one path."""

from __future__ import annotations

from typing import Any

from ..handlers import AgentHandler, ConnectingRequest
from ..protocol import Transport
from .http import serve_http
from .stats import TransportStats
from .ws import serve_websocket


class OpAMPEndpoint:
    """ASGI app for the OpAMP path: WebSocket upgrades and plain-HTTP POSTs."""

    def __init__(self, handler: AgentHandler, *, max_message_bytes: int) -> None:
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.stats = TransportStats()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        transport = Transport.WS if kind == "websocket" else Transport.HTTP
        client = scope.get("client")
        request = ConnectingRequest(
            transport=transport,
            path=scope["path"],
            remote_addr=f"{client[0]}:{client[1]}" if client else "",
            headers=_headers(scope["headers"]),
        )
        serve = serve_websocket if kind == "websocket" else serve_http
        await serve(
            scope,
            receive,
            send,
            handler=self.handler,
            stats=self.stats,
            max_message_bytes=self.max_message_bytes,
            request=request,
        )


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out
