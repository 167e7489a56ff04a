"""Retention: old rows deleted in small batches that never block the writer.

Three jobs share one loop (:class:`BatchedCleanup`):

* :class:`HistoryRetention`: closed connection-history rows older than
  ``history_retention_days``. A flapping agent writes thousands of rows a day, so the table must
  not grow forever. Only closed rows go (``disconnected_at`` set), found through the partial
  index of migration 0004, oldest first; the writer only ever touches open rows, so the two
  never contend.
* :class:`AuditRetention`: audit rows older than ``audit_retention_days``, through the one way
  the append-only trigger leaves open (migration 0013): the role ``opamp_fast_audit_retention``,
  assumed here for the batch's transaction only (``SET LOCAL ROLE``) and nowhere else.
* ``lifecycle.AgentExpiry``: agents offline for longer than ``forget_offline_after_days``.

Each batch is its own short transaction on the read pool (never on the writer's connection),
with a pause between batches, and takes a transaction-level advisory lock: one instance at a
time does a job, the others skip it. A full pass runs every ``interval_s``; none at all when
the job is disabled (a retention of 0).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import anyio
import psycopg
from anyio.abc import TaskStatus
from psycopg_pool import PoolTimeout

if TYPE_CHECKING:
    from .database import Database

__all__ = ["AuditRetention", "BatchedCleanup", "HistoryRetention"]

logger = logging.getLogger(__name__)

#: Advisory lock key of the history cleanup ("opamphst" as an int64).
RETENTION_LOCK_KEY: Final = 0x6F70616D70687374
#: Advisory lock key of the audit cleanup ("opampaud").
AUDIT_LOCK_KEY: Final = 0x6F70616D70617564

_DELETE_HISTORY = """
DELETE FROM agent_connection_history
WHERE id IN (
    SELECT id FROM agent_connection_history
    WHERE disconnected_at IS NOT NULL AND disconnected_at < now() - make_interval(secs => %(age)s)
    ORDER BY disconnected_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
"""

# The availability rollup's days that ended before the retention horizon (a day per agent: few
# rows, at most one pass's worth).
_DELETE_ROLLUP = """
DELETE FROM agent_uptime_daily
WHERE day < now() - make_interval(secs => %(age)s) - interval '1 day'
"""

#: The only role the append-only trigger of migration 0013 lets delete (rows older than a day).
AUDIT_RETENTION_ROLE: Final = "opamp_fast_audit_retention"
_AUDIT_ROLE = "SET LOCAL ROLE opamp_fast_audit_retention"
_DELETE_AUDIT = """
DELETE FROM audit_log
WHERE id IN (
    SELECT id FROM audit_log WHERE at < now() - make_interval(secs => %(age)s)
    ORDER BY at, id LIMIT %(batch)s
)
"""


class BatchedCleanup:
    """One cleanup job: :meth:`run_once` deletes batch by batch until a batch comes back short;
    :meth:`run` does a pass every ``interval_s``. Subclasses say what a batch deletes
    (:meth:`_delete_batch`) and under which advisory lock."""

    lock_key: int = 0
    what = "rows"

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

    @property
    def enabled(self) -> bool:
        return self.retention_days > 0

    @property
    def age_s(self) -> float:
        return self.retention_days * 86400.0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.enabled:
            return
        while True:
            try:
                await self.run_once()
            except (psycopg.Error, PoolTimeout) as exc:  # the database is away: next pass
                logger.warning("%s cleanup pass failed: %s", self.what, str(exc).strip())
            await anyio.sleep(self.interval_s)

    async def run_once(self) -> int:
        """Delete everything past retention, batch by batch; returns the rows deleted."""
        deleted = 0
        while True:
            count = await self._db.run(self._locked_batch)
            deleted += max(count, 0)
            if count < self.batch_rows:  # done, or another instance is at it (-1)
                break
            await anyio.sleep(self.pause_s)
        self.deleted_total += deleted
        self.passes += 1
        if deleted:
            logger.info("retention: deleted %d %s older than %g days", deleted, self.what,
                        self.retention_days)  # fmt: skip
        return deleted

    def _locked_batch(self, conn: psycopg.Connection[Any]) -> int:
        """One batch under the job's advisory lock; -1 when another instance holds it."""
        if not try_lock(conn, self.lock_key):
            return -1
        return self._delete_batch(conn)

    def _delete_batch(self, conn: psycopg.Connection[Any]) -> int:
        raise NotImplementedError


def try_lock(conn: psycopg.Connection[Any], key: int) -> bool:
    """Take a transaction-level advisory lock if it is free."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


class HistoryRetention(BatchedCleanup):
    lock_key = RETENTION_LOCK_KEY
    what = "connection-history rows"

    def _delete_batch(self, conn: psycopg.Connection[Any]) -> int:
        cur = conn.execute(_DELETE_HISTORY, {"age": self.age_s, "batch": self.batch_rows})
        if cur.rowcount < self.batch_rows:  # the last batch: the rollup's days go too
            conn.execute(_DELETE_ROLLUP, {"age": self.age_s})
        return cur.rowcount


class AuditRetention(BatchedCleanup):
    lock_key = AUDIT_LOCK_KEY
    what = "audit rows"

    def _delete_batch(self, conn: psycopg.Connection[Any]) -> int:
        # Reverts at the end of the transaction: the pool's connection goes back as it was.
        conn.execute(_AUDIT_ROLE)
        params = {"age": self.age_s, "batch": self.batch_rows}
        return conn.execute(_DELETE_AUDIT, params).rowcount
