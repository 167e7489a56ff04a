"""Soak: a mixed fleet for a long time; does anything grow that should not?

Starts Postgres (embedded) and ``opamp-fast serve`` (``--heartbeat-interval-s``), then
``opamp-fast simulate`` with ``--agents`` agents (``--ws-fraction`` WebSocket, the rest plain
HTTP), ``--churn-per-min`` of the WebSocket agents dropping and reconnecting each minute, for
``--duration-s``. Every ``--config-push-every-s`` it publishes a new version of a configuration
for the whole fleet through the REST API (a group selecting every agent), which WebSocket agents
get at once and HTTP agents on their next poll.

Every ``--sample-s`` (10 s): the server's RSS, open descriptors and threads, the open history
rows and online agents in Postgres, and the agents' round-trip p99 over those seconds (from the
simulator's per-second timeline: the worst second). At the end: SIGTERM, exit code, rows lost
(sessions the simulator opened vs history rows) and rows left open. Writes the JSON (``--out``)
and a PNG plot of the four series (``--plot``, needs matplotlib: ``pip install -e
'.[loadtest]'``). Loopback only; bounded by ``--duration-s``; every process stopped by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import psycopg
from procs import free_port  # sibling script (loadtest/ is sys.path[0])

SECRET = "soak-" + "s" * 59


def request(base: str, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + path, data=data, method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class Pusher:
    """A new version of config ``soak`` for every agent, every ``every_s`` seconds."""

    def __init__(self, base: str, token: str, every_s: float) -> None:
        self.base, self.token, self.every_s = base, token, every_s
        self.pushes: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        version = 0
        while not self.stop.wait(self.every_s):
            version += 1
            body = f"receivers:\n  otlp: {{}}\n# soak version {version}\n"
            status, _ = request(self.base, "POST", "/api/configs", self.token, {
                "name": "soak", "files": {"collector.yaml": {"body": body}},
            })  # fmt: skip
            entry: dict[str, Any] = {"at": time.monotonic(), "create": status}
            if status in (200, 201):  # assign the new (latest) version to the fleet's group
                entry["group"], _ = request(
                    self.base, "PUT", "/api/groups/soak", self.token,
                    {"selector": {}, "config": "soak"},
                )  # fmt: skip
            self.pushes.append(entry)


def sample(ps: psutil.Process, db_url: str) -> dict[str, Any]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM agent_connection_history WHERE disconnected_at IS NULL),"
            " (SELECT count(*) FROM agents WHERE status = 'online')"
        ).fetchone()
    open_rows, online = row if row else (None, None)
    with ps.oneshot():
        return {
            "at": time.monotonic(),
            "rss_mb": round(ps.memory_info().rss / 2**20, 1),
            "fds": ps.num_fds(),
            "threads": ps.num_threads(),
            "open_history_rows": open_rows,
            "online": online,
        }


def attach_p99(samples: list[dict[str, Any]], sim: dict[str, Any], t0: float) -> None:
    """The worst per-second p99 of the simulator's timeline within each sample's period."""
    timeline = sim.get("timeline", [])
    prev = t0
    for s in samples:
        secs = [x["p99_ms"] for x in timeline if prev <= t0 + x["t"] < s["at"] and x["p99_ms"]]
        s["p99_ms"] = max(secs, default=None)
        s["t"] = round(s["at"] - t0)
        prev = s["at"]


def plot(samples: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    series = [
        ("rss_mb", "server RSS (MiB)"),
        ("fds", "server open fds"),
        ("open_history_rows", "open history rows"),
        ("p99_ms", "p99 round trip (ms)"),
    ]
    for ax, (key, label) in zip(axes, series, strict=True):
        ax.plot(t, [s.get(key) for s in samples], lw=1)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--ws-fraction", type=float, default=0.8)
    p.add_argument("--heartbeat-interval-s", type=int, default=10)
    p.add_argument("--churn-per-min", type=float, default=0.01)
    p.add_argument("--duration-s", type=float, default=1800.0)
    p.add_argument("--ramp-s", type=float, default=60.0)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--config-push-every-s", type=float, default=300.0, help="0: none")
    p.add_argument("--out", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="opamp-soak-"))
    procs: list[subprocess.Popen[bytes]] = []
    import pgserver

    pg = pgserver.get_server(tmp / "pgdata", cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        db_url = pg.get_uri()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with open(tmp / "server.log", "wb") as log:
            server = subprocess.Popen([
                sys.executable, "-m", "opamp_fast", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--database-url", db_url, "--log-level", "warning",
                "--heartbeat-interval-s", str(args.heartbeat_interval_s),
                "--api-jwt-secret", SECRET, "--backlog", "8192",
            ], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(server)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(base + "/readyz") as r:
                if r.status == 200:
                    break
            time.sleep(0.2)
        token = subprocess.run(
            [sys.executable, "-m", "opamp_fast", "token", "--subject", "soak", "--ttl", "2h",
             "--api-jwt-secret", SECRET],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        ps = psutil.Process(server.pid)
        sim_out = tmp / "sim.json"
        t0 = time.monotonic()
        with open(tmp / "sim.log", "wb") as log:
            sim = subprocess.Popen([
                sys.executable, "-m", "opamp_fast", "simulate", "--url", base + "/v1/opamp",
                "--agents", str(args.agents), "--ws-fraction", str(args.ws_fraction),
                "--ramp-s", str(args.ramp_s), "--duration-s", str(args.duration_s),
                "--churn-per-min", str(args.churn_per_min), "--out", str(sim_out), "--quiet",
            ], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(sim)
        pusher = Pusher(base, token, args.config_push_every_s)
        pushing = threading.Thread(target=pusher.run, daemon=True)
        if args.config_push_every_s > 0:
            pushing.start()
        samples = []
        while sim.poll() is None:
            samples.append(sample(ps, db_url))
            time.sleep(args.sample_s)
        pusher.stop.set()
        summary = json.loads(sim_out.read_text())
        server.terminate()
        exit_code = server.wait(60)
        with psycopg.connect(db_url, autocommit=True) as conn:
            rows, still_open = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE disconnected_at IS NULL)"
                " FROM agent_connection_history"
            ).fetchone() or (0, 0)
        attach_p99(samples, summary, t0)
        warm = [s for s in samples if s["t"] >= args.ramp_s + 120]
        result = {
            "settings": vars(args),
            "server_exit": exit_code,
            "sessions_opened": summary["sessions_opened"],
            "history_rows": rows,
            "rows_lost": max(0, summary["sessions_opened"] - rows),
            "rows_left_open": still_open,
            "churned": summary.get("churned"),
            "simulator_errors": summary["errors"],
            "remote_configs_applied": summary["remote_configs_applied"],
            "config_pushes": [{**x, "at": round(x["at"] - t0)} for x in pusher.pushes],
            "after_warmup": {
                key: {
                    "first": warm[0][key],
                    "last": warm[-1][key],
                    "min": min(s[key] for s in warm),
                    "max": max(s[key] for s in warm),
                }
                for key in ("rss_mb", "fds", "threads", "open_history_rows")
            }
            if warm
            else None,
            "p99_ms_worst_sample": max((s["p99_ms"] or 0 for s in warm), default=None),
            "samples": samples,
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.plot:
        plot(samples, Path(args.plot), f"soak: {args.agents:,} agents, "
             f"{args.ws_fraction:.0%} WebSocket, heartbeat {args.heartbeat_interval_s} s, "
             f"{args.churn_per_min:.0%}/min reconnecting")  # fmt: skip
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
