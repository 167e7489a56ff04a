"""What a load run's Postgres is busy with: a sampling profile of its statements.

Four times a second, the active client backends of ``pg_stat_activity`` (what each waits on, or
``CPU``, and the statement's first words); every 20 s, the table counters of the watched tables
(scans, updates and HOT updates, dead rows, size) in every database. Runs beside ``compare.py``
or ``storm.py``, finding their Postgres by its data directory (they make it under /tmp):

    python loadtest/pg_activity.py --pgdata '/tmp/opamp-compare-NAME-*/pgdata' --seconds 660 \\
        --out /tmp/activity.jsonl
    python loadtest/pg_activity.py --report /tmp/activity.jsonl [--after-s 300]

The report counts, per statement and wait, the backends seen active (a sample of where the
database's time goes), and prints the timeline of each statement's concurrency.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import sys
import time
from typing import Any

ACTIVE = """
SELECT datname, coalesce(wait_event_type, 'CPU'), coalesce(wait_event, '-'),
    left(regexp_replace(query, '\\s+', ' ', 'g'), 60)
FROM pg_stat_activity
WHERE state = 'active' AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""
TABLES = """
SELECT relname, seq_scan, seq_tup_read, idx_scan, n_tup_upd, n_tup_hot_upd, n_dead_tup,
    n_live_tup, pg_total_relation_size(relid)
FROM pg_stat_user_tables WHERE relname = ANY(%s)
"""
WATCHED = ["agents", "agent_connection_history", "agent_uptime_daily", "fleet_stats"]


def find_url(pattern: str, deadline: float) -> str | None:
    while time.time() < deadline:
        found = glob.glob(pattern.rstrip("/") + "/postmaster.pid")
        if found:
            return "postgresql://postgres:@/postgres?host=" + found[0].rsplit("/", 1)[0]
        time.sleep(1)
    return None


def tables(url: str, conn: Any) -> dict[str, list[Any]]:
    import psycopg

    out = {}
    for (db,) in conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate"):
        with psycopg.connect(url.replace("/postgres?", f"/{db}?"), autocommit=True) as other:
            rows = other.execute(TABLES, (WATCHED,)).fetchall()
            if rows:
                out[db] = rows
    return out


def sample(args: argparse.Namespace) -> int:
    import psycopg

    deadline = time.time() + args.seconds
    url = find_url(args.pgdata, deadline)
    if url is None:
        print(f"no Postgres found at {args.pgdata}", file=sys.stderr)
        return 1
    last_tables = 0.0
    with psycopg.connect(url, autocommit=True) as conn, open(args.out, "w") as out:
        while time.time() < deadline:
            started = time.time()
            try:
                rows = conn.execute(ACTIVE).fetchall()
                seen = collections.Counter(f"{kind}:{event}|{q}" for _, kind, event, q in rows)
                record: dict[str, Any] = {"t": round(started, 2), "active": dict(seen)}
                if started - last_tables >= 20:
                    last_tables = started
                    record["tables"] = tables(url, conn)
            except psycopg.OperationalError:
                break  # the run stopped its Postgres
            out.write(json.dumps(record, default=str) + "\n")
            out.flush()
            time.sleep(max(0.0, 0.25 - (time.time() - started)))
    return 0


def report(args: argparse.Namespace) -> int:
    records = [json.loads(line) for line in open(args.report)]
    if not records:
        return 1
    t0 = records[0]["t"]
    total: collections.Counter[str] = collections.Counter()
    for r in records:
        if r["t"] - t0 >= args.after_s:
            total.update(r["active"])
    samples = sum(1 for r in records if r["t"] - t0 >= args.after_s)
    print(f"{samples} samples; backends seen active, by wait and statement:")
    for what, n in total.most_common(args.top):
        print(f"{n:7d}  {n / max(samples, 1):5.2f}/sample  {what}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pgdata", help="glob of the run's Postgres data directory")
    p.add_argument("--seconds", type=float, default=600.0, help="sample this long at most")
    p.add_argument("--out", default="pg-activity.jsonl")
    p.add_argument("--report", help="summarise a sample file instead")
    p.add_argument("--after-s", type=float, default=0.0, help="report: skip the first seconds")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    if args.report:
        return report(args)
    if not args.pgdata:
        p.error("--pgdata or --report")
    return sample(args)


if __name__ == "__main__":
    sys.exit(main())
