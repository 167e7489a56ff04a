"""tail_runs: one server, several heartbeat holds in a row, the round trip's tail of each.

Why: a p99.9 over one 30 s window moves by ~1 ms between identical runs on this machine, more
than most changes meant to move it. Several holds against the same server (and a variant's
several against its own) show the spread, not one draw from it.

Starts Postgres (embedded, in a temporary directory) and ``opamp-fast serve`` with ``--server-arg``
flags, then for each entry of ``--runs`` (``base`` or ``pg-nice``) runs ``wsload`` for
``--agents`` agents heartbeating every ``--heartbeat-s`` over ``--hold-s`` after a ``--ramp-s``
ramp, and prints, per run: the steady window's round-trip percentiles, each second's maximum
and the write counts of the busiest tables. ``pg-nice`` first lowers Postgres' priority (nice 10
for its processes and their autogroup), ``base`` restores it: does the tail come from Postgres
taking a core at the wrong moment? Each run's new agents get new uids (wsload's are random), so
the runs are alike. Loopback only; the server is stopped with SIGTERM by its PID.

Example: ``python loadtest/tail_runs.py --runs base,base,base --server-arg=--last-seen-flush-s
--server-arg=30``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
from procs import embedded_postgres, free_port, wait_ready

HERE = Path(__file__).resolve().parent

_TABLE_WRITES = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup, autovacuum_count
FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd > 1000 AND relname NOT LIKE 'opamp_stage%'
ORDER BY relname
"""


def deprioritise_postgres(nice: int) -> None:
    """Every Postgres process at ``nice``, in its own autogroup too (the kernel weighs
    autogroups against each other first, so the process nice alone would not reach the server)."""
    for proc in psutil.process_iter(["name"]):
        if not (proc.info["name"] or "").startswith("postgres"):
            continue
        Path(f"/proc/{proc.pid}/autogroup").write_text(str(nice))
        os.setpriority(os.PRIO_PROCESS, proc.pid, nice)


def one_run(args: argparse.Namespace, port: int, out: Path) -> dict[str, object]:
    subprocess.run(
        [sys.executable, str(HERE / "wsload.py"), "--url", f"ws://127.0.0.1:{port}/v1/opamp",
         "--agents", str(args.agents), "--procs", str(args.procs), "--ramp-s", str(args.ramp_s),
         "--hold-s", str(args.hold_s), "--heartbeat-s", str(args.heartbeat_s), "--quiet",
         "--out", str(out)],
        check=True,
    )  # fmt: skip
    result = json.loads(out.read_text())
    hold_start = args.ramp_s
    return {
        "latency_ms": result["steady"]["latency_ms"],
        "max_ms_per_second": [
            round(s["max_ms"], 1) for s in result["timeline"] if s["t"] >= hold_start
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="base,base,base", help="base or pg-nice, comma-separated")
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--ramp-s", type=float, default=30.0)
    p.add_argument("--hold-s", type=float, default=60.0)
    p.add_argument("--heartbeat-s", type=float, default=5.0)
    p.add_argument("--server-arg", action="append", default=[], help="extra serve flag")
    args = p.parse_args()
    runs = args.runs.split(",")
    if any(r not in ("base", "pg-nice") for r in runs):
        p.error("--runs: base or pg-nice")
    tmp = Path(tempfile.mkdtemp(prefix="opamp-tail-"))
    pg = embedded_postgres(tmp / "pgdata")
    url = str(pg.get_uri(database="postgres"))
    port = free_port()
    with open(tmp / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "opamp_fast", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--backlog", "8192", "--database-url", url, *args.server_arg],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", server, timeout_s=120)
        for n, kind in enumerate(runs, 1):
            deprioritise_postgres(10 if kind == "pg-nice" else 0)
            time.sleep(3)
            run = one_run(args, port, tmp / f"wsload-{n}.json")
            with psycopg.connect(url) as conn:
                run["tables"] = [list(row) for row in conn.execute(_TABLE_WRITES)]
            print(json.dumps({"run": n, "kind": kind, **run}), flush=True)
            time.sleep(5)  # the agents' closes written before the next ramp
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        pg.cleanup()


if __name__ == "__main__":
    main()
