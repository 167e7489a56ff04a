"""A small async facade over psycopg's *sync* pools, run in worker threads.

psycopg's async classes work only on asyncio, and the server runs on asyncio and on trio, so
every database call goes through ``anyio.to_thread.run_sync`` with a connection from a
``psycopg_pool.ConnectionPool``. A ``CapacityLimiter`` sized like each pool keeps threads from
piling up waiting for connections, so the event loop never blocks on the database.

Two pools: one for reads (REST API, health probes, migrations) and a separate one for the batch
writer, so heavy API use can never delay a flush (and a long flush never delays a probe).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import StorageError
from ..settings import redact_url

if TYPE_CHECKING:
    from ..settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Database:
    """Runs blocking psycopg work in threads. ``run(fn)`` hands ``fn`` a pooled connection."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        writer_pool_size: int = 1,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self._pool = _pool(url, "opamp-fast", pool_size, connect_timeout_s)
        self._writer_pool = _pool(url, "opamp-fast-writer", writer_pool_size, connect_timeout_s)
        self._limiter = anyio.CapacityLimiter(pool_size)
        self._writer_limiter = anyio.CapacityLimiter(writer_pool_size)
        self.migrated = False

    async def open(self) -> None:
        def _open() -> None:
            for pool in (self._pool, self._writer_pool):
                try:
                    pool.open(wait=True, timeout=pool.timeout)
                except PoolTimeout:
                    self._pool.close()
                    self._writer_pool.close()
                    raise StorageError(
                        f"cannot connect to Postgres at {redact_url(self.url)}"
                    ) from None

        await anyio.to_thread.run_sync(_open)

    async def close(self) -> None:
        def _close() -> None:
            self._writer_pool.close()
            self._pool.close()

        await anyio.to_thread.run_sync(_close)

    async def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn(conn)`` in a worker thread inside a transaction (committed on success)."""
        return await self._run(self._pool, self._limiter, fn)

    async def read(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """:meth:`run` for a read of several statements: one ``REPEATABLE READ, READ ONLY``
        transaction, so that every statement sees the same snapshot. Under READ COMMITTED a
        writer's flush committing between a count and its page, or between an agent's row and
        its config outcome, makes them disagree."""

        def snapshot(conn: psycopg.Connection[Any]) -> T:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return fn(conn)

        return await self.run(snapshot)

    async def run_writer(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """:meth:`run` on the writer's own connection(s)."""
        return await self._run(self._writer_pool, self._writer_limiter, fn)

    @staticmethod
    async def _run(
        pool: ConnectionPool, limiter: anyio.CapacityLimiter, fn: Callable[[Any], T]
    ) -> T:
        def _work() -> T:
            with pool.connection() as conn:
                return fn(conn)

        return await anyio.to_thread.run_sync(_work, limiter=limiter)

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
        with anyio.move_on_after(timeout_s + 0.5):
            return await anyio.to_thread.run_sync(_ping, abandon_on_cancel=True)
        return False


def _pool(url: str, name: str, size: int, connect_timeout_s: float) -> ConnectionPool:
    return ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        open=False,
        timeout=connect_timeout_s,
        kwargs={"autocommit": False, "connect_timeout": max(1, int(connect_timeout_s))},
        name=name,
    )


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

    server = await anyio.to_thread.run_sync(start_embedded, data_dir)
    logger.info("embedded Postgres running in %s", data_dir)
    try:
        yield server.get_uri()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.cleanup)
