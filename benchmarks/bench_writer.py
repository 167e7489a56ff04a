"""Batch writer flush vs raw binary COPY of the same rows into the same tables.

Run (starts its own embedded Postgres via pgserver in a temporary directory):

    python benchmarks/bench_writer.py            # 10k and 100k agents, 5 rounds each
    python benchmarks/bench_writer.py --sizes 10000 --rounds 3

What is measured (each a median over rounds, tables truncated/reloaded before every round):

- ``flush new``: one writer flush of N coalesced agent updates for agents never seen before (a
  connect + status snapshot + last_seen each: N upserted ``agents`` rows) plus N history rows,
  i.e. ``_write_batch`` in one transaction (COPY to temp staging, set-based statements, commit).
- ``raw COPY``: binary COPY of the same N agent rows and N history rows straight into the same
  tables, rows fully prepared beforehand, one transaction. The ratio raw_time / flush_time is
  the fraction of raw COPY throughput the writer reaches.
- ``flush update``: the same N agents already stored, a flush that disconnects them all (status
  transition + new snapshot + closes of the N open sessions); raw COPY has no equivalent.
- ``last_seen``: N stored agents, a flush of N ``seen()`` updates only.
- ``coalesce``: in-memory cost of the receiver applying N connect events (no database).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg
import pytest
from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script
from psycopg.types.json import set_json_dumps

from opamp_fast.protocol import anyvalue_pb, pb
from opamp_fast.storage.batch_writer import BatchWriter, _Batch, _write_batch
from opamp_fast.storage.migrations import migrate_sync
from opamp_fast.storage.rows import AgentSnapshot

T0 = 1_700_000_000.0
INSTANCE = "bench"


def snapshot(i: int) -> AgentSnapshot:
    """What a Collector reports: identifying and non-identifying attributes, health, a remote
    config status (protobuf messages, as the protocol state hands them to the writer)."""

    def kv(key: str, value: str) -> anyvalue_pb.KeyValue:
        return anyvalue_pb.KeyValue(key=key, value=anyvalue_pb.AnyValue(string_value=value))

    return AgentSnapshot.from_messages(
        capabilities=0x3F,
        description=pb.AgentDescription(
            identifying_attributes=[
                kv("service.name", f"collector-{i % 1000}"), kv("service.instance.id", str(i))
            ],
            non_identifying_attributes=[kv("os.type", "linux"), kv("host.name", f"host-{i}")],
        ),
        health=pb.ComponentHealth(
            healthy=True, start_time_unix_nano=1, status="ok", status_time_unix_nano=2
        ),
        remote_config_status=pb.RemoteConfigStatus(
            last_remote_config_hash=bytes.fromhex("ab" * 16),
            status=pb.RemoteConfigStatuses_APPLIED,
        ),
        transport="ws",
    )  # fmt: skip


def uids(n: int) -> list[bytes]:
    return [uuid.uuid4().bytes for _ in range(n)]


def writer_for_batches() -> BatchWriter:
    """A writer used only for its in-memory coalescing (no database: ``_take`` hands the batch
    to the benchmark, which writes it with ``_write_batch``)."""
    return BatchWriter(None, instance_id=INSTANCE)  # type: ignore[arg-type]


def connect_batch(
    agent_ids: list[bytes], snaps: list[AgentSnapshot]
) -> tuple[BatchWriter, _Batch, float]:
    writer = writer_for_batches()
    started = time.perf_counter()
    for i, agent in enumerate(agent_ids):
        writer.connected(
            agent, at=T0 + i * 1e-3, remote_addr="10.1.2.3:45678", transport="ws",
            snapshot=snaps[i],
        )  # fmt: skip
        writer.seen(agent, T0 + 1 + i * 1e-3)
    elapsed = time.perf_counter() - started
    return writer, writer._take(), elapsed


def truncate(conn: psycopg.Connection[Any]) -> None:
    conn.execute("TRUNCATE agents, agent_connection_history")
    conn.execute("VACUUM ANALYZE agents")
    conn.execute("VACUUM ANALYZE agent_connection_history")


def timed_tx(conn: psycopg.Connection[Any], fn: Callable[[psycopg.Connection[Any]], Any]) -> float:
    started = time.perf_counter()
    with conn.transaction():
        fn(conn)
    return time.perf_counter() - started


def raw_rows(agent_ids: list[bytes], snaps: list[AgentSnapshot]) -> tuple[list[Any], list[Any]]:
    utc = dt.UTC
    agents = []
    history = []
    for i, agent in enumerate(agent_ids):
        s = snaps[i].row()
        connected = dt.datetime.fromtimestamp(T0 + i * 1e-3, utc)
        seen = dt.datetime.fromtimestamp(T0 + 1 + i * 1e-3, utc)
        agents.append((agent, str(uuid.UUID(bytes=agent)), "online", INSTANCE, "ws",
                       s.agent_name, seen, connected, 0x3F, s.description, s.health,
                       s.effective_config, s.remote_config_status))  # fmt: skip
        history.append((uuid.uuid4(), agent, connected, "10.1.2.3:45678", "ws", INSTANCE))
    return agents, history


RAW_AGENT_TYPES = [
    "bytea", "text", "text", "text", "text", "text", "timestamptz", "timestamptz", "int8",
    "jsonb", "jsonb", "jsonb", "jsonb",
]  # fmt: skip


def raw_copy(agents: list[Any], history: list[Any]) -> Callable[[psycopg.Connection[Any]], None]:
    def run(conn: psycopg.Connection[Any]) -> None:
        with conn.cursor() as cur:
            with cur.copy(
                "COPY agents (instance_uid, uid_text, status, serving_instance, transport,"
                " agent_name, last_seen_at, last_connected_at, capabilities, description, health,"
                " effective_config, remote_config_status) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(RAW_AGENT_TYPES)
                for row in agents:
                    copy.write_row(row)
            with cur.copy(
                "COPY agent_connection_history (session_id, instance_uid, connected_at,"
                " remote_addr, transport, serving_instance) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["uuid", "bytea", "timestamptz", "text", "text", "text"])
                for row in history:
                    copy.write_row(row)

    return run


def flush(batch: _Batch) -> Callable[[psycopg.Connection[Any]], None]:
    def run(conn: psycopg.Connection[Any]) -> None:
        _write_batch(conn, batch=batch, instance_id=INSTANCE)

    return run


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_size(conn: psycopg.Connection[Any], n: int, rounds: int) -> dict[str, float]:
    agent_ids = uids(n)
    snaps = [snapshot(i) for i in range(n)]
    agents, history = raw_rows(agent_ids, snaps)
    results: dict[str, list[float]] = {
        "raw": [], "flush_new": [], "flush_update": [], "last_seen": [], "coalesce": []
    }  # fmt: skip
    for round_ in range(rounds + 1):  # round 0 warms caches up and is not counted
        if round_ == 1:
            results = {name: [] for name in results}
        truncate(conn)
        results["raw"].append(timed_tx(conn, raw_copy(agents, history)))

        truncate(conn)
        writer, batch, coalesce = connect_batch(agent_ids, snaps)
        results["coalesce"].append(coalesce)
        results["flush_new"].append(timed_tx(conn, flush(batch)))

        # Steady state: the same agents all disconnect (transition + snapshot + session close).
        for i, agent in enumerate(agent_ids):
            writer.disconnected(agent, at=T0 + 100 + i * 1e-3, reason="client closed")
            writer.status(agent, snaps[(i + 1) % n])
        conn.execute("VACUUM ANALYZE agents")
        results["flush_update"].append(timed_tx(conn, flush(writer._take())))

        seen_writer = writer_for_batches()
        for i, agent in enumerate(agent_ids):
            seen_writer.seen(agent, T0 + 200 + i * 1e-3)
        conn.execute("VACUUM ANALYZE agents")
        results["last_seen"].append(timed_tx(conn, flush(seen_writer._take())))
    return {name: median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-rollup", action="store_true",
                        help="without the availability rollup's triggers (their cost)")  # fmt: skip
    args = parser.parse_args()

    import pgserver

    with tempfile.TemporaryDirectory(prefix="opamp-bench-pg-") as tmp:
        server = pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        try:
            url = server.get_uri()
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("DROP DATABASE IF EXISTS opamp_bench")
                admin.execute("CREATE DATABASE opamp_bench")
            bench_url = urlunsplit(urlsplit(url)._replace(path="/opamp_bench"))
            with psycopg.connect(bench_url, autocommit=True) as conn:
                migrate_sync(conn)
                if args.no_rollup:
                    conn.execute("ALTER TABLE agent_connection_history DISABLE TRIGGER"
                                 " agent_uptime_on_insert")  # fmt: skip
                    conn.execute("ALTER TABLE agent_connection_history DISABLE TRIGGER"
                                 " agent_uptime_on_close")  # fmt: skip
                version = conn.execute("SHOW server_version").fetchone()
                # autocommit: each timed_tx() is one explicit BEGIN ... COMMIT, like db.run()
                set_json_dumps(msgspec.json.encode, context=conn)
                pg = version[0] if version else "?"
                py = platform.python_version()
                print(f"machine: nproc={os.cpu_count()}, CPU: {cpu_model()}, Python {py}, "
                      f"Postgres {pg} (pgserver, defaults)")  # fmt: skip
                for n in args.sizes:
                    r = bench_size(conn, n, args.rounds)
                    print(f"\nN = {n:,} (median of {args.rounds})")
                    print(f"  raw COPY, agents + history:      {r['raw'] * 1e3:8.1f} ms "
                          f"({2 * n / r['raw']:,.0f} rows/s)")  # fmt: skip
                    print(f"  writer flush, new agents:        {r['flush_new'] * 1e3:8.1f} ms "
                          f"({2 * n / r['flush_new']:,.0f} rows/s) = "
                          f"{r['raw'] / r['flush_new']:.0%} of raw COPY")  # fmt: skip
                    print(f"  writer flush, transitions+close: {r['flush_update'] * 1e3:8.1f} ms "
                          f"({2 * n / r['flush_update']:,.0f} rows/s)")  # fmt: skip
                    print(f"  writer flush, last_seen only:    {r['last_seen'] * 1e3:8.1f} ms "
                          f"({n / r['last_seen']:,.0f} rows/s)")  # fmt: skip
                    print(f"  coalescing N connects in memory: {r['coalesce'] * 1e3:8.1f} ms "
                          f"({r['coalesce'] / n * 1e6:.2f} us/event)")  # fmt: skip
        finally:
            server.cleanup()


# ---------------------------------------------------------------- as pytest-benchmark tests
# ``python -m pytest benchmarks/bench_writer.py --benchmark-only``: the same measurements at
# 10,000 agents, each round on freshly truncated tables (setup is not timed).

N_TEST = 10_000


@pytest.fixture(scope="module")
def bench_conn() -> Iterator[psycopg.Connection[Any]]:
    import pgserver

    with tempfile.TemporaryDirectory(prefix="opamp-bench-pg-") as tmp:
        server = pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        try:
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                migrate_sync(conn)
                set_json_dumps(msgspec.json.encode, context=conn)
                yield conn
        finally:
            server.cleanup()


@pytest.fixture(scope="module")
def fleet() -> tuple[list[bytes], list[AgentSnapshot]]:
    return uids(N_TEST), [snapshot(i) for i in range(N_TEST)]


def test_raw_copy(benchmark: Any, bench_conn: Any, fleet: Any) -> None:
    agents, history = raw_rows(*fleet)
    benchmark.pedantic(
        timed_tx, args=(bench_conn, raw_copy(agents, history)),
        setup=lambda: truncate(bench_conn), rounds=5, warmup_rounds=1,
    )  # fmt: skip


def test_flush_new_agents(benchmark: Any, bench_conn: Any, fleet: Any) -> None:
    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        truncate(bench_conn)
        _, batch, _ = connect_batch(*fleet)
        return (bench_conn, flush(batch)), {}

    benchmark.pedantic(timed_tx, setup=setup, rounds=5, warmup_rounds=1)
    assert bench_conn.execute("SELECT count(*) FROM agents").fetchone() == (N_TEST,)


def test_flush_last_seen(benchmark: Any, bench_conn: Any, fleet: Any) -> None:
    agent_ids, _ = fleet

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        truncate(bench_conn)
        _, batch, _ = connect_batch(*fleet)
        timed_tx(bench_conn, flush(batch))
        seen_writer = writer_for_batches()
        for i, agent in enumerate(agent_ids):
            seen_writer.seen(agent, T0 + 200 + i * 1e-3)
        return (bench_conn, flush(seen_writer._take())), {}

    benchmark.pedantic(timed_tx, setup=setup, rounds=5, warmup_rounds=1)


def test_coalesce_connects(benchmark: Any, fleet: Any) -> None:
    benchmark.pedantic(connect_batch, args=fleet, rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    main()
