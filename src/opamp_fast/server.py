"""``serve``: the root nursery that owns the database, every service and the hypercorn listener.

Shutdown runs in a fixed order (house style, hypercorn ``worker_serve``):
1. the shutdown trigger fires: hypercorn stops accepting; OpAMP WebSockets are closed with 1001;
2. connections get ``graceful_timeout_s`` to finish, then are cancelled;
3. services close in reverse start order (the sweeper stops, the writer drains and flushes);
4. the database closes (and the embedded Postgres stops).
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from .api.app import build_app
from .auth import load_key_material
from .config import Settings
from .errors import StartupError
from .services import Services, open_services
from .storage import apply_migrations, open_database

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunningServer:
    urls: list[str]
    services: Services

    @property
    def url(self) -> str:
        return self.urls[0]


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.backlog = settings.backlog
    # +16 leaves room for the OpAMP varint header in front of a maximal protobuf payload.
    config.websocket_max_message_size = settings.max_message_bytes + 16
    config.websocket_ping_interval = settings.ws_ping_interval_s or None
    config.graceful_timeout = settings.graceful_timeout_s
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = max(75.0, 3.0 * settings.heartbeat_interval_s)
    # A slow or silent peer must not hold a request half-read forever.
    config.read_timeout = None
    config.include_server_header = False
    return config


def bind_sockets(config: HypercornConfig, settings: Settings) -> Sockets:
    """Bind before anything else starts, so a port in use is one clear line, not a traceback."""
    try:
        sockets = config.create_sockets()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {settings.port} on {settings.host} is already in use "
                "(another opamp-fast or other server is listening there)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
            raise StartupError(f"cannot listen on {settings.host}: {exc.strerror}") from None
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from None
    for sock in sockets.insecure_sockets:
        if settings.tcp_keepalive_s > 0:
            set_keepalive(sock, settings.tcp_keepalive_s)
        sock.listen(config.backlog)
    return sockets


def set_keepalive(sock: socket.socket, idle_s: float) -> None:
    """Kernel-level liveness for half-open peers (a vanished agent, a NAT that dropped state).

    Accepted sockets inherit these options from the listener on Linux, so this costs nothing
    per connection in Python: no task, no timer. After ``idle_s`` of silence the kernel sends
    3 probes ``idle_s / 3`` apart, then resets the socket, which ends the connection's receive
    loop and marks the agent offline.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle_s)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(idle_s / 3)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: trio.Event | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until ``shutdown_trigger`` is set.

    ``task_status.started`` receives a :class:`RunningServer` (bound URLs and the services) once
    the listener accepts connections, so callers can ``await nursery.start(serve, ...)``.
    """
    if shutdown_trigger is None:
        shutdown_trigger = trio.Event()
    load_key_material(settings)  # a bad REST auth setup fails here, before anything starts
    config = hypercorn_config(settings)
    sockets = bind_sockets(config, settings)
    try:
        async with open_database(settings) as db:
            applied = await apply_migrations(db)
            if applied:
                logger.info("schema migrated: %s", ", ".join(applied))
            async with open_services(settings, db, shutdown_trigger) as services:
                app = build_app(services)
                binds = [_bound_url(s) for s in sockets.insecure_sockets]
                logger.info("serving OpAMP at %s%s", binds[0], settings.opamp_path)

                async with trio.open_nursery() as nursery:
                    await nursery.start(_run_hypercorn, app, config, sockets, shutdown_trigger)
                    task_status.started(RunningServer(binds, services))
                logger.info("listener stopped; closing services")
            logger.info("services stopped; closing database")
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()
    logger.info("shutdown complete")


async def _run_hypercorn(
    app: Any,
    config: HypercornConfig,
    sockets: Sockets,
    shutdown_trigger: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await worker_serve(
        wrap_app(app, config.wsgi_max_body_size, "asgi"),
        config,
        sockets=sockets,
        shutdown_trigger=shutdown_trigger.wait,
        task_status=task_status,
    )


def _bound_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"
