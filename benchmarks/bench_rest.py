"""REST API latency over real HTTP against a live server with a large history table.

Run (starts its own embedded Postgres via pgserver in a temporary directory):

    python benchmarks/bench_rest.py                      # 10k agents, 1M history rows
    python benchmarks/bench_rest.py --agents 2000 --rows 100000 --requests 500   # quick
    python benchmarks/bench_rest.py --history-days 7 --requests 200   # availability, 1M rows in 7 d

What it does:

1. Loads ``--agents`` agents (labelled, named ``collector-<i % 1000>``; ``--online-share`` of
   them online on a peer instance, the rest offline) and ``--rows`` connection-history rows with
   binary COPY: one "flapping" agent gets ``--heavy`` rows, the others share the rest evenly;
   sets the fleet counters as the writers would have (``fleet_stats``, the peer's published
   online count, with a lease that does not run out during the run); then ``VACUUM ANALYZE``
   (as autovacuum would).
2. Starts the real server in-process (the native front, JWT auth on). Every answer comes from
   Postgres, as it does with several instances (``docs/api.md``).
3. Times ``--requests`` sequential requests per endpoint with an httpx client over loopback,
   after a warm-up, and prints p50/p99 per endpoint as a Markdown table, plus the EXPLAIN
   ANALYZE of the history and list queries. Client time is included (same process, same core).
   The availability routes (``--availability-requests`` each) ask for 7 days ending 7 h 13 min
   before the end of the loaded history, which spans ``--history-days``: with
   ``--history-days 7`` nearly every row is inside the fleet query's window.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script
from psycopg.types.json import Jsonb

from opamp_fast.auth import load_key_material, mint_token
from opamp_fast.protocol.codec import format_instance_uid
from opamp_fast.server import serve
from opamp_fast.settings import Settings
from opamp_fast.storage.migrations import migrate_sync

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
SECRET = "b" * 64
PEER = "bench-peer"  # the instance the online agents are connected to


def load(
    url: str,
    n_agents: int,
    n_rows: int,
    heavy_rows: int,
    online_share: float,
    history_days: float = 100.0,
) -> tuple[bytes, bytes]:
    """Fill the tables; returns (heavy agent uid, a typical agent uid)."""
    uids = [uuid.uuid4().bytes for _ in range(n_agents)]
    n_online = int(n_agents * online_share)
    heavy = uids[0]
    per_agent = (n_rows - heavy_rows) // max(1, n_agents - 1)
    envs = ("prod", "staging", "dev")
    with psycopg.connect(url, autocommit=True) as conn:
        migrate_sync(conn)
        started = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy(
                "COPY agents (instance_uid, uid_text, status, transport, agent_name,"
                " last_seen_at, last_connected_at, last_disconnected_at, disconnect_reason,"
                " capabilities, labels, serving_instance, created_at, description)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(
                    [
                        "bytea",
                        "text",
                        "text",
                        "text",
                        "text",
                        "timestamptz",
                        "timestamptz",
                        "timestamptz",
                        "text",
                        "int8",
                        "jsonb",
                        "text",
                        "timestamptz",
                        "jsonb",
                    ]
                )
                for i, uid in enumerate(uids):
                    t = T0 + dt.timedelta(days=history_days, seconds=i)
                    online = i >= n_agents - n_online  # the heavy agent (i == 0) is offline
                    copy.write_row(
                        (
                            uid,
                            format_instance_uid(uid),
                            "online" if online else "offline",
                            "ws",
                            f"collector-{i % 1000}",
                            t,
                            t - dt.timedelta(hours=1),
                            None if online else t,
                            None if online else "heartbeat timeout",
                            0x3F,
                            Jsonb({"env": envs[i % 3], "rack": str(i % 50)}),
                            PEER if online else None,
                            T0,  # when its history begins
                            Jsonb(
                                {
                                    "identifying_attributes": {
                                        "service.name": "otelcol",
                                        "service.version": f"0.11{i % 4}.0",
                                    }
                                }
                            ),
                        )
                    )
            written = copy_history(cur, uids, heavy_rows, per_agent, history_days)
        print(f"loaded {n_agents} agents, {written} history rows in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)  # fmt: skip
        # What the writers keep as they go: the row count, and the peer's published online count
        # (its lease far in the future, so the server under test never reaps it).
        conn.execute("UPDATE fleet_stats SET agents_total = %s", (n_agents,))
        conn.execute(
            "INSERT INTO server_instances (instance_id, version, started_at, last_heartbeat_at,"
            " lease_s, online_ws) VALUES (%s, 'bench', now(), now(), 1e9, %s)",
            (PEER, n_online),
        )
        conn.execute("VACUUM ANALYZE agents")
        conn.execute("VACUUM ANALYZE agent_connection_history")
    return heavy, uids[1]


def copy_history(
    cur: psycopg.Cursor[Any],
    uids: list[bytes],
    heavy_rows: int,
    per_agent: int,
    history_days: float,
) -> int:
    """Each agent's closed sessions, evenly over ``history_days`` (the first agent gets
    ``heavy_rows``); returns how many."""
    with cur.copy(
        "COPY agent_connection_history (session_id, instance_uid, connected_at,"
        " disconnected_at, duration_s, disconnect_reason, remote_addr, transport,"
        " serving_instance) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(
            ["uuid", "bytea", "timestamptz", "timestamptz", "float8", "text", "text", "text",
             "text"]
        )  # fmt: skip
        written = 0
        for i, uid in enumerate(uids):
            count = heavy_rows if i == 0 else per_agent
            step = dt.timedelta(days=history_days) / max(1, count)
            for k in range(count):
                t = T0 + step * k
                copy.write_row((uuid.uuid4(), uid, t, t + step / 2, step.total_seconds() / 2,
                                "connection closed", f"10.{i % 250}.{k % 250}.1:4000", "ws",
                                "bench"))  # fmt: skip
            written += count
    return written


def explain(url: str, sql: str, params: dict[str, Any]) -> str:
    with psycopg.connect(url) as conn:
        conn.execute(sql, params)  # warm
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params).fetchall()
    return "\n".join(r[0] for r in rows)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="opamp-bench-rest-"))
    import pgserver

    pg = pgserver.get_server(tmp / "pgdata", cleanup_mode="stop")
    try:
        url = pg.get_uri()
        heavy, typical = await anyio.to_thread.run_sync(
            load, url, args.agents, args.rows, args.heavy, args.online_share, args.history_days
        )
        settings = Settings(
            host="127.0.0.1",
            port=args.port,
            database_url=url,
            data_dir=tmp / "unused",
            instance_id="bench",
            api_jwt_secret=SECRET,
            history_retention_days=0,  # the loaded history is older than any retention
            forget_offline_after_days=0,  # and its offline agents than any expiry
        )
        token = mint_token(load_key_material(settings), subject="bench", ttl_s=3600)
        shutdown = anyio.Event()
        async with anyio.create_task_group() as nursery:
            running = await nursery.start(lambda task_status: serve(
                settings, shutdown_trigger=shutdown, task_status=task_status))  # fmt: skip
            results = await measure(url, running.url, token, heavy, typical, args)
            shutdown.set()
        print_report(results, args)
        history_sql = (
            "SELECT id, connected_at FROM agent_connection_history WHERE instance_uid = %(uid)s"
            " {where} ORDER BY connected_at DESC, id DESC LIMIT 101"
        )
        deep = await anyio.to_thread.run_sync(
            lambda: _deep_cursor(url, heavy, args.heavy * 9 // 10)
        )
        print("\n### EXPLAIN: deep keyset history page\n\n```")
        print(explain(url, history_sql.format(
            where="AND (connected_at, id) < (%(at)s, %(id)s)"),
            {"uid": heavy, "at": deep[0], "id": deep[1]}))  # fmt: skip
        print("```\n\n### EXPLAIN: history count of the heavy agent\n\n```")
        print(explain(url, "SELECT count(*) FROM agent_connection_history"
                           " WHERE instance_uid = %(uid)s", {"uid": heavy}))  # fmt: skip
        print("```\n\n### EXPLAIN: offline list, keyset page\n\n```")
        print(explain(url, "SELECT uid_text FROM agents WHERE status = 'offline' AND uid_text >"
                           " %(after)s ORDER BY uid_text LIMIT 101",
                      {"after": "80000000-0000-0000-0000-000000000000"}))  # fmt: skip
        print("```\n\n### EXPLAIN: name prefix filter\n\n```")
        print(explain(url, r"SELECT uid_text FROM agents WHERE lower(agent_name) LIKE"
                           r" lower(%(p)s) || '%%' ORDER BY uid_text LIMIT 101",
                      {"p": "collector-12"}))  # fmt: skip
        print("```\n\n### EXPLAIN: label filter\n\n```")
        label_sql = "SELECT uid_text FROM agents WHERE labels @> %(l)s ORDER BY uid_text LIMIT 101"
        print(explain(url, label_sql, {"l": Jsonb({"rack": "7"})}))
        print("```\n\n### EXPLAIN: fleet availability, 7 days\n\n```")
        print(explain(url, *fleet_week(args.history_days)))
        print("```")
    finally:
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def week_end(history_days: float) -> dt.datetime:
    """The end of the 7-day windows asked: the end of the loaded history less 7 h 13 min, as
    "now" falls at any time of day (a window on midnights would be the rollup's best case)."""
    return T0 + dt.timedelta(days=history_days, hours=-7, minutes=-13)


def fleet_week(history_days: float) -> tuple[str, dict[str, Any]]:
    """The fleet availability statement over the last 7 days of the loaded history."""
    from opamp_fast.storage import availability as av

    until = week_end(history_days)
    window = av.Window(until - dt.timedelta(days=7), until)
    sql, params = av.fleet_sql(av.FleetFilter(), av.FleetPage(), av.whole_days(window))
    params.update(since=window.since, until=window.until)
    return sql, params


def _deep_cursor(url: str, uid: bytes, position: int) -> tuple[dt.datetime, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT connected_at, id FROM agent_connection_history WHERE instance_uid = %s"
            " ORDER BY connected_at DESC, id DESC OFFSET %s LIMIT 1",
            (uid, position),
        ).fetchone()
    assert row is not None
    return row[0], row[1]


async def measure(
    db_url: str, base_url: str, token: str, heavy: bytes, typical: bytes, args: argparse.Namespace
) -> dict[str, list[float]]:
    from opamp_fast.api.params import encode_history_cursor

    results: dict[str, list[float]] = {}
    heavy_id = format_instance_uid(heavy)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        # The cursor a client holds after paging 90 % of the way down the heavy agent's history.
        deep_at, deep_id = await anyio.to_thread.run_sync(
            _deep_cursor, db_url, heavy, args.heavy * 9 // 10
        )
        deep_cursor = encode_history_cursor(deep_at, deep_id, args.heavy)
        offline_cursor = await _half_way(client, "/api/agents/offline")
        online_cursor = await _half_way(client, "/api/agents/online")
        cases: dict[str, tuple[str, dict[str, Any]]] = {
            "GET /api/agents/status/summary": ("/api/agents/status/summary", {}),
            f"history, first page (agent with {args.heavy:,} rows)": (
                f"/api/agents/{heavy_id}/connection-history", {"limit": 100}),
            f"history, deep keyset page (~row {args.heavy * 9 // 10:,})": (
                f"/api/agents/{heavy_id}/connection-history",
                {"limit": 100, "cursor": deep_cursor}),
            f"history, deep OFFSET page (offset {args.heavy * 9 // 10:,})": (
                f"/api/agents/{heavy_id}/connection-history",
                {"limit": 100, "offset": args.heavy * 9 // 10}),
            "history, first page (typical agent)": (
                f"/api/agents/{format_instance_uid(typical)}/connection-history", {"limit": 100}),
            "offline list, first page": ("/api/agents/offline", {"limit": 100}),
            "offline list, keyset page half way": (
                "/api/agents/offline", {"limit": 100, "cursor": offline_cursor}),
            "agents list, q=collector-12 (prefix)": ("/api/agents", {"q": "collector-12"}),
            "agents list, label=rack:7": ("/api/agents", {"label": "rack:7"}),
            "online list, first page": ("/api/agents/online", {"limit": 100}),
            "online list, keyset page half way": (
                "/api/agents/online", {"limit": 100, "cursor": online_cursor}),
            "agent detail (database row)": (f"/api/agents/{heavy_id}", {}),
        }  # fmt: skip
        requests = dict.fromkeys(cases, args.requests)
        for name, case in availability_cases(heavy, typical, args).items():
            cases[name] = case
            requests[name] = args.availability_requests
        for name, (path, params) in cases.items():
            for _ in range(min(args.warmup, requests[name])):
                r = await client.get(path, params=params)
                assert r.status_code == 200, (name, r.status_code, r.text[:300])
            if path == "/api/fleet/availability" and "label" not in params:
                assert r.json()["agents"] == args.agents, r.text[:300]  # every agent counted
            timings = []
            for _ in range(requests[name]):
                started = time.perf_counter()
                r = await client.get(path, params=params)
                timings.append((time.perf_counter() - started) * 1000)
                assert r.status_code == 200
            results[name] = timings
    return results


def availability_cases(
    heavy: bytes, typical: bytes, args: argparse.Namespace
) -> dict[str, tuple[str, dict[str, Any]]]:
    """The availability routes over 7 days of the loaded history."""
    until = week_end(args.history_days)
    week = {"since": (until - dt.timedelta(days=7)).isoformat(), "until": until.isoformat()}
    return {
        "fleet availability, 7 days": ("/api/fleet/availability", week),
        "fleet availability, 7 days, label=env:prod": (
            "/api/fleet/availability", {**week, "label": "env:prod"}),
        "fleet availability, 7 days, 28 buckets (console chart)": (
            "/api/fleet/availability", {**week, "buckets": 28}),
        "agent availability, 7 days (typical agent)": (
            f"/api/agents/{format_instance_uid(typical)}/availability", week),
        f"agent availability, 7 days (agent with {args.heavy:,} rows)": (
            f"/api/agents/{format_instance_uid(heavy)}/availability", week),
    }  # fmt: skip


async def _half_way(client: httpx.AsyncClient, path: str) -> str:
    """A cursor half way through a list: the keyset position of the middle of the uuid space
    (what a client holds after paging there), with the list's total as the first page gave it."""
    from opamp_fast.api.params import encode_agent_cursor

    first = (await client.get(path, params={"limit": 100})).json()
    return encode_agent_cursor("80000000-0000-0000-0000-000000000000", int(first["total"]))


def print_report(results: dict[str, list[float]], args: argparse.Namespace) -> None:
    print(f"\nnproc={os.cpu_count()}, CPU {cpu_model()!r}, Python {platform.python_version()}; "
          f"{args.agents:,} agents ({args.online_share:.0%} online), {args.rows:,} history "
          f"rows over {args.history_days:g} days; {args.requests} sequential requests per "
          f"endpoint ({args.availability_requests} per availability endpoint) after "
          f"{args.warmup} warm-up\n")  # fmt: skip
    print("| endpoint | p50 | p99 | mean |")
    print("|---|---|---|---|")
    for name, timings in results.items():
        print(
            f"| {name} | {percentile(timings, 0.5):.2f} ms | {percentile(timings, 0.99):.2f} ms"
            f" | {statistics.fmean(timings):.2f} ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--heavy", type=int, default=20_000, help="rows of the flapping agent")
    parser.add_argument("--online-share", type=float, default=0.5, help="agents online")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--port", type=int, default=14321)
    parser.add_argument(
        "--history-days",
        type=float,
        default=100.0,
        help="the loaded history spans this many days (ending at its last row)",
    )
    parser.add_argument("--availability-requests", type=int, default=200,
                        help="requests per availability endpoint")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    anyio.run(run, args, backend_options={"use_uvloop": True})


# ---------------------------------------------------------------- as pytest-benchmark tests
# ``python -m pytest benchmarks/bench_rest.py --benchmark-only``: the main endpoints against a
# server process over loopback, on 10,000 agents (half online) and 100,000 history rows.


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[httpx.Client, str, str]]:
    """(client with a token, heavy agent id, a keyset cursor half way through the online list)."""
    with tempfile.TemporaryDirectory(prefix="opamp-bench-rest-") as tmp:
        import pgserver

        pg = pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        proc = None
        try:
            url = pg.get_uri()
            heavy, _ = load(url, 10_000, 100_000, 5_000, 0.5)
            port = _free_port()
            proc = subprocess.Popen([
                sys.executable, "-m", "opamp_fast", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--database-url", url, "--instance-id", "bench",
                "--api-jwt-secret", SECRET, "--history-retention-days", "0",
                "--log-level", "warning",
            ])  # fmt: skip
            settings = Settings(api_jwt_secret=SECRET, data_dir=Path(tmp))
            token = mint_token(load_key_material(settings), subject="bench", ttl_s=3600)
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=30) as client:
                _wait_ready(client, proc)
                client.headers["Authorization"] = f"Bearer {token}"
                total = client.get("/api/agents/online").json()["total"]
                from opamp_fast.api.params import encode_agent_cursor

                cursor = encode_agent_cursor("80000000-0000-0000-0000-000000000000", total)
                yield client, format_instance_uid(heavy), cursor
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
            pg.cleanup()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        with contextlib.suppress(httpx.HTTPError):
            if client.get("/readyz").status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError("the server did not become ready")


ENDPOINTS = {
    "summary": ("/api/agents/status/summary", {}),
    "online_first_page": ("/api/agents/online", {"limit": 100}),
    "online_half_way": ("/api/agents/online", {"limit": 100, "cursor": "{online_cursor}"}),
    "offline_first_page": ("/api/agents/offline", {"limit": 100}),
    "label_filter": ("/api/agents", {"label": "rack:7", "limit": 100}),
    "detail": ("/api/agents/{heavy}", {}),
    "history_first_page": ("/api/agents/{heavy}/connection-history", {"limit": 100}),
}


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_endpoint(benchmark: Any, api: tuple[httpx.Client, str, str], endpoint: str) -> None:
    client, heavy, online_cursor = api
    path, params = ENDPOINTS[endpoint]
    path = path.format(heavy=heavy)
    params = {k: str(v).format(online_cursor=online_cursor) for k, v in params.items()}

    def get() -> httpx.Response:
        return client.get(path, params=params)

    response = benchmark(get)
    assert response.status_code == 200, response.text[:300]


if __name__ == "__main__":
    main()
