"""Schema migrations: ordered ``migrations/NNNN_name.sql`` files, one transaction each.

Applied versions are recorded in ``schema_migrations``. A session-level advisory lock,
held for the whole run, serialises concurrent starters (two servers, or ``opamp-fast migrate``
beside a server): the second waits, then finds nothing left to do. It waits by polling
``pg_try_advisory_lock`` rather than blocking in ``pg_advisory_lock``: a blocked statement holds
a snapshot, and ``CREATE INDEX CONCURRENTLY`` in the first starter would wait for that snapshot
while the second waits for the lock: a deadlock.

A file whose first line is ``-- migrate: no-transaction`` runs statement by statement outside
a transaction: what ``CREATE INDEX CONCURRENTLY`` needs so that an index on a big, busy table is
built without blocking writes. Such statements must be idempotent (``IF NOT EXISTS``): a crash
in the middle reruns them.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from .database import Database

logger = logging.getLogger(__name__)

# Arbitrary constant: the advisory lock key that guards migrations ("opampfst" as an int64).
MIGRATION_LOCK_KEY = 0x6F70616D70667374
_NAME = re.compile(r"([0-9]{4})_[a-z0-9_]+\.sql")  # fullmatch


NO_TRANSACTION = "-- migrate: no-transaction"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def transactional(self) -> bool:
        return not self.sql.startswith(NO_TRANSACTION)

    def statements(self) -> list[str]:
        """The statements of a no-transaction migration (split on ``;`` at line ends)."""
        parts = [p.strip() for p in self.sql.split(";\n")]
        return [p for p in parts if p and not all(ln.startswith("--") for ln in p.splitlines())]


def load_migrations() -> list[Migration]:
    folder = resources.files("opamp_fast.storage").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {folder}: {versions}")
    return found


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def _applied(conn: psycopg.Connection[Any]) -> set[int]:
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def migrate_sync(conn: psycopg.Connection[Any], *, poll_s: float = 0.1) -> list[str]:
    """Blocking, on an autocommit connection: apply every pending migration; returns the names
    applied now."""
    while not _try_lock(conn):
        time.sleep(poll_s)
    try:
        conn.execute(_CREATE_TABLE)
        applied_now: list[str] = []
        for migration in load_migrations():
            if migration.version in _applied(conn):
                continue
            if migration.transactional:
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    _record(conn, migration)
            else:
                for statement in migration.statements():
                    conn.execute(statement.encode())
                _record(conn, migration)
            logger.info("applied migration %s", migration.name)
            applied_now.append(migration.name)
        return applied_now
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def _try_lock(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def _record(conn: psycopg.Connection[Any], migration: Migration) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
        (migration.version, migration.name),
    )


def pending_sync(conn: psycopg.Connection[Any]) -> list[str]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    done = _applied(conn) if exists and exists[0] else set()
    return [m.name for m in load_migrations() if m.version not in done]


async def apply_migrations(db: Database) -> list[str]:
    def _run(conn: psycopg.Connection[Any]) -> list[str]:
        conn.autocommit = True  # each migration opens its own transaction block
        try:
            return migrate_sync(conn)
        finally:
            conn.autocommit = False

    applied = await db.run(_run)
    db.migrated = True
    return applied


async def pending_migrations(db: Database) -> list[str]:
    return await db.run(pending_sync)
