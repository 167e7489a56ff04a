"""One bounded scale run: server (or echo floor) + simulator as subprocesses, sampled every second.

Why a script and not a pytest: a run takes minutes, owns several processes and writes figures
(``loadtest/results/<name>.json`` and ``<name>.png``) that go into ``docs/performance.md``.

What it does, in order:
1. records the machine (nproc, CPU model, RAM) and the load average before starting;
2. starts an embedded Postgres (pgserver) in a temporary directory, kept outside the server process
   so the history table can still be counted after the server has exited;
3. starts ``opamp-fast serve --host 127.0.0.1 --port <free> --backlog 8192`` on it (or, with
   ``--target echo``, ``loadtest/echo_floor.py``) and waits for ``/readyz``;
4. runs the simulator ramping to ``--agents`` over ``--ramp-s``, holding ``--hold-s`` (with
   ``--storm``: then dropping every connection at once and reconnecting for ``--storm-s``);
5. every second samples server RSS and CPU %, Postgres CPU %, simulator CPU %, connected agents and
   the window p99 (simulator progress), rows written (``pg_stat_user_tables``) and the writer's
   figures from ``/metrics`` when the server exports them; optionally runs py-spy on the server;
6. stops everything by PID (SIGTERM, SIGKILL after a bound), checks the server exited 0, counts
   ``agent_connection_history`` rows against the sessions the simulator opened (rows lost), and
   writes the JSON and the plot.

Run ``python loadtest/scale_run.py --help``; examples are in ``loadtest/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import procs
import psutil
from procs import free_port

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STOP_TIMEOUT_S = 60.0
_PROGRESS = re.compile(r"(\w+)=([-\d.]+)")
# Logs every collection that takes over 20 ms to the server log (stderr): shows whether a latency
# spike is the cyclic GC, and which generation.
GC_LOG = (
    "_t = [0.0]\n"
    "def _gc_cb(phase, info):\n"
    "    if phase == 'start':\n"
    "        _t[0] = time.perf_counter()\n"
    "    elif time.perf_counter() - _t[0] > 0.02:\n"
    "        sys.stderr.write('gc pause: gen=%d %.0f ms collected=%d at %.1f s\\n' % (\n"
    "            info['generation'], 1000 * (time.perf_counter() - _t[0]), info['collected'],\n"
    "            time.monotonic()))\n"
    "        sys.stderr.flush()\n"
    "gc.callbacks.append(_gc_cb)\n"
)


def launcher(gc_log: bool) -> list[str]:
    """``-m opamp_fast``, or the same CLI behind a ``-c`` program that logs GC pauses.

    (The server sets its own GC thresholds in ``cli._serve``, so a launcher cannot tune them;
    it can only observe.)"""
    if not gc_log:
        return ["-m", "opamp_fast"]
    code = "import gc, sys, time\n" + GC_LOG
    code += "from opamp_fast.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return ["-c", code]


def machine() -> dict[str, Any]:
    model = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "rlimit_nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "somaxconn": _read("/proc/sys/net/core/somaxconn"),
        "ip_local_port_range": _read("/proc/sys/net/ipv4/ip_local_port_range"),
    }


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def other_load() -> dict[str, Any]:
    """Load average and the busiest other processes: the doc says what else was running."""
    busy = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_percent"]):
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
    time.sleep(1.0)
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            pct = proc.cpu_percent(None)
            if pct >= 5.0 and proc.pid != os.getpid():
                cmd = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])[:120]
                busy.append({"pid": proc.pid, "cpu_percent": pct, "cmd": cmd})
    return {
        "loadavg": os.getloadavg(),
        "busy_processes": sorted(busy, key=lambda p: -p["cpu_percent"]),
    }


class Proc:
    """A child process we own: started here, stopped here by PID, exit status recorded."""

    def __init__(self, name: str, args: list[str], log: Path, **kw: Any) -> None:
        self.name = name
        self.args = args
        self.log_path = log
        self._log = open(log, "wb")  # closed in stop()
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, **kw)
        self.ps = psutil.Process(self.popen.pid)
        self.exit_code: int | None = None
        self.killed = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.popen.kill()
                self.popen.wait(10)
        self.exit_code = self.popen.returncode
        self._log.close()
        return self.exit_code


class CPUMeter:
    """CPU % of one core for a process (and optionally its children) between samples."""

    def __init__(self, proc: psutil.Process, children: bool = False) -> None:
        self.proc = proc
        self.children = children
        self.last_t = time.monotonic()
        self.last = self._cpu()

    def _cpu(self) -> float:
        procs = [self.proc]
        if self.children:
            with contextlib.suppress(psutil.Error):
                procs += self.proc.children(recursive=True)
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def sample(self) -> float:
        now, cpu = time.monotonic(), self._cpu()
        pct = 100.0 * (cpu - self.last) / max(now - self.last_t, 1e-9)
        self.last_t, self.last = now, cpu
        return round(pct, 1)


def db_rows(url: str) -> dict[str, int]:
    """Rows inserted/updated so far in the two tables the writer owns (pg_stat_user_tables)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        rows = conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd FROM pg_stat_user_tables "
            "WHERE relname IN ('agents', 'agent_connection_history')"
        ).fetchall()
    out = {"agents_ins": 0, "agents_upd": 0, "history_ins": 0, "history_upd": 0}
    for name, ins, upd in rows:
        prefix = "agents" if name == "agents" else "history"
        out[f"{prefix}_ins"], out[f"{prefix}_upd"] = int(ins), int(upd)
    out["total"] = sum(out.values())
    return out


