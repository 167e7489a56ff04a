"""``opamp-fast serve --workers N``: N server processes on one port, supervised.

Each worker is a complete server (event loop, registry, timing wheel, writer) and an instance of
its own, ``<instance-id>/<k>`` in ``server_instances``; the workers bind the port with
``SO_REUSEPORT`` and the kernel spreads connections between them. A process holds at most its
open-file limit of sockets, so this is also how one host holds more agents than that limit.

The supervisor owns the rest:

* the embedded Postgres (when no database URL is given), started once, and the migrations;
* the workers: started, restarted with backoff when one dies (its agents reconnect to the
  others, or to it once it is back; crash repair closes what it left open), stopped on
  SIGTERM/SIGINT: every worker drains (closes its agents' history with "server shutdown") and
  the supervisor exits 0 when they all did;
* a shared directory where each worker publishes its metrics, so that ``/metrics`` on any
  worker shows all of them (``metrics.WorkerMetricsShare``).

``--workers auto``: one worker per CPU, or more when ``--max-connections`` needs more processes
than that under the open-file limit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from .errors import StartupError
from .services import FD_RESERVE, fd_limit
from .settings import OPTIONS, Settings

__all__ = ["resolve_workers", "supervise"]

logger = logging.getLogger(__name__)

#: How a worker learns its slot and the shared directory (set by the supervisor, read by cli).
WORKER_SLOT_ENV = "OPAMP_FAST__WORKER_SLOT"
WORKER_DIR_ENV = "OPAMP_FAST__WORKER_DIR"

#: Restart backoff of a dying worker: 1 s, doubling to this, reset after a minute of health.
MAX_RESTART_DELAY_S = 30.0
STABLE_AFTER_S = 60.0


def resolve_workers(settings: Settings) -> int:
    """The number of worker processes ``settings.workers`` asks for."""
    if settings.workers != "auto":
        return int(settings.workers)
    cpus = os.cpu_count() or 1
    per_process = max(1, fd_limit() - FD_RESERVE)
    return max(cpus, min(64, math.ceil(settings.max_connections / per_process)))


def worker_instance_id(settings: Settings, slot: int) -> str:
    return f"{settings.instance_id}/{slot}"


def worker_env(settings: Settings, slot: int, shared_dir: Path) -> dict[str, str]:
    """The environment of worker ``slot``: every setting as its ``OPAMP_FAST_*`` variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAMP_FAST_")}
    for opt in OPTIONS:
        value = getattr(settings, opt.name)
        if value is None:
            continue
        env[opt.env] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    env["OPAMP_FAST_INSTANCE_ID"] = worker_instance_id(settings, slot)
    env["OPAMP_FAST_WORKERS"] = "1"
    env[WORKER_SLOT_ENV] = str(slot)
    env[WORKER_DIR_ENV] = str(shared_dir)
    return env


def check_port(settings: Settings) -> None:
    """Fail at once (one clear line) when the port is taken by something that does not share
    it; the workers bind it with SO_REUSEPORT themselves."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((settings.host, settings.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {settings.port} on {settings.host} is already in use"
                ) from None
            raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from None


@dataclass
class _Worker:
    slot: int
    process: anyio.abc.Process | None = None
    started: float = 0.0
    restarts: int = 0
    delay: float = 1.0


async def supervise(settings: Settings, shutdown: anyio.Event) -> None:
    """Run ``resolve_workers(settings)`` workers until ``shutdown``; see the module docstring."""
    from .storage import apply_migrations, open_database
    from .storage.database import open_embedded_postgres

    count = resolve_workers(settings)
    check_port(settings)
    async with contextlib.AsyncExitStack() as stack:
        if settings.database_url is None:
            url = await stack.enter_async_context(open_embedded_postgres(settings.data_dir))
            settings = settings.replace(database_url=url)
        async with open_database(settings) as db:
            applied = await apply_migrations(db)
            if applied:
                logger.info("schema migrated: %s", ", ".join(applied))
        shared = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="opamp-fast-")))
        logger.info(
            "starting %d workers on %s:%d (instances %s/0..%d)",
            count, settings.host, settings.port, settings.instance_id, count - 1,
        )  # fmt: skip
        workers = [_Worker(slot) for slot in range(count)]
        async with anyio.create_task_group() as tg:
            for worker in workers:
                tg.start_soon(_keep_running, worker, settings, shared, shutdown)
        failed = [w.slot for w in workers if w.process is not None and w.process.returncode]
        if failed:
            logger.error("workers %s did not exit cleanly", failed)
    logger.info("all workers stopped")


async def _keep_running(
    worker: _Worker, settings: Settings, shared: Path, shutdown: anyio.Event
) -> None:
    """Start the worker, restart it when it dies, stop it on shutdown."""
    env = worker_env(settings, worker.slot, shared)
    argv = [sys.executable, "-m", "opamp_fast", "serve"]
    while not shutdown.is_set():
        worker.started = time.monotonic()
        process = await anyio.open_process(argv, env=env, stdin=None, stdout=None, stderr=None)
        worker.process = process
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_stop_on_shutdown, worker, settings, shutdown)
                code = await process.wait()
                tg.cancel_scope.cancel()
        finally:
            if process.returncode is None:  # cancelled (a second signal): no orphans
                process.kill()
        if shutdown.is_set():
            return
        if time.monotonic() - worker.started > STABLE_AFTER_S:
            worker.delay = 1.0
        worker.restarts += 1
        logger.error(
            "worker %d exited with %s; restarting in %.0f s (restart %d)",
            worker.slot, code, worker.delay, worker.restarts,
        )  # fmt: skip
        with anyio.move_on_after(worker.delay):
            await shutdown.wait()
        worker.delay = min(MAX_RESTART_DELAY_S, worker.delay * 2)


async def _stop_on_shutdown(worker: _Worker, settings: Settings, shutdown: anyio.Event) -> None:
    await shutdown.wait()
    process = worker.process
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    bound = settings.graceful_timeout_s + settings.drain_timeout_s + 10.0  # and a margin
    with anyio.move_on_after(bound):
        await process.wait()
        return
    logger.error("worker %d did not stop within %.0f s: killing it", worker.slot, bound)
    process.kill()
