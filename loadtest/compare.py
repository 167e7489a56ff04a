"""compare: several OpAMP servers side by side, one run, one machine, the same load generator.

Why: on a shared 2-core machine a per-message CPU figure means little alone; measured in the same
run, against the same ``wsload`` settings, next to Python's floor (``uvloop_floor.py``), the trio
floor (``echo_floor.py``) and optionally the Go reference, it becomes a ratio that holds.

For each target in ``--targets`` (``uvloop-floor,trio-floor,front-floor,opamp-fast,go``; the
front floor is the server's own front with an echo handler, ``front_floor.py``), in turn:

1. start it on a free loopback port (opamp-fast: ``opamp-fast serve --host 127.0.0.1 --port P
   --backlog 8192`` on an embedded Postgres started once per run, a fresh database per start;
   go: ``--go-server-bin`` with ``--go-server-args``, ``{port}`` replaced; skipped with a note
   when no binary is given) and wait until it accepts (opamp-fast: ``/readyz``);
2. phase "connect": ``wsload --idle`` ramps ``--agents`` over ``--ramp-s``; server CPU (user +
   sys) and RSS are sampled every 0.5 s. CPU per connect = server CPU from the ramp start to
   1 s after the last handshake / handshakes; RSS per idle agent = (median RSS over the last 2 s
   of the idle hold - RSS before) / agents connected. Then wait until the server has closed the
   sockets again;
3. phase "heartbeat": a fresh ``wsload`` run with a heartbeat every ``--heartbeat-s`` for
   ``--hold-s`` after its ramp. CPU per heartbeat = server CPU over wsload's steady window (the
   hold after the last handshake, 2 s cut from each end; CPU interpolated between samples at the
   window's edges) / messages answered in that window; p50/p99/max round trip in the window,
   messages/s, and the generator's CPU per message;
4. stop it by PID (SIGTERM, SIGKILL after a bound) and record its exit code.

``--repeat K`` runs the whole list K times interleaved (A, B, C, A, B, C). The result is one JSON
(``loadtest/results/compare-<name>.json``: machine, load average before, exact commands, figures
per target and round) and a Markdown table per round on stdout, ready for
``docs/performance.md``. ``--server-gc-log`` starts opamp-fast behind scale_run's GC-logging
launcher and reports the longest collection seen during the connect ramp.

Example: ``python loadtest/compare.py --name hb10k --targets uvloop-floor,trio-floor,opamp-fast
--agents 10000 --procs 2 --ramp-s 30 --hold-s 30 --heartbeat-s 5``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procs import Summary, embedded_postgres, free_port, mint_viewer  # noqa: E402  (sibling script, not a package)
from scale_run import (  # noqa: E402
    Proc,
    launcher,
    machine,
    other_load,
    wait_port,
    wait_ready,
)

RESULTS = HERE / "results"
TARGETS = ("uvloop-floor", "trio-floor", "front-floor", "opamp-fast", "go")
SETTINGS = (
    "agents", "procs", "ramp_s", "hold_s", "heartbeat_s", "idle_hold_s", "tick_ms",
    "connect_concurrency", "source_addrs", "repeat", "server_arg",
)  # fmt: skip
SAMPLE_S = 0.5
STOP_TIMEOUT_S = 30.0
_GC_PAUSE = re.compile(r"gc pause: gen=(\d+) (\d+) ms collected=(\d+) at ([\d.]+) s")


class Sampler:
    """Samples a process tree (CPU user+sys, RSS, voluntary context switches, fds) every 0.5 s;
    optionally a second process tree (Postgres) for its CPU."""

    def __init__(self, proc: psutil.Process, db: psutil.Process | None = None) -> None:
        self.proc = proc
        self.db = db
        self.samples: list[tuple[float, float, int, int, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _db_cpu(self) -> float:
        if self.db is None:
            return 0.0
        total = 0.0
        with contextlib.suppress(psutil.Error):
            for p in [self.db, *self.db.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
        return total

    def sample(self) -> None:
        """One sample of the server's whole process tree (``--workers``: the supervisor and its
        workers; a single process otherwise)."""
        cpu = 0.0
        rss = vcsw = fds = 0
        with contextlib.suppress(psutil.Error):
            tree = [self.proc, *self.proc.children(recursive=True)]
            for proc in tree:
                with contextlib.suppress(psutil.Error), proc.oneshot():
                    t = proc.cpu_times()
                    cpu += t.user + t.system
                    rss += proc.memory_info().rss
                    vcsw += proc.num_ctx_switches().voluntary
                    fds += proc.num_fds()
            self.samples.append((time.monotonic(), cpu, rss, vcsw, fds, self._db_cpu()))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def at(self, t: float, field: int) -> float | None:
        """Linear interpolation of a cumulative field (1: CPU s, 3: ctx switches, 5: DB CPU)."""
        s = self.samples
        for a, b in itertools.pairwise(s):
            if a[0] <= t <= b[0]:
                return a[field] + (b[field] - a[field]) * (t - a[0]) / max(b[0] - a[0], 1e-9)
        return None

    def delta(self, t1: float, t2: float, field: int) -> float | None:
        a, b = self.at(t1, field), self.at(t2, field)
        return None if a is None or b is None else b - a

    def rss_median(self, t1: float, t2: float) -> int | None:
        values = [s[2] for s in self.samples if t1 <= s[0] <= t2]
        return int(statistics.median(values)) if values else None

    def last(self, field: int) -> float:
        return self.samples[-1][field] if self.samples else 0.0


def calibrate() -> dict[str, float]:
    """What sleeping and loopback TCP cost on this machine, in CPU us (user + sys).

    On a virtual machine a wake-up from epoll can cost tens of microseconds of CPU (and more after
    a longer sleep), and a loopback send runs the receiver's TCP stack in the sender's context:
    at low message rates a server's per-message figure is mostly these two. Recorded so that
    figures from different machines can be told apart."""
    import resource
    import select
    import socket

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    out: dict[str, float] = {}
    ep = select.epoll()
    try:
        for ms in (1, 5):
            c = cpu()
            for _ in range(100):
                ep.poll(ms / 1000)
            out[f"epoll_wake_after_{ms}ms_us"] = round((cpu() - c) * 1e4, 1)
    finally:
        ep.close()
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        with socket.create_connection(lsock.getsockname()) as a:
            b, _ = lsock.accept()
            with b:
                a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c = cpu()
                for _ in range(5000):
                    a.send(b"x" * 40)
                    b.recv(100)
                out["loopback_tcp_send_recv_us"] = round((cpu() - c) * 200, 1)
    return out


def parse_target(target: str) -> tuple[str, str, str]:
    """``KIND[+BACKEND][*WORKERS][@SRC]`` -> (kind, backend, src); only opamp-fast takes the
    suffixes: ``opamp-fast+trio`` adds ``--backend trio``, ``opamp-fast*4`` adds ``--workers 4``
    (see ``workers_of``), ``opamp-fast@/tmp/of-head/src`` runs the server from that source tree
    (e.g. an older commit exported with ``git archive``). ``uvloop-floor*4`` is the floor in 4
    processes sharing the port."""
    rest, _, src = target.partition("@")
    rest, star, _ = rest.partition("*")
    kind, _, backend = rest.partition("+")
    takes_suffixes = kind == "opamp-fast" or (kind == "uvloop-floor" and not (backend or src))
    if kind not in TARGETS or ((backend or src or star) and not takes_suffixes):
        raise ValueError(f"unknown target {target!r}")
    return kind, backend, src


def workers_of(target: str, option: str = "--workers") -> list[str]:
    """``--workers N`` for an ``opamp-fast*N`` target, ``--processes N`` for a floor's (nothing
    without ``*N``)."""
    count = target.partition("@")[0].partition("*")[2]
    if not count:
        return []
    if not count.isdigit() or not 1 <= int(count) <= 64:
        raise ValueError(f"bad worker count in {target!r}")
    return [option, count]


def gc_pauses(log: Path, t1: float, t2: float) -> list[dict[str, Any]]:
    """GC pauses > 20 ms the launcher logged between monotonic times t1 and t2."""
    out = []
    with contextlib.suppress(OSError):
        for m in _GC_PAUSE.finditer(log.read_text(errors="replace")):
            at = float(m.group(4))
            if t1 <= at <= t2:
                out.append({"gen": int(m.group(1)), "ms": int(m.group(2)), "at": at})
    return out


class Run:
    """One compare run: owns the embedded Postgres (if needed) and every process it starts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = RESULTS / f"compare-{args.name}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"opamp-compare-{args.name}-"))
        self.pg: Any = None
        self.db_pid: int | None = None
        self.db_count = 0
        self.last_db_url = ""
        self.secret = os.urandom(16).hex()  # the REST summary is read during the hold

    # targets

    def database_url(self) -> str:
        """A fresh database on the run's embedded Postgres (started on first use)."""
        import psycopg

        if self.pg is None:
            self.pg = embedded_postgres(self.tmp / "pgdata", stock=self.args.stock_postgres)
            pid_file = self.tmp / "pgdata" / "postmaster.pid"
            self.db_pid = int(pid_file.read_text().split()[0])
        self.db_count += 1
        name = f"compare_{self.db_count}"
        with psycopg.connect(self.pg.get_uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        self.last_db_url = str(self.pg.get_uri(database=name))
        return self.last_db_url

    def server_cmd(self, target: str, port: int, tag: str) -> list[str] | None:
        a = self.args
        py = sys.executable
        kind, backend, _src = parse_target(target)
        hb = str(max(1, round(a.heartbeat_s)))
        if kind == "uvloop-floor":
            return [py, str(HERE / "uvloop_floor.py"), "--port", str(port), "--backlog", "8192",
                    "--heartbeat-interval-s", hb, *workers_of(target, "--processes")]  # fmt: skip
        if kind == "trio-floor":
            return [py, str(HERE / "echo_floor.py"), "--port", str(port), "--backlog", "8192",
                    "--heartbeat-interval-s", hb]  # fmt: skip
        if kind == "front-floor":
            return [py, str(HERE / "front_floor.py"), "--port", str(port), "--backlog", "8192",
                    "--heartbeat-interval-s", hb]  # fmt: skip
        if kind == "opamp-fast":
            return [
                py, *launcher(a.server_gc_log), "serve", "--host", "127.0.0.1",
                "--port", str(port), "--backlog", "8192", "--database-url", self.database_url(),
                "--instance-id", f"compare-{tag}", "--log-level", "warning",
                "--heartbeat-interval-s", hb, "--graceful-timeout-s", "20",
                "--api-jwt-secret", self.secret, *self.timeout_args(), *a.server_arg,
                *(["--backend", backend] if backend else []), *workers_of(target),
            ]  # fmt: skip
        if kind == "go":
            if not a.go_server_bin:
                return None
            extra = shlex.split(a.go_server_args.replace("{port}", str(port)))
            return [a.go_server_bin, *extra]
        raise ValueError(target)

    def timeout_args(self) -> list[str]:
        """Idle agents must outlive the connect phase: without heartbeats, the first ones to
        connect would be timed out (close 4001) before the RSS sample at the end of the hold."""
        if any(arg.startswith("--heartbeat-timeout") for arg in self.args.server_arg):
            return []
        needed = self.args.ramp_s + self.args.idle_hold_s + 30.0
        return ["--heartbeat-timeout-s", f"{max(60.0, needed):g}"]

    def server_env(self, target: str) -> dict[str, str] | None:
        """``opamp-fast@SRC``: run the server from another source tree (PYTHONPATH=SRC)."""
        _kind, _backend, src = parse_target(target)
        if not src:
            return None
        return {**os.environ, "PYTHONPATH": src}

    def wsload_cmd(self, port: int, out: Path, idle: bool) -> list[str]:
        a = self.args
        cmd = [
            sys.executable, str(HERE / "wsload.py"),
            "--url", f"ws://127.0.0.1:{port}{a.path}",
            "--agents", str(a.agents), "--procs", str(a.procs),
            "--ramp-s", str(a.ramp_s), "--connect-concurrency", str(a.connect_concurrency),
            "--tick-ms", str(a.tick_ms), "--out", str(out), "--quiet",
        ]  # fmt: skip
        if idle:
            cmd += ["--idle", "--hold-s", str(a.idle_hold_s)]
        else:
            cmd += ["--hold-s", str(a.hold_s), "--heartbeat-s", str(a.heartbeat_s)]
        if a.source_addrs:
            cmd += ["--source-addrs", a.source_addrs]
        for h in a.header:
            cmd += ["--header", h]
        return cmd + list(a.wsload_arg)

    def run_wsload(self, cmd: list[str], out: Path, log: Path) -> dict[str, Any]:
        bound = self.args.ramp_s + max(self.args.hold_s, self.args.idle_hold_s) + 180
        gen = Proc("wsload", cmd, log)
        try:
            gen.popen.wait(bound)
        except subprocess.TimeoutExpired:
            print(f"  wsload overran {bound:.0f} s; stopping it", file=sys.stderr)
        gen.stop(timeout_s=20)
        if not out.exists():
            raise RuntimeError(f"wsload wrote no result; see {log}")
        result: dict[str, Any] = json.loads(out.read_text())
        result["exit_code"] = gen.exit_code
        return result

    def wait_closed(self, sampler: Sampler, baseline_fds: int, timeout_s: float = 60.0) -> float:
        """Wait until the server holds about as many fds as before the phase (sockets closed)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            sampler.sample()
            if sampler.last(4) <= baseline_fds + 16:
                break
            time.sleep(0.5)
        return round(time.monotonic() - start, 1)

    def run_target(self, target: str, round_no: int) -> dict[str, Any]:
        a = self.args
        tag = f"{round_no}-{re.sub(r'[^A-Za-z0-9+._-]+', '_', target).strip('_')}"
        port = free_port()
        log = self.out.parent / f"{self.out.name}-{tag}.server.log"
        cmd = self.server_cmd(target, port, tag)
        if cmd is None:
            return {"target": target, "skipped": "no --go-server-bin given"}
        res: dict[str, Any] = {"target": target, "round": round_no, "port": port, "cmd": cmd}
        print(f"[compare] round {round_no} {target}: starting on port {port}", file=sys.stderr)
        server = Proc(target, cmd, log, env=self.server_env(target))
        res["pid"] = server.pid
        try:
            is_opamp = parse_target(target)[0] == "opamp-fast"
            if is_opamp:
                wait_ready(f"http://127.0.0.1:{port}", server, "/readyz")
            else:
                wait_port(port, server)
            time.sleep(a.settle_s)  # imports done, gc.freeze etc.: a stable RSS baseline
            db = psutil.Process(self.db_pid) if is_opamp and self.db_pid else None
            with Sampler(server.ps, db) as sampler:
                res["connect"] = self.connect_phase(target, tag, port, server, sampler)
                res["connect"]["closed_after_s"] = self.wait_closed(
                    sampler, res["connect"].pop("_fds_before")
                )
                time.sleep(a.settle_s)
                res["heartbeat"] = self.heartbeat_phase(target, tag, port, server, sampler)
                res["heartbeat"]["closed_after_s"] = self.wait_closed(
                    sampler, int(sampler.samples[0][4])
                )
            res["server_rss_mb_end"] = round(sampler.last(2) / 2**20, 1)
        except Exception as exc:  # keep going with the other targets; say what broke
            res["error"] = f"{type(exc).__name__}: {exc}"
            print(f"[compare] {target} failed: {res['error']}", file=sys.stderr)
        finally:
            res["exit_code"] = server.stop(STOP_TIMEOUT_S)
            res["killed"] = server.killed
            res["server_log"] = str(log)
        if parse_target(target)[0] == "opamp-fast" and "error" not in res:
            res["rows"] = self.rows_after(res)
        print(f"[compare] round {round_no} {target}: {brief(res)}", file=sys.stderr)
        return res

    def rows_after(self, res: dict[str, Any]) -> dict[str, Any]:
        """After the server stopped: one history row per handshake of both phases, none open,
        no agent left online; and the rows Postgres wrote per second of the heartbeat phase."""
        import psycopg

        sessions = sum(res[phase].get("handshakes", 0) for phase in ("connect", "heartbeat"))
        with psycopg.connect(self.last_db_url, autocommit=True) as conn:
            rows, still_open = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE disconnected_at IS NULL)"
                " FROM agent_connection_history"
            ).fetchone() or (0, 0)
            (online,) = conn.execute(
                "SELECT count(*) FROM agents WHERE status = 'online'"
            ).fetchone() or (0,)
        return {
            "sessions": sessions,
            "history_rows": rows,
            "rows_lost": max(0, sessions - rows),
            "rows_left_open": still_open,
            "agents_left_online": online,
        }

    def db_rows_written(self) -> int:
        """Rows inserted + updated in this run's database so far (``pg_stat_user_tables``)."""
        import psycopg

        with psycopg.connect(self.last_db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT COALESCE(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables"
            ).fetchone()
        return int(row[0]) if row else 0

    def connect_phase(
        self, target: str, tag: str, port: int, server: Proc, sampler: Sampler
    ) -> dict[str, Any]:
        out = self.out.parent / f"{self.out.name}-{tag}-connect.json"
        sampler.sample()
        rss_before = int(sampler.last(2))
        fds_before = int(sampler.last(4))
        cmd = self.wsload_cmd(port, out, idle=True)
        load = self.run_wsload(cmd, out, out.with_suffix(".log"))
        times = load["times"]
        t0 = times["t0_monotonic"]
        last = times["connect_last_monotonic"] or times["ramp_end_monotonic"]
        handshakes = load["connect"]["handshakes"]
        cpu = sampler.delta(t0, last + 1.0, 1)
        hold_end = times["hold_end_monotonic"]
        rss_after = sampler.rss_median(hold_end - 2.0, hold_end)
        connected = load["agents_connected"]
        res: dict[str, Any] = {
            "wsload_cmd": cmd,
            "wsload_out": str(out),
            "agents_connected": connected,
            "handshakes": handshakes,
            "ramp_s_actual": load["connect"]["duration_s"],
            "handshake_ms": load["connect"]["handshake_ms"],
            "errors": load["errors"],
            "server_cpu_s": round(cpu, 3) if cpu is not None else None,
            "cpu_per_connect_ms": round(1e3 * cpu / handshakes, 3) if cpu and handshakes else None,
            "rss_before_mb": round(rss_before / 2**20, 1),
            "rss_after_mb": round(rss_after / 2**20, 1) if rss_after else None,
            "rss_per_agent_kib": (
                round((rss_after - rss_before) / connected / 1024, 2)
                if rss_after and connected
                else None
            ),
            "generator_cpu_s": load["generator"]["cpu_s"],
            "_fds_before": fds_before,
        }
        db_cpu = sampler.delta(t0, last + 1.0, 5) if sampler.db is not None else None
        if db_cpu is not None:
            res["db_cpu_per_connect_ms"] = round(1e3 * db_cpu / max(handshakes, 1), 3)
        if parse_target(target)[0] == "opamp-fast" and self.args.server_gc_log:
            pauses = gc_pauses(server.log_path, t0, last + 1.0)
            res["gc_pauses_over_20ms"] = len(pauses)
            res["gc_max_pause_ms"] = max((p["ms"] for p in pauses), default=0)
        return res

    def heartbeat_phase(
        self, target: str, tag: str, port: int, server: Proc, sampler: Sampler
    ) -> dict[str, Any]:
        out = self.out.parent / f"{self.out.name}-{tag}-heartbeat.json"
        cmd = self.wsload_cmd(port, out, idle=False)
        is_opamp = parse_target(target)[0] == "opamp-fast"
        rows_before, started = (self.db_rows_written() if is_opamp else 0), time.monotonic()
        summary = Summary(port, mint_viewer(self.secret)) if is_opamp else None
        if summary is not None:
            summary.start()
        try:
            load = self.run_wsload(cmd, out, out.with_suffix(".log"))
        finally:
            if summary is not None:
                summary.stop.set()
                summary.join(10)
        phase_s = time.monotonic() - started
        steady, hold, times = load["steady"], load["hold"], load["times"]
        t1, t2 = steady["start_monotonic"], steady["end_monotonic"]
        expected = self.args.agents / self.args.heartbeat_s
        res: dict[str, Any] = {
            "wsload_cmd": cmd,
            "wsload_out": str(out),
            "agents_connected": load["agents_connected"],
            "ramp_end_s": load["connect"]["last_s"],
            "expected_messages_per_s": round(expected, 1),
            "errors": load["errors"],
            "busy_skips": load["messages"]["busy_skips"],
            "full_state_requests": load["messages"]["full_state_requests"],
            "handshakes": load["connect"]["handshakes"],
        }
        if is_opamp:  # ramp and hold together: inserts at the ramp, last_seen updates after
            res["db_rows_per_s"] = round((self.db_rows_written() - rows_before) / phase_s, 1)
        # Whole hold (it may include handshakes when the ramp lagged): a fallback figure.
        h1, h2 = hold["start_monotonic"], hold["end_monotonic"]
        hold_cpu = sampler.delta(h1, h2, 1)
        hold_answered = hold["messages_answered"] or 0
        res["hold"] = {
            "messages_per_s": hold["messages_per_s"],
            "server_cpu_percent": round(100 * hold_cpu / (h2 - h1), 1) if hold_cpu else None,
            "cpu_per_message_us": (
                round(1e6 * hold_cpu / hold_answered, 1) if hold_cpu and hold_answered else None
            ),
            "p99_ms": hold["latency_ms"]["p99"],
        }
        answered = steady["messages_answered"] or 0
        if t2 - t1 < 2.0 or not answered:
            t0 = times["t0_monotonic"]
            last = (times["connect_last_monotonic"] or t0) - t0
            res["note"] = (
                f"no steady window: the last handshake came {last:.0f} s after the start, the "
                f"hold ended at {times['hold_end_monotonic'] - t0:.0f} s (server saturated?)"
            )
            res["saturated"] = True
            return res
        cpu = sampler.delta(t1, t2, 1)
        vcsw = sampler.delta(t1, t2, 3)
        lat = steady["latency_ms"]
        rate = steady["messages_per_s"] or 0.0
        res.update(
            {
                "window_s": round(t2 - t1, 1),
                "messages_answered": answered,
                "messages_per_s": rate,
                "saturated": rate < 0.95 * expected,
                "server_cpu_s": round(cpu, 3) if cpu is not None else None,
                "server_cpu_percent": round(100 * cpu / (t2 - t1), 1) if cpu is not None else None,
                "cpu_per_heartbeat_us": round(1e6 * cpu / answered, 1) if cpu else None,
                "server_wakeups_per_message": round(vcsw / answered, 3) if vcsw else None,
                "p50_ms": lat["p50"],
                "p90_ms": lat["p90"],
                "p99_ms": lat["p99"],
                "p999_ms": lat["p999"],
                "max_ms": lat["max"],
                "generator_cpu_us_per_message": steady["generator_cpu_us_per_message"],
                "generator_cpu_percent": steady["generator_cpu_percent"],
                "generator_wakeups_per_message": steady.get("generator_wakeups_per_message"),
            }
        )
        if summary is not None:
            res["summary"] = summary_in_window(summary, t1, t2, load["agents_connected"])
        db_cpu = sampler.delta(t1, t2, 5) if sampler.db is not None else None
        if db_cpu is not None and answered:
            res["db_cpu_per_heartbeat_us"] = round(1e6 * db_cpu / answered, 1)
        if parse_target(target)[0] == "opamp-fast" and self.args.server_gc_log:
            pauses = gc_pauses(server.log_path, t1, t2)
            res["gc_pauses_over_20ms"] = len(pauses)
            res["gc_max_pause_ms"] = max((p["ms"] for p in pauses), default=0)
        return res

    def close(self) -> None:
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


def summary_in_window(summary: Summary, t1: float, t2: float, connected: int) -> dict[str, Any]:
    """What the REST summary said (once a second) while every agent heartbeated: exact when
    each answer's online count was the generator's connected count."""
    online = [on for t, on, _ in summary.samples if t1 <= t <= t2]
    answered = [on for on in online if on is not None]
    return {
        "samples": len(online),
        "unanswered": len(online) - len(answered),
        "online_min": min(answered, default=None),
        "online_max": max(answered, default=None),
        "exact": bool(online) and all(on == connected for on in online),
    }


def brief(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"skipped ({res['skipped']})"
    c, h = res.get("connect") or {}, res.get("heartbeat") or {}
    return (
        f"cpu/heartbeat={h.get('cpu_per_heartbeat_us')}us "
        f"cpu/connect={c.get('cpu_per_connect_ms')}ms rss/agent={c.get('rss_per_agent_kib')}KiB "
        f"p50={h.get('p50_ms')}ms p99={h.get('p99_ms')}ms "
        f"msgs/s={h.get('messages_per_s')} gen={h.get('generator_cpu_us_per_message')}us/msg "
        f"exit={res.get('exit_code')} {res.get('error', '')}"
    )


def fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def tables(result: dict[str, Any]) -> str:
    """One Markdown table per round (plus a diagnostics table), headed by the machine line."""
    m, a = result["machine"], result["settings"]
    lines = [
        f"Machine: {m['nproc']} x {m['cpu_model']}, Python {m['python']}, load average before "
        f"{' '.join(f'{x:.2f}' for x in result['before']['loadavg'])}; {a['agents']:,} agents, "
        f"heartbeat {a['heartbeat_s']:g} s, ramp {a['ramp_s']:g} s, hold {a['hold_s']:g} s, "
        f"wsload {a['procs']} processes, tick {a['tick_ms']:g} ms. Calibration: "
        + ", ".join(f"{k} {v:g}" for k, v in m.get("calibration", {}).items())
        + ".",
        "",
    ]
    for round_no, targets in enumerate(result["rounds"], 1):
        base: dict[str, Any] = next((t for t in targets if t["target"] == "uvloop-floor"), {})
        floor = (base.get("heartbeat") or {}).get("cpu_per_heartbeat_us")
        floor_connect = (base.get("connect") or {}).get("cpu_per_connect_ms")
        lines += [
            f"Round {round_no}:",
            "",
            "| target | CPU/heartbeat us | CPU/connect ms | RSS/agent KiB | p50 ms | p99 ms "
            "| ratio to uvloop floor (heartbeat, connect) |",
            "|---|---|---|---|---|---|---|",
        ]
        diag = [
            "",
            "| target | msgs/s | server wakeups/msg | generator us/msg | max ms | errors | exit |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in targets:
            if "skipped" in t:
                lines.append(f"| {t['target']} | skipped: {t['skipped']} | | | | | |")
                continue
            c, h = t.get("connect") or {}, t.get("heartbeat") or {}
            per_hb = h.get("cpu_per_heartbeat_us")
            per_connect = c.get("cpu_per_connect_ms")
            ratio = f"{per_hb / floor:.1f}x" if per_hb and floor else "-"
            if per_connect and floor_connect:
                ratio += f", {per_connect / floor_connect:.1f}x"
            per_hb_text = fmt(per_hb)
            if h.get("saturated"):
                hold = h.get("hold") or {}
                per_hb_text = (
                    f"saturated: {fmt(hold.get('messages_per_s'))} of "
                    f"{fmt(h.get('expected_messages_per_s'))} msgs/s at "
                    f"{fmt(hold.get('server_cpu_percent'))} % CPU"
                )
            lines.append(
                f"| {t['target']} | {per_hb_text} | {fmt(c.get('cpu_per_connect_ms'), 2)} "
                f"| {fmt(c.get('rss_per_agent_kib'), 1)} | {fmt(h.get('p50_ms'), 1)} "
                f"| {fmt(h.get('p99_ms'), 1)} | {ratio} |"
            )
            errors = sum((c.get("errors") or {}).values()) + sum((h.get("errors") or {}).values())
            diag.append(
                f"| {t['target']} | {fmt(h.get('messages_per_s'))} "
                f"| {fmt(h.get('server_wakeups_per_message'), 2)} "
                f"| {fmt(h.get('generator_cpu_us_per_message'))} | {fmt(h.get('max_ms'), 1)} "
                f"| {errors} | {t.get('exit_code')} |"
            )
        lines += [*diag, ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="results/compare-<name>.json")
    parser.add_argument(
        "--targets",
        default="uvloop-floor,trio-floor,opamp-fast",
        help="comma-separated: uvloop-floor[*PROCESSES], trio-floor, front-floor, "
        "opamp-fast[+BACKEND][*WORKERS][@SRC], go",
    )
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--procs", type=int, default=2, help="wsload worker processes")
    parser.add_argument("--ramp-s", type=float, default=10.0)
    parser.add_argument("--hold-s", type=float, default=20.0)
    parser.add_argument("--heartbeat-s", type=float, default=5.0)
    parser.add_argument("--idle-hold-s", type=float, default=6.0, help="idle agents held for RSS")
    parser.add_argument("--settle-s", type=float, default=2.0, help="pause before each phase")
    parser.add_argument("--connect-concurrency", type=int, default=256)
    parser.add_argument("--tick-ms", type=float, default=5.0, help="wsload heartbeat wheel tick")
    parser.add_argument("--source-addrs", default="", help="wsload source addresses")
    parser.add_argument("--path", default="/v1/opamp")
    parser.add_argument("--header", action="append", default=[], help="wsload --header")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds")
    parser.add_argument(
        "--stock-postgres", action="store_true", help="pgserver's settings, not the server's"
    )
    parser.add_argument("--server-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument("--wsload-arg", action="append", default=[], help="extra wsload flag")
    parser.add_argument("--go-server-bin", default="", help="Go reference server binary")
    parser.add_argument("--go-server-args", default="", help="its arguments; {port} replaced")
    parser.add_argument(
        "--server-gc-log", action="store_true", help="opamp-fast: log GC pauses over 20 ms"
    )
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        try:
            parse_target(t)
        except ValueError:
            parser.error(f"unknown target {t!r}; choose from {', '.join(TARGETS)} (see --help)")
    if not 1 <= args.repeat <= 10:
        parser.error("--repeat must be between 1 and 10")
    per_target = 2 * args.ramp_s + args.hold_s + args.idle_hold_s
    if per_target * len(targets) * args.repeat > 3 * 3600:
        parser.error("keep a compare run under three hours")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "name": args.name,
        "argv": sys.argv,
        "machine": machine(),
        "before": other_load(),
        "started_wall": time.time(),
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "rounds": [],
    }
    result["machine"]["python_implementation"] = platform.python_implementation()
    result["machine"]["calibration"] = calibrate()
    run = Run(args)
    path = RESULTS / f"compare-{args.name}.json"
    try:
        for round_no in range(1, args.repeat + 1):
            results: list[dict[str, Any]] = []
            result["rounds"].append(results)
            for target in targets:
                results.append(run.run_target(target, round_no))
                path.write_text(json.dumps(result, indent=2, default=str))
    finally:
        run.close()
    result["after"] = {"loadavg": os.getloadavg()}
    result["markdown"] = tables(result)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(result["markdown"])
    print(f"\n(full result: {path})")
    ok = all(
        t.get("exit_code") in (0, None) and "error" not in t for r in result["rounds"] for t in r
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
