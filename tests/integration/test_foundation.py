"""The server foundation over real loopback HTTP and a real Postgres."""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio
import httpx
import psycopg
import pytest

from opamp_fast.storage import Database, apply_migrations, pending_migrations
from opamp_fast.storage.migrations import load_migrations

pytestmark = pytest.mark.postgres


async def test_health_and_readiness(server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        missing = await client.get("/no-such-route")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Not Found"}}


async def test_readiness_fails_when_database_goes_away(
    server, database_url, postgres_admin_url
) -> None:
    # Terminate every backend of the test database and forbid new connections: readiness must
    # flip to 503 (with a reason) instead of hanging or raising a 500.
    dbname = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(postgres_admin_url, autocommit=True) as c:
        c.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,)
        )
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["problems"] == ["database unreachable"]
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as c:
            c.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')


async def test_migrations_are_idempotent(database_url) -> None:
    db = Database(database_url, pool_size=2)
    await db.open()
    try:
        first = await apply_migrations(db)
        second = await apply_migrations(db)
        assert first == [m.name for m in load_migrations()]
        assert second == []
        assert await pending_migrations(db) == []
        rows = await db.run(
            lambda c: c.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
        )
        assert [r[0] for r in rows] == [m.version for m in load_migrations()]
    finally:
        await db.close()


async def test_a_read_sees_one_snapshot_and_a_run_does_not(database_url) -> None:
    """``Database.read``: a commit between two statements of one read is not seen by the
    second (a count and its page agree); under ``run`` (READ COMMITTED) it is."""
    db = Database(database_url, pool_size=2)
    await db.open()
    try:
        await db.run(lambda c: c.execute("CREATE TABLE t (v int)"))

        def count_around_a_commit(conn: psycopg.Connection) -> tuple[int, int]:
            before = conn.execute("SELECT count(*) FROM t").fetchone()
            with psycopg.connect(database_url, autocommit=True) as other:
                other.execute("INSERT INTO t VALUES (1)")  # a writer's flush, meanwhile
            after = conn.execute("SELECT count(*) FROM t").fetchone()
            assert before is not None and after is not None
            return before[0], after[0]

        assert await db.read(count_around_a_commit) == (0, 0)
        assert await db.run(count_around_a_commit) == (1, 2)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await db.read(lambda c: c.execute("INSERT INTO t VALUES (2)"))
        assert await db.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()) == (2,)
    finally:
        await db.close()


async def test_concurrent_migrations_apply_once(database_url) -> None:
    # Several starters at once (servers sharing a database): the advisory lock serialises them,
    # every migration is applied exactly once and nobody fails.
    dbs = [Database(database_url, pool_size=1) for _ in range(4)]
    results: list[list[str]] = []
    for db in dbs:
        await db.open()
    try:

        async def run(db: Database) -> None:
            results.append(await apply_migrations(db))

        async with anyio.create_task_group() as nursery:
            for db in dbs:
                nursery.start_soon(run, db)
    finally:
        for db in dbs:
            await db.close()
    applied = [name for names in results for name in names]
    assert sorted(applied) == sorted(m.name for m in load_migrations())
    with psycopg.connect(database_url) as conn:
        count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert count is not None
    assert count[0] == len(load_migrations())


async def test_instance_row_records_start_and_stop(start_server, make_settings, database_url):
    running = await start_server(make_settings(instance_id="node-a"))
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT version, stopped_at FROM server_instances WHERE instance_id = 'node-a'"
        ).fetchone()
    assert row == (running.services.version, None)
