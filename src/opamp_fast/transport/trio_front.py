"""The shared port on trio: the same sans-IO connections, driven from streams; the rest of the
HTTP surface handed to hypercorn.

trio is the structured-concurrency backend, not the fast one: each connection is one task
(plus a writer task) in the front's nursery, reading with ``receive_some`` under the
connection's ``deadline``. What the sans-IO object writes is queued and sent by the writer in
order; a peer that does not read fills the queue to ``WRITE_HIGH_WATER``, which stops the
reading side and starts the stall deadline, as on asyncio.

A request for another path gets the stream (with the bytes already read replayed in front of
it) handed to hypercorn's trio ``TCPServer`` running the Starlette app.
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
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from .connection import CLOSED, HANDOFF, HEAD, Limits, OpAMPConnection

__all__ = ["TrioConnection", "TrioFront"]

logger = logging.getLogger(__name__)

WRITE_HIGH_WATER = 256 * 1024
_RECEIVE_BYTES = 65536


class _Replay(trio.abc.HalfCloseableStream):
    """A stream that first returns ``prefix``, then reads on from ``inner``; everything else
    (``socket``, ``do_handshake``, ``transport_stream`` ...) is the inner stream's."""

    def __init__(self, inner: Any, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            prefix, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return prefix
        data: bytes = await self._inner.receive_some(max_bytes)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


class TrioConnection(OpAMPConnection):
    """The trio driver of one connection: a reader loop and a writer task."""

    __slots__ = (
        "_drained_event",
        "_front",
        "_out",
        "_out_bytes",
        "_recv_scope",
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

    async def run(self) -> None:
        front = self._front
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                await self._read_loop()
                await self._flush()
                nursery.cancel_scope.cancel()
        finally:
            self.peer_gone(front.clock())
            front.connections.discard(self)
            front.pending.pop(self, None)
        if self.state == HANDOFF and self.handoff is not None:
            front.limits.stats.handed_off += 1
            await front.serve_rest(_Replay(self._stream, self.handoff))
        elif self.abort:
            await trio.aclose_forcefully(self._stream)
        else:
            with trio.move_on_after(self.limits.close_timeout_s) as scope:
                scope.shield = True
                await self._stream.aclose()

    async def _read_loop(self) -> None:
        clock = self._front.clock
        while self.state < CLOSED:
            if self._out_bytes > WRITE_HIGH_WATER:  # the peer is not reading: neither do we
                with trio.move_on_at(self._trio_deadline()) as scope:
                    self._recv_scope = scope
                    await self._drained()
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
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self._send_queued()

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
        if self.abort or (self.state == HANDOFF and not self._out):
            return
        with trio.move_on_after(self.limits.close_timeout_s):
            await self._send_queued()


class TrioFront:
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
        self.limits = limits
        self.tls = tls
        self.max_sockets = max_sockets
        self.clock = clock
        self.connections: set[TrioConnection] = set()
        # Connected, nothing requested yet, oldest first: what gives way when descriptors run
        # out, so that a flood of idle sockets cannot lock out probes, operators or agents.
        self.pending: dict[TrioConnection, None] = {}
        self.rest_open = 0
        config = HypercornConfig()
        config.keep_alive_timeout = limits.keep_alive_timeout_s
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.include_server_header = False
        config.read_timeout = int(limits.message_timeout_s)
        config.ssl_handshake_timeout = limits.handshake_timeout_s
        self._config = config
        self._app = wrap_app(app, config.wsgi_max_body_size, "asgi")
        self._context = WorkerContext(None)
        self._lifespan = Lifespan(self._app, config, {})
        self._nursery: trio.Nursery | None = None
        self._accepting: trio.CancelScope | None = None

    async def run(
        self, listeners: list[socket.socket], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._lifespan.handle_lifespan)
            await self._lifespan.wait_for_startup()
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

    def sockets_open(self) -> int:
        return len(self.connections) + self.rest_open

    def evict_pending(self) -> bool:
        """Drop the oldest connection that has not sent a request yet; False if none."""
        if not self.pending:
            return False
        oldest = next(iter(self.pending))
        del self.pending[oldest]
        self.limits.stats.tcp_evicted += 1
        oldest._finish(abort=True)
        oldest._interrupt()
        return True

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

    async def serve_rest(self, stream: Any) -> None:
        self.rest_open += 1
        try:
            state = self._lifespan.state
            await TCPServer(self._app, self._config, self._context, state, stream).run()
        finally:
            self.rest_open -= 1

    def stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()

    async def drain(self, timeout_s: float) -> int:
        self.stop_accepting()
        await self._context.terminated.set()  # hypercorn closes idle keep-alive connections
        for conn in list(self.connections):
            conn.close(1001, "server shutting down")
        with trio.move_on_after(timeout_s):
            while self.connections or self.rest_open:  # noqa: ASYNC110 - hypercorn signals none
                await trio.sleep(0.05)
        dropped = len(self.connections) + self.rest_open
        for conn in list(self.connections):
            conn._finish(abort=True)
            conn._interrupt()
        return dropped

    async def aclose(self) -> None:
        await self._lifespan.wait_for_shutdown()
