"""BatchWriter on a real Postgres: coalescing, history order, outage, drain, crash repair."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anyio
import psycopg
import pytest

from opamp_fast._proto.opamp.v1 import anyvalue_pb2, opamp_pb2
from opamp_fast.protocol import remote_config_hash
from opamp_fast.redaction import ConfigRedactor, RedactionPolicy
from opamp_fast.storage import Database, apply_migrations
from opamp_fast.storage.batch_writer import (
    _FLUSH_PREAMBLE,
    _KEYED_LOOKUPS_PRICED,
    _STAGING,
    _UPDATE_CLOSES,
    _UPDATE_SEEN,
    BatchWriter,
    pg_time,
)
from opamp_fast.storage.rows import AgentSnapshot

pytestmark = pytest.mark.postgres

T0 = 1_700_000_000.0


def uid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def query(url: str, sql: str, params: Any = None) -> Any:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


async def aquery(url: str, sql: str, params: Any = None) -> Any:
    return await anyio.to_thread.run_sync(partial(query, url, sql, params))


@contextlib.asynccontextmanager
async def opened(database_url: str) -> AsyncIterator[Database]:
    """A Database of its own (its own writer connection), closed on exit."""
    database = Database(database_url, pool_size=2, connect_timeout_s=1.0)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with opened(database_url) as database:
        await apply_migrations(database)
        yield database


@pytest.fixture
async def writer_factory(db: Database) -> AsyncIterator[Callable[..., Any]]:
    """``await start(**kwargs)`` runs a BatchWriter in a nursery; teardown closes (drains) it."""
    writers: list[BatchWriter] = []
    async with anyio.create_task_group() as nursery:

        async def start(**kwargs: Any) -> BatchWriter:
            kwargs.setdefault("instance_id", "node-a")
            kwargs.setdefault("flush_interval_s", 3600.0)  # tests flush explicitly
            writer = BatchWriter(kwargs.pop("database", db), **kwargs)
            await nursery.start(writer.run)
            writers.append(writer)
            return writer

        yield start
        for writer in writers:
            await writer.aclose()


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


CONFIG_HASH = remote_config_hash(
    {"main.yaml": (b"receivers: {}\n", "text/yaml"), "blob": (b"\xff\x00\x01", "")}
).hex()


def snapshot(n: int, version: int = 1) -> AgentSnapshot:
    description = opamp_pb2.AgentDescription(
        identifying_attributes=[
            anyvalue_pb2.KeyValue(
                key="service.name", value=anyvalue_pb2.AnyValue(string_value=f"collector-{n}")
            ),
            anyvalue_pb2.KeyValue(
                key="service.version", value=anyvalue_pb2.AnyValue(string_value=f"1.{version}")
            ),
        ],
        non_identifying_attributes=[
            anyvalue_pb2.KeyValue(key="host.cpus", value=anyvalue_pb2.AnyValue(int_value=n)),
        ],
    )
    health = opamp_pb2.ComponentHealth(healthy=version % 2 == 1, status=f"v{version}")
    config = opamp_pb2.EffectiveConfig(
        config_map=opamp_pb2.AgentConfigMap(
            config_map={
                "main.yaml": opamp_pb2.AgentConfigFile(
                    body=b"receivers: {}\n", content_type="text/yaml"
                ),
                "blob": opamp_pb2.AgentConfigFile(body=b"\xff\x00\x01"),
            }
        )
    )
    rcs = opamp_pb2.RemoteConfigStatus(
        last_remote_config_hash=bytes([version]) * 4, status=1, error_message=""
    )
    return AgentSnapshot.from_messages(
        capabilities=version,
        description=description,
        health=health,
        effective_config=config,
        remote_config_status=rcs,
        transport="ws",
    )


AGENT_COLUMNS = """
    instance_uid, uid_text, status, serving_instance, transport, agent_name,
    extract(epoch FROM last_seen_at)::float8, extract(epoch FROM last_connected_at)::float8,
    extract(epoch FROM last_disconnected_at)::float8, disconnect_reason, capabilities,
    description, health, effective_config, remote_config_status, labels
"""

HISTORY_COLUMNS = """
    instance_uid, extract(epoch FROM connected_at)::float8,
    extract(epoch FROM disconnected_at)::float8, duration_s, disconnect_reason, remote_addr,
    transport, serving_instance
