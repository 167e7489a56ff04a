"""The shared port on asyncio (uvloop): every request read by the front, OpAMP served natively.

One :class:`AsyncioConnection` per accepted socket: an ``asyncio.Protocol`` that is the sans-IO
:class:`~.connection.OpAMPConnection` itself (a subclass), so a WebSocket message costs one
``data_received`` call, no task and no extra object. Replies go straight to
``transport.write``; when the peer stops reading, ``pause_writing`` stops reading from it too
and bounds the stall. Deadlines live on one shared timing wheel (``timers``).

A request for any other path (REST API, ``/metrics``, probes, docs) is read under the same
bounds and served by the ASGI application in a task of the front's task group
(``asgi.serve_exchange``); the connection then reads the next request itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

import anyio
import anyio.lowlevel
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskGroup, TaskStatus

from ..protocol import Transport
from ..ticks import sleep_to_tick
from ._front import FrontBase
from .asgi import serve_exchange
from .connection import APP, CLOSED, HEAD, LINGER_BYTES, WS, Limits, OpAMPConnection
from .timers import ConnectionTimers

__all__ = ["AsyncioConnection", "AsyncioFront"]

logger = logging.getLogger(__name__)

#: The write buffer above which a peer is considered not to be reading (pause_writing).
WRITE_HIGH_WATER = 256 * 1024


def _discard(data: bytes) -> None:
    """The write target of a connection that is gone."""


class AsyncioConnection(OpAMPConnection, asyncio.Protocol):
    """The asyncio driver: protocol callbacks in, sans-IO state out, applied to the socket."""

    __slots__ = (
        "_drained",
        "_front",
        "_linger_left",
        "_lingering",
        "_paused",
        "_pending",
        "_reading",
        "_scheduled",
        "_timer",
        "_tp",
        "_upgrading",
    )

    def __init__(self, front: AsyncioFront) -> None:
        self._front = front
        self._tp: asyncio.Transport | None = None
        self._timer = -1
        self._scheduled: float | None = None
        self._paused = False  # the peer is not reading (pause_writing)
        self._lingering = False  # closed on our side, reading until the peer closes too
        self._linger_left = 0  # what a lingering close still reads and drops at most
        self._reading = True  # we read from the socket
        self._pending = False  # in front.pending: connected, no request yet
        self._upgrading = False  # in front.upgrading: a WebSocket without a first message
        self._drained: anyio.Event | None = None  # a task waits for the peer to read

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        front = self._front
        now = front.clock()
        peer = transport.get_extra_info("peername")
        remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        cert = None
        if front.tls is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            cert = ssl_object.getpeercert() if ssl_object is not None else None
        OpAMPConnection.__init__(self, front.limits, remote, transport.write, now, cert)
        self._tp = transport
        if front.sockets_open() >= front.max_sockets and not front.evict_pending():
            # No descriptor to spare and no idle newcomer to drop for this one: refuse it at
            # once, keeping the reserve for the database and the process itself.
            front.limits.stats.tcp_refused += 1
            self._write = _discard
            self.state = CLOSED
            transport.abort()
            return
        front.connections.add(self)
        front.pending[self] = None
        self._pending = True
        front.limits.stats.tcp_open += 1
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._timer = front.timers.add(self)
        self._sync(now)

    def data_received(self, data: bytes) -> None:
        now = self._front.clock()
        try:
            self.receive_data(data, now)
        except Exception:  # a bug must cost this connection, never the server
            self._crashed()
            return
        if self.state != WS or self.deadline != self._scheduled:
            if self._lingering:
                self._linger_received(len(data))
                return
            self._sync(now)

    def eof_received(self) -> bool:
        now = self._front.clock()
        if not self._lingering:
            self.receive_eof(now)
            self._sync(now)
        return False  # asyncio closes the transport (a lingering close ends here)

    def connection_lost(self, exc: BaseException | None) -> None:
        front = self._front
        if self._timer < 0:
            return  # refused in connection_made
        self.connection_lost_at(front.clock())

    def connection_lost_at(self, now: float) -> None:
        front = self._front
        self.peer_gone(now)
        front.timers.remove(self._timer)
        self._timer = -1
        if self in front.connections:
            front.connections.discard(self)
            front.limits.stats.tcp_open -= 1
        if self._pending:
            self._pending = False
            front.pending.pop(self, None)
        if self._upgrading:
            self._upgrading = False
            front.upgrading.pop(self, None)
        self._write = _discard
        self._tp = None
        self._wake_writer()

    def pause_writing(self) -> None:
        now = self._front.clock()
        self.writing_paused(now)
        self._paused = True
        self._sync(now)

    def resume_writing(self) -> None:
        now = self._front.clock()
        self.writing_resumed(now)
        self._paused = False
        self._wake_writer()
        self._sync(now)

    def _wake_writer(self) -> None:
        drained = self._drained
        if drained is not None:
            self._drained = None
            drained.set()

    # -- what the application's task calls (asgi.AppPeer) ----------------------------------------
    def take_body(self) -> tuple[bytes, bool]:
        now = self._front.clock()
        taken = self.app_receive(now)
        self._sync(now)
        return taken

    def send_body(self, data: bytes, more: bool) -> None:
        now = self._front.clock()
        self.app_body(data, more, now)
        self._sync(now)

    def fail_app(self) -> None:
        self.app_failed()
        self._sync(self._front.clock())

    @property
    def write_blocked(self) -> bool:
        return self._paused and self._tp is not None

    async def writable(self) -> None:
        if self.write_blocked:
            drained = self._drained = self._drained or anyio.Event()
            await drained.wait()

    def _crashed(self) -> None:
        agent = getattr(self.record, "uid", b"").hex() or "-"
        logger.exception(
            "connection from %s (agent %s) failed; dropping it", self.remote_addr, agent
        )
        self.limits.stats.protocol_error(self.transport or Transport.HTTP, "internal_error")
        self._finish(abort=True)
        self._close_socket()

    # -- what the handler may call from elsewhere ----------------------------------------------
    def close(self, code: int = 1000, reason: str = "", now: float | None = None) -> None:
        if now is None:
            now = self._front.clock()
        OpAMPConnection.close(self, code, reason, now)
        self._sync(now)

    def shed_buffer(self) -> None:
        OpAMPConnection.shed_buffer(self)
        self._sync(self._front.clock())

    # -- applying the state ------------------------------------------------------------------
    def _sync(self, now: float) -> None:
        front = self._front
        if self._pending and (self.requests or self.state != HEAD):
            self._pending = False
            front.pending.pop(self, None)
        state = self.state
        if state == CLOSED:
            self._close_socket(now)
            return
        upgrading = state == WS and self.record is None
        if upgrading != self._upgrading:
            self._upgrading = upgrading
            if upgrading:
                front.upgrading[self] = now
            else:
                front.upgrading.pop(self, None)
        if state == APP:
            exchange = self.exchange
            if exchange is not None and not exchange.task_started:
                exchange.task_started = True
                front.start_exchange(self, exchange)
        reading = not self._paused and self.reading_wanted
        if reading != self._reading and self._tp is not None:
            self._reading = reading
            if reading:
                self._tp.resume_reading()
            else:
                self._tp.pause_reading()
        deadline = self.deadline
        if deadline != self._scheduled and self._timer >= 0:
            self._scheduled = deadline
            front.timers.set(self._timer, deadline)

    def _close_socket(self, now: float | None = None) -> None:
        tp = self._tp
        if tp is None:
            return
        if self.abort:
            tp.abort()
            return
        if tp.is_closing() or self._lingering:
            return
        if self._timer < 0:
            tp.close()
            return
        # What is still buffered goes out while the peer reads it, close_timeout_s at most: a
        # peer that never reads does not keep the socket (linger_over aborts it).
        deadline = (self._front.clock() if now is None else now) + self.limits.close_timeout_s
        if not self.linger:
            tp.close()
            if tp.get_write_buffer_size():
                self._scheduled = deadline
                self._front.timers.set(self._timer, deadline)
            return
        # A staged close (RFC 9112, 9.6): our side ends once that is out, and what the peer
        # still sends (the rest of a refused body, pipelined requests) is read and dropped
        # until it closes too, so that our last answer is not lost to a reset.
        self._lingering = True
        self._linger_left = max(LINGER_BYTES, self.discard)
        self._scheduled = deadline
        self._front.timers.set(self._timer, deadline)
        if tp.can_write_eof():
            tp.write_eof()
            if not self._reading:
                self._reading = True
                tp.resume_reading()
        else:  # TLS: no half-close
            tp.close()

    def _linger_received(self, nbytes: int) -> None:
        self._linger_left -= nbytes
        if self._linger_left < 0:  # a peer that keeps sending after our answer: not waited for
            self.linger_over()

    def drop(self) -> None:
        """At once: abort the socket and forget the connection (``front.evict_*``)."""
        now = self._front.clock()
        self._finish(abort=True)
        self._close_socket(now)
        self.connection_lost_at(now)

    def linger_over(self) -> None:
        """Closed, and the peer did not take our last bytes or close in time: drop it."""
        if self._tp is not None:
            self._tp.abort()


class AsyncioFront(FrontBase[AsyncioConnection]):
    """The listener side on asyncio: creates connections, runs their timers, drains them."""

    def __init__(
        self,
        limits: Limits,
        app: Any,
        *,
        tls: ssl.SSLContext | None = None,
        backlog: int = 4096,
        max_sockets: int = 1 << 30,
        tick_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(limits, app, tls=tls, max_sockets=max_sockets, clock=clock)
        self.backlog = backlog
        self.timers: ConnectionTimers[AsyncioConnection] = ConnectionTimers(
            tick_s=tick_s, start=clock()
        )
        self._servers: list[asyncio.AbstractServer] = []
        self._tg: TaskGroup | None = None

    def start_exchange(self, conn: AsyncioConnection, exchange: Any) -> None:
        """Run the application for one request, in the front's task group."""
        assert self._tg is not None
        self._tg.start_soon(serve_exchange, self.app, conn, exchange)

    async def run(
        self, listeners: list[socket.socket], *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Accept on every listener, then advance the connections' timing wheel until
        cancelled; the application's requests run in this task group (see drain and aclose)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await self._serve(listeners, task_status)

    async def _serve(self, listeners: list[socket.socket], task_status: TaskStatus[None]) -> None:
        loop = asyncio.get_running_loop()
        for sock in listeners:
            server = await loop.create_server(
                lambda: AsyncioConnection(self),
                sock=sock,
                ssl=self.tls,
                backlog=self.backlog,
                ssl_handshake_timeout=self.limits.handshake_timeout_s if self.tls else None,
                ssl_shutdown_timeout=self.limits.close_timeout_s if self.tls else None,
            )
            self._servers.append(server)
        task_status.started()
        timers = self.timers
        tick = timers.tick_s
        while True:
            await sleep_to_tick(tick)
            now = self.clock()
            for conn in timers.expire(now):
                conn._scheduled = None  # the wheel dropped it: reschedule whatever is next
                if conn.state == CLOSED:
                    conn.linger_over()
                    continue
                conn.on_deadline(now)
                conn._sync(now)

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()

    async def aclose(self) -> None:
        """After :meth:`drain`: stop the listeners for good; requests still running in the
        application end with the task group (the caller cancels it)."""
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
