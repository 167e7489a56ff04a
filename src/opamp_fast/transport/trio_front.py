"""The shared port on trio: the same sans-IO connections, driven from streams.

trio is the structured-concurrency backend, not the fast one: each connection is one task
(plus a writer task) in the front's nursery, reading with ``receive_some`` under the
connection's ``deadline``. What the sans-IO object writes is queued and sent by the writer in
order; a peer that does not read fills the queue to ``WRITE_HIGH_WATER``, which stops the
reading side and starts the stall deadline, as on asyncio.

A request for another path runs the ASGI application (``asgi.serve_exchange``) in the
connection's nursery, while the reader goes on under the connection's bounds.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import trio

from ._front import FrontBase
from .asgi import serve_exchange
from .connection import (
    APP,
    CLOSED,
    HEAD,
    LINGER_BYTES,
    WS,
    Limits,
    OpAMPConnection,
)

__all__ = ["TrioConnection", "TrioFront"]

logger = logging.getLogger(__name__)

WRITE_HIGH_WATER = 256 * 1024
_RECEIVE_BYTES = 65536


class TrioConnection(OpAMPConnection):
    """The trio driver of one connection: a reader loop and a writer task."""

    __slots__ = (
        "_app_wake",
        "_drained_event",
        "_flushed",
        "_front",
        "_nursery",
        "_out",
        "_out_bytes",
        "_recv_scope",
        "_sending",
        "_stream",
        "_wake",
    )

    def __init__(self, front: TrioFront, stream: Any, remote: str, cert: Any, now: float) -> None:
        self._front = front
        self._stream = stream
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._wake = trio.Event()
        self._recv_scope: trio.CancelScope | None = None
        self._drained_event: trio.Event | None = None
        self._flushed: trio.Event | None = None  # _flush waits for the writer
        self._sending = False
        self._app_wake: trio.Event | None = None  # the reader waits for the application
        self._nursery: trio.Nursery | None = None
        super().__init__(front.limits, remote, self._queue, now, cert)

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)
        self._wake.set()
        if self._out_bytes > WRITE_HIGH_WATER:
            self.writing_paused(self._front.clock())

    def close(self, code: int = 1000, reason: str = "", now: float | None = None) -> None:
        OpAMPConnection.close(self, code, reason, self._front.clock() if now is None else now)
        self._interrupt()

    def _interrupt(self) -> None:
        """Make the reader look at the new state and deadline (called from other tasks)."""
        if self._recv_scope is not None:
            self._recv_scope.cancel()

    def shed_buffer(self) -> None:
        OpAMPConnection.shed_buffer(self)
        self._interrupt()

    def drop(self) -> None:
        """At once: abort (``front.evict_*``); the reader sees it and ends the connection."""
        self._finish(abort=True)
        self._interrupt()

    async def run(self) -> None:
        front = self._front
        try:
            async with trio.open_nursery() as requests:  # the application's, on this connection
                self._nursery = requests
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._writer)
                        await self._read_loop()
                        await self._flush()
                        nursery.cancel_scope.cancel()
                finally:
                    self.peer_gone(front.clock())  # a request still running hears it is gone
                    front.connections.discard(self)
                    front.pending.pop(self, None)
                    front.upgrading.pop(self, None)
                    if self._drained_event is not None:
                        self._drained_event.set()
        finally:  # cancelled too (shutdown): the socket is closed, at once when aborted
            with trio.move_on_after(0 if self.abort else self.limits.close_timeout_s) as scope:
                scope.shield = True
                if not self.abort:
                    await self._linger()
                    await self._stream.aclose()
            if scope.cancelled_caught or self.abort:
                await trio.aclose_forcefully(self._stream)

    async def _linger(self) -> None:
        """A staged close (see ``AsyncioConnection._close_socket``): end our side, then read
        and drop what the peer still sends until it closes too (TLS streams cannot half-close)."""
        stream = self._stream
        if not self.linger or not isinstance(stream, trio.SocketStream):
            return
        left = max(LINGER_BYTES, self.discard)
        try:
            await stream.send_eof()
            while left >= 0 and (data := await stream.receive_some(_RECEIVE_BYTES)):
                left -= len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _read_loop(self) -> None:
        clock = self._front.clock
        while self.state < CLOSED:
            self._track(clock())
            if self._out_bytes > WRITE_HIGH_WATER or not self.reading_wanted:
                # The peer is not reading, or the application has enough: neither do we.
                with trio.move_on_at(self._trio_deadline()) as scope:
                    self._recv_scope = scope
                    await self._paused()
                self._recv_scope = None
                if scope.cancelled_caught:
                    self.on_deadline(clock())
                continue
            data = None
            with trio.move_on_at(self._trio_deadline()) as scope:
                self._recv_scope = scope
                try:
                    data = await self._stream.receive_some(_RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            self._recv_scope = None
            now = clock()
            if data is None:
                self.on_deadline(now)
            elif not data:
                self.receive_eof(now)
            else:
                self.receive_data(data, now)
            if self.requests or self.state != HEAD:
                self._front.pending.pop(self, None)

    def _track(self, now: float) -> None:
        """Start the application on a new request; keep ``front.upgrading`` current."""
        upgrading = self._front.upgrading
        if self.state == WS and self.record is None:
            upgrading.setdefault(self, now)
        elif upgrading:
            upgrading.pop(self, None)
        exchange = self.exchange
        if self.state == APP and exchange is not None and not exchange.task_started:
            exchange.task_started = True
            assert self._nursery is not None
            self._nursery.start_soon(serve_exchange, self._front.app, self, exchange)

    async def _paused(self) -> None:
        if self._out_bytes > WRITE_HIGH_WATER:
            await self._drained()
        else:
            wake = self._app_wake = trio.Event()
            await wake.wait()

    def _app_changed(self) -> None:
        """The application took body bytes or ended its response: the reader looks again."""
        self._track(self._front.clock())
        if self._app_wake is not None:
            self._app_wake.set()
            self._app_wake = None
        self._interrupt()

    # -- what the application's task calls (asgi.AppPeer) ----------------------------------------
    def take_body(self) -> tuple[bytes, bool]:
        taken = self.app_receive(self._front.clock())
        self._app_changed()
        return taken

    def send_body(self, data: bytes, more: bool) -> None:
        self.app_body(data, more, self._front.clock())
        if not more:
            self._app_changed()

    def fail_app(self) -> None:
        self.app_failed()
        self._interrupt()

    @property
    def write_blocked(self) -> bool:
        return self._out_bytes > WRITE_HIGH_WATER and self.state < CLOSED

    async def writable(self) -> None:
        while self.write_blocked:
            drained = self._drained_event = self._drained_event or trio.Event()
            await drained.wait()

    def _trio_deadline(self) -> float:
        """The connection's deadline (our clock) on trio's clock."""
        deadline = self.deadline
        if deadline is None:
            return math.inf
        return trio.current_time() + max(0.0, deadline - self._front.clock())

    async def _drained(self) -> None:
        drained = self._drained_event = trio.Event()
        await drained.wait()
        self.writing_resumed(self._front.clock())

    async def _writer(self) -> None:
        """The only task that sends on the stream (trio allows one sender at a time)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._sending = True
            try:
                await self._send_queued()
            finally:
                self._sending = False
            if self._flushed is not None and not self._out:
                self._flushed.set()
                self._flushed = None

    async def _send_queued(self) -> None:
        while self._out:
            data = b"".join(self._out)
            self._out.clear()
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._out.clear()
                self._finish(abort=True)
                self._interrupt()
                return
            finally:
                self._out_bytes = sum(map(len, self._out))
                if self._drained_event is not None and self._out_bytes <= WRITE_HIGH_WATER // 4:
                    self._drained_event.set()
                    self._drained_event = None

    async def _flush(self) -> None:
        """What is queued goes out (by the writer), within ``close_timeout_s``."""
        if self.abort:
            return
        with trio.move_on_after(self.limits.close_timeout_s):
            while self._out or self._sending:
                flushed = self._flushed = trio.Event()
                self._wake.set()
                await flushed.wait()


