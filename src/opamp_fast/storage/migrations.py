"""Schema migrations: ordered ``migrations/NNNN_name.sql`` files, one transaction each.

Applied versions are recorded in ``schema_migrations``. A transaction-level advisory lock
serialises concurrent starters (two servers, or ``opamp-fast migrate`` beside a server): the
second waits, then finds nothing left to do.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from .database import Database

logger = logging.getLogger(__name__)

# Arbitrary constant: the advisory lock key that guards migrations ("opampfst" as an int64).
MIGRATION_LOCK_KEY = 0x6F70616D70667374
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    folder = resources.files("opamp_fast.storage").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
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


def migrate_sync(conn: psycopg.Connection[Any]) -> list[str]:
    """Blocking: apply every pending migration; returns the names applied now."""
    applied_now: list[str] = []
    for migration in load_migrations():
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(_CREATE_TABLE)
            if migration.version in _applied(conn):
                continue
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        logger.info("applied migration %s", migration.name)
        applied_now.append(migration.name)
    return applied_now


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