"""


async def test_an_effective_config_is_redacted_and_written_once(
    writer_factory: Any, database_url: str
) -> None:
    """A config stored already (same hash of what was reported, same redaction policy) is not
    redacted and written again on a reconnect or a restart: one query per flush finds them. A
    writer with another word list redoes it."""
    writer: BatchWriter = await writer_factory()
    writer.connected(uid(1), at=T0, remote_addr="a", transport="ws", snapshot=snapshot(1))
    await writer.flush()

    def mark() -> None:
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "UPDATE agents SET effective_config = jsonb_set(effective_config,"
                " '{config_map,main.yaml,body}', '\"as stored\"')"
            )

    await anyio.to_thread.run_sync(mark)
    body = (
        "SELECT effective_config->'config_map'->'main.yaml'->>'body', health->>'status' FROM agents"
    )
    writer.connected(uid(1), at=T0 + 1, remote_addr="a", transport="ws", snapshot=snapshot(1, 2))
    await writer.flush()
    assert await aquery(database_url, body) == [("as stored", "v2")]
    other = await writer_factory(
        instance_id="node-b", redactor=ConfigRedactor(RedactionPolicy.parse("receivers"))
    )
    other.connected(uid(1), at=T0 + 2, remote_addr="a", transport="ws", snapshot=snapshot(1, 3))
    await other.flush()
    assert await aquery(database_url, body) == [("receivers: {}\n", "v3")]


async def test_flush_writes_every_column(writer_factory, database_url) -> None:
    writer: BatchWriter = await writer_factory()
    n = 200
    for i in range(n):
        writer.connected(
            uid(i), at=T0 + i, remote_addr=f"10.0.0.{i % 250}:4{i}", transport="ws",
            snapshot=snapshot(i),
        )  # fmt: skip
        writer.seen(uid(i), T0 + i + 0.5)
    await writer.flush()

    rows = await aquery(database_url, f"SELECT {AGENT_COLUMNS} FROM agents ORDER BY instance_uid")
    assert len(rows) == n
    for i, row in enumerate(rows):
        assert row == (
            uid(i),
            str(uuid.UUID(bytes=uid(i))),
            "online",
            "node-a",
            "ws",
            f"collector-{i}",
            T0 + i + 0.5,
            T0 + i,
            None,
            None,
            1,
            {
                "identifying_attributes": {
                    "service.name": f"collector-{i}", "service.version": "1.1",
                },
                "non_identifying_attributes": {"host.cpus": i},
            },
            {
                "healthy": True, "start_time_unix_nano": 0, "last_error": "", "status": "v1",
                "status_time_unix_nano": 0,
            },
            {
                "config_map": {
                    "main.yaml": {
                        "body": "receivers: {}\n", "content_type": "text/yaml",
                        "sha256": sha256(b"receivers: {}\n"), "size": 14, "redacted": 0,
                    },
                    "blob": {
                        "content_type": "", "sha256": sha256(b"\xff\x00\x01"), "size": 3,
                        "withheld": "binary (not UTF-8 text)",
                    },
                },
                "sha256": CONFIG_HASH,
                "redaction": RedactionPolicy().fingerprint,
            },
            {"last_remote_config_hash": "01010101", "status": "APPLIED", "error_message": ""},
            {},
        )  # fmt: skip
    history = await aquery(
        database_url, f"SELECT {HISTORY_COLUMNS} FROM agent_connection_history ORDER BY id"
    )
    assert history == [
        (uid(i), T0 + i, None, None, None, f"10.0.0.{i % 250}:4{i}", "ws", "node-a")
        for i in range(n)
    ]
    stats = writer.statistics()
    assert stats.flushes_total == 1
    assert stats.last_flush_rows == 2 * n
    assert (stats.pending_agents, stats.pending_sessions, stats.backlog_since) == (0, 0, None)


async def test_coalescing_last_values_win(writer_factory, database_url) -> None:
    writer: BatchWriter = await writer_factory()
    writer.connected(uid(1), at=T0, remote_addr="a", transport="http")
    for version in range(1, 51):
        writer.status(uid(1), snapshot(1, version))
    for k in range(1000):
        writer.seen(uid(1), T0 + k)
    for i in range(2, 12):
        writer.connected(uid(i), at=T0, remote_addr="b", transport="ws")
        writer.status(uid(i), snapshot(i, 3))
    stats = writer.statistics()
    assert (stats.pending_agents, stats.pending_sessions) == (11, 11)
    await writer.flush()

    rows = await aquery(
        database_url,
        "SELECT instance_uid, capabilities, health->>'status', transport,"
        " extract(epoch FROM last_seen_at)::float8, description->'identifying_attributes'"
        " FROM agents ORDER BY instance_uid",
    )
    assert len(rows) == 11
    assert rows[0] == (
        uid(1), 50, "v50", "http", T0 + 999,
        {"service.name": "collector-1", "service.version": "1.50"},
    )  # fmt: skip
    assert [r[1] for r in rows[1:]] == [3] * 10
    assert await aquery(database_url, "SELECT count(*) FROM agent_connection_history") == [(11,)]

    # A later status-only flush changes the snapshot fields and keeps the connection fields.
    writer.status(uid(1), snapshot(1, 51))
    await writer.flush()
    row = await aquery(
        database_url,
        "SELECT capabilities, status, serving_instance, extract(epoch FROM last_connected_at)"
        "::float8 FROM agents WHERE instance_uid = %s",
        (uid(1),),
    )
    assert row == [(51, "online", "node-a", T0)]


async def test_open_close_open_in_one_batch(writer_factory, database_url) -> None:
    writer: BatchWriter = await writer_factory()
    writer.connected(uid(7), at=T0, remote_addr="1.2.3.4:1", transport="ws")
    writer.disconnected(uid(7), at=T0 + 2.5, reason="heartbeat timeout")
    writer.connected(uid(7), at=T0 + 3, remote_addr="1.2.3.4:2", transport="http")
    writer.disconnected(uid(7), at=T0 + 4, reason="client closed")
    writer.disconnected(uid(7), at=T0 + 4.5, reason="again")  # reported twice: ignored
    writer.connected(uid(7), at=T0 + 5, remote_addr="1.2.3.4:3", transport="ws")
    writer.connected(uid(7), at=T0 + 6, remote_addr="1.2.3.4:4", transport="ws")
    await writer.flush()

    history = await aquery(
        database_url, f"SELECT {HISTORY_COLUMNS} FROM agent_connection_history ORDER BY id"
    )
    assert history == [
        (uid(7), T0, T0 + 2.5, 2.5, "heartbeat timeout", "1.2.3.4:1", "ws", "node-a"),
        (uid(7), T0 + 3, T0 + 4, 1.0, "client closed", "1.2.3.4:2", "http", "node-a"),
        (uid(7), T0 + 5, T0 + 6, 1.0, "replaced by a new connection", "1.2.3.4:3", "ws", "node-a"),
        (uid(7), T0 + 6, None, None, None, "1.2.3.4:4", "ws", "node-a"),
    ]
    agent = await aquery(database_url, f"SELECT {AGENT_COLUMNS} FROM agents")
    assert agent[0][2:10] == (
        "online",
        "node-a",
        "ws",
        None,
        T0 + 6,
        T0 + 6,
        T0 + 4,
        "client closed",
    )


async def test_close_of_session_from_earlier_flush(writer_factory, database_url) -> None:
    writer: BatchWriter = await writer_factory()
    for i in range(5):
        writer.connected(uid(i), at=T0, remote_addr="x", transport="ws")
    await writer.flush()
    for i in range(5):
        writer.seen(uid(i), T0 + 10)
        writer.disconnected(uid(i), at=T0 + 10 + i, reason=f"bye {i}")
    await writer.flush()

    history = await aquery(
        database_url,
        f"SELECT {HISTORY_COLUMNS} FROM agent_connection_history ORDER BY instance_uid",
    )
    assert history == [
        (uid(i), T0, T0 + 10 + i, 10.0 + i, f"bye {i}", "x", "ws", "node-a") for i in range(5)
    ]
    agents = await aquery(
        database_url,
        "SELECT status, serving_instance, extract(epoch FROM last_disconnected_at)::float8,"
        " disconnect_reason, extract(epoch FROM last_seen_at)::float8"
        " FROM agents ORDER BY instance_uid",
    )
    assert agents == [("offline", None, T0 + 10 + i, f"bye {i}", T0 + 10) for i in range(5)]


async def test_last_seen_only_moves_forward(writer_factory, database_url) -> None:
    writer: BatchWriter = await writer_factory()
    writer.connected(uid(1), at=T0, remote_addr="x", transport="ws")
    writer.seen(uid(1), T0 + 100)
    writer.seen(uid(99), T0 + 100)  # never connected: no row to update, nothing invented
    await writer.flush()
    writer.seen(uid(1), T0 + 50)  # an older time (clock step, reordered report) is ignored
    await writer.flush()
    rows = await aquery(
        database_url, "SELECT instance_uid, extract(epoch FROM last_seen_at)::float8 FROM agents"
    )
    assert rows == [(uid(1), T0 + 100)]
    writer.seen(uid(1), T0 + 200)
    await writer.flush()
    rows = await aquery(database_url, "SELECT extract(epoch FROM last_seen_at)::float8 FROM agents")
    assert rows == [(T0 + 200,)]


async def test_last_seen_times_are_written_a_slice_per_flush(writer_factory, database_url) -> None:
    """Every agent's last-seen time is written once per seen interval, a slice of the fleet
    with each flush (60 slots here), not the whole fleet at once; an agent that disconnects
    takes its last-seen time along with its offline row at the flush interval."""
    writer: BatchWriter = await writer_factory(flush_interval_s=0.05, seen_flush_interval_s=3.0)
    agents = [uid(n) for n in range(600)]
    t0 = time.time() - 60  # recent: the drain closes these sessions, with a rollup row per day
    for u in agents:
        writer.connected(u, at=t0, remote_addr="x", transport="ws")
    await writer.flush()
    flushes = writer.statistics().flushes_total

    async def seen_at(t: float) -> int:
        sql = "SELECT count(*) FROM agents WHERE last_seen_at = to_timestamp(%s)"
        return int((await aquery(database_url, sql, (t,)))[0][0])

    for u in agents:
        writer.seen(u, t0 + 10)
    with anyio.fail_after(5):
        while writer.statistics().flushes_total == flushes:
            await anyio.sleep(0.01)
    assert 0 < writer.statistics().last_flush_rows < 100  # ~10 of 600: one slot
    with anyio.fail_after(10):  # all of them within the seen interval
        while await seen_at(t0 + 10) < len(agents):
            await anyio.sleep(0.1)
    writer.seen(agents[0], t0 + 20)
    writer.disconnected(agents[0], at=t0 + 21, reason="connection closed")
    with anyio.fail_after(2.5):  # with the offline row, not a slot's turn (up to 3 s) later
        while not await seen_at(t0 + 20):
            await anyio.sleep(0.02)
    rows = await aquery(database_url, "SELECT status FROM agents WHERE instance_uid = %s",
                        (agents[0],))  # fmt: skip
    assert rows == [("offline",)]


async def test_a_flush_looks_its_rows_up_by_key_not_by_scanning_the_fleet(
    writer_factory, database_url
) -> None:
    """A flush's last-seen update and its closes cost what the batch holds: the staged agents
    and sessions are looked up by key, where the planner, with Postgres' default price of a
    random page, scans and hashes the whole agents (history) table for every flush."""
    writer: BatchWriter = await writer_factory()
    recently = time.time() - 60  # (the drain closes these sessions: a day of rollup each)
    for n in range(20_000):
        writer.connected(uid(n), at=recently, remote_addr="x", transport="ws")
    await writer.flush()
    with psycopg.connect(database_url) as conn:
        conn.execute("ANALYZE agents; ANALYZE agent_connection_history")
        conn.execute(_STAGING)
        with conn.cursor().copy("COPY opamp_stage_seen FROM STDIN") as copy:
            for n in range(0, 20_000, 100):
                copy.write_row((uid(n), recently + 10))
        sessions = conn.execute("SELECT session_id FROM agent_connection_history LIMIT 200")
        with conn.cursor().copy("COPY opamp_stage_closes FROM STDIN") as copy:
            for (session_id,) in sessions.fetchall():
                copy.write_row((session_id.bytes, recently + 10, "connection closed"))

        def plans() -> tuple[str, str]:
            return tuple(  # type: ignore[return-value]
                "\n".join(r[0] for r in conn.execute("EXPLAIN " + q, params).fetchall())
                for q, params in ((_UPDATE_SEEN, {"instance": "node-a"}), (_UPDATE_CLOSES, {}))
            )

        seen, closes = plans()  # what the planner does at the default price
        assert "Seq Scan on agents" in seen, seen
        assert "Hash Join" in closes, closes
        conn.execute(_KEYED_LOOKUPS_PRICED)
        seen, closes = plans()
        assert "Hash" not in seen and "Index Scan using agents_pkey on agents" in seen, seen
        assert "Hash" not in closes, closes
        assert "agent_connection_history_session_id_key" in closes, closes
        conn.rollback()  # the price was for that transaction only
        assert conn.execute("SHOW random_page_cost").fetchone() == ("4",)
        conn.rollback()
        conn.execute(_FLUSH_PREAMBLE)  # what a flush runs first: staging and the price
        assert conn.execute("SHOW random_page_cost").fetchone() == ("1.1",)
        conn.rollback()


async def test_a_storm_of_closes_in_one_flush_is_not_quadratic(writer_factory, database_url):
    """40,000 sessions closed in one flush, as after a network blip, with heartbeats in the same
    batch: the close statement's rollup trigger joins the closed rows' two versions, and must
    be planned for their number (a nested loop there would not finish within the test's
    timeout, as when the last-seen update's join settings leaked into it). One flush: as the
    shutdown drain writes it, or a writer whose parts are that large."""
    writer: BatchWriter = await writer_factory(flush_agents_max=50_000)
    recently = time.time() - 60  # (a day of rollup each)
    agents = [uid(n) for n in range(40_000)]
    for u in agents:
        writer.connected(u, at=recently, remote_addr="x", transport="ws")
    await writer.flush()
    for u in agents[:100]:
        writer.seen(u, recently + 5)
    for u in agents[100:]:
        writer.disconnected(u, at=recently + 10, reason="connection closed")
    with anyio.fail_after(60):
        await writer.flush()
    rows = await aquery(
        database_url,
        "SELECT count(*) FILTER (WHERE disconnected_at IS NULL), count(*) "
        "FROM agent_connection_history",
    )
    assert rows == [(100, 40_000)]


async def test_stale_transition_from_another_instance_does_not_win(
    writer_factory, database_url
) -> None:
    # The agent moved from node-a to node-b; node-a's disconnects land afterwards, one older
    # than the move, one newer (node-a timed its old, half-open socket out late): neither takes
    # the agent offline, since node-b holds it; node-a's history rows still close.
    a: BatchWriter = await writer_factory(instance_id="node-a")
    b: BatchWriter = await writer_factory(instance_id="node-b")
    a.connected(uid(1), at=T0, remote_addr="x", transport="ws")
    a.connected(uid(2), at=T0, remote_addr="x", transport="ws")
    await a.flush()
    b.connected(uid(1), at=T0 + 10, remote_addr="y", transport="ws")
    b.connected(uid(2), at=T0 + 10, remote_addr="y", transport="ws")
    await b.flush()
    a.disconnected(uid(1), at=T0 + 5, reason="connection lost")
    a.disconnected(uid(2), at=T0 + 50, reason="heartbeat timeout")
    await a.flush()
    rows = await aquery(
        database_url,
        "SELECT status, serving_instance, disconnect_reason, last_disconnected_at FROM agents",
    )
    assert rows == [("online", "node-b", None, None)] * 2
    history = await aquery(
        database_url,
        "SELECT serving_instance, disconnect_reason FROM agent_connection_history ORDER BY id",
    )
    assert sorted(history, key=str) == sorted(
        [("node-a", "connection lost"), ("node-a", "heartbeat timeout"),
         ("node-b", None), ("node-b", None)],
        key=str,
    )  # fmt: skip


async def wait_for(predicate: Callable[[], bool], limit_s: float = 15.0) -> None:
    """Poll ``predicate`` (state kept by the writer, no event to wait on) within a deadline."""
    with anyio.fail_after(limit_s):
        while True:
            if predicate():
                return
            await anyio.sleep(0.02)


async def test_outage_loses_nothing(writer_factory, database_url, postgres_admin_url) -> None:
    writer: BatchWriter = await writer_factory(flush_interval_s=0.05, retry_initial_s=0.05,
                                               retry_max_s=0.2)  # fmt: skip
    agents = 20
    for i in range(agents):
        writer.connected(uid(i), at=T0, remote_addr="x", transport="ws")
    await writer.flush()

    dbname = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(postgres_admin_url, autocommit=True) as c:
        c.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,)
        )
    flaps = 5
    try:
        t = T0
        for k in range(flaps):
            for i in range(agents):
                t += 0.001
                writer.disconnected(uid(i), at=t, reason=f"flap {k}")
                t += 0.001
                writer.connected(uid(i), at=t, remote_addr=f"r{k}", transport="http")
                writer.seen(uid(i), t)
            if k == 0:
                await wait_for(lambda: writer.statistics().backlog_since is not None)
        # Several failed attempts (a broken connection, then pool timeouts) while it is down.
        await wait_for(lambda: writer.statistics().db_errors_total >= 3)
        stats = writer.statistics()
        assert stats.backlog_since is not None
        assert stats.pending_agents == agents
        assert stats.pending_sessions == agents * (flaps + 1)  # first closes + 5 new sessions
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as c:
            c.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')

    await wait_for(lambda: writer.statistics().backlog_since is None)
    await writer.flush()
    stats = writer.statistics()
    assert (stats.pending_agents, stats.pending_sessions, stats.backlog_since) == (0, 0, None)

    history = await aquery(
        database_url,
        "SELECT instance_uid, remote_addr, disconnect_reason, disconnected_at IS NULL"
        " FROM agent_connection_history ORDER BY instance_uid, connected_at, id",
    )
    expected = []
    for i in range(agents):
        expected.append((uid(i), "x", "flap 0", False))
        expected += [(uid(i), f"r{k}", f"flap {k + 1}", False) for k in range(flaps - 1)]
        expected.append((uid(i), f"r{flaps - 1}", None, True))
    assert history == expected
    assert await aquery(
        database_url, "SELECT count(*) FROM agent_connection_history GROUP BY session_id"
        " HAVING count(*) > 1"
    ) == []  # fmt: skip
    final = await aquery(
        database_url,
        "SELECT DISTINCT status, transport, disconnect_reason FROM agents",
    )
    assert final == [("online", "http", f"flap {flaps - 1}")]


async def test_drain_on_close(writer_factory, database_url) -> None:
    writer: BatchWriter = await writer_factory()
    for i in range(3):
        writer.connected(uid(i), at=T0, remote_addr="x", transport="ws")
    await writer.flush()
    writer.connected(uid(3), at=T0 + 1, remote_addr="y", transport="ws")  # not flushed
    writer.disconnected(uid(0), at=T0 + 2, reason="client closed")
    await writer.aclose()
    with anyio.fail_after(5):
        await writer.flush()  # returns at once on a closed writer
    await wait_for(lambda: writer.statistics().flushes_total >= 2)

    history = await aquery(
        database_url,
        "SELECT instance_uid, disconnect_reason, disconnected_at IS NOT NULL,"
        " duration_s >= 0 FROM agent_connection_history ORDER BY instance_uid",
    )
    assert history == [
        (uid(0), "client closed", True, True),
        (uid(1), "server shutdown", True, True),
        (uid(2), "server shutdown", True, True),
        (uid(3), "server shutdown", True, True),
    ]
    agents = await aquery(
        database_url,
        "SELECT status, serving_instance, disconnect_reason FROM agents ORDER BY instance_uid",
    )
    assert agents == [
        ("offline", None, "client closed"),
        ("offline", None, "server shutdown"),
        ("offline", None, "server shutdown"),
        ("offline", None, "server shutdown"),
    ]
    # Events after the close are dropped quietly (the drain has recorded the shutdown).
    writer.connected(uid(9), at=T0 + 9, remote_addr="z", transport="ws")


async def test_repair_after_crash(db, writer_factory, database_url) -> None:
    # "Crash": a drain bound of 0 leaves everything as the process death would.
    crashed = BatchWriter(db, instance_id="node-a", flush_interval_s=3600, drain_timeout_s=0)
    other: BatchWriter = await writer_factory(instance_id="node-b")
    async with anyio.create_task_group() as nursery:
        await nursery.start(crashed.run)
        for i in range(4):
            crashed.connected(uid(i), at=T0, remote_addr="x", transport="ws")
        writer_seen = [T0 + 30, T0 + 31, None, None]
        for i, at in enumerate(writer_seen):
            if at is not None:
                crashed.seen(uid(i), at)
        crashed.disconnected(uid(3), at=T0 + 5, reason="client closed")
        await crashed.flush()
        crashed.connected(uid(4), at=T0 + 40, remote_addr="lost", transport="ws")
        nursery.cancel_scope.cancel()
    other.connected(uid(10), at=T0, remote_addr="b", transport="ws")
    await other.flush()

    restarted = BatchWriter(db, instance_id="node-a")
    assert await restarted.repair_after_crash() == 3
    assert await restarted.repair_after_crash() == 0

    history = await aquery(
        database_url,
        f"SELECT {HISTORY_COLUMNS} FROM agent_connection_history ORDER BY instance_uid",
    )
    assert history == [
        (uid(0), T0, T0 + 30, 30.0, "server restart", "x", "ws", "node-a"),
        (uid(1), T0, T0 + 31, 31.0, "server restart", "x", "ws", "node-a"),
        (uid(2), T0, T0, 0.0, "server restart", "x", "ws", "node-a"),  # last seen at connect
        (uid(3), T0, T0 + 5, 5.0, "client closed", "x", "ws", "node-a"),
        (uid(10), T0, None, None, None, "b", "ws", "node-b"),
    ]
    agents = await aquery(
        database_url,
        "SELECT instance_uid, status, serving_instance, disconnect_reason,"
        " extract(epoch FROM last_disconnected_at)::float8 FROM agents ORDER BY instance_uid",
    )
    assert agents == [
        (uid(0), "offline", None, "server restart", T0 + 30),
        (uid(1), "offline", None, "server restart", T0 + 31),
        (uid(2), "offline", None, "server restart", T0),
        (uid(3), "offline", None, "client closed", T0 + 5),
        (uid(10), "online", "node-b", None, None),
    ]


async def test_a_drain_past_its_bound_leaves_its_rows_to_be_closed_as_a_shutdown(
    db, database_url
) -> None:
    """A SIGTERM's drain that runs past its bound commits nothing: here a row another
    transaction holds, then the drain's connection cut (as when the process is killed). It has
    recorded when it began, first and alone, so the next start's repair closes what it left as
    the drain would have: "server shutdown" at that time, not "server restart" at each agent's
    last sight (at 100k, a worker's drain of 16,700 agents ran past its 10 s)."""
    await aquery(
        database_url,
        "INSERT INTO server_instances (instance_id, version, started_at, last_heartbeat_at) "
        "VALUES ('node-a', 'test', now(), now()) RETURNING 1",
    )
    stopping = BatchWriter(db, instance_id="node-a", flush_interval_s=3600, drain_timeout_s=1)
    waiting = (
        "SELECT pid FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    async with anyio.create_task_group() as nursery:
        await nursery.start(stopping.run)
        for i in range(3):
            stopping.connected(uid(i), at=T0, remote_addr="x", transport="ws")
            stopping.seen(uid(i), T0 + 10)
        await stopping.flush()
        for i in range(3):
            stopping.disconnected(uid(i), at=T0 + 20, reason="server shutdown")
        async with await psycopg.AsyncConnection.connect(database_url) as holder:
            await holder.execute(
                "SELECT 1 FROM agents WHERE instance_uid = %s FOR UPDATE", (uid(2),)
            )
            began = time.time()
            stopping.close()
            with anyio.fail_after(10):
                while not await aquery(database_url, waiting) or time.time() < began + 1.5:
                    await anyio.sleep(0.05)
            await aquery(database_url, f"SELECT pg_terminate_backend(({waiting}))")
    assert await aquery(
        database_url, "SELECT count(*) FROM agent_connection_history WHERE disconnected_at IS NULL"
    ) == [(3,)]
    ((stopping_at,),) = await aquery(
        database_url, "SELECT extract(epoch FROM stopping_at)::float8 FROM server_instances"
    )
    assert began <= stopping_at < began + 1

    restarted = BatchWriter(db, instance_id="node-a")
    assert await restarted.repair_after_crash() == 3
    history = await aquery(
        database_url,
        "SELECT instance_uid, extract(epoch FROM disconnected_at)::float8, disconnect_reason"
        " FROM agent_connection_history ORDER BY instance_uid",
    )
    assert history == [(uid(i), pytest.approx(stopping_at), "server shutdown") for i in range(3)]
    agents = await aquery(
        database_url,
        "SELECT instance_uid, status, serving_instance, disconnect_reason,"
        " extract(epoch FROM last_disconnected_at)::float8 FROM agents ORDER BY instance_uid",
    )
    assert agents == [
        (uid(i), "offline", None, "server shutdown", pytest.approx(stopping_at)) for i in range(3)
    ]


async def test_a_time_copied_is_the_microsecond_to_timestamp_gives(database_url) -> None:
    """New history rows are COPYed with datetimes made in Python; every other time reaches
    Postgres as a float through ``to_timestamp``. Both must give the same microsecond for the
    same float, or an agent's ``last_seen_at`` reads a microsecond before its session's
    ``connected_at``, both from one clock read (one full run saw it)."""
    rng = random.Random(7)
    times = [time.time()] + [T0 + rng.random() * 1e8 for _ in range(20_000)]
    rows = await aquery(
        database_url, "SELECT t, to_timestamp(t) FROM unnest(%s::float8[]) AS t", (times,)
    )
    assert [t for t, _ in rows] == times
    utc = datetime.UTC
    assert any(datetime.datetime.fromtimestamp(t, utc) != at for t, at in rows)  # as it was
    assert [pg_time(t) for t in times] == [at for _, at in rows]


class CommitThenFail:
    """A Database whose next run() commits and then reports a lost connection anyway."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.fail_next = False

    async def run_writer(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        result = await self.db.run_writer(fn)
        if self.fail_next:
            self.fail_next = False
            raise psycopg.OperationalError("server closed the connection during COMMIT")
        return result


async def test_retry_after_unknown_commit_is_idempotent(db, writer_factory, database_url) -> None:
    flaky = CommitThenFail(db)
    writer: BatchWriter = await writer_factory(database=flaky, retry_initial_s=0.01)
    for i in range(4):
        writer.connected(uid(i), at=T0, remote_addr="a", transport="ws")
    await writer.flush()

    flaky.fail_next = True
    writer.disconnected(uid(0), at=T0 + 1, reason="gone")  # close of an earlier session
    writer.connected(uid(5), at=T0 + 2, remote_addr="b", transport="ws")
    writer.connected(uid(6), at=T0 + 3, remote_addr="c", transport="ws")
    writer.disconnected(uid(6), at=T0 + 4, reason="short")
    writer.status(uid(1), snapshot(1, 7))
    writer.seen(uid(2), T0 + 5)
    with anyio.fail_after(5):
        await writer.flush()  # committed, reported as failed, merged back, retried
    assert writer.statistics().db_errors_total == 1
    writer.disconnected(uid(5), at=T0 + 6, reason="later")  # its open row is "uncertain"
    writer.connected(uid(7), at=T0 + 7, remote_addr="d", transport="http")  # fresh
    await writer.flush()

    history = await aquery(
        database_url,
        f"SELECT {HISTORY_COLUMNS} FROM agent_connection_history ORDER BY id",
    )
    assert history == [
        (uid(0), T0, T0 + 1, 1.0, "gone", "a", "ws", "node-a"),
        (uid(1), T0, None, None, None, "a", "ws", "node-a"),
        (uid(2), T0, None, None, None, "a", "ws", "node-a"),
        (uid(3), T0, None, None, None, "a", "ws", "node-a"),
        (uid(5), T0 + 2, T0 + 6, 4.0, "later", "b", "ws", "node-a"),
        (uid(6), T0 + 3, T0 + 4, 1.0, "short", "c", "ws", "node-a"),
        (uid(7), T0 + 7, None, None, None, "d", "http", "node-a"),
    ]
    agents = await aquery(
        database_url,
        "SELECT instance_uid, status, capabilities, extract(epoch FROM last_seen_at)::float8"
        " FROM agents ORDER BY instance_uid",
    )
    assert agents == [
        (uid(0), "offline", 0, T0),
        (uid(1), "online", 7, T0),
        (uid(2), "online", 0, T0 + 5),
        (uid(3), "online", 0, T0),
        (uid(5), "offline", 0, T0 + 2),
        (uid(6), "offline", 0, T0 + 3),
        (uid(7), "online", 0, T0 + 7),
    ]


async def test_history_retention_deletes_only_old_closed_rows(db, writer_factory, database_url):
    from opamp_fast.storage.retention import HistoryRetention

    writer: BatchWriter = await writer_factory()
    old, recent, open_ = uid(1), uid(2), uid(3)
    writer.connected(old, at=T0, remote_addr="x", transport="ws")
    writer.disconnected(old, at=T0 + 1, reason="connection closed")
    writer.connected(recent, at=T0, remote_addr="x", transport="ws")
    writer.disconnected(recent, at=T0 + 2, reason="connection closed")
    writer.connected(open_, at=T0, remote_addr="x", transport="ws")
    await writer.flush()
    assert await aquery(database_url, "SELECT sum(disconnects) FROM agent_uptime_daily") == [(2,)]
    # Age the rows: one closed 40 days ago, one 10 days ago; the open one started 40 days ago.
    await aquery(
        database_url,
        "UPDATE agent_connection_history SET connected_at = now() - interval '40 days',"
        " disconnected_at = CASE WHEN instance_uid = %s THEN now() - interval '40 days'"
        " WHEN instance_uid = %s THEN now() - interval '10 days' END RETURNING 1",
        (old, recent),
    )
    retention = HistoryRetention(db, retention_days=30, batch_rows=1)
    assert await retention.run_once() == 1
    rows = await aquery(
        database_url, "SELECT instance_uid FROM agent_connection_history ORDER BY instance_uid"
    )
    assert rows == [(recent,), (open_,)]  # the open row stays, whatever its age
    assert retention.deleted_total == 1 and await retention.run_once() == 0
    # The availability rollup's days (those of T0, years ago) went with the last batch.
    assert await aquery(database_url, "SELECT count(*) FROM agent_uptime_daily") == [(0,)]


@pytest.fixture
async def second_db(database_url: str) -> AsyncIterator[Database]:
    """A second Database, closed after the writers that use it: requested before
    ``writer_factory``, it is torn down after it."""
    async with opened(database_url) as database:
        yield database


async def test_writers_of_two_instances_never_deadlock_on_shared_agents(
    database_url, second_db, writer_factory
) -> None:
    """Agents moving between instances (a storm over several workers): each instance's batch
    holds some agents as state changes and others as last-seen times, the other one the reverse.
    Rows locked in each statement's own order deadlock (Postgres aborts one flush, which retries
    after a backoff: a flush's worth of latency each time); locked in one order, they wait.
    The sessions begin a minute ago: the shutdown that closes them adds each one's days to the
    availability rollup, and 10,000 sessions open since ``T0`` (three years) are 11M days."""
    t0 = time.time() - 60
    a: BatchWriter = await writer_factory(instance_id="node-a")
    b: BatchWriter = await writer_factory(instance_id="node-b", database=second_db)
    a.peers = b.peers = lambda: 1
    left, right = [uid(n) for n in range(5000)], [uid(n) for n in range(5000, 10000)]
    for u in left + right:
        a.connected(u, at=t0, remote_addr="x", transport="ws")
    await a.flush()
    for round_ in range(1, 7):
        at = t0 + round_
        mine, theirs = (left, right) if round_ % 2 else (right, left)
        for u in mine:
            a.connected(u, at=at, remote_addr="x", transport="ws")
            b.seen(u, at)
        for u in theirs:
            b.connected(u, at=at, remote_addr="y", transport="ws")
            a.seen(u, at)
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.flush)
            tg.start_soon(b.flush)
    assert a.statistics().db_errors_total == 0
    assert b.statistics().db_errors_total == 0
    # The last round: the left half connected to b, the right half to a.
    served = await aquery(
        database_url,
        "SELECT serving_instance, count(*), min(encode(instance_uid, 'hex')), "
        "max(encode(instance_uid, 'hex')) FROM agents "
        "WHERE status = 'online' GROUP BY serving_instance ORDER BY serving_instance",
    )
    assert served == [
        ("node-a", 5000, uid(5000).hex(), uid(9999).hex()),
        ("node-b", 5000, uid(0).hex(), uid(4999).hex()),
    ]


async def instance_writer(
    database_url: str, writer_factory: Callable[..., Any], instance_id: str = "node-a", **kw: Any
) -> tuple[BatchWriter, list[int]]:
    """A writer for a registered instance (its ``server_instances`` row) that publishes the
    online counts in the list returned with it ([ws, http], which the test sets)."""
    await aquery(
        database_url,
        "INSERT INTO server_instances (instance_id, version, started_at, last_heartbeat_at, "
        "lease_s) VALUES (%s, 'test', now(), now(), 3600) RETURNING 1",
        (instance_id,),
    )
    online = [0, 0]
    w = await writer_factory(instance_id=instance_id, online_counts=lambda: tuple(online), **kw)
    return w, online


def published_after_each_commit(database_url: str, w: BatchWriter) -> list[int]:
    """The instance's published online count (ws) after each of ``w``'s commits, as they come."""
    published: list[int] = []
    w.on_flush = lambda *_: published.append(
        query(database_url, "SELECT online_ws FROM server_instances")[0][0]
    )
    return published


async def test_a_large_batch_is_written_in_parts_oldest_first(database_url, writer_factory):
    """A storm's thousands of disconnects on one worker are written in transactions of
    ``flush_agents_max`` agents, the oldest changes first and each with its agents' history, so
    that each part's rows are free (for the workers those agents come back to) as soon as it
    commits, not after the whole storm's rows. Each part publishes the online count less the
    agents that came online in the parts after it."""
    w, online = await instance_writer(database_url, writer_factory, flush_agents_max=100)
    published = published_after_each_commit(database_url, w)
    t0 = time.time() - 60
    uids = [uid(n) for n in range(250)]
    for n, u in enumerate(uids):
        w.connected(u, at=t0 + n / 1000, remote_addr="x", transport="ws")
    online[0] = 250
    await w.flush()
    assert w.statistics().flushes_total == 3
    # each part counts the agents it wrote online, not those of the parts after it
    assert published == [100, 200, 250]
    # three transactions, and the history in the order the agents came
    assert await aquery(database_url, "SELECT count(DISTINCT xmin::text) FROM agents") == [(3,)]
    history = await aquery(
        database_url, "SELECT instance_uid FROM agent_connection_history ORDER BY id"
    )
    assert [row[0] for row in history] == uids

    for u in uids:
        w.disconnected(u, at=t0 + 1, reason="connection closed")
    for u in uids[:50]:
        w.connected(u, at=t0 + 2, remote_addr="y", transport="ws")
    online[0] = 50
    await w.flush()
    assert w.statistics().flushes_total == 6
    assert published[3:] == [50, 50, 50]  # the first part holds the agents back online
    assert await aquery(
        database_url, "SELECT status, count(*) FROM agents GROUP BY status ORDER BY status"
    ) == [("offline", 200), ("online", 50)]
    assert await aquery(
        database_url,
        "SELECT disconnect_reason, count(*) FROM agent_connection_history "
        "GROUP BY disconnect_reason ORDER BY disconnect_reason NULLS LAST",
    ) == [("connection closed", 250), (None, 50)]
    assert await aquery(
        database_url, "SELECT online_ws FROM server_instances WHERE instance_id = 'node-a'"
    ) == [(50,)]


async def test_agents_back_before_their_offline_row_count_in_every_part(
    database_url, writer_factory
):
    """A blip: agents written online drop and come back before their offline rows are written.
    Their rows never stop saying online, so the parts written before theirs count them; agents
    that came online from an offline row are counted once their own part is written."""
    w, online = await instance_writer(database_url, writer_factory, flush_agents_max=100)
    published = published_after_each_commit(database_url, w)
    t0 = time.time() - 60
    uids = [uid(n) for n in range(300)]
    for n, u in enumerate(uids[:250]):
        w.connected(u, at=t0 + n / 1000, remote_addr="x", transport="ws")
    online[0] = 250
    await w.flush()
    published.clear()
    for u in uids[:250]:
        w.disconnected(u, at=t0 + 1, reason="connection closed")
    for u in uids[200:]:  # 50 back after the blip, 50 new ones
        w.connected(u, at=t0 + 2, remote_addr="y", transport="ws")
    online[0] = 100
    await w.flush()
    # parts: 100 offline, 100 offline, then 50 back and 50 new
    assert published == [50, 50, 100]
    assert await aquery(
        database_url, "SELECT status, count(*) FROM agents GROUP BY status ORDER BY status"
    ) == [("offline", 200), ("online", 100)]


async def two_agents_online(
    database_url: str, writer_factory: Callable[..., Any]
) -> tuple[BatchWriter, list[int], bytes, bytes, float]:
    """Instance node-b, sharing the database with another, serving two agents written online a
    minute ago: (its writer, its online counts, the agent another flush will hold, the other
    agent, when they connected)."""
    b, online = await instance_writer(database_url, writer_factory, instance_id="node-b")
    b.peers = lambda: 1
    held, free = uid(1), uid(2)
    t0 = time.time() - 60
    for u in (held, free):
        b.connected(u, at=t0, remote_addr="x", transport="ws")
    online[0] = 2
    await b.flush()
    return b, online, held, free, t0


def flush_signalled(w: BatchWriter) -> tuple[anyio.Event, Callable[[], Awaitable[None]]]:
    """A task body that flushes ``w`` and sets the event returned with it when that is done."""
    flushed = anyio.Event()

    async def flush() -> None:
        await w.flush()
        flushed.set()

    return flushed, flush


async def test_a_flush_leaves_the_rows_another_flush_holds_for_its_next_flush(
    database_url, writer_factory
) -> None:
    """A storm over several workers: one worker's flush of its thousands of disconnects holds
    those agents' rows for seconds while they are back on the other workers. The others' flushes
    write everything else at once and leave those agents for their next flush; the instance's
    published online count leaves them out meanwhile, as their rows do. flush() callers wait
    until the rows left behind are written too."""
    b, online, held, free, t0 = await two_agents_online(database_url, writer_factory)
    for u in (held, free):
        b.disconnected(u, at=t0 + 1, reason="connection closed")
    online[0] = 0
    await b.flush()

    async def rows() -> list[tuple[bytes, str, str | None]]:
        return await aquery(
            database_url,
            "SELECT instance_uid, status, serving_instance FROM agents ORDER BY instance_uid",
        )

    async def published() -> int:
        [(ws,)] = await aquery(
            database_url, "SELECT online_ws FROM server_instances WHERE instance_id = 'node-b'"
        )
        return int(ws)

    flushed, flush = flush_signalled(b)

    async with await psycopg.AsyncConnection.connect(database_url) as other:
        # another instance's flush, holding one agent's row as an UPDATE would
        await other.execute("SELECT 1 FROM agents WHERE instance_uid = %s FOR UPDATE", (held,))
        for u in (held, free):
            b.connected(u, at=t0 + 2, remote_addr="y", transport="ws")
        online[0] = 2
        async with anyio.create_task_group() as tg:
            tg.start_soon(flush)
            with anyio.fail_after(10):
                while (await rows())[1][1] != "online":
                    await anyio.sleep(0.02)
            assert await rows() == [(held, "offline", None), (free, "online", "node-b")]
            assert await published() == 1
            assert b.statistics().busy_total >= 1
            assert b.statistics().db_errors_total == 0
            # the held agent's new session is history already: only its row waits
            assert await aquery(
                database_url,
                "SELECT count(*) FROM agent_connection_history "
                "WHERE instance_uid = %s AND disconnected_at IS NULL",
                (held,),
            ) == [(1,)]
            assert not flushed.is_set()
            await other.rollback()  # the other flush ends
            with anyio.fail_after(10):
                await flushed.wait()
    assert await rows() == [(held, "online", "node-b"), (free, "online", "node-b")]
    assert await published() == 2


async def test_a_heartbeat_whose_row_another_flush_holds_is_written_by_the_next_flush(
    database_url, writer_factory
) -> None:
    """Heartbeats alone, of agents another instance's flush holds (an agent that moved between
    workers in a storm): the flush writes the other agents' last-seen times without waiting for
    that row, and the held agent's time once the row is free, not lost."""
    b, _, held, free, t0 = await two_agents_online(database_url, writer_factory)

    async def last_seen() -> dict[bytes, float]:
        rows = await aquery(
            database_url, "SELECT instance_uid, extract(epoch FROM last_seen_at) FROM agents"
        )
        return {u: float(at) for u, at in rows}

    flushed, flush = flush_signalled(b)

    async with await psycopg.AsyncConnection.connect(database_url) as other:
        await other.execute("SELECT 1 FROM agents WHERE instance_uid = %s FOR UPDATE", (held,))
        for u in (held, free):
            b.seen(u, t0 + 5)
        async with anyio.create_task_group() as tg:
            tg.start_soon(flush)
            with anyio.fail_after(10):
                while (await last_seen())[free] < t0 + 4:
                    await anyio.sleep(0.02)
            assert (await last_seen())[held] < t0 + 1
            assert b.statistics().busy_total == 1
            assert not flushed.is_set()
            await other.rollback()  # the other flush ends
            with anyio.fail_after(10):
                await flushed.wait()
    assert (await last_seen())[held] == pytest.approx(t0 + 5, abs=1e-3)
    assert b.statistics().db_errors_total == 0
