"""storm: a whole fleet back at once, and how fast the server takes it back.

Starts an embedded Postgres and ``opamp-fast serve`` (``--workers``; or ``--go-server-bin``, the
Go reference), connects ``--agents`` WebSocket agents with ``wsload.py`` (heartbeat every
``--heartbeat-s``, reconnecting with ``--backoff`` after any loss, optionally honouring
``Retry-After``), waits until every one is connected, then makes the storm:

- ``--scenario restart``: SIGTERM to the server, wait for its exit, start it again on the
  same port and database (a deploy, a crash recovery);
- ``--scenario blip``: every agent drops its connection at once while the server stays up
  (a network blip; SIGUSR1 to wsload).

Measured from the storm (t = 0 when the server is ready again, or the blip): every second, the
agents connected (the generator's count), the online count the REST summary reports
(``/api/agents/status/summary``: fleet-wide, from Postgres), the round-trip p99 of the agents
already back (every reply; the first replies of new connections apart; how late the
generator's own loop ran, which every round trip it measures includes) and the cores used by
the server, the generator and Postgres (``/proc``); the time until every agent is back
(generator) and until the summary says so; the server's loop lag while they returned;
how long each agent was away (p50/p99/max); after the run (every agent says goodbye, the server
stops with SIGTERM): the connection-history rows against the sessions the generator opened,
rows left open, and the disconnect reasons; and the server's own pause histograms (loop oversleep,
collections, the writer's flushes; from ``/metrics`` once the generator is done: since the
storm for a restart, since the start for a blip). Loopback only, bounded in time; every process is
stopped by its PID. Prints a summary and writes ``loadtest/results/storm-<name>.json``.

Example: ``python loadtest/storm.py --name r100k --scenario restart --agents 100000
--server-arg=--workers --server-arg=8 --procs 6 --source-addrs 127.0.0.2-127.0.0.9``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procs import (
    CpuShares,
    Summary,
    embedded_postgres,
    free_port,
    metric_samples,
    mint_viewer,
    wait_ready,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "src"))


class Server:
    """The server under test, restartable on the same port and database."""

    def __init__(self, args: argparse.Namespace, port: int, db_url: str, tmp: Path, secret: str):
        self.args, self.port, self.db_url, self.tmp, self.secret = args, port, db_url, tmp, secret
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        a = self.args
        if a.go_server_bin:
            return [a.go_server_bin, str(self.port)]
        return [
            sys.executable, "-m", "opamp_fast", "serve", "--host", "127.0.0.1",
            "--port", str(self.port), "--database-url", self.db_url, "--log-level", "warning",
            "--backlog", "8192", "--heartbeat-interval-s", str(round(a.heartbeat_s)),
            *a.server_arg,
        ]  # fmt: skip

    def start(self) -> float:
        self.starts += 1
        log = open(self.tmp / f"server-{self.starts}.log", "wb")  # the server's, while it runs
        env = {**os.environ, "OPAMP_FAST_API_JWT_SECRET": self.secret}
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        if self.args.go_server_bin:
            wait_port(self.port, self.proc)
        else:
            wait_ready(f"http://127.0.0.1:{self.port}/readyz", self.proc, timeout_s=120)
        return time.monotonic()

    def stop(self, timeout_s: float = 120.0) -> tuple[int | None, float]:
        """SIGTERM (SIGINT for the Go server), then SIGKILL after ``timeout_s``: (exit, seconds)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return (proc.returncode if proc else None), 0.0
        started = time.monotonic()
        proc.send_signal(signal.SIGINT if self.args.go_server_bin else signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        return proc.returncode, round(time.monotonic() - started, 2)

    def drains_past_bound(self) -> int:
        """Workers whose shutdown drain ran past its bound, over every stop (their rows were
        closed by the next start, or a survivor)."""
        return sum(
            log.read_bytes().count(b"shutdown drain timed out")
            for log in self.tmp.glob("server-*.log")
        )


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise SystemExit("server not listening")


def connected(load_log: Path) -> int:
    """The generator's last progress line's connected count (0 before the first)."""
    with contextlib.suppress(OSError):
        lines = load_log.read_bytes().splitlines()[-20:]
        for line in reversed(lines):
            if b"connected=" in line:
                return int(line.split(b"connected=")[1].split()[0])
    return 0


def wait_all_connected(load_log: Path, agents: int, timeout_s: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if connected(load_log) >= agents:
            return time.monotonic()
        time.sleep(0.5)
    return None


def history_check(db_url: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT count(*) FROM agent_connection_history").fetchone()
        open_rows = conn.execute(
            "SELECT count(*) FROM agent_connection_history WHERE disconnected_at IS NULL"
        ).fetchone()
        reasons = conn.execute(
            "SELECT disconnect_reason, count(*) FROM agent_connection_history "
            "GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
        online = conn.execute("SELECT count(*) FROM agents WHERE status = 'online'").fetchone()
    return {
        "history_rows": rows[0] if rows else None,
        "open_rows": open_rows[0] if open_rows else None,
        "agents_online_after_stop": online[0] if online else None,
        "reasons": {str(r): n for r, n in reasons},
    }


#: Histograms the server keeps about its own pauses (docs/metrics.md): the storm's share of the
#: tail, read from ``/metrics`` (all workers summed) once every agent is back.
PAUSES = (
    "opamp_fast_loop_oversleep_seconds",
    "opamp_fast_gc_pause_seconds",
    "opamp_fast_writer_flush_cpu_seconds",
    "opamp_fast_writer_flush_duration_seconds",
    "opamp_fast_db_errors_total",  # failed flushes (a counter: only its ``total``)
)


def pause_histograms(port: int) -> dict[str, dict[str, float]]:
    """``{histogram: {le: cumulative count}}`` of ``PAUSES`` summed over the workers, plus each
    one's count and sum (a counter's value as ``total``)."""
    out: dict[str, dict[str, float]] = {name: {} for name in PAUSES}
    try:
        samples = metric_samples(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return out
    for series, value in samples.items():
        base, _, labels = series.partition("{")
        for h in PAUSES:
            if base == f"{h}_bucket" and 'le="' in labels:
                key = labels.split('le="')[1].split('"')[0]
            elif base in (f"{h}_count", f"{h}_sum", h):
                key = base[len(h) + 1 :] or "total"
            else:
                continue
            out[h][key] = out[h].get(key, 0.0) + value
    return out


def histogram_diff(
    after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """What the server's pause histograms counted between two reads of ``/metrics``."""
    return {
        name: {key: value - before.get(name, {}).get(key, 0.0) for key, value in series.items()}
        for name, series in after.items()
    }


def quantile_le(series: dict[str, float], q: float) -> float | None:
    """The upper bound (``le``) of the bucket holding quantile ``q`` of a cumulative histogram."""
    total = series.get("count", 0.0)
    if total <= 0:
        return None
    bounds = sorted((float(k), v) for k, v in series.items() if k not in ("count", "sum", "total"))
    return next((le for le, cumulative in bounds if cumulative >= q * total), None)


def cpu_during(cpu: CpuShares, start: float, end: float | None) -> dict[str, float]:
    """The cores each group used on average from ``start`` to ``end`` (the samples inside)."""
    inside = [shares for t, shares in cpu.samples if start < t <= (end or start + 60)]
    names = sorted({name for shares in inside for name in shares})
    n = max(1, len(inside))
    return {name: round(sum(s.get(name, 0.0) for s in inside) / n, 3) for name in names}


def per_second(values: list[float | None], limit_ms: float) -> dict[str, Any]:
    """Median, worst and seconds over ``limit_ms`` of per-second p99s (None: no reply)."""
    have = sorted(v for v in values if v is not None)
    return {
        "median_ms": have[len(have) // 2] if have else None,
        "worst_ms": have[-1] if have else None,
        "seconds_over": sum(v > limit_ms for v in have),
        "seconds": len(have),
    }


def storm_figures(
    load: dict[str, Any], summary: Summary, cpu: CpuShares, t_storm: float, agents: int
) -> dict[str, Any]:
    """What happened from the storm on, from the generator's timeline, the summary and the
    CPU each process group used. "Returning" is from the storm until every agent is back."""
    t0 = load["times"]["t0_monotonic"]
    after = [s for s in load["timeline"] if t0 + s["t"] >= t_storm - 1]
    back_at = next((t0 + s["t"] + 1 for s in after if s["connected"] >= agents), None)
    seen = [(t, on) for t, on, _ in summary.samples if t >= t_storm and on is not None]
    # All online once the summary has shown the storm (a blip's first samples still count the
    # agents from before it), or at once if it never showed it.
    dropped = next((i for i, (_, on) in enumerate(seen) if on < agents), 0)
    summary_back = next((t for t, on in seen[dropped:] if on >= agents), None)
    returning = [s for s in after if back_at is None or t0 + s["t"] + 1 <= back_at]
    # Each second of the return: the agents connected less those the summary counts online.
    behind = []
    for s in returning:
        at = t0 + s["t"] + 1
        on = next((on for t, on in seen if t >= at), None)
        if on is not None:
            behind.append(s["connected"] - on)
    behind.sort()
    p99s = [s["p99_ms"] for s in after if s["p99_ms"] is not None and s["answered_per_s"]]
    return {
        "all_back_s": round(back_at - t_storm, 1) if back_at else None,
        "summary_all_online_s": round(summary_back - t_storm, 1) if summary_back else None,
        "cores_while_returning": cpu_during(cpu, t_storm, back_at),
        "p99_while_returning": {
            "every_reply": per_second([s["p99_ms"] for s in returning if s["answered_per_s"]], 100),
            "agents_connected": per_second([s.get("p99_connected_ms") for s in returning], 100),
            "first_replies": per_second([s.get("p99_first_ms") for s in returning], 100),
            # how late the generator's own loop ran (its worst process): a round trip it
            # measures includes that wait for the reply to be read
            "generator_lag_max": per_second(
                [s.get("generator_lag_max_ms") for s in returning], 100
            ),
        },
        "summary_behind_while_returning": {
            "median": behind[len(behind) // 2] if behind else None,
            "worst": behind[-1] if behind else None,
        },
        "p99_ms_worst_second_after": max(p99s, default=None),
        "timeline": [
            {
                "t": round(t0 + s["t"] + 1 - t_storm, 1),
                "connected": s["connected"],
                "down": s.get("down"),
                "p99_ms": s["p99_ms"],
                "p99_connected_ms": s.get("p99_connected_ms"),
                "p99_first_ms": s.get("p99_first_ms"),
                "answered_per_s": s["answered_per_s"],
                "first_replies_per_s": s.get("first_replies_per_s"),
                "generator_lag_max_ms": s.get("generator_lag_max_ms"),
            }
            for s in after
        ],
        "summary": [(round(t - t_storm, 1), on, off) for t, on, off in summary.samples if on],
        "cores": [(round(t - t_storm, 1), shares) for t, shares in cpu.samples if t >= t_storm],
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    pg = embedded_postgres(tmp / "pgdata", stock=args.stock_postgres)
    secret = os.urandom(24).hex()
    port = free_port()
    server = Server(args, port, pg.get_uri(), tmp, secret)
    load_log, load_out = tmp / "wsload.log", tmp / "wsload.json"
    summary = Summary(port, mint_viewer(secret))
    gen: subprocess.Popen[bytes] | None = None
    cpu = CpuShares({
        "server": lambda: server.proc.pid if server.proc else None,
        "generator": lambda: gen.pid if gen else None,
    })  # fmt: skip
    try:
        server.start()
        summary.start()
        cpu.start()
        with open(load_log, "wb") as log:
            gen = subprocess.Popen([
                sys.executable, str(HERE / "wsload.py"),
                "--url", f"ws://127.0.0.1:{port}/v1/opamp", "--agents", str(args.agents),
                "--procs", str(args.procs), "--ramp-s", str(args.ramp_s),
                "--hold-s", str(args.hold_s), "--heartbeat-s", str(args.heartbeat_s),
                "--reconnect", "--backoff", args.backoff, "--goodbye", "--out", str(load_out),
                "--connect-concurrency", str(args.connect_concurrency),
                *(["--honour-retry-after"] if args.honour_retry_after else []),
                *(["--source-addrs", args.source_addrs] if args.source_addrs else []),
            ], stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=(lambda: os.nice(args.generator_nice)) if args.generator_nice else None,
            )  # fmt: skip
        all_in = wait_all_connected(load_log, args.agents, args.ramp_s + 120)
        if all_in is None:
            raise SystemExit(f"not every agent connected before the storm; see {load_log}")
        time.sleep(args.settle_s)
        stop_exit = stop_s = None
        if args.scenario == "restart":
            stop_exit, stop_s = server.stop()
            t_storm = server.start()
            pauses_before: dict[str, dict[str, float]] = {}  # a new server counts from zero
        else:
            pauses_before = {} if args.go_server_bin else pause_histograms(port)
            gen.send_signal(signal.SIGUSR1)
            t_storm = time.monotonic()
        time.sleep(5)  # past the generator's progress lines from before the storm
        wait_all_connected(load_log, args.agents, 300)  # every agent back (or the time out)
        # The server's pauses while the fleet came back (its loop's lag is part of every
        # round trip the generator measures then, as the generator's own lag is).
        pauses_returning = (
            {} if args.go_server_bin else histogram_diff(pause_histograms(port), pauses_before)
        )
        gen.wait(args.ramp_s + args.hold_s + 300)
        summary.stop.set()
        cpu.stop.set()
        pauses = {} if args.go_server_bin else pause_histograms(port)
        final_exit, final_stop_s = server.stop()
        load = json.loads(load_out.read_text())
        return {
            "scenario": args.scenario, "agents": args.agents, "procs": args.procs,
            "server": server.command(), "backoff": args.backoff,
            "honour_retry_after": args.honour_retry_after,
            "generator_nice": args.generator_nice,
            "connect_concurrency": args.connect_concurrency,
            "connected_before": all_in is not None, "restart_stop": [stop_exit, stop_s],
            "final_stop": [final_exit, final_stop_s], "storm": storm_figures(
                load, summary, cpu, t_storm, args.agents),
            "returns": load.get("returns"), "errors": load.get("errors"),
            "sessions_opened": load["connect"]["handshakes"],
            "history": None if args.go_server_bin else history_check(pg.get_uri()),
            "drains_past_bound": server.drains_past_bound(),
            "pauses": pauses, "pauses_while_returning": pauses_returning,
            "server_loop_lag_while_returning_ms": {
                name: (None if (le := quantile_le(
                    pauses_returning.get("opamp_fast_loop_oversleep_seconds", {}), q)) is None
                    else round(1000 * le, 1))
                for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))
            },
            "loadavg_end": os.getloadavg(),
        }  # fmt: skip
    finally:
        summary.stop.set()
        cpu.stop.set()
        if gen is not None and gen.poll() is None:
            gen.kill()
            gen.wait(10)
        server.stop(10)
        pg.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--scenario", choices=("restart", "blip"), required=True)
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--procs", type=int, default=2, help="wsload processes")
    p.add_argument("--source-addrs", default="")
    p.add_argument("--ramp-s", type=float, default=60.0)
    p.add_argument("--settle-s", type=float, default=10.0, help="all connected, then wait")
    p.add_argument("--hold-s", type=float, default=240.0, help="the generator's whole hold")
    p.add_argument("--heartbeat-s", type=float, default=30.0)
    p.add_argument("--backoff", choices=("full-jitter", "opamp-go"), default="opamp-go")
    p.add_argument("--honour-retry-after", action="store_true")
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=256,
        help="the generator's handshakes in flight, all its processes together (real agents "
        "have no such bound: it caps how fast the fleet can come back)",
    )
    p.add_argument("--stock-postgres", action="store_true", help="pgserver's settings")
    p.add_argument("--server-arg", action="append", default=[], help="extra serve flag")
    p.add_argument(
        "--generator-nice",
        type=int,
        default=0,
        help="the generator's scheduling niceness (negative: ahead of the server and Postgres, "
        "so that less of its own wait for a core counts in the round trips it measures; "
        "negative values need root)",
    )
    p.add_argument("--go-server-bin", default="", help="a Go server taking the port as argument")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="opamp-storm-"))
    try:
        result = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"storm-{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    brief = {k: v for k, v in result.items() if k not in ("storm", "pauses")}
    brief["storm"] = {k: v for k, v in result["storm"].items() if k not in ("timeline", "summary")}
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
