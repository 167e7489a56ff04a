"""``serve``: the root task group that owns the database, every service and the listener.

One port serves agents and operators: the front (``transport.asyncio_front`` on asyncio,
``transport.trio_front`` on trio) reads every request under the same bounds, answers the OpAMP
path itself and runs the Starlette app for every other request (``transport.asgi``).

Shutdown runs in a fixed order (house style, hypercorn ``worker_serve``), each step logged once:
1. the shutdown trigger fires: the front stops accepting; every online agent is marked offline
   with "server shutdown" and its WebSocket gets a 1001 close;
2. connections get ``graceful_timeout_s`` to finish (close handshakes, in-flight requests),
   then are dropped;
3. services close in reverse start order (the sweeper stops, the writer drains and flushes);
4. the database closes (and the embedded Postgres stops).
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from typing import Any

import anyio
import sniffio
from anyio.abc import TaskStatus

from .api.app import build_app
from .auth import load_key_material
from .errors import StartupError
from .observability.metrics_share import WorkerSlot
from .services import Services, fd_limit, open_services
from .settings import Settings
from .storage import apply_migrations, open_database
from .transport.tls import server_tls_context

logger = logging.getLogger(__name__)

#: Descriptors no connection may take: accepting stops short of the limit by this many.
FD_HARD_RESERVE = 32


@dataclass(frozen=True, slots=True)
class RunningServer:
    urls: list[str]
    services: Services

    @property
    def url(self) -> str:
        return self.urls[0]


def bind_sockets(settings: Settings, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bind before anything else starts, so a port in use is one clear line, not a traceback.
    ``reuse_port``: share the port with sibling workers (the kernel spreads connections)."""
    try:
        infos = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {settings.host}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {settings.port} on {settings.host} is already in use "
                "(another opamp-fast or other server is listening there)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(f"cannot listen on {settings.host}: {exc.strerror}") from None
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from None
    if settings.tcp_keepalive_s > 0:
        set_keepalive(sock, settings.tcp_keepalive_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(settings.backlog)
    sock.setblocking(False)
    return [sock]


def set_keepalive(sock: socket.socket, idle_s: float) -> None:
    """Kernel-level liveness for half-open peers (a vanished agent, a NAT that dropped state).

    Accepted sockets inherit these options from the listener on Linux, so this costs nothing
    per connection in Python: no task, no timer. After ``idle_s`` of silence the kernel sends
    3 probes ``idle_s / 3`` apart, then resets the socket, which ends the connection and marks
    the agent offline.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle_s)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(idle_s / 3)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def _front(services: Services, app: Any) -> Any:
    """The listener driver of the running backend."""
    settings = services.settings
    kwargs: dict[str, Any] = {
        "tls": server_tls_context(settings),
        "max_sockets": fd_limit() - FD_HARD_RESERVE,
        "tick_s": min(1.0, settings.close_timeout_s / 4, settings.handshake_timeout_s / 4),
    }
    front: Any
    if sniffio.current_async_library() == "trio":
        from .transport.trio_front import TrioFront

        front = TrioFront(services.opamp, app, **kwargs)
    else:
        from .transport.asyncio_front import AsyncioFront

        front = AsyncioFront(services.opamp, app, backlog=settings.backlog, **kwargs)
    services.fleet.admission.make_handshake_room = front.evict_silent_upgrade
    return front


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: anyio.Event | None = None,
    worker: WorkerSlot | None = None,
    task_status: TaskStatus[RunningServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until ``shutdown_trigger`` is set (``worker``: as one of the processes of
    ``--workers``, sharing the port and the metrics with its siblings).

    ``task_status.started`` receives a :class:`RunningServer` (bound URLs and the services) once
    the listener accepts connections, so callers can ``await tg.start(serve, ...)``.
    """
    if shutdown_trigger is None:
        shutdown_trigger = anyio.Event()
    load_key_material(settings)  # a bad REST auth setup fails here, before anything starts
    server_tls_context(settings)  # and so does an unreadable certificate
    sockets = bind_sockets(settings, reuse_port=worker is not None)
    try:
        async with open_database(settings) as db:
            applied = await apply_migrations(db)
            if applied:
                logger.info("schema migrated: %s", ", ".join(applied))
            async with open_services(settings, db, shutdown_trigger, worker=worker) as services:
                await _run_front(services, sockets, shutdown_trigger, task_status)
                logger.info("listener stopped; closing services")
            logger.info("services stopped; closing database")
    finally:
        for sock in sockets:
            sock.close()
    logger.info("shutdown complete")


async def _run_front(
    services: Services,
    sockets: list[socket.socket],
    shutdown_trigger: anyio.Event,
    task_status: TaskStatus[RunningServer],
) -> None:
    settings = services.settings
    front = _front(services, build_app(services))
    scheme = "https" if front.tls is not None else "http"
    urls = [_bound_url(s, scheme) for s in sockets]
    async with anyio.create_task_group() as tg:
        await tg.start(front.run, sockets)
        logger.info("serving OpAMP at %s%s", urls[0], settings.opamp_path)
        task_status.started(RunningServer(urls, services))
        await shutdown_trigger.wait()
        front.stop_accepting()
        closed = services.fleet.close_all()
        logger.info("stopped accepting; closing %d WebSocket agent connection(s) with 1001", closed)
        with anyio.CancelScope(shield=True):
            dropped = await front.drain(settings.graceful_timeout_s)
            if dropped:
                logger.warning(
                    "%d connection(s) did not close within %.1f s and were dropped",
                    dropped,
                    settings.graceful_timeout_s,
                )
            await front.aclose()
            tg.cancel_scope.cancel()


def _bound_url(sock: socket.socket, scheme: str) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"
