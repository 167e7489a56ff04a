"""Connection-history retention: closed rows older than ``history_retention_days`` are deleted.

A flapping agent writes thousands of rows a day, so the table must not grow forever; but the
writer must never wait for the cleanup. So:

* only closed rows go (``disconnected_at`` set), found through the partial index of migration
  0004, oldest first; the writer only ever touches open rows, so the two never contend;
* in small batches (``batch_rows``), each its own short transaction on the read pool, never on
  the writer's connection, with a pause between batches;
* by one instance at a time: each batch takes a transaction-level advisory lock and is skipped
  when another instance holds it;
* every ``interval_s`` (a full pass, then sleep), and not at all with ``retention_days = 0``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import anyio
import psycopg
from anyio.abc import TaskStatus

if TYPE_CHECKING:
    from .database import Database

__all__ = ["HistoryRetention"]

logger = logging.getLogger(__name__)

#: Advisory lock key of the cleanup ("opamphst" as an int64).
RETENTION_LOCK_KEY: Final = 0x6F70616D70687374

_DELETE = """
DELETE FROM agent_connection_history
WHERE id IN (
    SELECT id FROM agent_connection_history
    WHERE disconnected_at IS NOT NULL AND disconnected_at < now() - make_interval(secs => %(age)s)
    ORDER BY disconnected_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
"""


class HistoryRetention:
    def __init__(
        self,
        db: Database,
        *,
        retention_days: float,
        batch_rows: int = 5000,
        interval_s: float = 300.0,
        pause_s: float = 0.05,
    ) -> None:
        self._db = db
        self.retention_days = retention_days
        self.batch_rows = batch_rows
        self.interval_s = interval_s
        self.pause_s = pause_s
        self.deleted_total = 0
        self.passes = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.retention_days <= 0:
            return
        while True:
            try:
                await self.run_once()
            except psycopg.Error as exc:  # the database is away: the next pass catches up
                logger.warning("history retention pass failed: %s", str(exc).strip())
            await anyio.sleep(self.interval_s)

    async def run_once(self) -> int:
        """Delete everything past retention, batch by batch; returns the rows deleted."""
        deleted = 0
        while True:
            count = await self._db.run(self._delete_batch)
            deleted += max(count, 0)
            if count < self.batch_rows:  # done, or another instance is at it (-1)
                break
            await anyio.sleep(self.pause_s)
        self.deleted_total += deleted
        self.passes += 1
        if deleted:
            logger.info("history retention: deleted %d rows older than %g days", deleted,
                        self.retention_days)  # fmt: skip
        return deleted

    def _delete_batch(self, conn: psycopg.Connection[Any]) -> int:
        locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RETENTION_LOCK_KEY,))
        row = locked.fetchone()
        if not row or not row[0]:
            return -1
        cur = conn.execute(
            _DELETE, {"age": self.retention_days * 86400.0, "batch": self.batch_rows}
        )
        return cur.rowcount