def scrape_metrics(base: str) -> dict[str, float]:
    """Writer and fleet figures from /metrics if the server exports them (else {})."""
    try:
        samples = procs.metric_samples(base + "/metrics", timeout_s=2)
    except OSError:  # URLError too
        return {}
    wanted = ("flush", "rows", "pending", "agents_by_status", "open_conn")
    return {name: v for name, v in samples.items() if any(k in name for k in wanted)}


def wait_ready(base: str, proc: Proc, path: str, timeout_s: float = 60.0) -> None:
    procs.wait_ready(
        base + path, proc.popen, name=proc.name, timeout_s=timeout_s, hint=f"; see {proc.log_path}"
    )


def wait_port(port: int, proc: Proc, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise SystemExit(f"{proc.name} exited early; see {proc.log_path}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise SystemExit(f"{proc.name} not listening after {timeout_s} s")


def follow(path: Path, latest: dict[str, float], stop: threading.Event) -> None:
    """Tail the simulator's progress lines into ``latest`` (connected, p99_ms, ...)."""
    with open(path, "rb") as f:
        while not stop.is_set():
            line = f.readline()
            if not line:
                time.sleep(0.2)
                continue
            text = line.decode(errors="replace")
            if text.startswith("[simulate]"):
                for key, value in _PROGRESS.findall(text):
                    with contextlib.suppress(ValueError):
                        latest[key] = float(value)


def py_spy(pid: int, out: Path, seconds: int) -> dict[str, Any]:
    """A flame graph (SVG), a raw (collapsed) profile turned into a top-functions table, a dump."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    svg, raw = out.with_suffix(".profile.svg"), out.with_suffix(".profile.txt")
    half = max(5, seconds // 2)
    subprocess.run(
        [exe, "record", "--pid", str(pid), "--duration", str(half), "--rate", "100",
         "--nonblocking", "-o", str(svg)],
        check=False, capture_output=True, timeout=half + 30,
    )  # fmt: skip
    subprocess.run(
        [exe, "record", "--pid", str(pid), "--duration", str(half), "--rate", "100",
         "--nonblocking", "--format", "raw", "-o", str(raw)],
        check=False, capture_output=True, timeout=half + 30,
    )  # fmt: skip
    dump = subprocess.run(
        [exe, "dump", "--pid", str(pid), "--nonblocking"],
        check=False, capture_output=True, timeout=30, text=True,
    )  # fmt: skip
    out.with_suffix(".dump.txt").write_text(dump.stdout + dump.stderr)
    return {"svg": svg.name, "raw": raw.name, "top": top_functions(raw)}


_IDLE_LEAVES = ("EpollIOManager.get_events", "Condition.wait", "WorkerThread._work")


def top_functions(raw: Path, limit: int = 25) -> dict[str, Any]:
    """Self and total share per function from py-spy's collapsed stacks ("a;b;c N" lines).

    Shares are of *busy* samples: stacks whose leaf is the event loop waiting in epoll or an idle
    worker thread are counted separately (``idle_samples``), so the table shows where the CPU
    goes rather than how idle the server was."""
    self_n: dict[str, int] = {}
    total_n: dict[str, int] = {}
    samples = idle = 0
    try:
        lines = raw.read_text().splitlines()
    except OSError:
        return {"samples": 0, "self": [], "total": []}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [re.sub(r" \(.*?:\d+\)$", "", f).strip() + _where(f) for f in stack.split(";")]
        if frames and frames[-1].split(" [")[0] in _IDLE_LEAVES:
            idle += n
            continue
        samples += n
        if frames:
            self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for fn in set(frames):
            total_n[fn] = total_n.get(fn, 0) + n

    def table(d: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(d.items(), key=lambda kv: -kv[1])[:limit]
        return [(fn, round(100.0 * n / max(samples, 1), 1)) for fn, n in ranked]

    return {
        "samples": samples,
        "idle_samples": idle,
        "self": table(self_n),
        "total": table(total_n),
    }


def _where(frame: str) -> str:
    match = re.search(r"\(([^()]*?):\d+\)$", frame)
    if not match:
        return ""
    path = match.group(1)
    for marker in ("site-packages/", "src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f" [{path}]"


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t"] for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t, [s.get("connected", 0) for s in samples], color="tab:blue")
    axes[0].set_ylabel("agents connected")
    axes[1].plot(t, [s.get("p99_ms", 0) for s in samples], color="tab:red", label="p99")
    axes[1].plot(t, [s.get("p50_ms", 0) for s in samples], color="tab:orange", label="p50")
    axes[1].axhline(50, color="grey", linestyle="--", linewidth=0.8)
    axes[1].set_ylabel("round trip (ms)")
    axes[1].set_yscale("symlog", linthresh=1)
    axes[1].set_ylim(bottom=0)
    axes[1].legend(loc="upper left")
    axes[2].plot(t, [s.get("server_rss_mb", 0) for s in samples], color="tab:green")
    axes[2].set_ylabel("server RSS (MiB)")
    for key, label in (("server_cpu", "server"), ("db_cpu", "postgres"), ("sim_cpu", "sim")):
        axes[3].plot(t, [s.get(key, 0) for s in samples], label=label)
    axes[3].set_ylabel("CPU % of one core")
    axes[3].set_xlabel("seconds since start")
    axes[3].legend(loc="upper left")
    fig.suptitle(result["name"])
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The figures the doc table needs, from the sim summary and the steady-state samples."""
    sim = result.get("simulator_summary") or {}
    steady = sim.get("steady") or {}
    server = sim.get("server") or {}
    start = (steady.get("started_at_s") or 0) + result["offset_s"]
    end = start + (steady.get("duration_s") or 0)
    window = [s for s in result["samples"] if start + 1 <= s["t"] <= end]

    def avg(key: str) -> float | None:
        values = [s[key] for s in window if key in s]
        return round(sum(values) / len(values), 1) if values else None

    rows_per_s = None
    with_rows = [s for s in window if "db_rows_total" in s]
    if len(with_rows) >= 2:
        span = with_rows[-1]["t"] - with_rows[0]["t"]
        rows_per_s = round((with_rows[-1]["db_rows_total"] - with_rows[0]["db_rows_total"]) / span)
    return {
        "agents_connected": sim.get("agents_connected"),
        "steady_messages_per_s": steady.get("messages_per_s"),
        "steady_p50_ms": (steady.get("latency_ms") or {}).get("p50"),
        "steady_p99_ms": (steady.get("latency_ms") or {}).get("p99"),
        "steady_max_ms": (steady.get("latency_ms") or {}).get("max"),
        "server_cpu_percent": steady.get("server_cpu_percent"),
        "server_cpu_us_per_message": steady.get("server_cpu_us_per_message"),
        "db_cpu_percent": avg("db_cpu"),
        "sim_cpu_percent": avg("sim_cpu"),
        "other_cpu_percent": avg("other_cpu"),
        "server_rss_mb": round((server.get("rss_at_end_of_hold_bytes") or 0) / 2**20, 1),
        "server_rss_start_mb": round((server.get("rss_start_bytes") or 0) / 2**20, 1),
        "rss_per_agent_kb": round((server.get("rss_per_agent_bytes") or 0) / 1024, 1),
        "flush_rows_per_s": rows_per_s,
        "errors": sim.get("errors"),
        "reconnects": sim.get("reconnects"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / args.name
    result: dict[str, Any] = {
        "name": args.name,
        "argv": sys.argv,
        "machine": machine(),
        "before": other_load(),
        "samples": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix=f"opamp-scale-{args.name}-"))
    procs: list[Proc] = []
    pg: Any = None
    db_url: str | None = None
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        if args.target == "server":
            import pgserver

            pg = pgserver.get_server(tmp / "pgdata", cleanup_mode="stop")
            db_url = pg.get_uri()
            server_args = [
                sys.executable, *launcher(args.server_gc_log),
                "serve", "--host", "127.0.0.1",
                "--port", str(port), "--backlog", str(args.backlog), "--database-url", db_url,
                "--instance-id", f"scale-{args.name}", "--log-level", "warning",
                "--heartbeat-interval-s", str(args.server_heartbeat_s),
                "--graceful-timeout-s", "20", *args.server_arg,
            ]  # fmt: skip
            server = Proc("server", server_args, out.with_suffix(".server.log"))
            procs.append(server)
            wait_ready(base, server, "/readyz")
            pid_file = tmp / "pgdata" / "postmaster.pid"
            db_meter = CPUMeter(psutil.Process(int(pid_file.read_text().split()[0])), True)
        else:
            server_args = [
                sys.executable, str(HERE / "echo_floor.py"), "--port", str(port),
                "--backlog", str(args.backlog),
                "--heartbeat-interval-s", str(args.server_heartbeat_s),
            ]  # fmt: skip
            server = Proc("echo", server_args, out.with_suffix(".server.log"))
            procs.append(server)
            wait_port(port, server)
            db_meter = None
        time.sleep(1.0)  # let the server settle (gc.freeze etc.) before the RSS baseline
        result["server_cmd"] = server_args
        storm_s = args.storm_s if args.storm else 0.0
        duration = args.ramp_s + args.hold_s + storm_s
        sim_args = [
            sys.executable, str(HERE / "simulate.py"), "--url", f"{base}/v1/opamp",
            "--agents", str(args.agents), "--ramp-s", str(args.ramp_s),
            "--duration-s", str(duration), "--ws-fraction", str(args.ws_fraction),
            "--server-pid", str(server.pid), "--out", str(out.with_suffix(".sim.json")),
            *args.sim_arg,
        ]  # fmt: skip
        if args.source_addrs:
            sim_args += ["--source-addrs", args.source_addrs]
        if args.storm:
            sim_args += ["--storm-at-s", str(args.ramp_s + args.hold_s)]
        result["simulator_cmd"] = sim_args
        t0 = time.monotonic()
        result["t0_monotonic"] = t0  # aligns the server log's "gc pause ... at T s" lines
        sim = Proc("simulator", sim_args, out.with_suffix(".sim.log"))
        procs.append(sim)
        # The simulator's clock starts after its imports; align sample times with its timeline.
        result["offset_s"] = 0.0
        latest: dict[str, float] = {}
        stop_follow = threading.Event()
        follower = threading.Thread(
            target=follow, args=(sim.log_path, latest, stop_follow), daemon=True
        )
        follower.start()
        server_meter = CPUMeter(server.ps)
        psutil.cpu_percent(None)  # start the machine-wide interval
        sim_meter = CPUMeter(sim.ps)
        profile_at = args.profile_at_s
        profiler: threading.Thread | None = None
        profile_result: dict[str, Any] = {}
        deadline = t0 + duration + 90.0
        while sim.popen.poll() is None:
            if time.monotonic() > deadline:
                print("simulator overran its bound; stopping it", file=sys.stderr)
                break
            time.sleep(1.0)
            t = round(time.monotonic() - t0, 1)
            sample: dict[str, Any] = {"t": t}
            with contextlib.suppress(psutil.Error):
                sample["server_rss_mb"] = round(server.ps.memory_info().rss / 2**20, 1)
                sample["server_cpu"] = server_meter.sample()
                sample["server_fds"] = server.ps.num_fds()
            with contextlib.suppress(psutil.Error):
                sample["sim_cpu"] = sim_meter.sample()
            if db_meter is not None:
                sample["db_cpu"] = db_meter.sample()
            # Whole machine in % of one core: what the other engineers' work took is the rest.
            sample["machine_cpu"] = round(psutil.cpu_percent(None) * (os.cpu_count() or 1), 1)
            ours = sum(sample.get(k, 0.0) for k in ("server_cpu", "sim_cpu", "db_cpu"))
            sample["other_cpu"] = round(max(0.0, sample["machine_cpu"] - ours), 1)
            for key in ("connected", "p50_ms", "p99_ms", "errors", "reconnects"):
                if key in latest:
                    sample[key] = latest[key]
            if db_url is not None:
                with contextlib.suppress(Exception):
                    sample["db_rows_total"] = db_rows(db_url)["total"]
                # Every 10 s, like a (fast) Prometheus: each scrape lists /proc/self/fd, which
                # costs the server milliseconds at 20k sockets.
                scrape = args.target == "server" and len(result["samples"]) % 10 == 0
                metrics = scrape_metrics(base) if scrape else {}
                if metrics:
                    sample["metrics"] = metrics
            result["samples"].append(sample)
            if profile_at is not None and profiler is None and t >= profile_at:
                profiler = threading.Thread(
                    target=lambda: profile_result.update(py_spy(server.pid, out, args.profile_s)),
                    daemon=True,
                )
                profiler.start()
            if len(result["samples"]) % 10 == 0:
                print(
                    f"[scale_run {args.name}] t={t:.0f}s connected={sample.get('connected')} "
                    f"p99_ms={sample.get('p99_ms')} server_cpu={sample.get('server_cpu')}% "
                    f"rss={sample.get('server_rss_mb')}MiB db_cpu={sample.get('db_cpu')}% "
                    f"sim_cpu={sample.get('sim_cpu')}%",
                    file=sys.stderr,
                )
        sim.stop(timeout_s=30.0)
        stop_follow.set()
        if profiler is not None:
            profiler.join(timeout=args.profile_s + 60)
            result["profile"] = profile_result
        sim_json = out.with_suffix(".sim.json")
        if sim_json.exists():
            result["simulator_summary"] = json.loads(sim_json.read_text())
        result["simulator_exit_code"] = sim.exit_code
        if args.target == "server":
            result["metrics_at_end"] = scrape_metrics(base)
        result["server_exit_code"] = server.stop()
        result["server_killed"] = server.killed
        if db_url is not None:
            result["history"] = check_history(db_url, result.get("simulator_summary") or {})
    finally:
        for proc in reversed(procs):
            if proc.popen.poll() is None or proc.exit_code is None:
                proc.stop()
        if pg is not None:
            with contextlib.suppress(Exception):
                pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    result["after"] = {"loadavg": os.getloadavg()}
    result["figures"] = summarise(result)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    plot(result, out.with_suffix(".png"))
    return result


def check_history(db_url: str, sim: dict[str, Any]) -> dict[str, Any]:
    """Every session the simulator opened must be one closed history row: rows lost = 0."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        total, still_open = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE disconnected_at IS NULL) "
            "FROM agent_connection_history"
        ).fetchone() or (0, 0)
        reasons = dict(
            conn.execute(
                "SELECT disconnect_reason, count(*) FROM agent_connection_history GROUP BY 1"
            ).fetchall()
        )
        agents = conn.execute("SELECT count(*) FROM agents").fetchone()
    expected = int(sim.get("sessions_opened") or 0)
    return {
        "rows": int(total),
        "rows_still_open": int(still_open),
        "expected_at_least": expected,
        "rows_lost": max(0, expected - int(total)),
        "by_reason": {str(k): int(v) for k, v in reasons.items()},
        "agents_rows": int(agents[0]) if agents else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="results/<name>.json and .png")
    parser.add_argument("--target", choices=("server", "echo"), default="server")
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--ramp-s", type=float, default=60.0)
    parser.add_argument("--hold-s", type=float, default=120.0)
    parser.add_argument("--ws-fraction", type=float, default=1.0)
    parser.add_argument("--server-heartbeat-s", type=int, default=30, help="interval offered")
    parser.add_argument("--backlog", type=int, default=8192)
    parser.add_argument("--source-addrs", default="", help="e.g. 127.0.0.2-127.0.0.20")
    parser.add_argument("--storm", action="store_true", help="drop all and reconnect after hold")
    parser.add_argument("--storm-s", type=float, default=60.0, help="time allowed to recover")
    parser.add_argument("--profile-at-s", type=float, default=None, help="py-spy the server at T")
    parser.add_argument("--profile-s", type=int, default=40, help="py-spy time (svg + raw halves)")
    parser.add_argument(
        "--server-gc-log",
        action="store_true",
        help="log GC pauses over 20 ms to <name>.server.log",
    )
    parser.add_argument("--server-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument("--sim-arg", action="append", default=[], help="extra simulator flag")
    args = parser.parse_args()
    if args.ramp_s + args.hold_s + (args.storm_s if args.storm else 0) > 600:
        parser.error("keep a run bounded: ramp + hold + storm must be <= 600 s")
    result = run(args)
    brief = {
        "name": args.name,
        **result["figures"],
        "history": result.get("history"),
        "server_exit_code": result.get("server_exit_code"),
        "storm": (result.get("simulator_summary") or {}).get("storm"),
    }
    print(json.dumps(brief, indent=2))
    return 0 if result.get("server_exit_code") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
