"""A database as an earlier release left it: the migrations before a version, applied and
recorded the way ``migrate_sync`` does, so that the next start applies the rest."""

from __future__ import annotations

from typing import Any

import psycopg

from opamp_fast.storage.migrations import load_migrations


def migrate_before(conn: psycopg.Connection[Any], version: int) -> None:
    """Apply (on an autocommit connection) every migration older than ``version``."""
    conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for migration in load_migrations():
        if migration.version >= version:
            break
        if migration.transactional:
            conn.execute(migration.sql.encode())
        else:
            for statement in migration.statements():
                conn.execute(statement.encode())
        conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
            (migration.version, migration.name),
        )
