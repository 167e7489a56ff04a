"""seen_update: what Postgres spends on one flush's last-seen slice, and what a narrow table would.

Why: the batch writer's last-seen UPDATE writes a new version of each agent's wide ``agents``
row. A narrow ``(instance_uid, last_seen_at)`` table written instead was the lever named for the
round trip's tail; this measures what it would save before anything is built on it.

Embedded Postgres in a temporary directory, the server's migrations, ``--agents`` rows shaped
like a collector's (description, health, effective config), a copy of their uids and times in a
narrow table (logged, and unlogged), then ``--rounds`` rounds of: stage ``--slice`` times through
the writer's own staging (``_FLUSH_PREAMBLE`` + binary COPY), run each statement shape, commit.
Per shape: the median and p90 wall time of the statement and commit, and the backend's CPU time.
The writer's statements are imported, not copied: ``_UPDATE_SEEN`` (one instance), and for
several instances sharing the database the lock pass over the slice's uids followed by it (the
writer until 2026-12-07) and ``_UPDATE_SEEN_OR_SKIP`` (locks in the statement). The client's
CPU per statement is shown too: a lock pass returns every row it locked.

Example: ``python loadtest/seen_update.py --agents 10000 --slice 2000 --rounds 40``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg
from procs import embedded_postgres

from opamp_fast.storage.batch_writer import (
    _FLUSH_PREAMBLE,
    _UPDATE_SEEN,
    _UPDATE_SEEN_OR_SKIP,
    _lock_agents,
)
from opamp_fast.storage.migrations import migrate_sync

_GUARD = "NOT (a.status = 'online' AND a.proven AND a.serving_instance <> %(instance)s)"
_STAGED = "(SELECT uid, seen FROM opamp_stage_seen ORDER BY uid) AS s"


def _narrow(table: str, *, guarded: bool) -> str:
    agents = " JOIN agents AS a ON a.instance_uid = s.uid" if guarded else ""
    guard = f" AND {_GUARD}" if guarded else ""
    return (
        f"UPDATE {table} AS l SET last_seen_at = to_timestamp(s.seen) FROM {_STAGED}{agents} "
        f"WHERE l.instance_uid = s.uid AND l.last_seen_at < to_timestamp(s.seen){guard}"
    )


Cursor = psycopg.Cursor[Any]
_PARAMS = {"instance": "here"}


def _statement(sql: str) -> Callable[[Cursor, list[bytes]], object]:
    return lambda cur, _uids: cur.execute(sql, _PARAMS)


def _lock_pass_then_update(cur: Cursor, uids: list[bytes]) -> None:
    _lock_agents(cur, uids, skip_busy=True)
    cur.execute(_UPDATE_SEEN, _PARAMS)


def _locked_in_the_statement(cur: Cursor, _uids: list[bytes]) -> None:
    cur.execute(_UPDATE_SEEN_OR_SKIP, _PARAMS).fetchall()


SHAPES: dict[str, Callable[[Cursor, list[bytes]], object]] = {
    "agents (the writer's)": _statement(_UPDATE_SEEN),
    "agents, lock pass first": _lock_pass_then_update,
    "agents, locked in statement": _locked_in_the_statement,
    "narrow, guarded by agents": _statement(_narrow("seen_narrow", guarded=True)),
    "narrow, unguarded": _statement(_narrow("seen_narrow", guarded=False)),
    "narrow unlogged, guarded": _statement(_narrow("seen_unlogged", guarded=True)),
}


def populate(conn: psycopg.Connection[object], uids: list[bytes]) -> None:
    description = {
        "identifying_attributes": {
            "service.name": "io.opentelemetry.collector",
            "service.instance.id": "0" * 36,
            "service.version": "0.99.0",
        },
        "non_identifying_attributes": {"os.type": "linux", "host.name": "host-123456"},
    }
    health = {"healthy": True, "status": "StatusOK", "start_time_unix_nano": 1}
    config = {"sha256": "a" * 64, "redaction": "p", "files": {"": "receivers: {otlp: {}}\n" * 5}}
    row = (json.dumps(description), json.dumps(health), json.dumps(config))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO agents (instance_uid, uid_text, status, serving_instance, transport, "
            "agent_name, last_seen_at, description, health, effective_config) VALUES (%s, "
            "encode(%s, 'hex'), 'online', 'here', 'ws', 'otelcol', now(), %s, %s, %s)",
            [(uid, uid, *row) for uid in uids],
        )
    for table, kind in (("seen_narrow", ""), ("seen_unlogged", "UNLOGGED")):
        conn.execute(
            f"CREATE {kind} TABLE {table} (instance_uid bytea PRIMARY KEY, "
            "last_seen_at timestamptz NOT NULL) WITH (fillfactor = 70)"
        )
        conn.execute(f"INSERT INTO {table} SELECT instance_uid, last_seen_at FROM agents")
    conn.execute("VACUUM ANALYZE")


def measure(url: str, uids: list[bytes], slice_size: int, rounds: int) -> dict[str, list]:
    """Per shape and round: (wall seconds, backend CPU seconds, client CPU seconds)."""
    times: dict[str, list[tuple[float, float, float]]] = {shape: [] for shape in SHAPES}
    with psycopg.connect(url) as conn:
        backend = psutil.Process(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        seen = time.time()
        slices = max(1, len(uids) // slice_size)
        for n in range(rounds):
            for shape, run in SHAPES.items():
                seen += 1.0
                part = uids[(n % slices) * slice_size : (n % slices + 1) * slice_size]
                with conn.cursor() as cur:
                    cur.execute(_FLUSH_PREAMBLE)
                    with cur.copy("COPY opamp_stage_seen FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(["bytea", "float8"])
                        for uid in part:
                            copy.write_row((uid, seen))
                    cpu = sum(backend.cpu_times()[:2])
                    started, ours = time.perf_counter(), time.thread_time()
                    run(cur, part)
                    conn.commit()
                    wall = time.perf_counter() - started
                    ours = time.thread_time() - ours
                    times[shape].append((wall, sum(backend.cpu_times()[:2]) - cpu, ours))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--slice", type=int, default=2_000, help="agents per flush")
    p.add_argument("--rounds", type=int, default=40)
    args = p.parse_args()
    pg = embedded_postgres(Path(tempfile.mkdtemp(prefix="opamp-seen-")) / "pgdata")
    try:
        url = str(pg.get_uri(database="postgres"))
        uids = [os.urandom(16) for _ in range(args.agents)]
        with psycopg.connect(url, autocommit=True) as conn:
            migrate_sync(conn)
            populate(conn, uids)
        times = measure(url, uids, args.slice, args.rounds)
    finally:
        pg.cleanup()
    print(f"{args.slice} of {args.agents} agents per statement, {args.rounds} rounds (first 5 cut)")
    for shape, runs in times.items():
        walls = sorted(w for w, _, _ in runs[5:])
        cpu = statistics.mean(c for _, c, _ in runs[5:])
        client = statistics.mean(c for _, _, c in runs[5:])
        print(
            f"{shape:28s} median {statistics.median(walls) * 1e3:6.1f} ms"
            f"  p90 {walls[int(len(walls) * 0.9)] * 1e3:6.1f} ms  backend CPU {cpu * 1e3:5.1f} ms"
            f"  client CPU {client * 1e3:5.1f} ms"
        )


if __name__ == "__main__":
    main()
