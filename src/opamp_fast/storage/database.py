"""A small async facade over psycopg's *sync* pool, run in worker threads.

psycopg's async classes work only on asyncio, so under trio every database call goes through
``trio.to_thread.run_sync`` with a connection from a ``psycopg_pool.ConnectionPool``. A trio
``CapacityLimiter`` sized like the pool keeps threads from piling up waiting for connections, so
the event loop never blocks on the database.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import trio
from psycopg_pool import ConnectionPool, PoolTimeout

from ..config import redact_url
from ..errors import StorageError

if TYPE_CHECKING:
    from ..config import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Database:
    """Runs blocking psycopg work in threads. ``run(fn)`` hands ``fn`` a pooled connection."""

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=connect_timeout_s,
            kwargs={"autocommit": False, "connect_timeout": max(1, int(connect_timeout_s))},
            name="opamp-fast",
        )
        self._limiter = trio.CapacityLimiter(pool_size)
        self.migrated = False

    async def open(self) -> None:
        def _open() -> None:
            try:
                self._pool.open(wait=True, timeout=self._pool.timeout)
            except PoolTimeout:
                self._pool.close()
                raise StorageError(
                    f"cannot connect to Postgres at {redact_url(self.url)}"
                ) from None

        await trio.to_thread.run_sync(_open)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._pool.close)

    async def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn(conn)`` in a worker thread inside a transaction (committed on success)."""

        def _work() -> T:
            with self._pool.connection() as conn:
                return fn(conn)

        return await trio.to_thread.run_sync(_work, limiter=self._limiter)

    async def ping(self, timeout_s: float = 2.0) -> bool:
        """True when a trivial query succeeds within ``timeout_s``."""

        def _ping() -> bool:
            try:
                with self._pool.connection(timeout=timeout_s) as conn:
                    conn.execute("SELECT 1")
                return True
            except (psycopg.Error, PoolTimeout):
                return False

        # Abandon a hung ping on timeout rather than hold up a health probe.
        with trio.move_on_after(timeout_s + 0.5):
            return await trio.to_thread.run_sync(_ping, abandon_on_cancel=True)
        return False


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """The configured Postgres, or an embedded one in ``settings.data_dir`` when no URL is set."""
    async with contextlib.AsyncExitStack() as stack:
        url = settings.database_url
        if url is None:
            url = await stack.enter_async_context(open_embedded_postgres(settings.data_dir))
        db = Database(url, pool_size=settings.db_pool_size)
        await db.open()
        stack.push_async_callback(db.close)
        logger.info("database connected: %s", redact_url(url))
        yield db


@contextlib.asynccontextmanager
async def open_embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Start (or join) a pgserver-managed Postgres in ``data_dir``; stop it on exit."""
    from .embedded import start_embedded

    server = await trio.to_thread.run_sync(start_embedded, data_dir)
    logger.info("embedded Postgres running in %s", data_dir)
    try:
        yield server.get_uri()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.cleanup)
