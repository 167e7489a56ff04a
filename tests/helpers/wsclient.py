"""A small WebSocket client for tests, on anyio streams and wsproto (runs on asyncio and trio).

It is a real peer over loopback: a TCP connection, wsproto's client state machine, a reader
task that answers pings and queues messages. ``open_ws(url)`` yields a :class:`WSClient`.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import wsproto
import wsproto.events as wse

__all__ = ["CloseReason", "ConnectionClosed", "ConnectionRejected", "WSClient", "open_ws"]


@dataclass(frozen=True)
class CloseReason:
    code: int
    reason: str


class ConnectionClosed(Exception):
    def __init__(self, reason: CloseReason) -> None:
        super().__init__(f"WebSocket closed: {reason.code} {reason.reason}")
        self.reason = reason


class ConnectionRejected(Exception):
    def __init__(self, status_code: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"upgrade rejected with HTTP {status_code}")
        self.status_code = status_code
        self.headers = headers
        self.body = body


class WSClient:
    def __init__(self, stream: anyio.abc.ByteStream, ws: wsproto.WSConnection) -> None:
        self._stream = stream
        self._ws = ws
        self._send_queue, self._messages = anyio.create_memory_object_stream[bytes | str](1000)
        self._lock = anyio.Lock()
        self.closed: CloseReason | None = None
        self._closed_event = anyio.Event()

    async def send_message(self, data: bytes | str) -> None:
        if self.closed is not None:
            raise ConnectionClosed(self.closed)
        await self._send(wse.Message(data=data))

    async def get_message(self) -> bytes | str:
        try:
            return await self._messages.receive()
        except anyio.EndOfStream:
            assert self.closed is not None
            raise ConnectionClosed(self.closed) from None

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        if self.closed is None and self._ws.state is wsproto.connection.ConnectionState.OPEN:
            with contextlib.suppress(Exception):
                await self._send(wse.CloseConnection(code=code, reason=reason))
            with anyio.move_on_after(2):
                await self._closed_event.wait()
        await self._stream.aclose()
        self._messages.close()

    async def _send(self, event: Any) -> None:
        async with self._lock:
            await self._stream.send(self._ws.send(event))

    async def _read(self) -> None:
        buf: dict[type, list[Any]] = {wse.BytesMessage: [], wse.TextMessage: []}
        try:
            while True:
                try:
                    data = await self._stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._ws.receive_data(None)
                    data = None
                if data is not None:
                    self._ws.receive_data(data)
                for event in self._ws.events():
                    if isinstance(event, wse.Ping):
                        await self._send(event.response())
                    elif isinstance(event, wse.CloseConnection):
                        self.closed = CloseReason(event.code, event.reason or "")
                        if self._ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                            with contextlib.suppress(Exception):
                                await self._send(event.response())
                        return
                    elif isinstance(event, wse.BytesMessage | wse.TextMessage):
                        parts = buf[type(event)]
                        parts.append(event.data)
                        if event.message_finished:
                            joined = (
                                b"".join(parts)
                                if isinstance(event, wse.BytesMessage)
                                else "".join(parts)
                            )
                            parts.clear()
                            await self._send_queue.send(joined)
                if data is None:
                    self.closed = self.closed or CloseReason(1006, "connection lost")
                    return
        finally:
            if self.closed is None:
                self.closed = CloseReason(1006, "connection lost")
            self._closed_event.set()
            self._send_queue.close()


async def _handshake(
    stream: anyio.abc.ByteStream, host: str, target: str, headers: list[tuple[str, str]]
) -> tuple[wsproto.WSConnection, bytes]:
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send(
        ws.send(
            wse.Request(
                host=host,
                target=target,
                extra_headers=[(k.encode(), v.encode()) for k, v in headers],
            )
        )
    )
    reject: wse.RejectConnection | None = None
    body = b""
    while True:
        try:
            data = await stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            raise ConnectionRejected(0, {}, b"connection closed during the handshake") from None
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, wse.AcceptConnection):
                return ws, b""
            if isinstance(event, wse.RejectConnection):
                reject = event
                if not event.has_body:
                    raise ConnectionRejected(event.status_code, _headers(event), b"")
            elif isinstance(event, wse.RejectData):
                body += event.data
                if event.body_finished and reject is not None:
                    raise ConnectionRejected(reject.status_code, _headers(reject), body)


def _headers(event: wse.RejectConnection) -> dict[str, str]:
    return {k.decode().lower(): v.decode() for k, v in event.headers}


@contextlib.asynccontextmanager
async def open_ws(
    url: str,
    *,
    extra_headers: list[tuple[str, str]] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
) -> AsyncIterator[WSClient]:
    """Connect and upgrade (raises :class:`ConnectionRejected` on a non-101 answer)."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    host = parts.hostname or "127.0.0.1"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    with anyio.fail_after(connect_timeout):
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(
            host, port, tls=secure, ssl_context=ssl_context, tls_standard_compatible=False
        )
        try:
            ws, _ = await _handshake(stream, f"{host}:{port}", target, extra_headers or [])
        except BaseException:
            await stream.aclose()
            raise
    client = WSClient(stream, ws)
    async with anyio.create_task_group() as tg:
        tg.start_soon(client._read)
        try:
            yield client
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()
            tg.cancel_scope.cancel()