class TrioFront(FrontBase[TrioConnection]):
    """The listener side on trio: accepts, runs each connection as a task, drains them."""

    def __init__(
        self,
        limits: Limits,
        app: Any,
        *,
        tls: ssl.SSLContext | None = None,
        max_sockets: int = 1 << 30,
        tick_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        del tick_s  # each connection waits on its own deadline here
        super().__init__(limits, app, tls=tls, max_sockets=max_sockets, clock=clock)
        self._nursery: trio.Nursery | None = None
        self._accepting: trio.CancelScope | None = None

    async def run(
        self, listeners: list[socket.socket], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            with trio.CancelScope() as accepting:
                self._accepting = accepting
                async with trio.open_nursery() as acceptors:
                    for sock in listeners:
                        acceptors.start_soon(self._accept, trio.socket.from_stdlib_socket(sock))
                    task_status.started()
            await trio.sleep_forever()

    async def _accept(self, sock: trio.socket.SocketType) -> None:
        listener = trio.SocketListener(sock)
        nursery = self._nursery
        assert nursery is not None
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off, say it once a second
                self.limits.stats.tcp_refused += 1
                logger.warning("accept failed (%s); retrying", exc.strerror)
                await trio.sleep(1.0)
                continue
            if self.sockets_open() >= self.max_sockets and not self.evict_pending():
                self.limits.stats.tcp_refused += 1
                await trio.aclose_forcefully(stream)
                continue
            nursery.start_soon(self._serve, stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        peer = stream.socket.getpeername()
        remote = f"{peer[0]}:{peer[1]}"
        cert = None
        inner: Any = stream
        if self.tls is not None:
            inner = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=True)
            try:
                with trio.fail_after(self.limits.handshake_timeout_s):
                    await inner.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                self.limits.stats.timed_out("tls_handshake")
                await trio.aclose_forcefully(stream)
                return
            cert = inner.getpeercert()
        conn = TrioConnection(self, inner, remote, cert, self.clock())
        self.connections.add(conn)
        self.pending[conn] = None
        self.limits.stats.tcp_open += 1
        try:
            await conn.run()
        finally:
            self.limits.stats.tcp_open -= 1

    def stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()

    async def aclose(self) -> None:
        """Nothing left to close: each connection's nursery owned its requests."""
