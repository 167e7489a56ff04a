"""Failover run: three opamp-fast instances behind haproxy on one Postgres; kill -9 one.

The reference deployment of ``deploy/compose-cluster.yaml``, on loopback: the haproxy
configuration is ``deploy/haproxy/haproxy.cfg`` itself, with only its addresses rewritten (the
listener and the three servers on 127.0.0.1) and its ``maxconn`` fitted to this machine's open
file limit. Agents are ``opamp-fast simulate`` (reconnect with backoff and jitter).

Steps: start Postgres (embedded, unless ``--database-url``), three instances with ``--lease-s``,
haproxy, the simulator; wait until every agent is online; kill -9 the instance holding the most;
measure how long until

* ``reaped_after_s``: a survivor declared it lost (``server_instances.lost_at``), which closes its
  open history rows with "server lost" and marks its agents offline unless they came back;
* ``victims_back_after_s``: every agent it held is online again on a survivor;
* ``fleet_online_after_s``: the fleet's online count is back to N with no agent on the dead one.

Then the simulator ends (goodbyes), the survivors get SIGTERM and must exit 0, and the rows are
checked: one history row per session the simulator opened (``rows_lost``), none left open.
Prints one JSON document (``--out`` to keep it). Loopback only; every process it starts is
stopped by its pid, and the run is bounded by ``--duration-s``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from procs import free_port, wait_ready  # sibling script (loadtest/ is sys.path[0])

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
INSTANCES = 3


def render_haproxy(
    ports: list[int], lb_port: int, maxconn: int, http_port: int | None = None
) -> str:
    """deploy/haproxy/haproxy.cfg with loopback addresses; nothing else changes. ``lb_port``
    is the TCP frontend's (4320), ``http_port`` the plain-HTTP frontend's (4321; a free port
    when not given). Each backend lists the same instances."""
    text = HAPROXY_CFG.read_text()
    text, binds = re.subn(r"(?m)^(\s*bind) :4320$", rf"\1 127.0.0.1:{lb_port}", text)
    http_port = free_port() if http_port is None else http_port
    text, http_binds = re.subn(r"(?m)^(\s*bind) :4321$", rf"\1 127.0.0.1:{http_port}", text)
    found = re.findall(r"(?m)^\s*server (opamp-fast-(\d+)) opamp-fast-\d+:4320$", text)
    servers = list(dict.fromkeys(found))  # each backend names them all
    if binds != 1 or http_binds != 1 or len(servers) != len(ports):
        raise SystemExit(f"{HAPROXY_CFG}: expected two binds and {len(ports)} servers")
    for (name, _), port in zip(servers, ports, strict=True):
        text = re.sub(rf"(?m)^(\s*server {name}) \S+$", rf"\1 127.0.0.1:{port}", text)
    return re.sub(r"(?m)^(\s*maxconn) \d+$", rf"\1 {maxconn}", text)


class Run:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.db_url = ""

    # -- processes ---------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_instances(self) -> list[tuple[str, int, subprocess.Popen[bytes]]]:
        out = []
        for k in range(1, INSTANCES + 1):
            port = free_port()
            iid = f"opamp-fast-{k}"
            proc = self.spawn(iid, [
                sys.executable, "-m", "opamp_fast", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--database-url", self.db_url, "--instance-id", iid,
                "--lease-s", str(self.args.lease_s), "--log-level", "warning",
                "--graceful-timeout-s", "10", "--backlog", "4096",
            ])  # fmt: skip
            out.append((iid, port, proc))
        for _, port, proc in out:
            wait_ready(f"http://127.0.0.1:{port}/readyz", proc, name=f"instance on {port}")
        return out

    def start_haproxy(self, ports: list[int]) -> int:
        lb_port = free_port()
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text(render_haproxy(ports, lb_port, maxconn=max(100, soft // 2 - 100)))
        proc = self.spawn("haproxy", [self.args.haproxy, "-db", "-f", str(cfg)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"haproxy exited {proc.returncode}: see {self.tmp}/haproxy.log")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", lb_port)):
                return lb_port
            time.sleep(0.1)
        raise SystemExit("haproxy did not listen")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    # -- database ----------------------------------------------------------------------------
    def one(self, sql: str, *params: Any) -> Any:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            row = conn.execute(sql, params or None).fetchone()
            return row[0] if row else None

    def online_by_instance(self) -> dict[str, int]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT serving_instance, count(*) FROM agents WHERE status = 'online'"
                " GROUP BY serving_instance"
            ).fetchall()
        return {str(k): int(v) for k, v in rows}


def poll_until(predicate: Any, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until ``predicate()`` held, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return round(time.monotonic() - start, 2)
        time.sleep(interval)
    return None


def failover(run: Run, instances: list[tuple[str, int, subprocess.Popen[bytes]]]) -> dict[str, Any]:
    a = run.args
    steady = poll_until(lambda: sum(run.online_by_instance().values()) >= a.agents, a.ramp_s + 60)
    if steady is None:
        raise SystemExit(f"only {run.online_by_instance()} online of {a.agents}")
    before = run.online_by_instance()
    victim = max(before, key=lambda k: before[k])
    victim_proc = next(p for iid, _, p in instances if iid == victim)
    with psycopg.connect(run.db_url, autocommit=True) as conn:
        victims = {
            r[0]
            for r in conn.execute(
                "SELECT uid_text FROM agents WHERE status = 'online' AND serving_instance = %s",
                (victim,),
            )
        }
    os.kill(victim_proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    victim_proc.wait(10)

    def victims_back() -> bool:
        back = run.one(
            "SELECT count(*) FROM agents WHERE uid_text = ANY(%s) AND status = 'online'"
            " AND serving_instance <> %s",
            list(victims),
            victim,
        )
        return int(back) == len(victims)

    limit = a.lease_s * 3 + 30
    back_s = poll_until(victims_back, limit)
    reaped_s = poll_until(
        lambda: (
            run.one("SELECT lost_at FROM server_instances WHERE instance_id = %s", victim)
            is not None
        ),
        max(0.0, limit - (time.monotonic() - killed)),
    )
    reaped_s = None if reaped_s is None else round(time.monotonic() - killed, 2)

    def fleet_whole() -> bool:
        now = run.online_by_instance()
        return sum(now.values()) == a.agents and now.get(victim, 0) == 0

    whole_s = poll_until(fleet_whole, limit)
    whole_s = None if whole_s is None else round(time.monotonic() - killed, 2)
    return {
        "steady_after_s": steady,
        "online_before": before,
        "victim": victim,
        "victim_agents": len(victims),
        "victims_back_after_s": back_s,
        "reaped_after_s": reaped_s,
        "fleet_online_after_s": whole_s,
        "lost_by": run.one("SELECT lost_by FROM server_instances WHERE instance_id = %s", victim),
        "online_after": run.online_by_instance(),
    }


def finish(run: Run, instances: list[Any], sim: subprocess.Popen[bytes]) -> dict[str, Any]:
    sim.wait(run.args.duration_s + 120)
    summary = json.loads((run.tmp / "sim.json").read_text())
    exits = {}
    for _, _, proc in instances:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for iid, _, proc in instances:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
        exits[iid] = proc.returncode
    with psycopg.connect(run.db_url, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM agent_connection_history").fetchone()
        still_open = conn.execute(
            "SELECT count(*) FROM agent_connection_history WHERE disconnected_at IS NULL"
        ).fetchone()
        reasons = conn.execute(
            "SELECT disconnect_reason, count(*) FROM agent_connection_history GROUP BY 1"
        ).fetchall()
        online = conn.execute("SELECT count(*) FROM agents WHERE status = 'online'").fetchone()
    assert rows and still_open and online
    return {
        "sessions_opened": summary["sessions_opened"],
        "history_rows": rows[0],
        "rows_lost": max(0, summary["sessions_opened"] - rows[0]),
        "rows_left_open": still_open[0],
        "online_after_shutdown": online[0],
        "reasons": {str(k): v for k, v in sorted(reasons, key=lambda r: str(r[0]))},
        "instance_exit_codes": exits,
        "simulator_errors": summary["errors"],
        "reconnects": summary["reconnects"],
        "latency_ms": summary["latency_ms"],
    }


def execute(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    run = Run(args, tmp)
    try:
        with contextlib.ExitStack() as stack:
            if args.database_url:
                run.db_url = args.database_url
            else:
                import pgserver

                get_server = pgserver.get_server  # type: ignore[attr-defined]
                pg = get_server(tmp / "pgdata", cleanup_mode="stop")
                stack.callback(pg.cleanup)
                run.db_url = pg.get_uri()
            instances = run.start_instances()
            lb_port = run.start_haproxy([port for _, port, _ in instances])
            sim = run.spawn("simulator", [
                sys.executable, "-m", "opamp_fast", "simulate",
                "--url", f"ws://127.0.0.1:{lb_port}/v1/opamp", "--agents", str(args.agents),
                "--ramp-s", str(args.ramp_s), "--duration-s", str(args.duration_s),
                "--backoff-initial-s", "0.5", "--backoff-max-s", "5", "--quiet",
                "--out", str(tmp / "sim.json"),
                *(["--source-addrs", args.source_addrs] if args.source_addrs else []),
            ])  # fmt: skip
            result = {"agents": args.agents, "lease_s": args.lease_s, **failover(run, instances)}
            result.update(finish(run, instances, sim))
            return result
    finally:
        run.stop_all()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=3000)
    p.add_argument("--lease-s", type=float, default=10.0)
    p.add_argument("--ramp-s", type=float, default=15.0)
    p.add_argument("--duration-s", type=float, default=120.0, help="simulator run, <= 600")
    p.add_argument("--database-url", default=None, help="default: embedded Postgres")
    p.add_argument("--haproxy", default=shutil.which("haproxy") or "haproxy")
    p.add_argument("--source-addrs", default="")
    p.add_argument("--out", default=None)
    p.add_argument("--keep-logs", action="store_true", help="keep the run directory")
    args = p.parse_args(argv)
    if not 0 < args.duration_s <= 600:
        p.error("--duration-s must be in (0, 600]")
    tmp = Path(tempfile.mkdtemp(prefix="opamp-failover-"))
    try:
        result = execute(args, tmp)
    finally:
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs in {tmp}", file=sys.stderr)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
