"""Running the ASGI application for one request, on either driver.

The front reads every request itself (``connection``) and keeps each under its bounds; a
request for another path than OpAMP becomes an :class:`~._exchange.Exchange`, and the driver
starts :func:`serve_exchange` for it in a task group it owns. This module is the only place
that speaks ASGI: ``receive`` hands out the body as the connection receives it (and
``http.disconnect`` once the peer is gone or the response is complete), ``send`` writes the
response through the connection and waits while the peer is not reading. It is written
against anyio, so the asyncio and the trio driver share it.

ASGI 3.0, HTTP only (spec 2.3): no lifespan (the services are opened by ``server.serve``, not
by the application), no WebSocket (agents' WebSockets are OpAMP, served natively), no
extensions. ``send`` after the peer has gone discards the message, as the spec allows.
"""

from __future__ import annotations

import logging
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ._exchange import Exchange

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Message = MutableMapping[str, Any]
    ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

__all__ = ["AppPeer", "not_found", "serve_exchange"]

logger = logging.getLogger(__name__)


class AppPeer(Protocol):
    """What a driver's connection offers the application's task (each call applies the
    resulting state to the socket at once)."""

    def app_waiting(self) -> None: ...

    def take_body(self) -> tuple[bytes, bool]: ...

    def app_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def send_body(self, data: bytes, more: bool) -> None: ...

    def fail_app(self) -> None: ...

    @property
    def write_blocked(self) -> bool: ...

    async def writable(self) -> None:
        """Returns once the peer has read enough of what was written, or has gone."""


async def not_found(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The application of a front that has none."""
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"not found\n"})


async def serve_exchange(app: ASGIApp, peer: AppPeer, exchange: Exchange) -> None:
    """Run ``app`` for one request; whatever happens, the connection hears how it ended."""
    channel = _Channel(peer, exchange)
    try:
        await app(exchange.scope, channel.receive, channel.send)
    except Exception:
        if not exchange.gone:  # a peer that left mid-request is not the application's fault
            logger.exception(
                "the REST application failed on %s %s",
                exchange.scope["method"],
                exchange.scope["path"],
            )
        peer.fail_app()
        return
    if not exchange.ended and not exchange.gone:
        logger.error(
            "the REST application returned without completing its response to %s %s",
            exchange.scope["method"],
            exchange.scope["path"],
        )
        peer.fail_app()


class _Channel:
    """``receive`` and ``send`` of one exchange."""

    __slots__ = ("_body_ended", "exchange", "peer")

    def __init__(self, peer: AppPeer, exchange: Exchange) -> None:
        self.peer = peer
        self.exchange = exchange
        self._body_ended = False

    async def receive(self) -> Message:
        exchange = self.exchange
        while True:
            if exchange.gone or exchange.ended:
                return {"type": "http.disconnect"}
            if not self._body_ended and exchange.has_body_message:
                data, more = self.peer.take_body()
                self._body_ended = not more
                return {"type": "http.request", "body": data, "more_body": more}
            if not self._body_ended:
                self.peer.app_waiting()
            await self._changed()

    async def _changed(self) -> None:
        event = anyio.Event()
        self.exchange.notify = event.set
        try:
            await event.wait()
        finally:
            self.exchange.notify = _nothing

    async def send(self, message: Message) -> None:
        exchange = self.exchange
        kind = message["type"]
        if kind == "http.response.start":
            if exchange.gone:
                return
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            for name, value in headers:
                if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
                    raise RuntimeError(f"invalid response header {name!r}")
            if not any(name.lower() == b"date" for name, _ in headers):
                headers.append((b"date", formatdate(usegmt=True).encode()))
            self.peer.app_start(int(message["status"]), headers)
        elif kind == "http.response.body":
            if exchange.gone:
                return
            self.peer.send_body(bytes(message.get("body", b"")), bool(message.get("more_body")))
            if self.peer.write_blocked and not exchange.gone:
                await self.peer.writable()
        else:
            raise RuntimeError(f"unsupported ASGI message type {kind!r}")


def _nothing() -> None:
    """No waiter."""
