"""The shared port on asyncio (uvloop): OpAMP served natively, everything else by uvicorn.

One :class:`AsyncioConnection` per accepted socket: an ``asyncio.Protocol`` that is the sans-IO
:class:`~.connection.OpAMPConnection` itself (a subclass), so a WebSocket message costs one
``data_received`` call, no task and no extra object. Replies go straight to
``transport.write``; when the peer stops reading, ``pause_writing`` stops reading from it too
and bounds the stall. Deadlines live on one shared timing wheel (``timers``).

A request for any other path (REST API, ``/metrics``, probes, docs) is handed over, socket and
bytes, to uvicorn's ``httptools`` protocol running the Starlette app: ``transport.set_protocol``
and a replay of what was read. uvicorn owns that connection from then on.
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
import uvicorn
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ..protocol import Transport
from .connection import CLOSED, HANDOFF, HEAD, WS, Limits, OpAMPConnection
from .timers import ConnectionTimers

__all__ = ["AsyncioConnection", "AsyncioFront"]

logger = logging.getLogger(__name__)

#: The write buffer above which a peer is considered not to be reading (pause_writing).
WRITE_HIGH_WATER = 256 * 1024


def _discard(data: bytes) -> None:
    """The write target of a connection that is gone."""


class AsyncioConnection(OpAMPConnection, asyncio.Protocol):
    """The asyncio driver: protocol callbacks in, sans-IO state out, applied to the socket."""

    __slots__ = ("_front", "_paused", "_pending", "_scheduled", "_timer", "_tp")

    def __init__(self, front: AsyncioFront) -> None:
        self._front = front
        self._tp: asyncio.Transport | None = None
        self._timer = -1
        self._scheduled: float | None = None
        self._paused = False
        self._pending = False  # in front.pending: connected, no request yet

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
            self._sync(now)

    def eof_received(self) -> bool:
        now = self._front.clock()
        self.receive_eof(now)
        self._sync(now)
        return False

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
        self._write = _discard
        self._tp = None

    def pause_writing(self) -> None:
        now = self._front.clock()
        self.writing_paused(now)
        if self._tp is not None and not self._paused:
            self._paused = True
            self._tp.pause_reading()
        self._sync(now)

    def resume_writing(self) -> None:
        now = self._front.clock()
        self.writing_resumed(now)
        if self._tp is not None and self._paused:
            self._paused = False
            self._tp.resume_reading()
        self._sync(now)

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

    # -- applying the state ------------------------------------------------------------------
    def _sync(self, now: float) -> None:
        if self._pending and (self.requests or self.state != HEAD):
            self._pending = False
            self._front.pending.pop(self, None)
        state = self.state
        if state == CLOSED:
            self._close_socket()
        elif state == HANDOFF:
            self._hand_off()
        else:
            deadline = self.deadline
            if deadline != self._scheduled and self._timer >= 0:
                self._scheduled = deadline
                self._front.timers.set(self._timer, deadline)

    def _close_socket(self) -> None:
        tp = self._tp
        if tp is None or (tp.is_closing() and not self.abort):
            return
        if self._timer >= 0 and self._scheduled is not None:
            self._scheduled = None
            self._front.timers.set(self._timer, None)
        if self.abort:
            tp.abort()
        else:
            tp.close()

    def _hand_off(self) -> None:
        tp = self._tp
        data = self.handoff or b""
        front = self._front
        self.connection_lost_at(front.clock())  # forget it here: uvicorn owns it now
        if tp is None or tp.is_closing():
            return
        front.limits.stats.handed_off += 1
        if self._paused:
            self._paused = False
            tp.resume_reading()
        protocol = front.rest_protocol()
        tp.set_protocol(protocol)
        protocol.connection_made(tp)
        protocol.data_received(data)


class AsyncioFront:
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
        self.limits = limits
        self.tls = tls
        self.backlog = backlog
        self.max_sockets = max_sockets
        self.clock = clock
        self.timers: ConnectionTimers[AsyncioConnection] = ConnectionTimers(
            tick_s=tick_s, start=clock()
        )
        self.connections: set[AsyncioConnection] = set()
        # Connected, nothing requested yet, oldest first: what gives way when descriptors run
        # out, so that a flood of idle sockets cannot lock out probes, operators or agents.
        self.pending: dict[AsyncioConnection, None] = {}
        self._uv_config = uvicorn.Config(
            app,
            http="httptools",
            ws="none",
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=max(5, int(limits.keep_alive_timeout_s)),
        )
        self._uv_config.load()
        self._uv_state = ServerState()
        self._lifespan = LifespanOn(self._uv_config)
        self._servers: list[asyncio.AbstractServer] = []

    def rest_protocol(self) -> HttpToolsProtocol:
        return HttpToolsProtocol(
            config=self._uv_config, server_state=self._uv_state, app_state=self._lifespan.state
        )

    def sockets_open(self) -> int:
        return len(self.connections) + len(self._uv_state.connections)

    def evict_pending(self) -> bool:
        """Drop the oldest connection that has not sent a request yet; False if none."""
        if not self.pending:
            return False
        oldest = next(iter(self.pending))
        self.limits.stats.tcp_evicted += 1
        oldest._finish(abort=True)
        oldest._close_socket()
        oldest.connection_lost_at(self.clock())
        return True

    async def run(
        self, listeners: list[socket.socket], *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Start the app's lifespan, accept on every listener, then advance the connections'
        timing wheel until cancelled (which stops nothing else: see drain and aclose)."""
        await self._lifespan.startup()
        if self._lifespan.should_exit:
            raise RuntimeError("the REST application failed to start (lifespan)")
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
            await anyio.sleep(tick)
            now = self.clock()
            for conn in timers.expire(now):
                conn._scheduled = None  # the wheel dropped it: reschedule whatever is next
                conn.on_deadline(now)
                conn._sync(now)

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()

    async def drain(self, timeout_s: float) -> int:
        """Close every connection (1001 for WebSockets, idle HTTP at once), wait for them
        within ``timeout_s``, then drop the rest. Returns how many had to be dropped."""
        self.stop_accepting()
        for conn in list(self.connections):
            conn.close(1001, "server shutting down")
        for protocol in list(self._uv_state.connections):
            protocol.shutdown()
        with anyio.move_on_after(timeout_s):
            # uvicorn's connections signal nothing when they end: poll, as uvicorn does.
            while self.connections or self._uv_state.connections or self._uv_state.tasks:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        dropped = len(self.connections) + len(self._uv_state.connections)
        for conn in list(self.connections):
            conn._finish(abort=True)
            conn._close_socket()
        for protocol in list(self._uv_state.connections):
            if protocol.transport is not None:
                protocol.transport.abort()
        for task in list(self._uv_state.tasks):
            task.cancel()
        await anyio.lowlevel.checkpoint()  # let the aborts deliver connection_lost
        return dropped

    async def aclose(self) -> None:
        """After :meth:`drain`: stop the listeners for good and run the lifespan shutdown."""
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        await self._lifespan.shutdown()
