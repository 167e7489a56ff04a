"""One agent connection as the handler sees it: a WebSocket, or a single plain-HTTP request."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..protocol import Session, Transport, encode_server_to_agent, encode_ws_frame, pb

AsgiSend = Callable[[dict[str, Any]], Awaitable[None]]


class ConnectionClosedError(Exception):
    """Sending on a connection that is gone (or on plain HTTP, which cannot push)."""


class Connection:
    """Transport-neutral connection. ``record`` is the agent bound by its first message."""

    __slots__ = (
        "_lock",
        "_send",
        "closed",
        "max_message_bytes",
        "record",
        "remote_addr",
        "session",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        remote_addr: str,
        *,
        send: AsgiSend | None = None,
        max_message_bytes: int,
    ) -> None:
        self.transport = transport
        self.remote_addr = remote_addr
        self.session = Session(transport)
        self.record: Any = None
        self.closed = False
        self.max_message_bytes = max_message_bytes
        self._send = send
        self._lock = trio.Lock() if transport is Transport.WS else None

    @property
    def can_push(self) -> bool:
        return self.transport is Transport.WS and not self.closed

    async def send(self, msg: pb.ServerToAgent) -> None:
        """Push a message (WebSocket only). Serialised: one writer per connection."""
        if self._send is None or self._lock is None:
            raise ConnectionClosedError(
                "plain HTTP connections cannot push; reply on the next poll"
            )
        payload = encode_server_to_agent(msg, max_bytes=self.max_message_bytes)
        await self.send_frame(encode_ws_frame(payload))

    async def send_frame(self, frame: bytes) -> None:
        assert self._send is not None and self._lock is not None
        async with self._lock:
            if self.closed:
                raise ConnectionClosedError("connection closed")
            try:
                await self._send({"type": "websocket.send", "bytes": frame})
            except Exception as exc:  # hypercorn raises several types once the peer is gone
                self.closed = True
                raise ConnectionClosedError(f"send failed: {exc!r}") from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close a WebSocket (idempotent). No-op for HTTP."""
        if self._send is None or self._lock is None or self.closed:
            return
        async with self._lock:
            if self.closed:
                return
            self.closed = True
            # The peer may already be gone; closing a dead socket is not an error worth raising.
            with contextlib.suppress(Exception):
                await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})
